"""Batches from cells held in memory (an h5ad brought into the model's gene space).

Tasks on a shard store use the streaming ``BlockShuffleLoader``; a task whose data comes from
one h5ad (cross-modality on a CITE-seq file) fits in memory and is served by
:class:`ArrayLoader`, which has the same surface the Trainer needs (``set_epoch``, ``len``,
``state_dict``) and densifies one batch at a time.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch


@dataclass
class ArrayBatch:
    x: torch.Tensor
    index: torch.Tensor
    target: torch.Tensor | None = None
    counts: torch.Tensor | None = None
    obs: dict[str, torch.Tensor] = field(default_factory=dict)


class ArrayLoader:
    """Batches of rows of a CSR matrix (and aligned targets), reshuffled every epoch."""

    def __init__(
        self, x: sp.csr_matrix, target: np.ndarray | None = None, batch_size: int = 256,
        shuffle: bool = True, seed: int = 0, device: str | torch.device = "cpu",
        drop_last: bool = False,
    ) -> None:
        self.x = sp.csr_matrix(x, dtype=np.float32)
        self.target = None if target is None else np.asarray(target, dtype=np.float32)
        if self.target is not None and len(self.target) != self.x.shape[0]:
            raise ValueError("target needs one row per cell")
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.device, self.drop_last = torch.device(device), drop_last
        self.epoch = 0
        self._start = 0

    @property
    def n_cells(self) -> int:
        return self.x.shape[0]

    def __len__(self) -> int:
        n, b = self.n_cells, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "start": self._start}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epoch, self._start = int(state["epoch"]), int(state["start"])

    def _order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n_cells)
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n_cells)

    def __iter__(self) -> Iterator[ArrayBatch]:
        order = self._order()
        for b in range(self._start, len(self)):
            self._start = b + 1
            rows = np.sort(order[b * self.batch_size : (b + 1) * self.batch_size])
            x = torch.from_numpy(self.x[rows].toarray()).to(self.device)
            target = None
            if self.target is not None:
                target = torch.from_numpy(self.target[rows]).to(self.device)
            yield ArrayBatch(x=x, index=torch.from_numpy(rows), target=target)
        self._start = 0
