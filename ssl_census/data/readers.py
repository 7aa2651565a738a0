"""Range readers: element ranges of the 1-D arrays of a split's ``X.zarr``, decompressed.

The loader needs one operation, ``read_into(array, lo, hi, out)``: elements ``[lo, hi)`` of
``indices``, ``data`` or ``counts`` written into a slice of its fetch buffer. Four readers
implement it over the same store so they can be measured against each other
(``ssl-census bench loader``):

``direct``
    Parses the Zarr v3 sharding index of each shard file itself, reads the byte ranges of
    the chunks it needs (``os.pread`` locally, ``fsspec`` ``cat_file`` for URLs) and
    decompresses them with numcodecs Blosc straight into ``out``. Both release the GIL, so
    the loader's worker threads decompress in parallel; no per-read Python objects beyond
    one bytes object per chunk. This is ``auto``.
``zarr`` / ``zarrs``
    ``zarr.Array`` slicing with zarr-python's own codec pipeline or the Rust one from the
    ``zarrs`` package.
``tensorstore``
    A ``zarr3`` TensorStore over the same files (local paths only).

Every reader takes a local directory or an fsspec URL (``s3://``, ``gs://``, ``memory://``);
object storage goes through the same code as a shared file system.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numcodecs.blosc as blosc
import numpy as np

from ssl_census.core.errors import UserError

# Blosc's own thread pool (and the global lock numcodecs takes around it) would serialise the
# loader's worker threads. numcodecs' default (use_threads None) already leaves it out of any
# thread but the main one, so the workers decompress side by side; the setting is the
# process's, so this module leaves it alone.

READERS = ("direct", "zarr", "zarrs", "tensorstore")
AUTO_READER = "direct"  # fastest in `ssl-census bench loader` (docs/loader.md)
_MISSING = np.uint64(2**64 - 1)  # a chunk that was never written: all fill value
_FADVISE = getattr(os, "POSIX_FADV_WILLNEED", None)  # Linux and most Unixes; not macOS


def is_url(path: str | os.PathLike[str]) -> bool:
    return "://" in str(path)


def join(root: str | os.PathLike[str], *parts: str) -> str:
    return "/".join([str(root).rstrip("/"), *parts])


class ByteSource:
    """Whole files and byte ranges of files under a root, local or behind fsspec."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = str(root)
        self._fs: Any = None
        if is_url(root):
            import fsspec

            self._fs, _ = fsspec.core.url_to_fs(self.root)
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    def _path(self, key: str) -> str:
        return join(self.root, key)

    def exists(self, key: str) -> bool:
        return self._fs.exists(self._path(key)) if self._fs else os.path.exists(self._path(key))

    def read(self, key: str) -> bytes:
        if self._fs:
            return self._fs.cat_file(self._path(key))
        with open(self._path(key), "rb") as f:
            return f.read()

    def size(self, key: str) -> int:
        return int(self._fs.size(self._path(key))) if self._fs else os.fstat(self._fd(key)).st_size

    def read_range(self, key: str, start: int, stop: int) -> bytes:
        if self._fs:
            return self._fs.cat_file(self._path(key), start=start, end=stop)
        return os.pread(self._fd(key), stop - start, start)

    def will_need(self, key: str, start: int, stop: int) -> None:
        """Ask the OS to start reading bytes ``[start, stop)`` of a local file into the page
        cache now (``posix_fadvise`` WILLNEED; it does not wait for the disk). A no-op for
        URLs and where the call does not exist."""
        if self._fs is None and _FADVISE is not None and stop > start:
            os.posix_fadvise(self._fd(key), start, stop - start, _FADVISE)

    def _fd(self, key: str) -> int:
        fd = self._fds.get(key)
        if fd is None:
            with self._lock:
                fd = self._fds.get(key)
                if fd is None:
                    fd = os.open(self._path(key), os.O_RDONLY)
                    self._fds[key] = fd
        return fd

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def __del__(self) -> None:
        self.close()


@dataclass(frozen=True)
class ShardedArrayMeta:
    """What the direct reader needs from an array's ``zarr.json``."""

    size: int
    dtype: np.dtype
    shard: int  # elements per shard file
    chunk: int  # elements per compressed inner chunk
    compressed: bool  # inner codecs: bytes + blosc (True) or bytes only
    index_at_end: bool
    index_crc: bool
    fill_value: Any
    key_prefix: str  # "c/" (default encoding, "/" separator) or "c." / ""

    @property
    def chunks_per_shard(self) -> int:
        return self.shard // self.chunk

    @property
    def index_nbytes(self) -> int:
        return self.chunks_per_shard * 16 + (4 if self.index_crc else 0)


def array_dtype(root: str | os.PathLike[str], name: str) -> np.dtype:
    """The element type of array ``name`` in the group at ``root``."""
    return np.dtype(json.loads(ByteSource(root).read(f"{name}/zarr.json"))["data_type"])


