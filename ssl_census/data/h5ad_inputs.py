"""What a user's h5ad holds, and its matrices as chunks of cells (in memory or streamed).

A matrix the model can read holds one of three kinds of values:

- raw counts (non-negative integers);
- log1p of per-cell scaled counts: scanpy's ``normalize_total`` + ``log1p`` or CELLxGENE's X,
  whatever the target sum;
- per-cell scaled counts without the log (``normalize_total`` alone).

All three carry what the model needs. The shards' normalisation (library size over the
model's genes, 10,000, log1p) is blind to a per-cell factor, so undoing the log and
renormalising over the model's genes gives the values the raw counts give, up to float
rounding. They are recognised by their values: after ``expm1`` (or as they are) a cell's
values are integer multiples of one per-cell unit (a count of 1, or of up to
``_MAX_SMALLEST_COUNT``). Scaled, centred or otherwise transformed values do not have that
property and are refused.

Files are read with h5py, a chunk of rows at a time, so memory does not grow with the cell
count; anndata is used only for the small parts (var) and its deprecation chatter is silenced
around those calls alone.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ssl_census.core.errors import UserError, require_file

COUNTS = "raw counts"
LOG1P = "log1p-normalised values"
SCALED_COUNTS = "normalised counts without log"
KINDS = (COUNTS, LOG1P, SCALED_COUNTS)

_SAMPLE_ENTRIES = 1_000_000  # non-zero values read to recognise a matrix
CHUNK_CELLS = 1024  # cells read, normalised and embedded at a time (~100 B per non-zero)
_SAMPLE_READ = 256  # rows per read while sampling: the sample stays near _SAMPLE_ENTRIES
_MAX_SMALLEST_COUNT = 4  # a cell's smallest count may be 1 .. 4
_MIN_CONSISTENT_ROWS = 0.99  # a stray odd cell does not decide what a matrix holds
CHECK_ROWS = 128  # the first cells of every chunk are checked again
H5AD_FIX = ("give an .h5ad file written by anndata or scanpy (convert .loom, .zarr, 10x .h5, "
            ".mtx or .csv with scanpy.read_* and write_h5ad)")


@contextmanager
def quiet_anndata() -> Iterator[None]:
    """anndata's FutureWarnings and old-format notes hidden around our own calls only (they
    are about the file's age, not about anything the user can act on here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # anndata's OldFormatWarning
        yield


# -- what a matrix holds ----------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """What a sample of a matrix holds: ``kind`` (one of KINDS) or None, and in words."""

    kind: str | None
    detail: str


