"""``ssl-census evaluate``: a run judged as the paper judges it, beside its baselines.

On a shard store: every embedding (the run's encoder; the pre-trained encoder it was
fine-tuned from, i.e. zero-shot; a random-init encoder of the same shape; PCA with 64
components fitted out of core on the training split) is computed for the val and test cells,
and each test cell is classified by its k = 5 nearest validation cells. A classifier head
scores its own predictions too. Every classification is reported plain and hierarchy-aware,
overall and per dataset. On an h5ad (unseen data): cells are mapped into the run's gene space
and classified by kNN against the other groups of cells (leave one batch out).

Reports: ``<name>.json``, ``<name>.md`` and PNG plots beside them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ssl_census.core import atomic
from ssl_census.core.errors import UserError
from ssl_census.core.metrics import (
    RegressionAccumulator,
    classification_scores,
    descendant_matrix,
    hierarchy_corrected,
    per_class_f1,
)
from ssl_census.core.ontology import load_cell_ontology
from ssl_census.data import BlockShuffleLoader
from ssl_census.data.h5ad import load_unseen
from ssl_census.evaluation import plots
from ssl_census.evaluation.embed import apply_to_matrix, apply_to_split, split_batches
from ssl_census.evaluation.integration import integration_scores
from ssl_census.evaluation.knn import knn_classify
from ssl_census.evaluation.pca import StreamingPCA
from ssl_census.models.mlp import Encoder
from ssl_census.shards.store import ShardStore, open_shards, read_parquet
from ssl_census.tasks.inputs import BatchCodes
from ssl_census.tasks.runs import check_same_gene_space, load_task, run_gene_space
from ssl_census.training.rundir import RunDir, load_encoder

K = 5
PCA_COMPONENTS = 64
RANDOM_INIT_SEED = 0


@dataclass
class EvalOptions:
    batch_size: int = 8192
    device: str = "cpu"
    workers: int | None = None
    pca_max_cells: int | None = 1_000_000
    batch_key: str | None = None  # integration scores across this obs column
    layer: str | None = None  # h5ad layer with raw counts (default X)
    integration_max_cells: int = 20_000
    plots: bool = True
    embedding_2d: str = "umap"  # or "pca"
    seed: int = 0


@dataclass
class Embedded:
    """Val and test embeddings of one method (val may be None for unseen data)."""

    name: str
    test: np.ndarray
    val: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# -- encoders to compare ----------------------------------------------------------------------


def _random_encoder(card: dict[str, Any]) -> Encoder:
    enc = card["encoder"]
    with torch.random.fork_rng():
        torch.manual_seed(RANDOM_INIT_SEED)
        return Encoder(enc["n_genes"], enc["hidden"], enc["dropout"]).eval()


def encoders_to_compare(run_dir: Path, device: str) -> tuple[dict[str, Encoder], dict[str, Any]]:
    """The run's encoder, its pre-trained origin (zero-shot) if any, and a random init."""
    encoder, card = load_encoder(run_dir, map_location=device)
    name = card.get("method", "model")
    out = {name: encoder}
    init = card.get("init")
    if init and init != "random":
        if (Path(init) / "model_card.json").is_file():
            zero, zcard = load_encoder(init, map_location=device)
            out[f"zero-shot {zcard.get('method', 'pretrained')}"] = zero
        else:
            print(f"note: the pre-trained run {init} is gone; zero-shot baseline left out")
    out["random-init"] = _random_encoder(card)
    return {k: v.to(device).eval() for k, v in out.items()}, card


# -- classification scores --------------------------------------------------------------------


def prediction_scores(y: np.ndarray, pred: np.ndarray, descendants: np.ndarray,
                      abundance: dict[int, int], groups: np.ndarray | None) -> dict[str, Any]:
    """Plain and hierarchy-aware F1s, per-class F1 with abundance, and the same per group."""
    fixed = hierarchy_corrected(y, pred, descendants)
    out: dict[str, Any] = {
        "plain": classification_scores(y, pred),
        "hierarchy_aware": classification_scores(y, fixed),
        "per_class": per_class_f1(y, pred, abundance),
    }
    if groups is not None:
        out["by_dataset"] = {
            str(g): {"plain": classification_scores(y[groups == g], pred[groups == g]),
                     "hierarchy_aware": classification_scores(y[groups == g],
                                                              fixed[groups == g])}
            for g in np.unique(groups)
        }
    return out