def parse_array_meta(meta: dict[str, Any], where: str) -> ShardedArrayMeta:
    """The sharding layout of a 1-D Zarr v3 array; anything else is refused with the reason."""
    try:
        (size,) = meta["shape"]
        (shard,) = meta["chunk_grid"]["configuration"]["chunk_shape"]
        (codec,) = meta["codecs"]
        if codec["name"] != "sharding_indexed":
            raise ValueError("not sharded")
        cfg = codec["configuration"]
        (chunk,) = cfg["chunk_shape"]
        inner = [c["name"] for c in cfg["codecs"]]
        if inner not in (["bytes"], ["bytes", "blosc"]):
            raise ValueError(f"inner codecs {inner}")
        for c in cfg["codecs"]:
            if (
                c["name"] == "bytes"
                and c.get("configuration", {}).get("endian", "little") != "little"
            ):
                raise ValueError("big-endian data")
        index = [c["name"] for c in cfg["index_codecs"]]
        if index not in (["bytes"], ["bytes", "crc32c"]):
            raise ValueError(f"index codecs {index}")
        enc = meta.get("chunk_key_encoding", {"name": "default"})
        sep = enc.get("configuration", {}).get("separator", "/")
        prefix = "c" + sep if enc["name"] == "default" else ""
    except (KeyError, ValueError, TypeError) as e:
        raise UserError(
            f"{where} is not a 1-D sharded Zarr v3 array the direct reader understands ({e})",
            "rewrite the store with `ssl-census shards build`, or pass reader='zarr'",
        ) from e
    return ShardedArrayMeta(
        size=int(size),
        dtype=np.dtype(meta["data_type"]),
        shard=int(shard),
        chunk=int(chunk),
        compressed=inner[-1] == "blosc",
        index_at_end=cfg.get("index_location", "end") == "end",
        index_crc=index[-1] == "crc32c",
        fill_value=meta.get("fill_value", 0),
        key_prefix=prefix,
    )


