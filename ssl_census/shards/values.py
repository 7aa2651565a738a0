"""The stored values: raw counts normalised to a fixed total over the gene space, then log1p.

One function serves the build, the test-store writer and ``verify``, so the three can never
disagree about what a stored value means.
"""

from __future__ import annotations

import numpy as np

TARGET_SUM = 10_000.0
NORMALISATION = "log1p(counts / library_size * 1e4), float32; library_size over the gene space"
NORMALISATION_VERSION = 1


def library_sizes(indptr: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per-row sum of raw counts (int64), for a CSR block whose indptr starts at 0."""
    indptr = np.asarray(indptr, dtype=np.int64)
    csum = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    return csum[indptr[1:]] - csum[indptr[:-1]]


def normalise(indptr: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(data, library_size)`` with data = log1p(counts / library_size * 10,000) as float32.

    Computed in float64 and rounded once, so the value does not depend on block boundaries.
    Rows with a zero library size must have been removed before (they cannot be normalised).
    """
    lib = library_sizes(indptr, counts)
    return _log1p_per_10k(indptr, counts, lib), lib


def normalise_scaled(indptr: np.ndarray, values: np.ndarray) -> np.ndarray:
    """:func:`normalise` for counts known only up to a per-cell factor (a user's normalised
    h5ad): the factor cancels, so the data equal those of the counts up to float rounding.
    Row sums are taken in float64 row by row, so a row's data do not depend on other rows."""
    indptr = np.asarray(indptr, dtype=np.int64)
    lengths = np.diff(indptr)
    lib = np.zeros(len(lengths), dtype=np.float64)
    nonempty = lengths > 0
    if nonempty.any():  # reduceat over the non-empty rows' starts only
        lib[nonempty] = np.add.reduceat(np.asarray(values, dtype=np.float64),
                                        indptr[:-1][nonempty])
    return _log1p_per_10k(indptr, values, lib)


def _log1p_per_10k(indptr: np.ndarray, counts: np.ndarray, lib: np.ndarray) -> np.ndarray:
    if np.any(lib[np.diff(indptr) > 0] <= 0):
        raise ValueError("rows with non-positive library size cannot be normalised")
    with np.errstate(divide="ignore"):
        scale = TARGET_SUM / lib.astype(np.float64)
    data = np.array(counts, dtype=np.float64)  # a copy: float64 input stays untouched
    data *= np.repeat(scale, np.diff(indptr))
    np.log1p(data, out=data)
    return data.astype(np.float32)
