"""Exact k-nearest-neighbour classification of embeddings, chunked so it runs at census scale.

The paper scores an embedding by classifying each test cell from its k = 5 nearest validation
cells. Validation and test cells are disjoint, so every one of the k neighbours counts (the
reference code asked for k + 1 and dropped the first as a "self match", discarding each test
cell's true nearest neighbour).

Distances are computed block by block (query chunk x reference chunk) as squared Euclidean
distances from one matrix product, and a running top-k is merged per block: memory stays at one
``query_chunk x reference_chunk`` block however many cells there are, on CPU or GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ssl_census.core.progress import progress


@dataclass(frozen=True)
class Neighbours:
    """For each query row, the k nearest reference rows, nearest first."""

    index: np.ndarray  # int64 [n_query, k]
    sq_distance: np.ndarray  # float32 [n_query, k]


def _as_tensor(
    x: np.ndarray | torch.Tensor, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    return t.to(device=device, dtype=dtype)


def _default_device(device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def nearest_neighbours(
    reference: np.ndarray | torch.Tensor,
    query: np.ndarray | torch.Tensor,
    k: int = 5,
    query_chunk: int = 8192,
    reference_chunk: int = 65536,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    show_progress: bool = True,
) -> Neighbours:
    """The exact ``k`` nearest reference rows of every query row (squared Euclidean distance)."""
    n_ref, n_query = len(reference), len(query)
    if n_ref < k:
        raise ValueError(f"k = {k} neighbours asked from only {n_ref} reference cells")
    dev = _default_device(device)
    out_idx = np.empty((n_query, k), dtype=np.int64)
    out_dist = np.empty((n_query, k), dtype=np.float32)
    ref_blocks = []
    for r0 in range(0, n_ref, reference_chunk):
        block = _as_tensor(reference[r0 : r0 + reference_chunk], dev, dtype)
        ref_blocks.append((r0, block, (block * block).sum(1)))
    bar = progress(n_query, desc="kNN", disable=None if show_progress else True)
    for q0 in range(0, n_query, query_chunk):
        q = _as_tensor(query[q0 : q0 + query_chunk], dev, dtype)
        q_sq = (q * q).sum(1, keepdim=True)
        best_d = torch.full((len(q), k), float("inf"), device=dev, dtype=dtype)
        best_i = torch.zeros((len(q), k), device=dev, dtype=torch.int64)
        for r0, ref, ref_sq in ref_blocks:
            d = (q_sq - 2.0 * (q @ ref.T) + ref_sq).clamp_min_(0.0)
            kk = min(k, d.shape[1])
            d_top, i_top = torch.topk(d, kk, dim=1, largest=False, sorted=True)
            cand_d = torch.cat([best_d, d_top], dim=1)
            cand_i = torch.cat([best_i, i_top + r0], dim=1)
            # a stable sort keeps earlier (lower-index) references first among equal distances
            order = torch.sort(cand_d, dim=1, stable=True).indices[:, :k]
            best_d = torch.gather(cand_d, 1, order)
            best_i = torch.gather(cand_i, 1, order)
        out_idx[q0 : q0 + len(q)] = best_i.cpu().numpy()
        out_dist[q0 : q0 + len(q)] = best_d.float().cpu().numpy()
        bar.update(len(q))
    bar.close()
    return Neighbours(out_idx, out_dist)


def majority_vote(neighbour_labels: np.ndarray) -> np.ndarray:
    """The most frequent label of each row; a tie goes to the label of the nearest neighbour.

    ``neighbour_labels`` is ``[n, k]`` with neighbours ordered nearest first. For each position j
    the number of neighbours sharing its label is counted; ``argmax`` returns the first position
    with the highest count, i.e. the tied label that occurs nearest.
    """
    labels = np.asarray(neighbour_labels)
    same = labels[:, :, None] == labels[:, None, :]
    votes = same.sum(axis=2)
    winner = votes.argmax(axis=1)
    return labels[np.arange(len(labels)), winner]


def knn_classify(
    reference: np.ndarray | torch.Tensor,
    reference_labels: np.ndarray,
    query: np.ndarray | torch.Tensor,
    k: int = 5,
    device: str | torch.device | None = None,
    **chunking,
) -> np.ndarray:
    """Predict each query row's label from its ``k`` nearest reference rows (majority vote)."""
    reference_labels = np.asarray(reference_labels)
    if len(reference_labels) != len(reference):
        raise ValueError("one label per reference row is needed")
    nb = nearest_neighbours(reference, query, k=k, device=device, **chunking)
    return majority_vote(reference_labels[nb.index])
