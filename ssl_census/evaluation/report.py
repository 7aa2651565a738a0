"""``ssl-census evaluate``: a run judged as the paper judges it, beside its baselines.

On a shard store: every embedding (the run's encoder; the pre-trained encoder it was
fine-tuned from, i.e. zero-shot; a random-init encoder of the same shape; PCA with 64
components fitted out of core on the training split) is computed for the val and test cells,
and each test cell is classified by its k = 5 nearest validation cells. A classifier head
scores its own predictions too. Every classification is reported plain and hierarchy-aware,
overall and per dataset. On an h5ad (unseen data): cells are mapped into the run's gene space
and classified by kNN against a reference store's validation cells (the paper's protocol), or,
without a reference, against the other groups of cells of the file (leave one batch out).

Each embedding has a :class:`Role` (the run's own encoder, zero-shot, random init, PCA): a
report keys its kNN scores by role, so a reader (the results page) finds every row by what it
is, and a missing one is an error. Computing is here; rendering and writing the reports
(``<name>.json``, ``<name>.md`` and PNG plots) is :mod:`ssl_census.evaluation.render`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

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
from ssl_census.evaluation.embed import apply_to_matrix, apply_to_split, split_batches
from ssl_census.evaluation.integration import integration_scores
from ssl_census.evaluation.knn import knn_classify
from ssl_census.evaluation.pca import PCA_COMPONENTS, StreamingPCA, pca_of_cells
from ssl_census.models.mlp import Encoder
from ssl_census.shards.store import ShardStore, open_shards, read_parquet
from ssl_census.tasks.inputs import BatchCodes
from ssl_census.tasks.runs import check_same_gene_space, load_task, run_gene_space
from ssl_census.training.rundir import RunDir, load_encoder

log = logging.getLogger(__name__)

K = 5
RANDOM_INIT_SEED = 0
PCA_NAME = f"PCA-{PCA_COMPONENTS}"


class Role(StrEnum):
    """What an embedding is in an evaluation: the key of its scores in a report."""

    RUN = "run"  # the evaluated run's own encoder
    ZERO_SHOT = "zero_shot"  # the pre-trained encoder the run was fine-tuned from
    RANDOM_INIT = "random_init"  # a random encoder of the run's shape (seed RANDOM_INIT_SEED)
    PCA = "pca"  # PCA_COMPONENTS principal components of the log1p values


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
    """Val and test embeddings of one method (val may be None for unseen data); ``name`` is
    how tables show it."""

    role: Role
    name: str
    test: np.ndarray
    val: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Evaluation:
    """An evaluation's report (JSON-ready) and what its plots are drawn from: the first
    embedding and the colourings of its cells."""

    report: dict[str, Any]
    plotted: Embedded
    colour_by: dict[str, np.ndarray]


# -- encoders to compare ----------------------------------------------------------------------


def _random_encoder(card: dict[str, Any]) -> Encoder:
    enc = card["encoder"]
    with torch.random.fork_rng():
        torch.manual_seed(RANDOM_INIT_SEED)
        return Encoder(enc["n_genes"], enc["hidden"], enc["dropout"]).eval()


@dataclass
class Compared:
    """An encoder to embed with, its role and its name in tables."""

    role: Role
    name: str
    encoder: Encoder


def encoders_to_compare(run_dir: Path, device: str) -> tuple[list[Compared], dict[str, Any]]:
    """The run's encoder, its pre-trained origin (zero-shot) if any, and a random init."""
    encoder, card = load_encoder(run_dir, map_location=device)
    out = [Compared(Role.RUN, card.get("method", "model"), encoder)]
    init = card.get("init")
    if init and init != "random":
        if (Path(init) / "model_card.json").is_file():
            zero, zcard = load_encoder(init, map_location=device)
            out.append(Compared(Role.ZERO_SHOT, f"zero-shot {zcard.get('method', 'pretrained')}",
                                zero))
        else:
            log.warning(f"the pre-trained run {init} is gone; zero-shot baseline left out")
    out.append(Compared(Role.RANDOM_INIT, "random-init", _random_encoder(card)))
    for c in out:
        c.encoder = c.encoder.to(device).eval()
    return out, card


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


def store_cl_release(store: ShardStore) -> str | None:
    """The CL release a store was curated with (its manifest), None for a store that does
    not say (written by hand): the pinned release then."""
    return store.manifest.get("thresholds", {}).get("cl_release")