def _label_context(store: ShardStore) -> tuple[np.ndarray, dict[int, int]]:
    labels = store.labels.sort_values("cell_type_code")
    onto = load_cell_ontology()
    descendants = descendant_matrix(labels["cell_type_ontology_term_id"].astype(str).tolist(),
                                    onto.is_descendant)
    abundance = dict(zip(labels["cell_type_code"].astype(int), labels["n_train"].astype(int),
                         strict=True))
    return descendants, abundance


# -- evaluation on a shard store --------------------------------------------------------------


def _embed_store(encoders: dict[str, Encoder], store: ShardStore,
                 opts: EvalOptions) -> list[Embedded]:
    out = []
    for name, enc in encoders.items():
        val = apply_to_split(enc, store.path, "val", opts.batch_size, opts.device, opts.workers)
        test = apply_to_split(enc, store.path, "test", opts.batch_size, opts.device,
                              opts.workers)
        out.append(Embedded(name, test, val))
    pca = StreamingPCA(PCA_COMPONENTS, max_cells=opts.pca_max_cells, seed=opts.seed).fit(
        lambda: split_batches(store.path, "train", opts.batch_size, opts.workers), store.n_genes)
    project = _numpy_fn(pca.transform)
    out.append(Embedded(f"PCA-{PCA_COMPONENTS}",
                        apply_to_split(project, store.path, "test", opts.batch_size, "cpu"),
                        apply_to_split(project, store.path, "val", opts.batch_size, "cpu"),
                        {"pca_cells_fitted": int(pca.n_samples_seen_)}))
    return out


