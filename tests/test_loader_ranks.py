"""Ranks reach a loader only from the trainer: an exported RANK / WORLD_SIZE (torchrun, SLURM
wrappers) must not shard an embedding or an evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from ssl_census.data import BlockShuffleLoader
from ssl_census.evaluation.embed import apply_to_split
from ssl_census.shards.store import open_shards


@pytest.fixture
def torchrun_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The variables torchrun exports for the second of two ranks."""
    for key, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1",
                       "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)


def test_loader_is_rank_0_of_1_whatever_the_environment(synth_shards_dir, torchrun_environment):
    loader = BlockShuffleLoader(synth_shards_dir, split="test", batch_size=100, shuffle=False,
                                workers=1)
    assert (loader.rank, loader.world_size) == (0, 1)
    rows = np.concatenate([b.index.numpy() for b in loader])
    assert np.array_equal(np.sort(rows), np.arange(loader.n_cells))


def test_embedding_fills_every_row_under_torchrun_variables(synth_shards_dir,
                                                            torchrun_environment):
    csr, _ = open_shards(synth_shards_dir).split("test")
    indptr, _, data = csr.rows(0, csr.n_cells)
    expected = np.add.reduceat(data, indptr[:-1]).astype(np.float32)
    sums = apply_to_split(lambda x: x.sum(1, keepdim=True), synth_shards_dir, "test",
                          batch_size=128, workers=1)
    assert sums.shape == (csr.n_cells, 1)
    np.testing.assert_allclose(sums[:, 0], expected, rtol=1e-4)


def test_loader_takes_the_ranks_it_is_given(synth_shards_dir, torchrun_environment):
    parts = [np.concatenate([b.index.numpy() for b in BlockShuffleLoader(
        synth_shards_dir, split="test", batch_size=64, shuffle=False, workers=1,
        block_size=64, rank=r, world_size=2)]) for r in (0, 1)]
    assert not set(parts[0]) & set(parts[1])
