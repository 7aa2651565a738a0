"""A large synthetic shard store for the loader benchmark, written in bounded memory.

Counts are negative-binomial-like: 1 + a geometric draw (the r = 1 negative binomial) around
a per-gene log-normal mean times a per-cell size factor, with 1,500-2,000 non-zeros per cell
over 19,331 genes as in scTab. Each row's gene positions are sorted and distinct, spread as
order statistics of uniforms. Cells belong to several datasets (each with its own size-factor
scale) in a random order, as a shard build leaves them (rows shuffled inside each split).

The store goes through the shard build's own writers (``ssl_census.shards.store``), so it has
exactly the format and manifest of a real build.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numba
import numpy as np
import pandas as pd

from ssl_census.core.progress import progress
from ssl_census.shards.store import (
    finish_store,
    label_table,
    open_shards,
    read_manifest,
    write_split,
    write_tables,
)
from ssl_census.shards.values import normalise

N_GENES = 19_331
NNZ_RANGE = (1_500, 2_000)
N_DATASETS = 40
N_TYPES = 30
BLOCK = 16_384
MAX_COUNT = 65_535  # uint16 counts, as most real 10x data has


@numba.njit(cache=True)
def _fill_rows(seed, k, gene_mean, size_factor, indices, counts):  # pragma: no cover - compiled
    """Exactly ``k[c]`` sorted distinct gene positions and geometric counts per cell.

    Sorted uniforms u_j come from normalised cumulative exponentials; v_j = floor(u_j
    (G - k + 1)) is non-decreasing in [0, G - k], so v_j + j is strictly increasing in [0, G).
    """
    np.random.seed(seed)
    scratch = np.empty(k.max() + 1)
    n_genes = gene_mean.shape[0]
    pos = 0
    for c in range(k.shape[0]):
        kc = k[c]
        total = 0.0
        for j in range(kc + 1):
            total += np.random.exponential(1.0)
            scratch[j] = total
        span = n_genes - kc + 1
        for j in range(kc):
            g = int(scratch[j] / total * span) + j
            indices[pos + j] = g
            mu = gene_mean[g] * size_factor[c]
            # 1 + floor(mu * Exp(1)): geometric, the r = 1 negative binomial
            counts[pos + j] = min(1 + int(mu * np.random.exponential(1.0)), MAX_COUNT)
        pos += kc


def _rows(
    seed: int, k: np.ndarray, gene_mean: np.ndarray, size_factor: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR (indptr, indices, counts) of cells with ``k[i]`` non-zeros each."""
    indptr = np.concatenate([[0], np.cumsum(k)])
    indices = np.empty(indptr[-1], dtype=np.int32)
    counts = np.empty(indptr[-1], dtype=np.int64)
    _fill_rows(seed, k, gene_mean, size_factor, indices, counts)
    return indptr, indices, counts


def synthetic_obs(rng: np.random.Generator, n: int) -> pd.DataFrame:
    dataset = rng.integers(0, N_DATASETS, n)
    cell_type = np.minimum(rng.geometric(0.15, n) - 1, N_TYPES - 1)  # imbalanced classes
    return pd.DataFrame(
        {
            "soma_joinid": np.arange(n, dtype=np.int64),
            "dataset_id": [f"dataset-{d:02d}" for d in dataset],
            "donor_id": [
                f"donor-{d:02d}-{i}" for d, i in zip(dataset, rng.integers(0, 4, n), strict=True)
            ],
            "tech_sample": [f"dataset-{d:02d}" for d in dataset],
            "assay": "10x 3' v3",
            "tissue_general": "blood",
            "cell_type": [f"type {t}" for t in cell_type],
            "cell_type_ontology_term_id": [f"CL:{9000000 + t:07d}" for t in cell_type],
        }
    )


def write_synthetic_store(out: str | os.PathLike[str], n_cells: int, seed: int = 0,
                          n_genes: int = N_GENES,
                          nnz_range: tuple[int, int] = NNZ_RANGE) -> Path:
    """Write (or reuse, when a finished one of that shape is there) a one-split store at
    ``out``: ``n_cells`` cells over ``n_genes`` genes, each with ``nnz_range`` (inclusive)
    non-zeros."""
    out = Path(out)
    shape = {"n_cells": n_cells, "seed": seed, "n_genes": n_genes, "nnz_range": list(nnz_range)}
    manifest = read_manifest(out)
    if manifest and manifest.get("complete") and _same_shape(manifest.get("synthetic"), shape):
        return out
    if not 1 <= nnz_range[0] <= nnz_range[1] <= n_genes:
        raise ValueError(f"non-zeros per cell {nnz_range} do not fit {n_genes} genes")
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    gene_mean = rng.lognormal(-1.0, 1.2, n_genes)
    obs = synthetic_obs(rng, n_cells)
    ds_scale = rng.lognormal(0.0, 0.3, N_DATASETS)
    ds = obs["dataset_id"].str[-2:].astype(int).to_numpy()
    size_factor = ds_scale[ds] * rng.lognormal(0.0, 0.4, n_cells)

    k = rng.integers(nnz_range[0], nnz_range[1] + 1, n_cells)
    labels = label_table(obs, {"train": obs["cell_type_ontology_term_id"].value_counts().to_dict()})
    code_of = dict(zip(labels["cell_type_ontology_term_id"], labels["cell_type_code"], strict=True))
    obs["cell_type_code"] = obs["cell_type_ontology_term_id"].map(code_of).astype(np.int32)
    obs["library_size"] = np.zeros(n_cells, dtype=np.int64)  # filled block by block below

    def blocks() -> Iterator[tuple[np.ndarray, ...]]:
        with progress(n_cells, desc="synthetic cells") as bar:
            for lo in range(0, n_cells, BLOCK):
                hi = min(lo + BLOCK, n_cells)
                indptr, indices, counts = _rows(
                    seed * 100_003 + lo, k[lo:hi], gene_mean, size_factor[lo:hi]
                )
                data, obs.loc[lo : hi - 1, "library_size"] = normalise(indptr, counts)
                bar.update(hi - lo)
                yield indptr, indices, data, counts

    write_split(out / "train", blocks(), obs, int(k.sum()), n_genes, MAX_COUNT)
    var = pd.DataFrame(
        {
            "feature_id": [f"ENSG{i:011d}" for i in range(n_genes)],
            "feature_name": [f"GENE{i}" for i in range(n_genes)],
        }
    )
    write_tables(out, var, labels)
    finish_store(out, {"source": "synthetic", "synthetic": shape}, splits=["train"])
    open_shards(out)
    return out


def _same_shape(recorded: dict | None, shape: dict) -> bool:
    """Whether a store's record describes ``shape`` (older stores recorded only the cells and
    seed of the default gene count and non-zeros)."""
    defaults = {"n_genes": N_GENES, "nnz_range": list(NNZ_RANGE)}
    return recorded is not None and {**defaults, **recorded} == shape
