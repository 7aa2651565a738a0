"""The results page reads evaluation reports by each embedding's role, never by its display
name, and a missing row is an error, not a silent "not measured"."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest

from ssl_census.core.errors import UserError
from ssl_census.reproduce.config import load_reproduce_config
from ssl_census.reproduce.findings import (
    CONTRADICTED,
    HOLDS,
    UNCLEAR,
    compare,
    holm,
    paper_findings,
)
from ssl_census.reproduce.results import (
    CLASSIFICATION_METRICS,
    CLASSIFIER,
    KNN,
    MACRO_F1,
    PLAIN_MACRO_F1,
    Row,
    Table,
    classification_table,
    cross_modality_table,
    fine_tuned,
    integration_tables,
    row_name,
    runs_root,
    values_csv,
    zero_shot,
)

CONF = load_reproduce_config("smoke")  # one seed, methods = random_mask


def _f1(value: float) -> dict:
    """Scores whose hierarchy-aware macro F1 is ``value`` (the plain one a little lower)."""
    return {"hierarchy_aware": {"macro_f1": value, "micro_f1": value + 0.01},
            "plain": {"macro_f1": value - 0.05, "micro_f1": value + 0.01}}


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
    return {name: row.values[MACRO_F1][0] for name, row in table.rows.items()}


def test_rows_are_read_by_role(tmp_path):
    _reports(tmp_path)
    table = classification_table(CONF, tmp_path, [0], "kang", "kang")
    assert _macro(table) == {
        "random-init encoder, kNN": 0.50, "PCA-64, kNN": 0.70, "supervised, kNN": 0.80,
        "supervised, classifier": 0.75, "zero-shot random_mask, kNN": 0.65,
        "fine-tuned random_mask, kNN": 0.85, "fine-tuned random_mask, classifier": 0.9}
    # the hierarchy-aware macro F1 is the headline, the plain one beside it
    assert table.rows["supervised, kNN"].values[PLAIN_MACRO_F1] == [pytest.approx(0.75)]


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
    unseen = Table("unseen", CLASSIFICATION_METRICS)  # not run yet: "not measured" is right
    cross = cross_modality_table(CONF, tmp_path, [0])
    found = paper_findings(CONF.methods, transfer, unseen, cross, {}, (), ())
    assert found  # complete tables and empty ones are fine
    del transfer.rows["zero-shot random_mask, kNN"]
    with pytest.raises(ValueError, match="no row 'zero-shot random_mask, kNN'"):
        paper_findings(CONF.methods, transfer, unseen, cross, {}, (), ())


def _row(name: str, values: list[float], metric: str = MACRO_F1) -> Row:
    row = Row(name)
    for seed, v in enumerate(values):
        row.add(seed, Path(f"runs/seed{seed}/{name}.json"), {metric: v})
    return row


def _spread(mean: float, step: float) -> list[float]:
    """Five paired differences around ``mean``: sd = step * 1.58, se = step * 0.71."""
    return [mean + k * step for k in (-2, -1, 0, 1, 2)]


def test_a_difference_inside_the_t_interval_is_not_resolved():
    # mean / se = 2.3: outside two standard errors (the old rule said "holds") but inside the
    # 95 % t interval with 4 degrees of freedom (t = 2.78)
    base = _row("b", [0.5] * 5)
    c = compare(_row("a", [0.5 + d for d in _spread(0.01626, 0.01)]), base)
    assert c.mean - 2 * c.sd / math.sqrt(5) > 0
    assert c.verdict == UNCLEAR and 0.05 < c.p < 0.1
    assert c.half_width == pytest.approx(2.776 * c.sd / math.sqrt(5), rel=1e-3)
    text = c.text()
    assert "95 % CI [" in text and f"p = {c.p:.3f}" in text and "Holm-adjusted" in text
    clear = compare(_row("a", [0.5 + d for d in _spread(0.05, 0.01)]), base)
    assert clear.verdict == HOLDS
    assert compare(base, _row("a", [0.5 + d for d in _spread(0.05, 0.01)])).verdict == CONTRADICTED


def test_holm_controls_the_family_of_comparisons():
    base = _row("b", [0.5] * 5)
    # three differences each significant alone (p about 0.02), not as a family of three
    family = [compare(_row(f"a{i}", [0.5 + d for d in _spread(0.0265, 0.01)]), base)
              for i in range(3)]
    assert all(c.verdict == HOLDS and c.p < 0.05 for c in family)
    strong = compare(_row("s", [0.5 + d for d in _spread(0.2, 0.01)]), base)
    holm([*family, strong])
    assert strong.verdict == HOLDS and strong.p_adjusted == pytest.approx(4 * strong.p)
    assert all(c.verdict == UNCLEAR for c in family)
    assert all(c.p_adjusted == pytest.approx(min(1.0, 3 * c.p)) for c in family)


def _transfer_table(methods, value) -> Table:
    """A complete transfer table: every row the findings read, five seeds."""
    table = Table("kang", CLASSIFICATION_METRICS)
    names = [row_name(m, KNN) for m in ("random-init encoder", "PCA-64", "supervised")]
    names.append(row_name("supervised", CLASSIFIER))
    for m in methods:
        names += [row_name(zero_shot(m), KNN), row_name(fine_tuned(m), KNN),
                  row_name(fine_tuned(m), CLASSIFIER)]
    for name in names:
        for seed in range(5):
            table.add(name, seed, Path("x"), dict.fromkeys(CLASSIFICATION_METRICS,
                                                           value(name, seed)))
    return table


def test_method_groups_are_compared_method_against_method():
    conf = load_reproduce_config("paper")
    transfer = _transfer_table(conf.methods, lambda name, seed: 0.5 + 0.01 * seed)
    found = paper_findings(conf.methods, transfer, Table("u", CLASSIFICATION_METRICS),
                           Table("c", ("Pearson",)), {}, (), ())
    by_claim = {f.claim.split(" (")[0].split(" is at least")[0]: f for f in found}
    pairs = {(c.better, c.worse) for c in by_claim["Masked autoencoders"].comparisons}
    expected = {(row_name(model(a), how), row_name(model(b), how))
                for model, how in ((zero_shot, KNN), (fine_tuned, CLASSIFIER))
                for a in ("random_mask", "gp_mask") for b in ("byol", "barlow")}
    assert pairs == expected  # no averaged "masking" row, the isolated methods not in it
    gp = [f for f in found if f.claim.startswith("Random masking is at least as good as gene")]
    assert {(c.better, c.worse) for c in gp[0].comparisons} == {
        (row_name(zero_shot("random_mask"), KNN), row_name(zero_shot("gp_mask"), KNN)),
        (row_name(fine_tuned("random_mask"), CLASSIFIER),
         row_name(fine_tuned("gp_mask"), CLASSIFIER))}
    isolated = [f for f in found if "isolated" in f.claim]
    assert {c.worse for c in isolated[0].comparisons} == {
        row_name(model(m), how) for model, how in ((zero_shot, KNN), (fine_tuned, CLASSIFIER))
        for m in ("gp_to_gp", "gp_to_tf")}


def test_values_file_holds_every_value_of_the_tables(tmp_path):
    _reports(tmp_path)
    work = tmp_path
    transfer = classification_table(CONF, work, [0], "kang", "kang")
    rows = list(csv.DictReader(io.StringIO(values_csv([transfer], work))))
    assert len(rows) == len(transfer.rows) * len(CLASSIFICATION_METRICS)
    for r in rows:
        assert r["table"] == "kang" and r["seed"] == "0"
        assert float(r["value"]) == transfer.rows[r["row"]].by_seed(r["metric"])[0]
        assert (work / r["report"]).is_file() and not Path(r["report"]).is_absolute()


def test_a_variant_runs_its_method_with_other_options_and_gets_its_own_finding(tmp_path):
    from ssl_census.reproduce.runs import Experiment, Inputs

    conf = load_reproduce_config("paper")
    variant = conf.variants["random_mask_unscaled"]
    assert variant.method == "random_mask" and variant.options == {"rescale": False}
    stores = {n: tmp_path / n for n in ("auxiliary", "kang", "integration")}
    inputs = Inputs(stores=stores, unseen=(tmp_path / "unseen.h5ad", "cell_type"),
                    integration={}, data_dir=tmp_path)
    experiment = Experiment(conf, tmp_path, inputs)
    experiment._id = str  # no data here: planning only
    pre = experiment.pretrain(0, "random_mask_unscaled")
    assert pre.path.name == "random_mask_unscaled"
    assert pre.inputs["config"]["method"] == "random_mask"
    assert pre.inputs["config"]["options"]["rescale"] is False
    assert experiment.pretrain(0, "random_mask").inputs["config"]["options"]["rescale"] is True
    steps = experiment.steps("transfer", 0)
    names = {s.what for s in steps}
    assert "finetune celltype random_mask_unscaled seed 0" in names
    unseen = next(s for s in steps if s.what == "evaluate random_mask seed 0 (unseen)")
    assert unseen.inputs["reference"] == str(stores["kang"])  # against kang's val cells
    transfer = _transfer_table((*conf.methods, "random_mask_unscaled"),
                               lambda name, seed: 0.5 + 0.01 * seed)
    found = paper_findings(conf.methods, transfer, Table("u", CLASSIFICATION_METRICS),
                           Table("c", ("Pearson",)), {}, (), (), conf.variants)
    mine = [f for f in found if f.claim == variant.claim]
    assert len(mine) == 1 and {c.worse for c in mine[0].comparisons} == {
        row_name(zero_shot("random_mask_unscaled"), KNN),
        row_name(fine_tuned("random_mask_unscaled"), CLASSIFIER)}


def test_page_names_the_types_the_release_keeps_of_scTabs_and_the_stores_kept():
    from ssl_census.reproduce.facts import StoreFacts
    from ssl_census.reproduce.page import sctab_lines
    from ssl_census.shards.curation import compare_with_sctab

    sctab = compare_with_sctab()
    kang = StoreFacts("kang", Path("kang"), "include kang", (1, 1, 1), (1, 1, 1),
                      (("CL:0000236", "B cell"), ("CL:0000556", "megakaryocyte")), 3)
    lines = sctab_lines(sctab, [kang])
    text = "\n".join(lines)
    n_pass = len(sctab.passing)
    assert f"{n_pass} of scTab's 164 cell types pass" in lines[0]
    assert all(line in lines[0] for line in sctab.failure_lines())
    assert "leukocyte (CL:0000738): " in lines[0]  # a coarse type fails on depth
    assert "obsolete, replaced by CL:4023064" in text
    assert lines[-1] == ("  - **kang** keeps 2 types (more than 3 ancestors), 1 of them among "
                         "scTab's: B cell (CL:0000236), megakaryocyte (CL:0000556, not in "
                         "scTab).")
