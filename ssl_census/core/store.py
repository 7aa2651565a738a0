"""The on-disk format of a split's cell matrix: CSR arrays in a Zarr v3 group, sharded.

One split (``train``, ``val``, ``test``) is a group ``X.zarr`` with four 1-D arrays::

    indptr   int64    n_cells + 1        row offsets into the three arrays below
    indices  uint8/16/32  nnz            gene positions, the smallest type that holds n_genes - 1
    data     float32  nnz                log1p(counts / library size * 10,000)
    counts   uint16/32    nnz            the raw integer counts of the same entries

Arrays are chunked (``CHUNK`` elements, the unit of decompression) inside shards (``SHARD``
elements, the unit of a file), each chunk compressed with Blosc-LZ4 and byte shuffle: LZ4
decompresses at about 3 GB/s a core, three times zstd, and the loader is bound by
decompression. Group attributes hold ``n_cells``, ``n_genes``, ``nnz`` and ``format``.

:class:`CsrWriter` streams rows in and writes every shard whole, once, so a store is written
sequentially in bounded memory (one shard buffer per array) and the bytes depend only on the
rows appended. See ``docs/shard-format.md``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec

FORMAT = "ssl-census-csr/1"
CHUNK = 2**18  # elements per compressed chunk (1 MiB of float32)
SHARD = 2**24  # elements per shard file (64 chunks)
INDPTR_CHUNK = 2**16
INDPTR_SHARD = 2**22
ARRAYS = ("indptr", "indices", "data", "counts")


def index_dtype(n_genes: int) -> np.dtype:
    """Smallest unsigned type that holds every gene position."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if n_genes - 1 <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.uint64)


def counts_dtype(max_count: int) -> np.dtype:
    """Smallest unsigned type (from uint16) that holds the largest raw count."""
    for dt in (np.uint16, np.uint32):
        if max_count <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.uint64)


def _codec(dtype: np.dtype) -> BloscCodec:
    return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=np.dtype(dtype).itemsize)


class _ShardBuffer:
    """Collects elements of one 1-D array and writes them a whole shard at a time."""

    def __init__(self, array: zarr.Array, shard: int) -> None:
        self.array = array
        self.shard = shard
        self.buf = np.empty(min(shard, array.shape[0]), dtype=array.dtype)
        self.fill = 0  # elements in buf
        self.offset = 0  # elements already written to the array

    def push(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=self.array.dtype)
        if self.offset + self.fill + len(values) > self.array.shape[0]:
            raise ValueError(f"more elements than the declared {self.array.shape[0]}")
        while len(values):
            take = min(len(values), len(self.buf) - self.fill)
            self.buf[self.fill : self.fill + take] = values[:take]
            self.fill += take
            values = values[take:]
            if self.fill == len(self.buf):
                self.flush()

    def flush(self) -> None:
        if self.fill:
            self.array[self.offset : self.offset + self.fill] = self.buf[: self.fill]
            self.offset += self.fill
            self.fill = 0

    @property
    def written(self) -> int:
        return self.offset + self.fill