class DirectArray:
    """One sharded 1-D array read through its shard indexes (see the module docstring)."""

    def __init__(self, source: ByteSource, name: str) -> None:
        self.source, self.name = source, name
        self.meta = parse_array_meta(json.loads(source.read(f"{name}/zarr.json")), name)
        self._indexes: dict[int, np.ndarray | None] = {}
        self._lock = threading.Lock()
        self._local = threading.local()

    def _scratch(self) -> np.ndarray:
        """This thread's buffer for a partly needed chunk (kept: a fresh one page-faults)."""
        buf = getattr(self._local, "scratch", None)
        if buf is None:
            buf = self._local.scratch = np.empty(self.meta.chunk, dtype=self.meta.dtype)
        return buf

    def _shard_key(self, s: int) -> str:
        return f"{self.name}/{self.meta.key_prefix}{s}"

    def shard_index(self, s: int) -> np.ndarray | None:
        """(offset, nbytes) per chunk of shard ``s``; None for a shard file never written."""
        if s in self._indexes:
            return self._indexes[s]
        key, m = self._shard_key(s), self.meta
        if not self.source.exists(key):
            index = None
        else:
            if m.index_at_end:
                end = self.source.size(key)
                raw = self.source.read_range(key, end - m.index_nbytes, end)
            else:
                raw = self.source.read_range(key, 0, m.index_nbytes)
            index = np.frombuffer(raw[: m.chunks_per_shard * 16], dtype="<u8").reshape(-1, 2)
        with self._lock:
            self._indexes[s] = index
        return index

    def _chunk_into(self, c: int, out: np.ndarray, skip: int) -> None:
        """Elements ``[skip, skip + len(out))`` of chunk ``c`` into ``out``."""
        m = self.meta
        index = self.shard_index(c // m.chunks_per_shard)
        entry = None if index is None else index[c % m.chunks_per_shard]
        if entry is None or entry[0] == _MISSING:
            out[:] = m.fill_value
            return
        raw = self.source.read_range(
            self._shard_key(c // m.chunks_per_shard), int(entry[0]), int(entry[0] + entry[1])
        )
        whole = skip == 0 and len(out) == m.chunk
        if not m.compressed:
            out[:] = np.frombuffer(raw, dtype=m.dtype)[skip : skip + len(out)]
        elif whole:
            blosc.decompress(raw, out)
        else:
            buf = self._scratch()
            blosc.decompress(raw, buf)
            out[:] = buf[skip : skip + len(out)]

    def byte_ranges(self, lo: int, hi: int) -> list[tuple[str, int, int]]:
        """(shard file, start, stop) spanning the stored chunks of elements ``[lo, hi)``, one
        range per shard (a shard's chunks lie in it in order)."""
        m = self.meta
        if hi <= lo:
            return []
        chunks = np.arange(lo // m.chunk, (hi - 1) // m.chunk + 1)
        ranges = []
        for s in np.unique(chunks // m.chunks_per_shard):
            index = self.shard_index(int(s))
            if index is None:
                continue
            mine = chunks[chunks // m.chunks_per_shard == s] % m.chunks_per_shard
            entries = index[mine]
            entries = entries[entries[:, 0] != _MISSING]
            if len(entries):
                start, stop = entries[:, 0].min(), (entries[:, 0] + entries[:, 1]).max()
                ranges.append((self._shard_key(int(s)), int(start), int(stop)))
        return ranges

    def will_need(self, lo: int, hi: int) -> None:
        """Start reading the bytes of elements ``[lo, hi)`` from disk ahead of ``read_into``."""
        for key, start, stop in self.byte_ranges(lo, hi):
            self.source.will_need(key, start, stop)

    def read_into(self, lo: int, hi: int, out: np.ndarray) -> None:
        m = self.meta
        if not (0 <= lo <= hi <= m.size) or len(out) != hi - lo:
            raise ValueError(f"bad range [{lo}, {hi}) of {self.name} (size {m.size})")
        pos = lo
        while pos < hi:
            c = pos // m.chunk
            skip = pos - c * m.chunk
            take = min(hi, (c + 1) * m.chunk) - pos
            self._chunk_into(c, out[pos - lo : pos - lo + take], skip)
            pos += take


class RangeReader:
    """``read_into(name, lo, hi, out)`` over the arrays of one ``X.zarr`` group."""

    name = ""

    def read_into(self, array: str, lo: int, hi: int, out: np.ndarray) -> None:
        raise NotImplementedError

    def read(self, array: str, lo: int, hi: int, dtype: np.dtype) -> np.ndarray:
        out = np.empty(hi - lo, dtype=dtype)
        self.read_into(array, lo, hi, out)
        return out

    def will_need(self, array: str, lo: int, hi: int) -> None:
        """A hint that elements ``[lo, hi)`` will be read soon, so their bytes can come off the
        disk while other work runs (readers that cannot use it keep this no-op)."""

    def close(self) -> None:
        """Release open files (readers without any keep this no-op)."""


class DirectReader(RangeReader):
    name = "direct"

    def __init__(self, root: str | os.PathLike[str], arrays: tuple[str, ...]) -> None:
        self.source = ByteSource(root)
        self.arrays = {a: DirectArray(self.source, a) for a in arrays}

    def read_into(self, array: str, lo: int, hi: int, out: np.ndarray) -> None:
        self.arrays[array].read_into(lo, hi, out)

    def will_need(self, array: str, lo: int, hi: int) -> None:
        self.arrays[array].will_need(lo, hi)

    def close(self) -> None:
        self.source.close()


class ZarrReader(RangeReader):
    """zarr-python slicing; ``pipeline`` names the codec pipeline (``zarrs`` for the Rust one)."""

    def __init__(
        self, root: str | os.PathLike[str], arrays: tuple[str, ...], pipeline: str
    ) -> None:
        import zarr

        self.name = pipeline
        path = "zarr.core.codec_pipeline.BatchedCodecPipeline"
        if pipeline == "zarrs":
            try:
                import zarrs  # noqa: F401
            except ImportError as e:
                raise UserError(
                    "reader 'zarrs' needs the zarrs package", "pip install zarrs"
                ) from e
            path = "zarrs.ZarrsCodecPipeline"
        # An array keeps the pipeline it was opened with; the global setting is left alone.
        with zarr.config.set({"codec_pipeline.path": path}):
            group = zarr.open_group(str(root), mode="r", zarr_format=3)
            self.arrays = {a: group[a] for a in arrays}

    def read_into(self, array: str, lo: int, hi: int, out: np.ndarray) -> None:
        out[:] = self.arrays[array][lo:hi]


class TensorstoreReader(RangeReader):
    name = "tensorstore"

    def __init__(self, root: str | os.PathLike[str], arrays: tuple[str, ...]) -> None:
        import tensorstore as ts

        if is_url(root):
            raise UserError(
                f"reader 'tensorstore' reads local paths only, not {root}",
                "use reader='direct' (or 'auto') for object storage",
            )
        self.arrays = {
            a: ts.open(
                {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(Path(root) / a)}},
                read=True,
            ).result()
            for a in arrays
        }

    def read_into(self, array: str, lo: int, hi: int, out: np.ndarray) -> None:
        out[:] = self.arrays[array][lo:hi].read().result()


def open_reader(name: str, root: str | os.PathLike[str], arrays: tuple[str, ...]) -> RangeReader:
    """The reader called ``name`` (or ``auto``) over the group at ``root``."""
    if name == "auto":
        name = AUTO_READER
    if name == "direct":
        return DirectReader(root, arrays)
    if name in ("zarr", "zarrs"):
        return ZarrReader(root, arrays, name)
    if name == "tensorstore":
        return TensorstoreReader(root, arrays)
    raise UserError(f"unknown reader {name!r}", f"choose auto or one of {', '.join(READERS)}")
