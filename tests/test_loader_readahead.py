"""Read-ahead on a cold page cache: the loader hints each fetch's bytes to the OS before its
workers read them, and the hints name exactly the bytes the reads then touch."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from ssl_census.benchmarks.loader_synthetic import write_synthetic_store
from ssl_census.data import BlockShuffleLoader, readers
from ssl_census.data.readers import ByteSource, DirectReader

SMALL = dict(batch_size=700, block_size=100, buffer_cells=1_000, workers=2)


@pytest.fixture(scope="session")
def store(synth_loader_store: Path) -> Path:
    return synth_loader_store


class RecordingSource(ByteSource):
    """A local ByteSource that records the byte ranges it reads."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.reads: list[tuple[str, int, int]] = []

    def read_range(self, key: str, start: int, stop: int) -> bytes:
        self.reads.append((key, start, stop))
        return super().read_range(key, start, stop)


@pytest.fixture(scope="module")
def two_shard_store(tmp_path_factory) -> Path:
    """A store whose indices fill more than one shard (2^24 elements)."""
    return write_synthetic_store(tmp_path_factory.mktemp("readahead") / "store", 11_000)


def test_hinted_bytes_are_exactly_those_a_read_touches(two_shard_store: Path,
                                                       monkeypatch) -> None:
    x_root = two_shard_store / "train" / "X.zarr"
    reader = DirectReader(x_root, ("indices",))
    array = reader.arrays["indices"]
    source = array.source = RecordingSource(str(x_root))
    m = array.meta
    shard = m.chunk * m.chunks_per_shard
    assert m.size > shard + m.chunk, "the store needs two shards for this test"
    advised: list[tuple[int, int, int]] = []
    monkeypatch.setattr(readers, "_FADVISE", os.POSIX_FADV_WILLNEED)
    monkeypatch.setattr(os, "posix_fadvise",
                        lambda fd, off, n, advice: advised.append((fd, off, n)))
    # inside one chunk, across chunks, across a shard boundary
    for lo, hi in [(10, 20), (m.chunk - 5, 3 * m.chunk + 7), (shard - 3 * m.chunk, shard + 2)]:
        advised.clear()
        reader.will_need("indices", lo, hi)
        source.reads.clear()  # the shard indexes, read once by the hint
        out = np.empty(hi - lo, dtype=m.dtype)
        reader.read_into("indices", lo, hi, out)
        spans: dict[str, tuple[int, int]] = {}
        for key, a, b in source.reads:
            a0, b0 = spans.get(key, (a, b))
            spans[key] = (min(a0, a), max(b0, b))
        assert array.byte_ranges(lo, hi) == [(k, *spans[k]) for k in sorted(spans)]
        fds = {source._fd(k): k for k in spans}
        assert {(fds[fd], off, off + n) for fd, off, n in advised} == {
            (k, *spans[k]) for k in spans}
    reader.close()


def test_urls_and_empty_ranges_are_not_hinted(monkeypatch) -> None:
    called = []
    monkeypatch.setattr(os, "posix_fadvise", lambda *a: called.append(a))
    ByteSource("memory://nowhere").will_need("x/c/0", 0, 100)
    ByteSource("/nonexistent").will_need("x/c/0", 5, 5)
    assert called == []


class HintSpy:
    """Wraps the loader's reader; logs hints and reads in the order they happen."""

    def __init__(self, reader) -> None:
        self.inner, self.events = reader, []

    def will_need(self, array: str, lo: int, hi: int) -> None:
        self.events.append(("hint", array, lo, hi))

    def read_into(self, array: str, lo: int, hi: int, out: np.ndarray) -> None:
        self.events.append(("read", array, lo, hi))
        self.inner.read_into(array, lo, hi, out)

    def close(self) -> None:
        self.inner.close()


def test_every_block_is_hinted_before_it_is_read_and_at_most_two_fetches_ahead(store: Path):
    loader = BlockShuffleLoader(store, "train", seed=3, dense=False, obs_columns=(),
                                layers=("x", "counts"), **SMALL)
    spy = loader.reader = HintSpy(loader.reader)
    plain = list(BlockShuffleLoader(store, "train", seed=3, dense=False, obs_columns=(),
                                    layers=("x", "counts"), **SMALL))
    batches = list(loader)
    for a, b in zip(batches, plain, strict=True):  # hints change nothing in the batches
        assert a.index.equal(b.index) and a.x.values().equal(b.x.values())
    arrays = len(spy.inner.arrays) - 1  # all but indptr
    bound = 2 * (SMALL["buffer_cells"] // SMALL["block_size"]) * arrays
    outstanding: set[tuple] = set()
    reads = 0
    for kind, *key in spy.events:
        if kind == "hint":
            outstanding.add(tuple(key))
            assert len(outstanding) <= bound, "hints ran more than two fetches ahead"
        else:
            assert tuple(key) in outstanding, f"{key} read before it was hinted"
            outstanding.remove(tuple(key))
            reads += 1
    assert reads > 2 * bound and not outstanding
