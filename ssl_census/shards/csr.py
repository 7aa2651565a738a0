"""Row selection on plain CSR arrays (indptr from 0 plus parallel value arrays)."""

from __future__ import annotations

import numpy as np

Csr = tuple[np.ndarray, list[np.ndarray]]


def take_rows(indptr: np.ndarray, rows: np.ndarray, *arrays: np.ndarray) -> Csr:
    """``rows`` of a CSR matrix, in the given order: (new indptr from 0, selected arrays)."""
    indptr = np.asarray(indptr, dtype=np.int64)
    rows = np.asarray(rows, dtype=np.int64)
    starts = indptr[rows]
    lengths = indptr[rows + 1] - starts
    new_indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_indptr[1:])
    gather = np.repeat(starts - new_indptr[:-1], lengths)
    gather += np.arange(new_indptr[-1])  # in place: one int64 array a non-zero less at peak
    return new_indptr, [np.asarray(a)[gather] for a in arrays]


def concat_rows(pieces: list[Csr]) -> Csr:
    """Stack CSR pieces (indptr from 0, arrays) vertically."""
    if not pieces:
        return np.zeros(1, dtype=np.int64), []
    offsets = np.cumsum([0] + [int(p[0][-1]) for p in pieces])
    tails = [p[0][1:] + off for p, off in zip(pieces, offsets, strict=False)]
    indptr = np.concatenate([[0], *tails])
    arrays = [np.concatenate([p[1][i] for p in pieces]) for i in range(len(pieces[0][1]))]
    return indptr.astype(np.int64), arrays