def _numpy_fn(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: torch.from_numpy(np.asarray(fn(x.cpu().numpy()), dtype=np.float32))


def _reconstruction_scores(run_dir: Path, store: ShardStore, opts: EvalOptions) -> dict:
    model, card = load_task(run_dir, device=opts.device)
    key = card["task_spec"].get("batch_key")
    loader = BlockShuffleLoader(store.path, split="test", batch_size=opts.batch_size,
                                layers=("x",), obs_columns=(key,) if key else (),
                                device=opts.device, shuffle=False, workers=opts.workers)
    if key:
        loader = BatchCodes(loader, key, card["task_spec"]["batch_categories"])
    acc = RegressionAccumulator(store.n_genes)
    with torch.no_grad():
        for batch in loader:
            acc.update(batch.x.cpu().numpy(), model.predict_log1p(batch).cpu().numpy())
    return {"scale": "log1p(counts / library size * 1e4)", **acc.result()}


def evaluate_shards(run_dir: Path, shards: Path, opts: EvalOptions) -> dict[str, Any]:
    store = open_shards(shards)
    card = RunDir(run_dir).card if (Path(run_dir) / "model_card.json").is_file() else None
    if card is None:
        raise UserError(f"{run_dir} is not an ssl-census run (no model_card.json)",
                        "give the --out of `ssl-census pretrain` or `ssl-census finetune`")
    check_same_gene_space(card, store, f"run {run_dir}")
    encoders, card = encoders_to_compare(run_dir, opts.device)
    _, val_obs = store.split("val")
    _, test_obs = store.split("test")
    val_y = val_obs["cell_type_code"].to_numpy().astype(np.int64)
    test_y = test_obs["cell_type_code"].to_numpy().astype(np.int64)
    groups = test_obs["dataset_id"].astype(str).to_numpy()
    descendants, abundance = _label_context(store)
    code_name = dict(zip(store.labels["cell_type_code"], store.labels["cell_type"], strict=True))
    embedded = _embed_store(encoders, store, opts)
    ref, query = val_y >= 0, test_y >= 0
    if ref.sum() < K or query.sum() == 0:
        raise UserError(f"{shards} has too few labelled val/test cells for kNN",
                        "evaluate on a store with labelled cells in val and test")
    report: dict[str, Any] = {
        "run": str(run_dir), "shards": str(shards), "k": K,
        "n_val_labelled": int(ref.sum()), "n_test_labelled": int(query.sum()),
        "knn": {}, "classifier": None,
        "cell_types": {int(k): str(v) for k, v in code_name.items()},
    }
    for e in embedded:
        pred = knn_classify(e.val[ref], val_y[ref], e.test[query], k=K, device=opts.device)
        report["knn"][e.name] = {**prediction_scores(test_y[query], pred, descendants, abundance,
                                                     groups[query]), **e.extra}
    if card.get("task") == "celltype":
        model, _ = load_task(run_dir, device=opts.device)
        logits = apply_to_split(model.logits, store.path, "test", opts.batch_size, opts.device,
                                opts.workers)
        report["classifier"] = prediction_scores(test_y[query], logits[query].argmax(1),
                                                 descendants, abundance, groups[query])
    if card.get("task") in ("reconstruction", "integration"):
        report["reconstruction"] = _reconstruction_scores(run_dir, store, opts)
    if opts.batch_key:
        batches = test_obs[opts.batch_key].astype(str).to_numpy()
        report["integration"] = integration_scores(
            {e.name: e.test[query] for e in embedded}, test_obs["cell_type"].to_numpy()[query],
            batches[query], baseline=f"PCA-{PCA_COMPONENTS}",
            max_cells=opts.integration_max_cells, seed=opts.seed)
    colour_by = {"cell type": test_obs["cell_type"].astype(str).to_numpy(),
                 "batch": test_obs[opts.batch_key or "dataset_id"].astype(str).to_numpy()}
    report["_plot_data"] = (embedded[0], colour_by)
    return report


# -- evaluation on an h5ad (unseen data) ------------------------------------------------------


def leave_one_group_out_knn(z: np.ndarray, y: np.ndarray, groups: np.ndarray,
                            device: str) -> np.ndarray:
    """Each group's cells classified by kNN among the cells of all other groups."""
    pred = np.empty_like(y)
    for g in np.unique(groups):
        inside = groups == g
        pred[inside] = knn_classify(z[~inside], y[~inside], z[inside], k=K, device=device,
                                    show_progress=False)
    return pred


def _folds(n: int, seed: int, n_folds: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n) % n_folds


def evaluate_h5ad(run_dir: Path, h5ad: Path, label_key: str, opts: EvalOptions) -> dict:
    keys = (label_key,) + ((opts.batch_key,) if opts.batch_key else ())
    cells = load_unseen(h5ad, run_gene_space(run_dir), layer=opts.layer, required_obs=keys)
    print(f"{h5ad}: {cells.match.n_matched} of {cells.match.n_model_genes} model genes matched "
          f"(by {cells.match.column}), the rest zero-padded")
    encoders, card = encoders_to_compare(run_dir, opts.device)
    embedded = [Embedded(n, apply_to_matrix(e, cells.x, 4096, opts.device))
                for n, e in encoders.items()]
    pca = StreamingPCA(min(PCA_COMPONENTS, cells.x.shape[0] - 1), seed=opts.seed).fit(
        lambda: (cells.x[i : i + 8192] for i in range(0, cells.x.shape[0], 8192)),
        cells.x.shape[1])
    embedded.append(Embedded(f"PCA-{PCA_COMPONENTS}", pca.transform(cells.x)))
    obs = cells.adata.obs
    labels = obs[label_key].astype(str).to_numpy()
    names, y = np.unique(labels, return_inverse=True)
    groups = (obs[opts.batch_key].astype(str).to_numpy() if opts.batch_key
              else _folds(len(y), opts.seed).astype(str))
    report: dict[str, Any] = {
        "run": str(run_dir), "h5ad": str(h5ad), "label_key": label_key, "k": K,
        "genes_matched": cells.match.n_matched, "gene_column": cells.match.column,
        "protocol": (f"leave one {opts.batch_key} out" if opts.batch_key else "5-fold")
        + ": each group's cells classified by kNN among the other groups' cells",
        "knn": {}, "classifier": None,
    }
    abundance = dict(enumerate(np.bincount(y).tolist()))
    no_hierarchy = np.zeros((len(names), len(names)), dtype=bool)  # file labels, not CL terms
    for e in embedded:
        pred = leave_one_group_out_knn(e.test, y, groups, opts.device)
        report["knn"][e.name] = prediction_scores(y, pred, no_hierarchy, abundance, None)
    report["cell_types"] = {i: str(n) for i, n in enumerate(names)}
    if card.get("task") == "celltype":
        report["classifier"] = _classifier_on_h5ad(run_dir, cells.x, labels, opts)
    if opts.batch_key:
        report["integration"] = integration_scores(
            {e.name: e.test for e in embedded}, labels, groups,
            baseline=f"PCA-{PCA_COMPONENTS}", max_cells=opts.integration_max_cells,
            seed=opts.seed)
    report["_plot_data"] = (embedded[0], {"cell type": labels, "batch": groups})
    return report


def _classifier_on_h5ad(run_dir: Path, x: Any, labels: np.ndarray, opts: EvalOptions) -> dict:
    """The head's predictions, scored where the file's labels name the run's cell types
    (by name or CL term id); files with their own vocabulary get the predictions counted."""
    model, _ = load_task(run_dir, device=opts.device)
    table = read_parquet(Path(run_dir) / "labels.parquet").sort_values("cell_type_code")
    pred = apply_to_matrix(model.logits, x, 4096, opts.device).argmax(1)
    by_name = {str(n): int(c) for n, c in zip(table["cell_type"], table["cell_type_code"],
                                              strict=True)}
    by_name.update({str(t): int(c) for t, c in zip(table["cell_type_ontology_term_id"],
                                                    table["cell_type_code"], strict=True)})
    truth = np.array([by_name.get(lab, -1) for lab in labels])
    predicted_names = table["cell_type"].astype(str).to_numpy()[pred]
    counts = pd.Series(predicted_names).value_counts().head(20)
    out: dict[str, Any] = {"predicted_types": {str(k): int(v) for k, v in counts.items()},
                           "labels_in_run_vocabulary": float((truth >= 0).mean())}
    known = truth >= 0
    if known.any():
        out["scored_on_known_labels"] = classification_scores(truth[known], pred[known])
    return out


# -- writing the reports ----------------------------------------------------------------------


def _rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    sources = [(f"kNN k={K}: {name}", s) for name, s in report["knn"].items()]
    if report.get("classifier") and "plain" in report["classifier"]:
        sources.insert(0, ("classifier head", report["classifier"]))
    for name, s in sources:
        rows.append({"method": name, "macro F1": s["plain"]["macro_f1"],
                     "micro F1": s["plain"]["micro_f1"],
                     "macro F1 (hierarchy)": s["hierarchy_aware"]["macro_f1"],
                     "micro F1 (hierarchy)": s["hierarchy_aware"]["micro_f1"],
                     "cells": s["plain"]["n_cells"]})
    return rows


def _markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v)
                                       for v in r.values()) + " |")
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    src = report.get("shards") or report.get("h5ad")
    parts = [f"# Evaluation of {report['run']}", "", f"Data: {src}", ""]
    if "protocol" in report:
        parts += [f"Protocol: {report['protocol']}; genes matched: {report['genes_matched']}", ""]
    parts += ["## Cell-type classification", "", _markdown_table(_rows(report)), ""]
    by_ds = {name: s.get("by_dataset") for name, s in report["knn"].items() if s.get("by_dataset")}
    if by_ds:
        datasets = sorted(next(iter(by_ds.values())))
        rows = [{"method": m, **{d: v[d]["plain"]["macro_f1"] for d in datasets}}
                for m, v in by_ds.items()]
        parts += ["## kNN macro F1 per test dataset", "", _markdown_table(rows), ""]
    if report.get("reconstruction"):
        parts += ["## Reconstruction (test)", "",
                  _markdown_table([{k: v for k, v in report["reconstruction"].items()
                                    if k != "scale"}]), ""]
    integ = report.get("integration")
    if integ:
        parts += ["## Integration (scib-metrics)", ""]
        if "skipped" in integ:
            parts += [f"Skipped: {integ['skipped']}", ""]
        else:
            cols = ["Bio conservation", "Batch correction", "Total"]
            rows = [{"embedding": n, **{c: s.get(c, float("nan")) for c in cols}}
                    for n, s in integ["scores"].items()]
            parts += [_markdown_table(rows), "", f"{integ['n_cells']} cells, "
                      f"{integ['n_batches']} batches, {integ['n_labels']} cell types", ""]
    return "\n".join(parts)


