"""Batches from cells held in memory (an h5ad brought into the model's gene space).

Tasks on a shard store use the streaming ``BlockShuffleLoader``; a task whose data comes from
one h5ad (cross-modality on a CITE-seq file) fits in memory and is served by
:class:`ArrayLoader`, which has the same surface the Trainer needs (``set_epoch``, ``len``,
``state_dict``) and densifies one batch at a time (or, ``dense=False``, hands it over as a
CSR tensor).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from ssl_census.core.errors import UserError
from ssl_census.core.sparse import csr_tensor


@dataclass
class ArrayBatch:
    x: torch.Tensor
    index: torch.Tensor
    target: torch.Tensor | None = None
    counts: torch.Tensor | None = None
    obs: dict[str, torch.Tensor] = field(default_factory=dict)


class ArrayLoader:
    """Batches of rows of a CSR matrix (and aligned targets), reshuffled every epoch.

    With ``world_size`` > 1 each rank takes every ``world_size``-th row of the epoch's order,
    all ranks the same number (the last ``n % world_size`` rows of the order are left out).
    """

    def __init__(
        self, x: sp.csr_matrix, target: np.ndarray | None = None, batch_size: int = 256,
        shuffle: bool = True, seed: int = 0, device: str | torch.device = "cpu",
        drop_last: bool = False, rank: int = 0, world_size: int = 1, dense: bool = True,
    ) -> None:
        self.x = sp.csr_matrix(x, dtype=np.float32)
        self.target = None if target is None else np.asarray(target, dtype=np.float32)
        if self.target is not None and len(self.target) != self.x.shape[0]:
            raise ValueError("target needs one row per cell")
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.device, self.drop_last, self.dense = torch.device(device), drop_last, dense
        if not 0 <= rank < world_size or self.x.shape[0] < world_size:
            raise UserError(f"{self.x.shape[0]} cells cannot be shared by rank {rank} of "
                            f"{world_size}", "use fewer processes or more cells")
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self._start = 0

    @property
    def n_cells(self) -> int:
        """The cells this rank sees per epoch."""
        return self.x.shape[0] // self.world_size

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
        n = self.x.shape[0]
        order = (np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle
                 else np.arange(n))
        return order[self.rank :: self.world_size][: self.n_cells]

    def __iter__(self) -> Iterator[ArrayBatch]:
        order = self._order()
        for b in range(self._start, len(self)):
            self._start = b + 1
            rows = np.sort(order[b * self.batch_size : (b + 1) * self.batch_size])
            x = self._rows(rows).to(self.device)
            target = None
            if self.target is not None:
                target = torch.from_numpy(self.target[rows]).to(self.device)
            yield ArrayBatch(x=x, index=torch.from_numpy(rows), target=target)
        self._start = 0

    def _rows(self, rows: np.ndarray) -> torch.Tensor:
        part = self.x[rows]
        if self.dense:
            return torch.from_numpy(part.toarray())
        return csr_tensor(torch.from_numpy(part.indptr), torch.from_numpy(part.indices),
                          torch.from_numpy(part.data), part.shape)
