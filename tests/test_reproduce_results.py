"""The results page reads evaluation reports by each embedding's role, never by its display
name, and a missing row is an error, not a silent "not measured"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ssl_census.core.errors import UserError
from ssl_census.reproduce.config import load_reproduce_config
from ssl_census.reproduce.findings import paper_findings
from ssl_census.reproduce.results import (
    Table,
    classification_table,
    cross_modality_table,
    integration_tables,
    runs_root,
)

CONF = load_reproduce_config("smoke")  # one seed, methods = random_mask


def _f1(value: float) -> dict:
    return {"plain": {"macro_f1": value, "micro_f1": value + 0.01}}


def _write(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report))


def _reports(work: Path, drop: str | None = None) -> None:
    """kang.json of the supervised run and of the random_mask run, seed 0; ``drop`` leaves
    one role out of the fine-tuned run's report."""
    runs = runs_root(CONF, work) / "seed0" / "celltype"
    # display names that a prefix rule would misread: the run's own method looks like PCA
    _write(runs / "supervised" / "evaluation" / "kang.json", {
        "knn": {"run": {"name": "PCA-like:celltype", **_f1(0.80)},
                "random_init": {"name": "random-init", **_f1(0.50)},
                "pca": {"name": "PCA-64", **_f1(0.70)}},
        "classifier": _f1(0.75)})
    knn = {"run": {"name": "finetune:celltype", **_f1(0.85)},
           "zero_shot": {"name": "zero-shot random_mask", **_f1(0.65)},
           "random_init": {"name": "random-init", **_f1(0.50)},
           "pca": {"name": "PCA-64", **_f1(0.70)}}
    knn.pop(drop, None)
    _write(runs / "random_mask" / "evaluation" / "kang.json",
           {"knn": knn, "classifier": _f1(0.9)})


def _macro(table: Table) -> dict[str, float]:
    return {name: row.values["macro F1"][0] for name, row in table.rows.items()}


def test_rows_are_read_by_role(tmp_path):
    _reports(tmp_path)
    table = classification_table(CONF, tmp_path, [0], "kang", "kang")
    assert _macro(table) == {
        "random-init encoder, kNN": 0.50, "PCA-64, kNN": 0.70, "supervised, kNN": 0.80,
        "supervised, classifier": 0.75, "zero-shot random_mask, kNN": 0.65,
        "fine-tuned random_mask, kNN": 0.85, "fine-tuned random_mask, classifier": 0.9}


def test_a_report_without_an_expected_embedding_is_an_error(tmp_path):
    _reports(tmp_path, drop="zero_shot")
    with pytest.raises(UserError, match=r"random_mask/evaluation/kang.json has no kNN scores "
                                        r"of the zero_shot embedding"):
        classification_table(CONF, tmp_path, [0], "kang", "kang")


def test_integration_scores_without_an_expected_row_are_an_error(tmp_path):
    conf = load_reproduce_config("paper")
    view = conf.integration_sets[0]
    path = runs_root(conf, tmp_path) / "seed0" / "integration" / f"scores-{view.name}.json"
    scores = {"Total": 0.5, "Bio conservation": 0.5, "Batch correction": 0.5}
    _write(path, {"runs": {"unsupervised": "x", "SSL random_mask": "y"},
                  "scores": {"PCA-64": scores, "unsupervised": scores}})
    with pytest.raises(UserError, match="no row 'SSL random_mask'"):
        integration_tables(conf, tmp_path, [0])


def test_findings_refuse_a_row_the_tables_never_hold(tmp_path):
    _reports(tmp_path)
    transfer = classification_table(CONF, tmp_path, [0], "kang", "kang")
    unseen = Table("unseen", ("macro F1", "micro F1"))  # not run yet: "not measured" is right
    cross = cross_modality_table(CONF, tmp_path, [0])
    found = paper_findings(CONF.methods, transfer, unseen, cross, {}, (), ())
    assert found  # complete tables and empty ones are fine
    del transfer.rows["zero-shot random_mask, kNN"]
    with pytest.raises(ValueError, match="no row 'zero-shot random_mask, kNN'"):
        paper_findings(CONF.methods, transfer, unseen, cross, {}, (), ())
