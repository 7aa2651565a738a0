"""Which split a cell goes to, and the order of cells inside a split.

Split: every tech_sample (dataset_id + donor_id) goes wholly to one split, decided by a hash
of its name alone, so the assignment of a tech_sample never depends on which other
tech_samples a census holds: a rebuild on a later release keeps every donor where it was.
(scTab instead shuffled the list of tech_samples with seed 1 and cut it; that assignment
changes whenever a tech_sample is added or removed.)

Order: cells are sorted by a seeded 64-bit hash of their soma_joinid. The result is a
uniformly random permutation that any subset of cells (a part, a bucket) can compute on its
own, which is what makes the external shuffle bounded in memory and independent of how the
work was divided.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from ssl_census.shards.config import SplitConfig
from ssl_census.shards.store import SPLITS

SPLIT_RULE = ("u = int(sha256('<salt>:<dataset_id>/<donor_id>')[:8]) / 2**64; "
              "train if u < f_train, val if u < f_train + f_val, else test")
SHUFFLE_RULE = "rows ordered by (splitmix64(soma_joinid + seed * golden), soma_joinid)"


def tech_sample(dataset_id: pd.Series, donor_id: pd.Series) -> pd.Series:
    return dataset_id.astype(str) + "/" + donor_id.astype(str)


def split_fraction(name: str, salt: str) -> float:
    """A tech_sample's position in [0, 1), from its name and the salt only."""
    digest = hashlib.sha256(f"{salt}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_splits(tech_samples: pd.Series, cfg: SplitConfig) -> np.ndarray:
    """Split index (0 train, 1 val, 2 test) of each entry of ``tech_samples``."""
    cat = pd.Categorical(tech_samples.astype(str))
    u = np.array([split_fraction(t, cfg.salt) for t in cat.categories], dtype=np.float64)
    edges = np.cumsum(cfg.fractions)[:-1]
    per_category = np.searchsorted(edges, u, side="right").astype(np.int8)
    return per_category[cat.codes]


def split_name(index: int) -> str:
    return SPLITS[index]


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def shuffle_keys(soma_joinid: np.ndarray, seed: int) -> np.ndarray:
    """splitmix64 of each joinid (offset by the seed): the sort key of the in-split shuffle."""
    with np.errstate(over="ignore"):
        z = np.asarray(soma_joinid, dtype=np.uint64) + np.uint64(seed) * _GOLDEN + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def shuffle_order(soma_joinid: np.ndarray, seed: int) -> np.ndarray:
    """Positions of ``soma_joinid`` in shuffled order (ties on the hash broken by joinid)."""
    return np.lexsort((np.asarray(soma_joinid), shuffle_keys(soma_joinid, seed)))