def _label_context(labels: pd.DataFrame, cl_release: str | None
                   ) -> tuple[np.ndarray, dict[int, int]]:
    """The descendant matrix of a label table's types (in the store's CL release) and the
    training abundance of each code."""
    labels = labels.sort_values("cell_type_code")
    onto = load_cell_ontology(cl_release)
    descendants = descendant_matrix(labels["cell_type_ontology_term_id"].astype(str).tolist(),
                                    onto.is_descendant)
    abundance = dict(zip(labels["cell_type_code"].astype(int), labels["n_train"].astype(int),
                         strict=True))
    return descendants, abundance


# -- evaluation on a shard store --------------------------------------------------------------


def _embed_store(encoders: list[Compared], store: ShardStore,
                 opts: EvalOptions) -> list[Embedded]:
    out = []
    for c in encoders:
        val = apply_to_split(c.encoder, store.path, "val", opts.batch_size, opts.device,
                             opts.workers)
        test = apply_to_split(c.encoder, store.path, "test", opts.batch_size, opts.device,
                              opts.workers)
        out.append(Embedded(c.role, c.name, test, val))
    pca = _store_pca(store, opts)
    project = _numpy_fn(pca.transform)
    out.append(Embedded(Role.PCA, PCA_NAME,
                        apply_to_split(project, store.path, "test", opts.batch_size, "cpu"),
                        apply_to_split(project, store.path, "val", opts.batch_size, "cpu"),
                        {"pca_cells_fitted": int(pca.n_samples_seen_)}))
    return out


def _store_pca(store: ShardStore, opts: EvalOptions) -> StreamingPCA:
    """The PCA baseline, fitted out of core on the store's training split."""
    return StreamingPCA(PCA_COMPONENTS, max_cells=opts.pca_max_cells, seed=opts.seed).fit(
        lambda: split_batches(store.path, "train", opts.batch_size, opts.workers), store.n_genes)


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


def evaluate_shards(run_dir: Path, shards: Path, opts: EvalOptions) -> Evaluation:
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
    descendants, abundance = _label_context(store.labels, store_cl_release(store))
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
        report["knn"][e.role] = {"name": e.name, **prediction_scores(
            test_y[query], pred, descendants, abundance, groups[query]), **e.extra}
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
            batches[query], baseline=PCA_NAME,
            max_cells=opts.integration_max_cells, seed=opts.seed)
    colour_by = {"cell type": test_obs["cell_type"].astype(str).to_numpy(),
                 "batch": test_obs[opts.batch_key or "dataset_id"].astype(str).to_numpy()}
    return Evaluation(report, embedded[0], colour_by)


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


def evaluate_h5ad(run_dir: Path, h5ad: Path, label_key: str, opts: EvalOptions,
                  reference: Path | None = None) -> Evaluation:
    """Unseen data. With ``reference`` (a shard store, the training distribution), the
    paper's protocol: each cell of the h5ad is classified by kNN against the store's
    validation cells and by the run's classifier head. Without it, the file's cells are
    classified among themselves (leave one ``batch_key`` group out, else 5 folds), which
    measures how separable the types are in the embedding, not transfer."""
    keys = (label_key,) + ((opts.batch_key,) if opts.batch_key else ())
    cells = load_unseen(h5ad, run_gene_space(run_dir), layer=opts.layer, required_obs=keys)
    log.info(f"{h5ad}: {cells.match.n_matched} of {cells.match.n_model_genes} model genes matched "
             f"(by {cells.match.column}), the rest zero-padded")
    encoders, card = encoders_to_compare(run_dir, opts.device)
    if reference is not None:
        return _unseen_against_reference(run_dir, h5ad, label_key, cells, encoders, card,
                                         open_shards(reference), opts)
    embedded = [Embedded(c.role, c.name, apply_to_matrix(c.encoder, cells.x, 4096, opts.device))
                for c in encoders]
    embedded.append(Embedded(Role.PCA, PCA_NAME, pca_of_cells(cells.x, opts.seed)))
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
        report["knn"][e.role] = {"name": e.name,
                                 **prediction_scores(y, pred, no_hierarchy, abundance, None)}
    report["cell_types"] = {i: str(n) for i, n in enumerate(names)}
    if card.get("task") == "celltype":
        report["classifier"] = _classifier_on_h5ad(run_dir, cells.x, labels, opts)
    if opts.batch_key:
        report["integration"] = integration_scores(
            {e.name: e.test for e in embedded}, labels, groups,
            baseline=PCA_NAME, max_cells=opts.integration_max_cells, seed=opts.seed)
    return Evaluation(report, embedded[0], {"cell type": labels, "batch": groups})


