"""Which cells an epoch visits, in which order, on which rank: pure index arithmetic, no I/O.

An epoch is planned in three steps, each seeded by ``(seed, epoch)`` so every rank computes
the same global plan without talking to the others:

1. The split's rows are cut into fixed-size *blocks* (contiguous rows, the unit of reading:
   a block decompresses a few whole chunks and wastes at most two partial ones). The block
   list is permuted (``shuffle=True``) or kept in order.
2. Blocks are dealt round-robin to the ranks; each rank groups its blocks into *fetches*
   (``fetch_blocks`` blocks read together) and draws an order of the fetch's cells: a
   permutation (``shuffle``), ``arange`` (sequential) or a weighted draw with replacement
   (``sampler="balanced"``: the same number of cells, chosen with probability proportional
   to a per-cell weight). The rank's *stream* is those orders concatenated.
3. Batches are consecutive ``batch_size`` slices of the stream. Every rank yields the same
   number of batches: with ``drop_last`` each rank keeps ``min over ranks`` cells rounded
   down to whole batches; otherwise each rank is padded to the longest rank's length by
   repeating its own first cells (so ranks stay disjoint apart from those repeats).

A batch is addressed by its stream position, so resuming at batch ``j`` starts at the fetch
holding stream position ``j * batch_size`` without replaying anything.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ssl_census.core.errors import UserError


@dataclass(frozen=True)
class Fetch:
    """Blocks read together and the order in which their cells enter the stream."""

    starts: np.ndarray  # int64 first row of each block
    stops: np.ndarray  # int64 row after the last of each block
    order: np.ndarray  # int64 positions into the concatenated rows of the blocks

    @property
    def rows(self) -> np.ndarray:
        """Row positions of the fetch's cells, in block order."""
        return concat_ranges(self.starts, self.stops)

    def __len__(self) -> int:
        return len(self.order)


def concat_ranges(starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """``np.concatenate([np.arange(a, b) for a, b in zip(starts, stops)])``, vectorised."""
    lengths = stops - starts
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return np.arange(total, dtype=np.int64) + offsets


@dataclass(frozen=True)
class EpochPlan:
    n_cells: int
    batch_size: int
    block_size: int
    fetch_blocks: int
    seed: int
    epoch: int
    rank: int = 0
    world_size: int = 1
    shuffle: bool = True
    drop_last: bool = False
    weights: np.ndarray | None = None  # per-cell sampling weight (balanced sampler)

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world size {self.world_size}")
        if min(self.batch_size, self.block_size, self.fetch_blocks) < 1:
            raise ValueError("batch_size, block_size and fetch_blocks must be positive")
        if 0 < self.n_cells < self.world_size:
            raise ValueError(f"{self.n_cells} cells cannot be shared by {self.world_size} ranks")

    def _rng(self, *parts: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, *parts])

    @property
    def block(self) -> int:
        """Rows per block: ``block_size``, cut down so that every rank gets a block of a split
        smaller than ``world_size`` blocks (a rank without cells could not pad its stream)."""
        return max(1, min(self.block_size, -(-self.n_cells // self.world_size)))

    def _block_order(self) -> np.ndarray:
        n_blocks = -(-self.n_cells // self.block)
        if self.shuffle:
            return self._rng().permutation(n_blocks)
        return np.arange(n_blocks)

    def _rank_cells(self, blocks: np.ndarray) -> int:
        starts = blocks * self.block
        return int((np.minimum(starts + self.block, self.n_cells) - starts).sum())

    def stream_length(self) -> int:
        """Cells this rank yields per epoch (the same on every rank)."""
        order = self._block_order()
        per_rank = [self._rank_cells(order[r :: self.world_size]) for r in range(self.world_size)]
        if self.drop_last:
            return min(per_rank) // self.batch_size * self.batch_size
        return max(per_rank)

    def __len__(self) -> int:
        """Batches per epoch on every rank."""
        n = self.stream_length()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def fetches(self) -> Iterator[Fetch]:
        """This rank's fetches in stream order, truncated or padded to ``stream_length``."""
        blocks = self._block_order()[self.rank :: self.world_size]
        starts = blocks * self.block
        stops = np.minimum(starts + self.block, self.n_cells)
        target = self.stream_length()
        emitted = 0
        for f, i in enumerate(range(0, len(blocks), self.fetch_blocks)):
            if emitted >= target:
                return
            fs, fe = starts[i : i + self.fetch_blocks], stops[i : i + self.fetch_blocks]
            order = self._order(f, fs, fe)[: target - emitted]
            emitted += len(order)
            yield Fetch(fs, fe, order)
        if emitted < target:  # padding: repeat this rank's own first cells
            pad = target - emitted
            lengths = np.cumsum(stops - starts)
            k = min(int(np.searchsorted(lengths, pad)) + 1, len(lengths))
            own = int(lengths[k - 1])
            yield Fetch(starts[:k], stops[:k], np.arange(pad, dtype=np.int64) % own)

    def _order(self, f: int, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
        n = int((stops - starts).sum())
        if self.weights is not None:
            w = self.weights[concat_ranges(starts, stops)]
            total = w.sum()
            rng = self._rng(self.rank, f)
            if total <= 0:  # nothing weighted in this fetch: fall back to a permutation
                return rng.permutation(n)
            return rng.choice(n, size=n, replace=True, p=w / total)
        if self.shuffle:
            return self._rng(self.rank, f).permutation(n)
        return np.arange(n, dtype=np.int64)


def class_balanced_weights(codes: np.ndarray, labels: pd.DataFrame) -> np.ndarray:
    """Per-cell weight: its class's ``class_weight`` from labels.parquet; unlabelled cells 0."""
    codes = np.asarray(codes, dtype=np.int64)
    table_codes = labels["cell_type_code"].to_numpy(dtype=np.int64)
    weight_of = np.zeros(max(int(codes.max(initial=0)), int(table_codes.max(initial=0))) + 1)
    weight_of[table_codes] = labels["class_weight"].to_numpy(dtype=np.float64)
    w = np.where(codes >= 0, weight_of[np.clip(codes, 0, None)], 0.0)
    if not np.any(w > 0):
        raise UserError(
            "no cell in this split has a class weight", "use sampler=None for unlabelled data"
        )
    return w
