"""The numbers of the page, read back from the runs' own reports (never recomputed here).

A :class:`Table` has one row per model; a row holds, per metric, one value per seed and the
report file each value came from, so the page can show mean +- sd and link every source.
Reports are read by what each embedding is (``evaluation.report.Role``), never by how it is
displayed, and a report that lacks an expected embedding is an error, not an empty cell.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssl_census.core.errors import UserError
from ssl_census.evaluation.report import PCA_NAME, Role
from ssl_census.reproduce.config import ReproduceConfig
from ssl_census.tasks.cross_modality import SCORES

DONE = "reproduce-step.json"  # written last into a finished training run (reproduce.runs)

# Metrics of the classification tables: the hierarchy-aware macro F1 is the headline (the
# paper's figures), plain macro and micro F1 beside it. Macro F1 averages over the classes
# that are true or predicted (core.metrics.classification_scores).
MACRO_F1 = "macro F1 (hierarchy-aware)"
PLAIN_MACRO_F1 = "macro F1 (plain)"
MICRO_F1 = "micro F1"
CLASSIFICATION_METRICS = (MACRO_F1, PLAIN_MACRO_F1, MICRO_F1)

# Row names of the classification tables (the findings look rows up by the same names).
SUPERVISED = "supervised"
RANDOM_INIT = "random-init encoder"
KNN, CLASSIFIER = "kNN", "classifier"


def zero_shot(method: str) -> str:
    return f"zero-shot {method}"


def fine_tuned(method: str) -> str:
    return f"fine-tuned {method}"


def row_name(model: str, how: str) -> str:
    """A classification row: a model (supervised, zero-shot m, ...) and how it classifies."""
    return f"{model}, {how}"


# Metrics of the cross-modality table: Pearson over all entries (dominated by the differences
# between protein means, which predicting the mean already gets), per protein across cells
# (averaged over proteins: whether a model learnt anything beyond the means; undefined for
# the mean baseline) and per cell across proteins.
PER_PROTEIN = "Pearson per protein"
CROSS_METRICS = ("Pearson", PER_PROTEIN, "Pearson per cell")

# Rows of the cross-modality and integration tables.
MEAN_BASELINE = "predict the mean"
NO_PRETRAINING = "no pre-training (random init)"
UNSUPERVISED = "unsupervised"
SCVI = "scVI"  # scvi-tools' SCVI trained on the integration store (evaluation.scvi_baseline)


def ssl(method: str, shallow: bool = False) -> str:
    """The row of a model fine-tuned from ``method``'s pre-training (only its last encoder
    layer with ``shallow``)."""
    return f"SSL-shallow {method}" if shallow else f"SSL {method}"


@dataclass
class Row:
    name: str
    values: dict[str, list[float]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)
    sources: list[Path] = field(default_factory=list)

    def add(self, seed: int, source: Path, scores: dict[str, float]) -> None:
        for metric, v in scores.items():
            self.values.setdefault(metric, []).append(float(v))
        self.seeds.append(seed)
        self.sources.append(source)

    def by_seed(self, metric: str) -> dict[int, float]:
        return dict(zip(self.seeds, self.values.get(metric, []), strict=False))


@dataclass
class Table:
    title: str
    metrics: tuple[str, ...]
    rows: dict[str, Row] = field(default_factory=dict)

    def row(self, name: str) -> Row:
        return self.rows.setdefault(name, Row(name))

    def add(self, name: str, seed: int, source: Path, scores: dict[str, float]) -> None:
        self.row(name).add(seed, source, {m: scores[m] for m in self.metrics})


def mean_sd(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, sd


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def knn_scores(report: dict[str, Any], role: Role, source: Path) -> dict[str, Any]:
    """The kNN scores of the embedding with ``role`` in an evaluation report."""
    scores = report.get("knn", {}).get(role)
    if scores is None:
        raise UserError(f"the evaluation report {source} has no kNN scores of the {role} "
                        f"embedding (it has {', '.join(report.get('knn', {})) or 'none'})",
                        "delete the report and run make reproduce again")
    return scores


def _f1(scores: dict[str, Any]) -> dict[str, float]:
    return {MACRO_F1: scores["hierarchy_aware"]["macro_f1"],
            PLAIN_MACRO_F1: scores["plain"]["macro_f1"], MICRO_F1: scores["plain"]["micro_f1"]}


def runs_root(conf: ReproduceConfig, work: Path) -> Path:
    """Runs of one config (configs extending one another share the data under ``work``)."""
    return work / "runs" / conf.name


def _seed_dir(conf: ReproduceConfig, work: Path, seed: int) -> Path:
    return runs_root(conf, work) / f"seed{seed}"


def classification_table(conf: ReproduceConfig, work: Path, seeds: list[int], report: str,
                         title: str) -> Table:
    """kNN and classifier-head F1 of the cell-type runs, from ``evaluation/<report>.json``."""
    table = Table(title, CLASSIFICATION_METRICS)
    for seed in seeds:
        runs = _seed_dir(conf, work, seed) / "celltype"
        sup_path = runs / "supervised" / "evaluation" / f"{report}.json"
        sup = _read(sup_path)
        if sup is None:
            continue
        rows = {RANDOM_INIT: Role.RANDOM_INIT, PCA_NAME: Role.PCA, SUPERVISED: Role.RUN}
        for model, role in rows.items():
            table.add(row_name(model, KNN), seed, sup_path, _f1(knn_scores(sup, role, sup_path)))
        if classifier_scores(sup):
            table.add(row_name(SUPERVISED, CLASSIFIER), seed, sup_path,
                      _f1(classifier_scores(sup)))
        for method in (*conf.methods, *conf.variants):
            path = runs / method / "evaluation" / f"{report}.json"
            rep = _read(path)
            if rep is None:
                continue
            for model, role in ((zero_shot(method), Role.ZERO_SHOT),
                                (fine_tuned(method), Role.RUN)):
                table.add(row_name(model, KNN), seed, path, _f1(knn_scores(rep, role, path)))
            if classifier_scores(rep):
                table.add(row_name(fine_tuned(method), CLASSIFIER), seed, path,
                          _f1(classifier_scores(rep)))
    return table


def classifier_scores(report: dict[str, Any]) -> dict[str, Any] | None:
    """The head's scores (plain and hierarchy-aware): on a store ``classifier``; on an h5ad
    the part of the cells whose labels the run knows (``classifier.scored_on_known_labels``)."""
    c = report.get("classifier")
    if not c:
        return None
    return c if "plain" in c else c.get("scored_on_known_labels")


def cross_modality_table(conf: ReproduceConfig, work: Path, seeds: list[int]) -> Table:
    table = Table("RNA to protein, test cells", CROSS_METRICS)
    for seed in seeds:
        runs = _seed_dir(conf, work, seed) / "cross_modality"
        base_path = runs / "random" / SCORES
        base = _read(base_path)
        if base is None:
            continue
        table.add(MEAN_BASELINE, seed, base_path, _pearsons(base["mean_baseline"]))
        table.add(NO_PRETRAINING, seed, base_path, _pearsons(base["model"]))
        for method in conf.cross_modality_methods:
            path = runs / method / SCORES
            rep = _read(path)
            if rep is not None:
                table.add(ssl(method), seed, path, _pearsons(rep["model"]))
    return table


def _pearsons(scores: dict[str, Any]) -> dict[str, float]:
    # predicting the mean is constant per protein: its per-protein correlation is undefined
    return {"Pearson": scores["pearson"],
            PER_PROTEIN: scores.get("pearson_per_feature_mean", math.nan),
            "Pearson per cell": scores["pearson_per_cell_mean"]}


INTEGRATION_METRICS = ("Bio conservation", "Batch correction", "Total")


def integration_tables(conf: ReproduceConfig, work: Path, seeds: list[int]) -> dict[str, Table]:
    tables = {}
    for view in conf.integration_sets:
        table = Table(f"scIB on {view.name}", INTEGRATION_METRICS)
        for seed in seeds:
            path = _seed_dir(conf, work, seed) / "integration" / f"scores-{view.name}.json"
            rep = _read(path)
            if rep is None or "scores" not in rep:  # not run yet, or scib-metrics missing
                continue
            for name in [PCA_NAME, *rep["runs"]]:
                if name not in rep["scores"]:
                    raise UserError(f"the integration scores {path} have no row {name!r}",
                                    "delete them and run make reproduce again")
                table.add(name, seed, path, rep["scores"][name])
        tables[view.name] = table
    return tables


STAGES = {"pretrain": "pre-training", "celltype": "cell type",
          "cross_modality": "cross-modality", "integration": "integration", "scvi": SCVI}


@dataclass
class Training:
    """How long the finished runs of one stage trained, and the limits they were given (the
    resolved ``[train]`` table and batch size of the first run)."""

    limits: dict[str, Any]
    steps: list[int] = field(default_factory=list)
    stopped_early: int = 0


def training_lengths(conf: ReproduceConfig, work: Path) -> dict[str, Training]:
    """Per stage (pretrain, celltype, ...), the steps its finished runs trained, read from the
    runs' own records."""
    out: dict[str, Training] = {}
    for seed in conf.seeds:
        for marker in sorted(_seed_dir(conf, work, seed).glob(f"*/*/{DONE}")):
            record = json.loads(marker.read_text())
            stage, cfg = record["inputs"]["stage"], record["inputs"]["config"]
            limits = {**cfg.get("train", {}), "batch_size": cfg.get("data", {}).get("batch_size")}
            t = out.setdefault(stage, Training(limits))
            t.steps.append(int(record["summary"]["step"]))
            t.stopped_early += bool(record["summary"].get("stopped_early"))
    return out


