"""Which split a cell goes to, and the order of cells inside a split.

Split: every tech_sample (dataset_id + donor_id) goes wholly to one split, decided by a hash
of its name alone, so the assignment of a tech_sample never depends on which other
tech_samples a census holds: a rebuild on a later release keeps every donor where it was.
(scTab instead shuffled the list of tech_samples with seed 1 and cut it; that assignment
changes whenever a tech_sample is added or removed.)

Order: cells are sorted by a seeded 64-bit hash of (dataset_id, position), where a cell's
position is its rank among its dataset's eligible cells in soma_joinid order. The result is a
uniformly random permutation that any subset of cells (a part, a bucket) can compute on its
own, which is what makes the external shuffle bounded in memory and independent of how the
work was divided. It does not use soma_joinid itself: a census release numbers its cells
dataset after dataset, so a dataset added before others shifts every later soma_joinid, but
an unchanged dataset keeps its cells' positions, so its parts (and their order) carry over.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from ssl_census.shards.config import SplitConfig
from ssl_census.shards.store import SPLITS

SPLIT_RULE = ("u = int(sha256('<salt>:<dataset_id>/<donor_id>')[:8]) / 2**64; "
              "train if u < f_train, val if u < f_train + f_val, else test")
SHUFFLE_RULE = ("rows ordered by (splitmix64(position + d), d, position), "
                "d = int(sha256('<seed>:<dataset_id>')[:8]), position = rank of the cell among "
                "its dataset's eligible cells in soma_joinid order")


def tech_sample(dataset_id: pd.Series, donor_id: pd.Series) -> pd.Series:
    """``dataset_id/donor_id`` of each cell, categorical with sorted categories.

    Made from the distinct (dataset, donor) pairs, one string per pair: a string per cell
    would cost gigabytes at census scale."""
    ds, dn = pd.Categorical(dataset_id), pd.Categorical(donor_id)
    if (ds.codes < 0).any() or (dn.codes < 0).any():  # missing ids: named "nan" as str() does
        ds, dn = pd.Categorical(dataset_id.astype(str)), pd.Categorical(donor_id.astype(str))
    pair = ds.codes.astype(np.int64) * len(dn.categories) + dn.codes
    pairs, cell_pair = _distinct(pair, len(ds.categories) * len(dn.categories))
    names = np.array([f"{ds.categories[p // len(dn.categories)]}/"
                      f"{dn.categories[p % len(dn.categories)]}" for p in pairs], dtype=object)
    categories, pair_category = np.unique(names.astype(str), return_inverse=True)
    return pd.Series(pd.Categorical.from_codes(pair_category[cell_pair], categories),
                     index=dataset_id.index)


PAIR_TABLE_MAX = 1 << 24  # pairs: the table costs 80 MiB at most (5 bytes a pair)


def _distinct(values: np.ndarray, n_possible: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct values, each value's index among them): np.unique's result, from a
    table over the possible values where it is small, without np.unique's sort and int64
    inverse of every cell."""
    if n_possible > PAIR_TABLE_MAX:
        return np.unique(values, return_inverse=True)
    present = np.zeros(n_possible, dtype=bool)
    present[values] = True
    distinct = np.flatnonzero(present)
    del present
    index = np.full(n_possible, -1, dtype=np.int32)
    index[distinct] = np.arange(len(distinct), dtype=np.int32)
    return distinct, index[values]


def split_fraction(name: str, salt: str) -> float:
    """A tech_sample's position in [0, 1), from its name and the salt only."""
    digest = hashlib.sha256(f"{salt}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_splits(tech_samples: pd.Series, cfg: SplitConfig) -> np.ndarray:
    """Split index (0 train, 1 val, 2 test) of each entry of ``tech_samples``."""
    cat = pd.Categorical(tech_samples)  # per category, not per cell (millions of cells)
    u = np.array([split_fraction(str(t), cfg.salt) for t in cat.categories], dtype=np.float64)
    edges = np.cumsum(cfg.fractions)[:-1]
    per_category = np.searchsorted(edges, u, side="right").astype(np.int8)
    return per_category[cat.codes]


def split_name(index: int) -> str:
    return SPLITS[index]


def dataset_offsets(dataset_id: pd.Series, seed: int) -> np.ndarray:
    """Per cell, the seeded 64-bit hash of its dataset_id (one hash per distinct dataset)."""
    cat = pd.Categorical(dataset_id)
    per_dataset = np.array(
        [int.from_bytes(hashlib.sha256(f"{seed}:{d}".encode()).digest()[:8], "big")
         for d in cat.categories.astype(str)], dtype=np.uint64)
    return per_dataset[cat.codes]


def shuffle_keys(offsets: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """splitmix64 of each position offset by its dataset's hash: the in-split sort key."""
    with np.errstate(over="ignore"):
        z = np.asarray(positions, dtype=np.uint64) + np.asarray(offsets, dtype=np.uint64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def shuffle_order(dataset_id: pd.Series, positions: np.ndarray, seed: int) -> np.ndarray:
    """Indices that put cells in shuffled order (hash ties broken by dataset, then position)."""
    offsets = dataset_offsets(dataset_id, seed)
    positions = np.asarray(positions, dtype=np.int64)
    return np.lexsort((positions, offsets, shuffle_keys(offsets, positions)))