def create_csr_group(path: str | os.PathLike[str], n_cells: int, nnz: int, n_genes: int,
                     counts_dtype: np.dtype | type = np.uint32) -> dict[str, zarr.Array]:
    """Create the empty ``X.zarr`` group of a split with its four arrays (nothing written).

    :class:`CsrWriter` fills it sequentially; the build's merge fills whole shards of it from
    several processes (a shard is one file, so shards are written independently)."""
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.attrs.update({"format": FORMAT, "n_cells": n_cells, "n_genes": n_genes, "nnz": nnz})
    specs = {
        "indptr": (n_cells + 1, np.dtype(np.int64), INDPTR_CHUNK, INDPTR_SHARD),
        "indices": (nnz, index_dtype(n_genes), CHUNK, SHARD),
        "data": (nnz, np.dtype(np.float32), CHUNK, SHARD),
        "counts": (nnz, np.dtype(counts_dtype), CHUNK, SHARD),
    }
    arrays = {}
    for name, (size, dtype, chunk, shard) in specs.items():
        chunk = max(1, min(chunk, size))
        shard = max(chunk, min(shard, -(-size // chunk) * chunk))
        arrays[name] = group.create_array(
            name, shape=(size,), chunks=(chunk,), shards=(shard,), dtype=dtype,
            compressors=[_codec(dtype)], fill_value=0,
        )
    return arrays


def shard_bounds(size: int, shard: int) -> list[tuple[int, int]]:
    """Element ranges of an array's shards: each one file, written whole."""
    return [(lo, min(lo + shard, size)) for lo in range(0, size, shard)]


class CsrWriter:
    """Stream CSR rows into ``path`` (a new ``X.zarr`` group) of known final size.

    The totals (rows, non-zeros) must be known up front: a shuffled split is written from
    parts whose sizes are counted first, and knowing the size lets every shard be written once.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        n_cells: int,
        nnz: int,
        n_genes: int,
        counts_dtype: np.dtype | type = np.uint32,
    ) -> None:
        self.path = Path(path)
        self.n_cells, self.nnz, self.n_genes = n_cells, nnz, n_genes
        arrays = create_csr_group(self.path, n_cells, nnz, n_genes, counts_dtype)
        self._buffers = {name: _ShardBuffer(arr, arr.shards[0]) for name, arr in arrays.items()}
        self._buffers["indptr"].push(np.zeros(1, dtype=np.int64))
        self._rows = 0
        self._nnz = 0

    def append(
        self, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, counts: np.ndarray
    ) -> None:
        """Append a CSR block whose ``indptr`` starts at 0 (as scipy's ``csr_matrix`` has it)."""
        indptr = np.asarray(indptr, dtype=np.int64)
        n = len(indptr) - 1
        block_nnz = int(indptr[-1] - indptr[0])
        if not (len(indices) == len(data) == len(counts) == block_nnz):
            raise ValueError("indices, data and counts must have indptr[-1] - indptr[0] entries")
        if len(indices) and int(np.max(indices)) >= self.n_genes:
            raise ValueError(f"gene index out of range for {self.n_genes} genes")
        self._buffers["indptr"].push(indptr[1:] - indptr[0] + self._nnz)
        self._buffers["indices"].push(indices)
        self._buffers["data"].push(data)
        self._buffers["counts"].push(counts)
        self._rows += n
        self._nnz += block_nnz

    def close(self) -> None:
        if self._rows != self.n_cells or self._nnz != self.nnz:
            raise ValueError(
                f"wrote {self._rows} rows / {self._nnz} non-zeros, declared "
                f"{self.n_cells} / {self.nnz}"
            )
        for buf in self._buffers.values():
            buf.flush()


@dataclass(frozen=True)
class CsrArrays:
    """The four arrays of one split, opened read-only through zarr-python."""

    path: Path
    indptr: zarr.Array
    indices: zarr.Array
    data: zarr.Array
    counts: zarr.Array
    n_cells: int
    n_genes: int
    nnz: int

    def rows(self, start: int, stop: int, values: str = "data") -> tuple[np.ndarray, ...]:
        """Rows ``[start, stop)`` as (indptr from 0, indices, values): a plain, slow reference."""
        ptr = self.indptr[start : stop + 1]
        lo, hi = int(ptr[0]), int(ptr[-1])
        arr = self.data if values == "data" else self.counts
        return ptr - lo, self.indices[lo:hi], arr[lo:hi]


def open_csr(path: str | os.PathLike[str]) -> CsrArrays:
    group = zarr.open_group(str(path), mode="r", zarr_format=3)
    attrs = dict(group.attrs)
    if attrs.get("format") != FORMAT:
        raise ValueError(f"{path} is not an ssl-census CSR store (format {attrs.get('format')!r})")
    return CsrArrays(
        Path(path), *(group[name] for name in ARRAYS),
        n_cells=int(attrs["n_cells"]), n_genes=int(attrs["n_genes"]), nnz=int(attrs["nnz"]),
    )


def tree_checksum(path: str | os.PathLike[str]) -> str:
    """SHA-256 over every file under ``path`` (relative names and bytes, in sorted order)."""
    root = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    for p in files:
        h.update(str(p.relative_to(root) if root.is_dir() else p.name).encode())
        h.update(b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
