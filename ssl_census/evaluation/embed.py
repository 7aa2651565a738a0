"""Embeddings of a shard-store split or of in-memory cells, batch by batch (bounded memory)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from ssl_census.core.progress import progress
from ssl_census.data.arrays import ArrayLoader

BLOCK_ROWS = 256


def split_loader(shards: Path, split: str, batch_size: int, device: str | torch.device,
                 workers: int | None = None):
    """The split's cells in stored order (no shuffling), log1p values only."""
    from ssl_census.data import BlockShuffleLoader

    return BlockShuffleLoader(shards, split=split, batch_size=batch_size, layers=("x",),
                              obs_columns=(), dense=True, device=str(device), shuffle=False,
                              drop_last=False, workers=workers)


def _fill(loader, n_cells: int, fn: Callable[[torch.Tensor], torch.Tensor],
          desc: str) -> np.ndarray:
    out: np.ndarray | None = None
    bar = progress(n_cells, desc=desc)
    for batch in loader:
        values = fn(batch.x).float().cpu().numpy()
        if out is None:
            out = np.empty((n_cells, values.shape[1]), dtype=np.float32)
        out[batch.index.cpu().numpy()] = values
        bar.update(len(values))
    bar.close()
    assert out is not None
    return out


@torch.no_grad()
def apply_to_split(fn: Callable[[torch.Tensor], torch.Tensor], shards: Path, split: str,
                   batch_size: int = 8192, device: str | torch.device = "cpu",
                   workers: int | None = None) -> np.ndarray:
    """``fn`` (an encoder, a classifier) applied to every cell of a split; rows in split order."""
    loader = split_loader(shards, split, batch_size, device, workers)
    return _fill(loader, loader.n_cells, fn, f"{split}")


@torch.no_grad()
def apply_to_matrix(fn: Callable[[torch.Tensor], torch.Tensor], x: sp.csr_matrix,
                    batch_size: int = 4096, device: str | torch.device = "cpu") -> np.ndarray:
    """``fn`` applied to the rows of an in-memory CSR matrix (densified a batch at a time)."""
    loader = ArrayLoader(x, None, batch_size, shuffle=False, device=device)
    return _fill(loader, x.shape[0], fn, "cells")


def split_batches(shards: Path, split: str, batch_size: int = 8192,
                  workers: int | None = None) -> Iterator[sp.csr_matrix]:
    """A split's log1p values as scipy CSR batches, in stored order (for the PCA baseline)."""
    from ssl_census.data import BlockShuffleLoader

    loader = BlockShuffleLoader(shards, split=split, batch_size=batch_size, layers=("x",),
                                obs_columns=(), dense=False, device="cpu", shuffle=False,
                                workers=workers)
    for batch in loader:
        x = batch.x
        yield sp.csr_matrix((x.values().numpy(), x.col_indices().numpy(),
                             x.crow_indices().numpy()), shape=tuple(x.shape))


@torch.no_grad()
def forward_blocks(encoder: torch.nn.Module, head: torch.nn.Module | None, x: sp.csr_matrix,
                   device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray | None]:
    """``(encoder(x), head(encoder(x)))`` for the rows of ``x``, run on blocks of exactly
    BLOCK_ROWS rows (the last zero-padded, the padding dropped).

    Matrix kernels take other paths for other row counts (a batch of one or of 65 rows differs
    in the last bits from the same rows inside a batch of 256), so a fixed block makes a cell's
    result independent of the batch size and of the cells beside it, bit for bit. Densified a
    block at a time, so memory is BLOCK_ROWS x genes whatever the chunk size.
    """
    n = x.shape[0]
    z_parts, logit_parts = [], []
    for start in range(0, n, BLOCK_ROWS):
        rows = x[start : start + BLOCK_ROWS]
        dense = np.zeros((BLOCK_ROWS, x.shape[1]), dtype=np.float32)
        rows.toarray(out=dense[: rows.shape[0]])
        z = encoder(torch.from_numpy(dense).to(device))
        z_parts.append(z[: rows.shape[0]].float().cpu().numpy())
        if head is not None:
            logit_parts.append(head(z)[: rows.shape[0]].float().cpu().numpy())
    width = getattr(encoder, "latent_dim", 0)
    z_all = np.concatenate(z_parts) if z_parts else np.empty((0, width), dtype=np.float32)
    logits = np.concatenate(logit_parts) if logit_parts else None
    return z_all, logits