def _codes_of(labels: np.ndarray, table: pd.DataFrame) -> np.ndarray:
    """The code of each label in a label table, found by cell type name or CL term id;
    -1 where the table has no such type."""
    by_name = {str(n): int(c) for n, c in zip(table["cell_type"], table["cell_type_code"],
                                              strict=True)}
    by_name.update({str(t): int(c) for t, c in zip(table["cell_type_ontology_term_id"],
                                                    table["cell_type_code"], strict=True)})
    return np.array([by_name.get(str(lab), -1) for lab in labels], dtype=np.int64)


def _unseen_against_reference(run_dir: Path, h5ad: Path, label_key: str, cells: Any,
                              encoders: list[Compared], card: dict[str, Any], store: ShardStore,
                              opts: EvalOptions) -> Evaluation:
    """kNN of the h5ad's cells (queries) against the store's labelled validation cells
    (reference), every embedding; the head's predictions; hierarchy-aware with the store's
    CL release. Cells whose label names no type of the store are left out of the scores."""
    check_same_gene_space(card, store, f"run {run_dir}")
    labels = cells.adata.obs[label_key].astype(str).to_numpy()
    truth = _codes_of(labels, store.labels)
    known = truth >= 0
    if not known.any():
        raise UserError(f"no label of {h5ad} ({label_key}) names a cell type of {store.path}",
                        "give --label-key a column of the store's cell type names or CL "
                        "term ids, or evaluate without --shards")
    _, val_obs = store.split("val")
    val_y = val_obs["cell_type_code"].to_numpy().astype(np.int64)
    ref = val_y >= 0
    if ref.sum() < K:
        raise UserError(f"{store.path} has too few labelled validation cells for kNN",
                        "use a store with labelled cells in val")
    embedded = []
    for c in encoders:
        embedded.append(Embedded(
            c.role, c.name, apply_to_matrix(c.encoder, cells.x, 4096, opts.device),
            apply_to_split(c.encoder, store.path, "val", opts.batch_size, opts.device,
                           opts.workers)))
    pca = _store_pca(store, opts)
    embedded.append(Embedded(
        Role.PCA, PCA_NAME, np.asarray(pca.transform(cells.x), dtype=np.float32),
        apply_to_split(_numpy_fn(pca.transform), store.path, "val", opts.batch_size, "cpu"),
        {"pca_cells_fitted": int(pca.n_samples_seen_)}))
    descendants, abundance = _label_context(store.labels, store_cl_release(store))
    unmatched = sorted(set(labels[~known]))
    report: dict[str, Any] = {
        "run": str(run_dir), "h5ad": str(h5ad), "label_key": label_key, "k": K,
        "reference": str(store.path),
        "genes_matched": cells.match.n_matched, "gene_column": cells.match.column,
        "protocol": "each cell of the h5ad classified by kNN among the reference store's "
                    "labelled validation cells (the training distribution)",
        "n_reference": int(ref.sum()), "n_query": int(known.sum()),
        "labels_not_in_reference": unmatched,
        "knn": {}, "classifier": None,
        "cell_types": {int(k): str(v) for k, v in zip(store.labels["cell_type_code"],
                                                      store.labels["cell_type"], strict=True)},
    }
    for e in embedded:
        pred = knn_classify(e.val[ref], val_y[ref], e.test[known], k=K, device=opts.device,
                            show_progress=False)
        report["knn"][e.role] = {"name": e.name, **prediction_scores(
            truth[known], pred, descendants, abundance, None), **e.extra}
    if card.get("task") == "celltype":
        report["classifier"] = _classifier_on_h5ad(run_dir, cells.x, labels, opts,
                                                   store_cl_release(store))
    colour_by = {"cell type": labels, "batch": np.full(len(labels), "query")}
    return Evaluation(report, embedded[0], colour_by)


def _classifier_on_h5ad(run_dir: Path, x: Any, labels: np.ndarray, opts: EvalOptions,
                        cl_release: str | None = None) -> dict:
    """The head's predictions, scored where the file's labels name the run's cell types
    (by name or CL term id); files with their own vocabulary get the predictions counted."""
    model, _ = load_task(run_dir, device=opts.device)
    table = read_parquet(Path(run_dir) / "labels.parquet").sort_values("cell_type_code")
    pred = apply_to_matrix(model.logits, x, 4096, opts.device).argmax(1)
    truth = _codes_of(labels, table)
    predicted_names = table["cell_type"].astype(str).to_numpy()[pred]
    counts = pd.Series(predicted_names).value_counts().head(20)
    out: dict[str, Any] = {"predicted_types": {str(k): int(v) for k, v in counts.items()},
                           "labels_in_run_vocabulary": float((truth >= 0).mean())}
    known = truth >= 0
    if known.any():
        descendants, abundance = _label_context(table, cl_release)
        out["scored_on_known_labels"] = prediction_scores(truth[known], pred[known],
                                                          descendants, abundance, None)
    return out
