"""Cross-modality prediction: RNA in the model's gene space -> another measured modality of the
same cells (e.g. CITE-seq protein counts in an h5ad's ``obsm``).

The target counts are normalised like the RNA (10,000 per cell, log1p). The file's cells are
split at random into train / val / test (80 / 10 / 10, seeded) and the split is stored in the
run, so the test figures can be recomputed. Scores sit beside a predict-the-mean baseline
(the training cells' mean of every target feature).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from ssl_census.core import atomic
from ssl_census.core.errors import UserError
from ssl_census.core.metrics import correlation_scores
from ssl_census.data.arrays import ArrayLoader
from ssl_census.data.h5ad import UnseenCells, load_unseen
from ssl_census.shards.values import normalise
from ssl_census.tasks.config import FinetuneConfig
from ssl_census.tasks.inputs import TaskData
from ssl_census.tasks.runs import load_task, run_gene_space
from ssl_census.training.distributed import DistEnv
from ssl_census.training.setup import input_layout

log = logging.getLogger(__name__)

SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
SCORES = "cross_modality_scores.json"


def target_log1p(counts: np.ndarray) -> np.ndarray:
    """Raw target counts -> log1p(counts / total * 10,000), as the RNA is normalised."""
    m = sp.csr_matrix(np.asarray(counts, dtype=np.float64))
    m.eliminate_zeros()
    data, _ = normalise(m.indptr, m.data.astype(np.int64))
    return sp.csr_matrix((data, m.indices, m.indptr), shape=m.shape).toarray()


def split_cells(n: int, seed: int) -> dict[str, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_train = int(round(SPLIT_FRACTIONS[0] * n))
    n_val = int(round(SPLIT_FRACTIONS[1] * n))
    return {"train": np.sort(order[:n_train]), "val": np.sort(order[n_train : n_train + n_val]),
            "test": np.sort(order[n_train + n_val :])}


def _targets(cells: UnseenCells, key: str, h5ad: Path) -> tuple[np.ndarray, list[str]]:
    if key not in cells.adata.obsm:
        raise UserError(f"{h5ad} has no obsm[{key!r}]",
                        f"use one of: {', '.join(cells.adata.obsm) or '(none)'}")
    raw = cells.adata.obsm[key]
    names = [str(c) for c in raw.columns] if isinstance(raw, pd.DataFrame) else [
        f"{key}_{i}" for i in range(raw.shape[1])]
    values = np.asarray(raw.to_numpy() if isinstance(raw, pd.DataFrame) else raw)
    if sp.issparse(values):
        values = values.toarray()
    if np.any(values < 0) or not np.all(np.mod(values, 1) == 0):
        raise UserError(f"obsm[{key!r}] of {h5ad} is not raw integer counts",
                        "give the raw counts of the other modality")
    return target_log1p(values), names


def cross_modality_data(h5ad: Path, var: pd.DataFrame, config: FinetuneConfig, env: DistEnv,
                        device: torch.device) -> TaskData:
    key, seed = config.target_obsm, config.train.seed
    cells = load_unseen(h5ad, var)
    target, names = _targets(cells, key, h5ad)
    splits = split_cells(cells.x.shape[0], seed)
    batch = config.data.batch_size
    density = cells.x.nnz / max(1, cells.x.shape[0] * cells.x.shape[1])
    layout = input_layout(config.train.input_layout, device, density)
    common = {"rank": env.rank, "world_size": env.world_size, "dense": layout == "dense"}
    train = ArrayLoader(cells.x[splits["train"]], target[splits["train"]], batch, True, seed,
                        device, **common)
    val = ArrayLoader(cells.x[splits["val"]], target[splits["val"]], batch, False, seed, device,
                      **common)
    spec = {"h5ad": str(Path(h5ad).resolve()), "target_obsm": key, "target_names": names,
            "genes_matched": cells.match.n_matched}
    log.info(f"{h5ad}: {cells.match.n_matched} of {len(var)} model genes matched "
             f"(by {cells.match.column}); {len(names)} targets from obsm[{key!r}]")
    return TaskData(train, val, spec, None, layout, density, splits)


@torch.no_grad()
def predict(model: Any, x: sp.csr_matrix, device: torch.device | str,
            batch_size: int = 1024) -> np.ndarray:
    loader = ArrayLoader(x, None, batch_size, shuffle=False, device=device)
    return np.concatenate([model.predict(b.x).float().cpu().numpy() for b in loader])


def score_cross_modality(run_dir: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Pearson / Spearman on the run's test cells, beside the predict-the-mean baseline;
    written to ``<run>/cross_modality_scores.json``."""
    model, card = load_task(run_dir, device=device)
    spec = card["task_spec"]
    cells = load_unseen(spec["h5ad"], run_gene_space(run_dir))
    target, names = _targets(cells, spec["target_obsm"], Path(spec["h5ad"]))
    with np.load(Path(run_dir) / "cells.npz") as f:
        train, test = f["train"], f["test"]
    pred = predict(model, cells.x[test], device)
    mean = np.broadcast_to(target[train].mean(0), pred.shape)
    model_s, base_s = correlation_scores(target[test], pred), correlation_scores(target[test], mean)
    out = {
        "n_test_cells": int(len(test)), "targets": names,
        "genes_matched": int(cells.match.n_matched),
        "model": model_s,
        "mean_baseline": {k: v for k, v in base_s.items() if "per_cell" in k or k == "pearson"},
        "mse_model": float(np.mean((target[test] - pred) ** 2)),
        "mse_mean_baseline": float(np.mean((target[test] - mean) ** 2)),
    }
    atomic.write_json(Path(run_dir) / SCORES, out)
    return out


def load_scores(run_dir: Path) -> dict[str, Any] | None:
    p = Path(run_dir) / SCORES
    return json.loads(p.read_text()) if p.is_file() else None
