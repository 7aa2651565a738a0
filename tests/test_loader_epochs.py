"""BlockShuffleLoader epochs on a synthetic store: coverage, order, ranks, resuming, sampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ssl_census.data import BlockShuffleLoader
from ssl_census.data.plan import EpochPlan

# Small sizes so one epoch has many blocks, several fetches and batches that straddle fetches.
SMALL = dict(batch_size=500, block_size=128, buffer_cells=1_280, dense=False, workers=2)


@pytest.fixture(scope="session")
def store(synth_loader_store: Path) -> Path:
    return synth_loader_store


def _indices(loader: BlockShuffleLoader) -> list[np.ndarray]:
    return [b.index.numpy().copy() for b in loader]


def test_every_cell_once_per_epoch(store: Path) -> None:
    loader = BlockShuffleLoader(store, "train", obs_columns=(), **SMALL)
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        batches = _indices(loader)
        seen = np.concatenate(batches)
        assert len(batches) == len(loader) == -(-loader.n_cells // 500)
        assert all(len(b) == 500 for b in batches[:-1])
        assert np.array_equal(np.sort(seen), np.arange(loader.n_cells))


def test_same_seed_and_epoch_same_order_next_epoch_differs(store: Path) -> None:
    a = BlockShuffleLoader(store, "train", seed=3, obs_columns=(), **SMALL)
    b = BlockShuffleLoader(store, "train", seed=3, obs_columns=(), **SMALL)
    first = np.concatenate(_indices(a))
    assert np.array_equal(first, np.concatenate(_indices(b)))
    b.set_epoch(1)
    second = np.concatenate(_indices(b))
    assert not np.array_equal(first, second)
    # shuffled beyond the block level: consecutive rows rarely stay neighbours
    assert np.mean(np.abs(np.diff(first)) == 1) < 0.05
    c = BlockShuffleLoader(store, "train", seed=4, obs_columns=(), **SMALL)
    assert not np.array_equal(first, np.concatenate(_indices(c)))


def test_sequential_mode_reads_rows_in_order(store: Path) -> None:
    loader = BlockShuffleLoader(store, "val", shuffle=False, obs_columns=(), **SMALL)
    batches = _indices(loader)
    assert np.array_equal(np.concatenate(batches), np.arange(loader.n_cells))
    assert [len(b) for b in batches] == [500] * 4


@pytest.mark.parametrize("drop_last", [False, True])
def test_two_ranks_disjoint_complete_equal_batches(store: Path, drop_last: bool) -> None:
    ranks = [
        BlockShuffleLoader(store, "train", rank=r, world_size=2, drop_last=drop_last,
                           obs_columns=(), **SMALL)
        for r in (0, 1)
    ]
    runs = [_indices(loader) for loader in ranks]
    assert len(runs[0]) == len(runs[1]) == len(ranks[0]) == len(ranks[1])
    assert [len(b) for b in runs[0]] == [len(b) for b in runs[1]]
    sets = [set(np.concatenate(run).tolist()) for run in runs]
    assert not sets[0] & sets[1]
    union = sets[0] | sets[1]
    n = ranks[0].n_cells
    if drop_last:
        assert all(len(b) == 500 for b in runs[0])
        assert len(union) == 2 * len(runs[0]) * 500 > n - 2 * (500 + 128)
    else:
        assert union == set(range(n))
        # the shorter rank repeats only its own cells
        sizes = [len(np.concatenate(run)) for run in runs]
        assert sizes[0] == sizes[1] >= n / 2


def test_resume_mid_epoch_yields_the_remaining_batches(store: Path) -> None:
    kw = dict(SMALL, layers=("x", "counts"), obs_columns=("cell_type_code",), seed=7)
    full = BlockShuffleLoader(store, "train", **kw)
    full.set_epoch(2)
    reference = [(b.index.numpy().copy(), b.x.values().numpy().copy()) for b in full]

    first = BlockShuffleLoader(store, "train", **kw)
    first.set_epoch(2)
    for i, _ in enumerate(first):
        if i == 6:  # batch 6 handed out: state says continue at batch 7
            state = first.state_dict()
            break
    assert state["batch"] == 7 and state["epoch"] == 2

    resumed = BlockShuffleLoader(store, "train", **kw)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # a training loop sets the epoch again: the loaded position stays
    rest = [(b.index.numpy().copy(), b.x.values().numpy().copy()) for b in resumed]
    assert len(rest) == len(reference) - 7
    for (ri, rv), (ei, ev) in zip(rest, reference[7:], strict=True):
        assert np.array_equal(ri, ei) and np.array_equal(rv, ev)
    # after a finished epoch the next iteration starts that epoch from its beginning again
    assert np.array_equal(next(iter(resumed)).index.numpy(), reference[0][0])


def test_resume_refuses_other_settings(store: Path) -> None:
    from ssl_census.core.errors import UserError

    state = BlockShuffleLoader(store, "train", obs_columns=(), **SMALL).state_dict()
    other = BlockShuffleLoader(store, "train", obs_columns=(), **dict(SMALL, batch_size=400))
    with pytest.raises(UserError, match="batch_size"):
        other.load_state_dict(state)


def test_balanced_sampler_evens_out_classes(store: Path) -> None:
    obs = pd.read_parquet(store / "train" / "obs.parquet")
    natural = obs["cell_type_code"].value_counts(normalize=True)
    assert natural.max() / natural.min() > 20  # the store keeps few cells of its rare types
    loader = BlockShuffleLoader(store, "train", sampler="balanced",
                                obs_columns=("cell_type_code",), **SMALL)
    codes = np.concatenate([b.obs["cell_type_code"].numpy() for b in loader])
    assert len(codes) == loader.n_cells  # an epoch keeps its length
    freq = np.bincount(codes, minlength=len(natural)) / len(codes)
    k = len(natural)
    # each class near 1/k; within-fetch sampling keeps it approximate for the rarest
    assert np.all(np.abs(freq - 1 / k) < 0.5 / k), freq


def test_plan_lengths_match_yielded_cells() -> None:
    for n, world, drop in [(1000, 1, False), (1000, 3, False), (1000, 3, True), (37, 2, False)]:
        lens = []
        for rank in range(world):
            plan = EpochPlan(n_cells=n, batch_size=64, block_size=16, fetch_blocks=3, seed=1,
                             epoch=0, rank=rank, world_size=world, drop_last=drop)
            total = sum(len(f) for f in plan.fetches())
            assert total == plan.stream_length()
            lens.append(len(plan))
        assert len(set(lens)) == 1


def test_two_ranks_share_a_split_smaller_than_one_block(store: Path) -> None:
    # one block would hold the whole split: each rank must still get cells and as many batches
    kw = dict(SMALL, block_size=10**6, obs_columns=())
    ranks = [BlockShuffleLoader(store, "val", rank=r, world_size=2, **kw) for r in (0, 1)]
    runs = [_indices(loader) for loader in ranks]
    assert len(runs[0]) == len(runs[1]) > 0
    sets = [set(np.concatenate(run).tolist()) for run in runs]
    assert not sets[0] & sets[1]
    assert sets[0] | sets[1] == set(range(ranks[0].n_cells))
