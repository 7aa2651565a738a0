"""``ssl-census embed``: an h5ad's cells embedded (and labelled) by a run, written to a new h5ad."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ssl_census.data.h5ad import load_unseen
from ssl_census.evaluation.embed import apply_to_matrix
from ssl_census.tasks.runs import RUN_LABELS, load_task, run_gene_space
from ssl_census.training.rundir import load_encoder

OBSM_KEY = "X_ssl_census"
OBS_PREFIX = "ssl_census_"


def embed_h5ad(run_dir: Path, h5ad: Path, out: Path, layer: str | None = None,
               batch_size: int = 4096, device: str = "cpu") -> dict[str, Any]:
    """Write ``out``: the input with ``obsm['X_ssl_census']``, predicted ``obs`` columns for a
    cell-type run, and ``uns['ssl_census']`` recording the run and the genes matched."""
    from ssl_census.shards.store import read_parquet

    cells = load_unseen(h5ad, run_gene_space(run_dir), layer=layer)
    encoder, card = load_encoder(run_dir, map_location=device)
    adata = cells.adata
    adata.obsm[OBSM_KEY] = apply_to_matrix(encoder.to(device), cells.x, batch_size, device)
    info = {"run": str(run_dir), "method": str(card.get("method", "")),
            "genes_matched": int(cells.match.n_matched),
            "n_model_genes": int(cells.match.n_model_genes),
            "gene_column": cells.match.column, "n_cells": int(adata.n_obs)}
    if card.get("task") == "celltype":
        model, _ = load_task(run_dir, device=device)
        logits = apply_to_matrix(model.logits, cells.x, batch_size, device)
        table = read_parquet(Path(run_dir) / RUN_LABELS).sort_values("cell_type_code")
        code = logits.argmax(1)
        prob = np.exp(logits - logits.max(1, keepdims=True))
        prob /= prob.sum(1, keepdims=True)
        adata.obs[OBS_PREFIX + "cell_type"] = table["cell_type"].astype(str).to_numpy()[code]
        adata.obs[OBS_PREFIX + "cell_type_ontology_term_id"] = (
            table["cell_type_ontology_term_id"].astype(str).to_numpy()[code])
        adata.obs[OBS_PREFIX + "cell_type_probability"] = prob.max(1).astype(np.float32)
    adata.uns["ssl_census"] = {**info, "matched_genes": np.array(cells.match.matched_genes)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    adata.write_h5ad(tmp)  # renamed into place only once complete
    os.replace(tmp, out)
    return info
