"""The loader on a pretend 64-core machine: the default worker count neither exceeds the
default memory budget nor changes the order of an epoch, and a run resumes on any core count."""

from __future__ import annotations

import os

import numpy as np
import pytest

from ssl_census.data import BlockShuffleLoader


def _cores(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: n)


def _rows(loader: BlockShuffleLoader, batches: int | None = None) -> list[np.ndarray]:
    out = []
    for batch in loader:
        out.append(batch.index.numpy().copy())
        if batches is not None and len(out) == batches:
            break
    return out


def test_default_loader_starts_on_a_64_core_machine(synth_shards_dir, monkeypatch):
    _cores(monkeypatch, 64)
    loader = BlockShuffleLoader(synth_shards_dir, split="train", batch_size=8192)  # defaults
    assert 1 <= loader.workers <= 4
    assert sum(len(r) for r in _rows(loader)) == loader.n_cells


def test_epoch_order_is_the_same_on_2_and_64_cores(synth_shards_dir, monkeypatch):
    # a budget that plans 4 workers: 2 threads run on 2 cores, 4 on 64
    small = {"batch_size": 64, "block_size": 32, "memory_budget_bytes": 60 * 2**20}
    _cores(monkeypatch, 2)
    two = BlockShuffleLoader(synth_shards_dir, split="train", **small)
    _cores(monkeypatch, 64)
    many = BlockShuffleLoader(synth_shards_dir, split="train", **small)
    assert many.buffer_cells == two.buffer_cells  # the budget sets the fetch, not the cores
    assert many.workers > two.workers
    assert [r.tolist() for r in _rows(many)] == [r.tolist() for r in _rows(two)]


def test_resume_on_another_core_count_and_budget_continues_the_same_order(synth_shards_dir,
                                                                           monkeypatch):
    common = {"split": "train", "batch_size": 64, "block_size": 32, "seed": 3}
    _cores(monkeypatch, 2)
    first = BlockShuffleLoader(synth_shards_dir, memory_budget_bytes=60 * 2**20, **common)
    whole = _rows(first)
    _rows(first, batches=5)
    state = first.state_dict()

    _cores(monkeypatch, 64)
    other = BlockShuffleLoader(synth_shards_dir, memory_budget_bytes=200 * 2**20, **common)
    assert other.buffer_cells != first.buffer_cells  # its own fetch size would reorder the epoch
    other.load_state_dict(state)
    assert [r.tolist() for r in _rows(other)] == [r.tolist() for r in whole[5:]]