def _proportional_rows(indptr: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per non-empty row: are its values integer multiples of one unit (counts x a factor)?

    The unit is the row's smallest value divided by 1, 2, ... _MAX_SMALLEST_COUNT. The
    tolerance covers float32 storage of log values (relative error ~1e-6 after expm1).
    Works in two float64 buffers the size of ``y``, so a chunk's check costs little memory.
    """
    lengths = np.diff(indptr)
    nonempty = lengths > 0
    starts = indptr[:-1][nonempty]
    ok = np.zeros(len(starts), dtype=bool)
    if not len(starts):
        return ok
    ratio = y / np.repeat(np.minimum.reduceat(y, starts), lengths[nonempty])
    r, off = np.empty_like(ratio), np.empty_like(ratio)
    with np.errstate(invalid="ignore", over="ignore"):  # inf (expm1 of large values) fails
        for k in range(1, _MAX_SMALLEST_COUNT + 1):
            np.multiply(ratio, k, out=r)
            np.subtract(r, np.rint(r, out=off), out=off)
            np.abs(off, out=off)
            r *= 1e-4
            r += 1e-2
            ok |= np.logical_and.reduceat(off <= r, starts)
    return ok


def _expm1(values: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # values too large to be log1p overflow to inf
        return np.expm1(values)


def _mostly(rows: np.ndarray) -> bool:
    return rows.size == 0 or rows.mean() >= _MIN_CONSISTENT_ROWS


def _integral(data: np.ndarray) -> bool:
    return bool(np.all(data == np.rint(data)))


def recognise(x: sp.csr_matrix) -> Finding:
    """What the non-zero values of ``x`` (CSR, explicit zeros removed) are."""
    data = x.data
    if data.size == 0:
        return Finding(None, "no non-zero values")
    if not np.all(np.isfinite(data)):
        return Finding(None, "NaN or infinite values")
    low = float(data.min())
    if low < 0:
        return Finding(None, f"scaled or centred values (negative entries, min {low:.3g})")
    values = data.astype(np.float64)
    if _integral(values):
        return Finding(COUNTS, COUNTS)
    indptr = x.indptr.astype(np.int64)
    as_log = _proportional_rows(indptr, _expm1(values))
    as_linear = _proportional_rows(indptr, values)
    if _mostly(as_log) and as_log.mean() >= as_linear.mean():
        return Finding(LOG1P, LOG1P)
    if _mostly(as_linear):
        return Finding(SCALED_COUNTS, SCALED_COUNTS)
    return Finding(None, "non-integer values that are neither log1p(counts x a per-cell "
                         "factor) nor counts x a per-cell factor (scaled per gene, another "
                         "log base or rounded?)")


def holds(x: sp.csr_matrix, kind: str) -> bool:
    """Whether ``x`` (the first cells of a chunk) holds values of ``kind``, the kind found in
    the file's first cells: a file whose later cells hold other values is not read as one."""
    data = x.data
    if data.size == 0:
        return True
    if not np.all(np.isfinite(data)) or data.min() < 0:
        return False
    if kind == COUNTS:
        return _integral(data)
    values = data.astype(np.float64)
    y = _expm1(values) if kind == LOG1P else values
    return _mostly(_proportional_rows(x.indptr.astype(np.int64), y))


# -- matrices as chunks of cells --------------------------------------------------------------


@dataclass(frozen=True)
class CellSource:
    """One cells x genes matrix of an AnnData: where it is, the genes it is over, its rows."""

    where: str  # "X", ".raw" or "layers['name']"
    var: pd.DataFrame
    n_cells: int
    read_rows: Callable[[int, int], Any]  # rows [start, stop) as anything scipy takes
    note: str | None = None  # said when the matrix is used (e.g. read whole)
    fresh: bool = False  # read_rows returns new arrays (read from a file): no copy needed

    def rows(self, start: int, stop: int) -> sp.csr_matrix:
        """Rows [start, stop) as CSR with explicit zeros removed (never the user's arrays:
        callers may modify it)."""
        m = self.read_rows(start, stop)
        if sp.issparse(m):
            x = sp.csr_matrix(m, copy=not self.fresh)
        else:
            x = sp.csr_matrix(np.asarray(m))
        x.eliminate_zeros()
        return x

    def chunks(self, size: int) -> Iterator[tuple[int, sp.csr_matrix]]:
        for start in range(0, self.n_cells, size):
            yield start, self.rows(start, min(start + size, self.n_cells))

    def sample(self) -> sp.csr_matrix:
        """The first cells, up to about _SAMPLE_ENTRIES non-zero values."""
        parts, entries = [], 0
        for _, x in self.chunks(_SAMPLE_READ):
            parts.append(x)
            entries += x.nnz
            if entries >= _SAMPLE_ENTRIES:
                break
        return sp.vstack(parts, format="csr") if parts else sp.csr_matrix((0, len(self.var)))


def _row_reader(m: Any) -> Callable[[int, int], Any]:
    if sp.issparse(m) and m.format == "csc":
        m = m.tocsr()  # slicing rows of a CSC matrix costs a pass over all of it, per chunk
    return lambda start, stop: m[start:stop]


def sources_in_memory(adata: Any) -> list[CellSource]:
    """X, .raw and every layer of an AnnData (in memory or backed)."""
    out = []
    if adata.X is not None:
        out.append(CellSource("X", adata.var, adata.n_obs, _row_reader(adata.X)))
    if adata.raw is not None:
        out.append(CellSource(".raw", adata.raw.var, adata.n_obs, _row_reader(adata.raw.X)))
    for name in adata.layers:
        out.append(CellSource(f"layers[{name!r}]", adata.var, adata.n_obs,
                              _row_reader(adata.layers[name])))
    return out


# -- h5ad files -------------------------------------------------------------------------------


@contextmanager
def open_h5ad(path: str | Path) -> Iterator[h5py.File]:
    """An h5ad file opened read-only, or one line saying why it is not one."""
    path = Path(path)
    require_file(path, "h5ad file")
    if path.is_dir() or not h5py.is_hdf5(path):
        raise UserError(f"{path} is not an h5ad file (not HDF5)", H5AD_FIX)
    with h5py.File(path, "r") as f:
        if "obs" not in f or "var" not in f:
            raise UserError(f"{path} is an HDF5 file but not an h5ad (no obs/var)", H5AD_FIX)
        yield f


def read_element(elem: h5py.Group | h5py.Dataset) -> Any:
    from anndata.io import read_elem

    with quiet_anndata():
        return read_elem(elem)


def _csr_rows(group: h5py.Group, n_cols: int) -> Callable[[int, int], sp.csr_matrix]:
    indptr, data, indices = group["indptr"], group["data"], group["indices"]

    def read(start: int, stop: int) -> sp.csr_matrix:
        ptr = indptr[start : stop + 1].astype(np.int64)
        lo, hi = int(ptr[0]), int(ptr[-1])
        return sp.csr_matrix((data[lo:hi], indices[lo:hi], ptr - lo), shape=(stop - start, n_cols))

    return read


def _h5_source(where: str, elem: h5py.Group | h5py.Dataset, var: pd.DataFrame,
               path: Path) -> CellSource:
    """Rows of a matrix stored in an h5ad: CSR and dense are streamed, CSC is read whole."""
    if isinstance(elem, h5py.Dataset):
        return CellSource(where, var, int(elem.shape[0]), lambda a, b: elem[a:b])
    kind = elem.attrs.get("encoding-type", elem.attrs.get("h5sparse_format", ""))
    shape = tuple(int(s) for s in elem.attrs.get("shape", elem.attrs.get("h5sparse_shape", ())))
    if kind in ("csr_matrix", "csr") and len(shape) == 2:
        return CellSource(where, var, shape[0], _csr_rows(elem, shape[1]), fresh=True)
    if kind in ("csc_matrix", "csc") and len(shape) == 2:
        whole: list[sp.csr_matrix] = []

        def read(a: int, b: int) -> sp.csr_matrix:
            if not whole:
                whole.append(sp.csr_matrix(read_element(elem)))
            return whole[0][a:b]

        return CellSource(where, var, shape[0], read,
                          note=f"{where} of {path} is stored by column (CSC), so it is read "
                               "whole into memory rather than streamed")
    raise UserError(f"{where} of {path} is stored in a form this tool cannot read "
                    f"({kind or 'no encoding'})", "rewrite the file with a current anndata")


def sources_in_file(f: h5py.File, path: Path) -> list[CellSource]:
    """X, .raw and every layer of an open h5ad, read a chunk of rows at a time."""
    var = read_element(f["var"])
    out = []
    if "X" in f:
        out.append(_h5_source("X", f["X"], var, path))
    if "raw" in f and "X" in f["raw"]:
        out.append(_h5_source(".raw", f["raw/X"], read_element(f["raw/var"]), path))
    for name in f.get("layers", {}):
        out.append(_h5_source(f"layers[{name!r}]", f["layers"][name], var, path))
    return out
