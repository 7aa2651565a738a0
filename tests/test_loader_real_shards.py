"""BlockShuffleLoader over a real shard build (the local PBMC census, scTab gene list)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from loader_support import stored_matrix

from ssl_census.data import BlockShuffleLoader
from ssl_census.shards.store import open_shards


def test_real_build_every_split_streams_its_stored_cells(real_shards_dir: Path) -> None:
    store = open_shards(real_shards_dir)
    assert store.n_genes > 19_000  # the scTab gene space
    for split in store.splits:
        loader = BlockShuffleLoader(real_shards_dir, split, batch_size=1_000, block_size=256,
                                    buffer_cells=2_048, dense=False, layers=("x", "counts"),
                                    obs_columns=("cell_type_code", "tech_sample"), seed=1)
        assert loader.n_genes == store.n_genes
        obs = pd.read_parquet(real_shards_dir / split / "obs.parquet")
        ref = stored_matrix(real_shards_dir, split, "counts")
        seen = []
        for i, batch in enumerate(loader):
            rows = batch.index.numpy()
            seen.append(rows)
            np.testing.assert_array_equal(batch.obs["cell_type_code"].numpy(),
                                          obs["cell_type_code"].to_numpy()[rows])
            if i < 3:  # values of a few batches against the stored matrix
                np.testing.assert_array_equal(batch.counts.to_dense().numpy(),
                                              ref[rows].toarray())
        assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(len(obs)))


def test_real_build_balanced_sampler_never_draws_unlabelled_cells(real_shards_dir: Path) -> None:
    obs = pd.read_parquet(real_shards_dir / "train" / "obs.parquet")
    loader = BlockShuffleLoader(real_shards_dir, "train", batch_size=1_000, sampler="balanced",
                                obs_columns=("cell_type_code",), dense=False, seed=2)
    codes = np.concatenate([b.obs["cell_type_code"].numpy() for b in loader])
    assert len(codes) == len(obs)
    assert (obs["cell_type_code"] == -1).any() and not (codes == -1).any()
    natural = obs.loc[obs["cell_type_code"] >= 0, "cell_type_code"].value_counts(normalize=True)
    drawn = pd.Series(codes).value_counts(normalize=True)
    # the commonest class loses share, the rarest gains
    assert drawn[natural.idxmax()] < natural.max() and drawn[natural.idxmin()] > natural.min()
