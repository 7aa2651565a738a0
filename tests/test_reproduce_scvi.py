"""scVI in `make reproduce`: a step beside the integration runs when the scvi extra is
installed, a row of the integration tables, the paper's "comparable to SSL-shallow" finding,
and a line on the page saying it was skipped when the extra is missing. Planning and page
logic only (no training): tests/test_data_scvi.py trains scVI itself."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from ssl_census.reproduce import runs as runs_module
from ssl_census.reproduce.config import load_reproduce_config
from ssl_census.reproduce.findings import MISSING, UNCLEAR, paper_findings
from ssl_census.reproduce.page import _scvi_line
from ssl_census.reproduce.results import (
    CLASSIFICATION_METRICS,
    INTEGRATION_METRICS,
    SCVI,
    Table,
    integration_tables,
    runs_root,
    ssl,
)
from ssl_census.reproduce.runs import Experiment, Inputs

CONF = load_reproduce_config("paper")
N_TRAIN = 2_100


def _experiment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, installed: bool) -> Experiment:
    monkeypatch.setattr(runs_module, "scvi_available",
                        lambda: (installed, "" if installed else "not installed"))
    monkeypatch.setattr(runs_module, "scvi_version", lambda: "1.4.2")
    monkeypatch.setattr(runs_module, "scvi_max_epochs", lambda n: 20_000 * 400 // n)
    monkeypatch.setattr(runs_module, "read_manifest",
                        lambda path: {"splits": {"train": {"n_cells": N_TRAIN}}})
    stores = {n: tmp_path / n for n in ("auxiliary", "kang", "integration")}
    views = {v.name: (tmp_path / f"{v.name}.h5ad", v.label_key, str(v.batch_key))
             for v in CONF.integration_sets}
    inputs = Inputs(stores=stores, unseen=(tmp_path / "unseen.h5ad", "cell_type"),
                    integration=views, data_dir=tmp_path)
    experiment = Experiment(CONF, tmp_path, inputs)
    experiment._id = str  # no data here: planning only
    return experiment


def test_scvi_trains_beside_the_integration_runs_and_is_scored_with_them(tmp_path, monkeypatch):
    steps = _experiment(tmp_path, monkeypatch, installed=True).steps("integration", 3)
    scvi = next(s for s in steps if s.what == "scVI seed 3")
    assert scvi.path == runs_root(CONF, tmp_path) / "seed3" / "integration" / "scvi"
    cfg = scvi.inputs["config"]
    # scvi-tools' default epochs for the training cells, the seed and covariate of the rows
    assert cfg["train"] == {"max_epochs": 20_000 * 400 // N_TRAIN, "seed": 3}
    assert cfg["batch_key"] == CONF.integration_batch_key and scvi.inputs["stage"] == "scvi"
    scores = [s for s in steps if s.kind == "scores"]
    assert len(scores) == len(CONF.integration_sets)
    for s in scores:  # a new scVI run makes the scores stale
        assert s.inputs["runs"][SCVI] == scvi.key
    assert steps.index(scvi) < min(steps.index(s) for s in scores)


def test_without_the_extra_there_is_no_scvi_step(tmp_path, monkeypatch):
    steps = _experiment(tmp_path, monkeypatch, installed=False).steps("integration", 0)
    assert not [s for s in steps if "scVI" in s.what]
    assert all(SCVI not in s.inputs["runs"] for s in steps if s.kind == "scores")


def test_scvi_scores_are_a_row_of_the_integration_table(tmp_path):
    view = CONF.integration_sets[0]
    path = runs_root(CONF, tmp_path) / "seed0" / "integration" / f"scores-{view.name}.json"
    scores = {"Total": 0.5, "Bio conservation": 0.5, "Batch correction": 0.5}
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"runs": {"unsupervised": "x", SCVI: "y/latent.npy"},
                                "scores": {"PCA-64": scores, "unsupervised": scores,
                                           SCVI: {**scores, "Total": 0.61}}}))
    table = integration_tables(CONF, tmp_path, [0])[view.name]
    assert table.rows[SCVI].values["Total"] == [0.61]


def _integration(shallow: list[float], scvi: list[float] | None) -> dict[str, Table]:
    table = Table("scIB", INTEGRATION_METRICS)
    for name, values in ((ssl("random_mask", shallow=True), shallow), (SCVI, scvi)):
        if values is None:
            continue
        row = table.row(name)
        for seed, v in enumerate(values):
            row.add(seed, Path(f"seed{seed}.json"),
                    {"Total": v, "Bio conservation": v, "Batch correction": v})
    table.row(ssl("random_mask"))
    table.row("unsupervised")
    table.row("PCA-64")
    return {"savercat": table}


def _scvi_finding(integration: dict[str, Table]):
    empty = Table("t", CLASSIFICATION_METRICS)
    found = paper_findings((), empty, empty, Table("c", ("Pearson",)), integration,
                           ("random_mask",), ())
    return next(f for f in found if f.paper == "scVI comparable to SSL-shallow")


def test_comparable_holds_when_neither_beats_the_other_beyond_the_noise():
    alike = _scvi_finding(_integration([0.50, 0.52, 0.49, 0.51, 0.50],
                                       [0.51, 0.50, 0.50, 0.52, 0.49]))
    assert [c.verdict for c in alike.comparisons] == [UNCLEAR]
    assert alike.holds() and alike.summary().startswith("holds")
    apart = _scvi_finding(_integration([0.60, 0.61, 0.62, 0.60, 0.61],
                                       [0.50, 0.50, 0.51, 0.50, 0.49]))
    assert not apart.holds() and apart.summary().startswith("does not hold")


def test_without_scvi_rows_the_finding_is_not_measured():
    found = _scvi_finding(_integration([0.5, 0.5], None))
    assert [c.verdict for c in found.comparisons] == [MISSING] and not found.holds()


def test_the_page_says_when_scvi_was_skipped_and_why():
    skipped = _scvi_line(CONF, SimpleNamespace(scvi=(False, "scvi-tools is not importable")))
    assert "skipped, the scvi extra is not installed" in skipped
    assert "scvi-tools is not importable" in skipped
    ran = _scvi_line(CONF, SimpleNamespace(scvi=(True, "")))
    assert "scvi-tools' `SCVI` with its defaults" in ran
    assert f"`{CONF.integration_batch_key}`" in ran