def write_reports(report: dict[str, Any], json_path: Path, plots_on: bool = True,
                  embedding_2d: str = "umap") -> list[Path]:
    """JSON + markdown (+ PNGs) named after ``json_path``; returns the files written."""
    plot_data = report.pop("_plot_data", None)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    stem = json_path.with_suffix("")
    written = [json_path, stem.with_suffix(".md")]
    atomic.write_json(json_path, report)
    atomic.write_text(stem.with_suffix(".md"), markdown(report))
    if plots_on and plot_data is not None:
        embedded, colourings = plot_data
        keep = plots.subsample(len(embedded.test))
        xy, how = plots.two_d(embedded.test[keep], embedding_2d)
        path = Path(f"{stem}-embedding.png")
        plots.embedding_plot(xy, how, {k: v[keep] for k, v in colourings.items()},
                             embedded.name, path)
        written.append(path)
        per_class = {f"kNN: {n}": s["per_class"] for n, s in report["knn"].items()}
        if report.get("classifier") and "per_class" in report["classifier"]:
            per_class["classifier head"] = report["classifier"]["per_class"]
        path = Path(f"{stem}-f1-vs-abundance.png")
        plots.f1_abundance_plot(per_class, path)
        written.append(path)
    return written


def default_report_path(run_dir: Path, source: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / "evaluation" / f"{Path(source).stem or 'shards'}.json"
