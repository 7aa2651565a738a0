"""scIB integration scores through scib-metrics (the optional ``integration`` extra).

Bio-conservation, batch-correction and the total score (0.6 bio + 0.4 batch, as scIB weights
them) of each embedding, computed by scib-metrics' Benchmarker; the PCA baseline is both an
embedding scored beside the others and the "pre-integration" reference of the PCR comparison.
Without scib-metrics the scores are skipped with the reason, never replaced by something else.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

INSTALL_HINT = "pip install 'ssl-census[integration]' (scib-metrics, with jax on CPU)"


def scib_available() -> tuple[bool, str]:
    try:
        import scib_metrics  # noqa: F401
    except Exception as e:  # an import can also fail inside jax
        return False, f"scib-metrics is not importable ({type(e).__name__}: {e}); {INSTALL_HINT}"
    return True, ""


def integration_scores(
    embeddings: dict[str, np.ndarray], labels: np.ndarray, batches: np.ndarray,
    baseline: str = "pca", max_cells: int = 20_000, seed: int = 0,
) -> dict[str, Any]:
    """scIB scores per embedding: ``{"scores": {name: {metric: value}}, "n_cells": ...}``, or
    ``{"skipped": reason}`` when scib-metrics is missing or the data cannot be scored."""
    ok, reason = scib_available()
    if not ok:
        return {"skipped": reason}
    labels, batches = np.asarray(labels).astype(str), np.asarray(batches).astype(str)
    if len(np.unique(batches)) < 2:
        return {"skipped": "fewer than two batches: nothing to integrate"}
    if len(np.unique(labels)) < 2:
        return {"skipped": "fewer than two cell types: bio-conservation is undefined"}
    import anndata as ad
    from scib_metrics.benchmark import BatchCorrection, Benchmarker, BioConservation

    n = len(labels)
    keep = np.arange(n) if n <= max_cells else np.sort(
        np.random.default_rng(seed).choice(n, max_cells, replace=False))
    obs = pd.DataFrame({"label": labels[keep], "batch": batches[keep]},
                       index=[str(i) for i in keep])
    adata = ad.AnnData(np.zeros((len(keep), 1), dtype=np.float32), obs=obs)
    for name, z in embeddings.items():
        adata.obsm[name] = np.ascontiguousarray(z[keep], dtype=np.float32)
    bench = Benchmarker(
        adata, batch_key="batch", label_key="label", embedding_obsm_keys=list(embeddings),
        bio_conservation_metrics=BioConservation(),
        batch_correction_metrics=BatchCorrection(),
        pre_integrated_embedding_obsm_key=baseline, n_jobs=1, progress_bar=False,
    )
    bench.benchmark()
    table = bench.get_results(min_max_scale=False)
    table = table.drop(index="Metric Type", errors="ignore")
    scores = {str(name): {str(k): float(v) for k, v in row.items()}
              for name, row in table.iterrows()}
    return {"scores": scores, "n_cells": int(len(keep)),
            "n_batches": int(len(np.unique(batches[keep]))),
            "n_labels": int(len(np.unique(labels[keep])))}