def masked_fractions(conf: ReproduceConfig, work: Path) -> dict[str, float]:
    """Per masking method, the realised share of hidden input genes during pre-training
    (``masked_fraction`` of its logged training steps, all seeds), read from the runs."""
    out: dict[str, list[float]] = {}
    for seed in conf.seeds:
        for method in conf.methods:
            metrics = _seed_dir(conf, work, seed) / "pretrain" / method / "metrics.jsonl"
            if not metrics.is_file():
                continue
            for line in metrics.read_text().splitlines():
                record = json.loads(line)
                if record.get("split") == "train" and "masked_fraction" in record:
                    out.setdefault(method, []).append(float(record["masked_fraction"]))
    return {m: sum(v) / len(v) for m, v in out.items()}


def step_seconds(conf: ReproduceConfig, work: Path) -> float:
    """Compute time recorded by every finished run and evaluation under ``work``."""
    total = 0.0
    for path in runs_root(conf, work).rglob("*.json"):
        if path.name == DONE or path.parent.name == "evaluation" or path.name.startswith("scores-"):
            total += float(json.loads(path.read_text()).get("seconds", 0.0))
    return total


VALUES_COLUMNS = ("table", "row", "metric", "seed", "value", "report")


def values_csv(tables: list[Table], work: Path) -> str:
    """Every value the page's tables are made of, one line per table, row, metric and seed,
    with the run report it was read from (relative to the work directory): the compact
    results file committed beside the page, so a reader of the repository can check every
    mean and test without the work directory."""
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(VALUES_COLUMNS)
    for table in tables:
        for row in table.rows.values():
            for metric in table.metrics:
                for seed, value, source in zip(row.seeds, row.values[metric], row.sources,
                                               strict=True):
                    out.writerow((table.title, row.name, metric, seed,
                                  "" if math.isnan(value) else repr(float(value)),
                                  _relative(source, work)))
    return buf.getvalue()


def _relative(path: Path, work: Path) -> str:
    try:
        return path.resolve().relative_to(work.resolve()).as_posix()
    except ValueError:
        return str(path)
