"""`make reproduce` orchestration on a tiny configuration (configs/reproduce/smoke.toml) over the
real local census: the page is generated, every number links to a run report that holds it,
the stores hold the datasets they were asked for, and a rerun redoes nothing."""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path

import pytest
from scipy import stats

from ssl_census.core.errors import UserError
from ssl_census.reproduce.data import digest
from ssl_census.reproduce.findings import (
    CONTRADICTED,
    HOLDS,
    ONE_SEED,
    UNCLEAR,
    Finding,
    compare,
    in_short,
)
from ssl_census.reproduce.results import MACRO_F1, Row

KANG_CTRL = "Kang et al. 2018 PBMC, control (muscat)"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory, real_census_uri: str, shared_data: Path):
    from ssl_census.reproduce.pipeline import reproduce

    root = tmp_path_factory.mktemp("reproduce")
    page = root / "docs" / "results.md"
    reproduce("smoke", root / "work", page, shared_data, census_uri=real_census_uri)
    return root / "work", page, real_census_uri, shared_data


def _rows(text: str, section: str) -> dict[str, str]:
    body = text.split(section, 1)[1].split("\n## ", 1)[0]
    return {line.split("|")[1].strip(): line for line in body.splitlines()
            if line.startswith("| ") and "±" in line}


def test_page_has_every_table_and_the_findings(smoke) -> None:
    _, page, _, _ = smoke
    text = page.read_text()
    transfer = _rows(text, "## 1. Transfer")
    assert {"random-init encoder, kNN", "PCA-64, kNN", "supervised, kNN", "supervised, classifier",
            "zero-shot random_mask, kNN", "fine-tuned random_mask, kNN",
            "fine-tuned random_mask, classifier"} <= set(transfer)
    assert "fine-tuned random_mask, classifier" in _rows(text, "## 2. Unseen data")
    assert {"predict the mean", "no pre-training (random init)", "SSL random_mask"} <= set(
        _rows(text, "## 3. Cross-modality"))
    findings = text.split("## Which of the paper's findings hold", 1)[1].split("\n## ", 1)[0]
    assert "one seed only" in findings  # one seed: no uncertainty claimed
    assert "**Seeds**: 0 " in text and "**Run time**" in text and "**Versions**" in text
    assert "With one seed there is no uncertainty estimate" in findings
    assert "pre-training: batch 256, at most" in text and "run(s) trained 4-4 steps" in text
    limits = text.split("## How this differs from the paper", 1)[1].split("\n## ", 1)[0]
    # the stimulated cells come from kang donors 101 and 107, both fine-tuning donors
    assert "their donors (101, 107) are among kang's fine-tuning donors" in limits
    assert "has 14 proteins" in limits
    # scTab's types under its ontology rule in the stores' release, and each store's types
    assert "of scTab's 164 cell types pass the ontology part of its rule" in limits
    assert "- **kang** keeps " in limits and "megakaryocyte (CL:0000556, not in scTab)" in limits
    assert (page.parent / "results" / "transfer-macro-f1.png").stat().st_size > 1000


def test_every_number_comes_from_the_committed_values_file(smoke) -> None:
    """The page links no file of the work directory (not in the repository); its numbers
    are the values of docs/results/values.csv, each with the run report that holds it."""
    work, page, _, _ = smoke
    text = page.read_text()
    targets = re.findall(r"\]\(([^)]+)\)", text)
    assert targets and all(not (page.parent / t).resolve().is_relative_to(work.resolve())
                           for t in targets)
    assert "[results/values.csv](results/values.csv)" in text
    values = list(csv.DictReader((page.parent / "results" / "values.csv").open()))
    rows = [line for line in text.splitlines() if line.startswith("| ") and "±" in line]
    assert len(rows) >= 12 and len(values) >= len(rows)
    # a value on the page is the value in its report (one seed: mean = the value)
    row = _rows(text, "## 1. Transfer")["fine-tuned random_mask, classifier"]
    shown = float(row.split("|")[2].split("±")[0])
    line = next(v for v in values if v["row"] == "fine-tuned random_mask, classifier"
                and v["table"] == "Held-out kang donors" and v["metric"] == MACRO_F1)
    assert shown == pytest.approx(float(line["value"]), abs=5e-4)
    report = json.loads((work / line["report"]).read_text())
    assert float(line["value"]) == report["classifier"]["hierarchy_aware"]["macro_f1"]
    unseen = json.loads((work / next(v["report"] for v in values
                                     if v["table"] == "Stimulated kang cells")).read_text())
    assert "validation cells" in unseen["protocol"] and unseen["n_reference"] > 0


def test_stores_hold_the_selected_datasets_only(smoke) -> None:
    from ssl_census.census.open import open_census
    from ssl_census.shards.store import open_shards

    work, _, census, _ = smoke
    with open_census(uri=census) as c:
        datasets = c["census_info"]["datasets"].read().concat().to_pandas()
    kang_ids = set(datasets.loc[datasets["collection_name"].str.startswith("Kang"), "dataset_id"])
    ctrl = set(datasets.loc[datasets["dataset_title"] == KANG_CTRL, "dataset_id"])
    seen = {}
    for name in ("auxiliary", "kang"):
        store = open_shards(work / "shards" / name)
        seen[name] = set().union(*(set(store.split(s)[1]["dataset_id"].astype(str))
                                   for s in ("train", "val", "test")))
    assert seen["kang"] == ctrl
    assert seen["auxiliary"] and not seen["auxiliary"] & kang_ids
    cite = set(datasets.loc[datasets["dataset_title"].str.startswith("10x PBMC 10k"),
                            "dataset_id"])
    assert len(cite) == 1 and not seen["auxiliary"] & cite  # the cross-modality target
    genes = (work / "genes.txt").read_text().split()
    assert len(open_shards(work / "shards" / "kang").var) == len(genes) < 2000


def test_a_rerun_redoes_nothing(smoke, caplog: pytest.LogCaptureFixture) -> None:
    from ssl_census.reproduce.pipeline import reproduce

    work, page, census, data = smoke
    markers = {p: p.stat().st_mtime_ns for p in (work / "runs").rglob("reproduce-step.json")}
    with caplog.at_level(logging.INFO, logger="ssl_census"):
        reproduce("smoke", work, page, data, census_uri=census)
    out = caplog.text
    assert "[run]" not in out and "[eval]" not in out and "[skip]" in out
    assert markers == {p: p.stat().st_mtime_ns for p in markers}


def test_a_changed_setting_redoes_only_the_steps_it_touches(smoke, tmp_path,
                                                             caplog: pytest.LogCaptureFixture):
    import shutil

    from ssl_census.reproduce.pipeline import reproduce

    work, _, census, data = smoke
    copy = tmp_path / "work"
    shutil.copytree(work, copy)
    changed = tmp_path / "changed.toml"  # the smoke config with shorter cell-type fine-tuning
    changed.write_text('extends = "smoke"\nname = "smoke"\n'
                       "[finetune.celltype]\ntrain = { max_steps = 3 }\n")
    page = tmp_path / "docs" / "results.md"
    with caplog.at_level(logging.INFO, logger="ssl_census"):
        reproduce(changed, copy, page, data, census_uri=census)
    out = caplog.text
    assert "[skip] pretrain random_mask seed 0" in out
    assert "[skip] finetune cross_modality random seed 0" in out
    for name in ("supervised", "random_mask"):
        assert f"[stale] finetune celltype {name} seed 0" in out
        assert f"[run] finetune celltype {name} seed 0" in out
        assert f"[eval] evaluate {name} seed 0 (kang)" in out
        run = copy / "runs" / "smoke" / "seed0" / "celltype" / name
        marker = json.loads((run / "reproduce-step.json").read_text())
        assert marker["inputs"]["config"]["train"]["max_steps"] == 3
        assert marker["summary"]["step"] == 3
        report = json.loads((run / "evaluation" / "kang.json").read_text())
        assert report["reproduce_key"] == digest(report["reproduce_inputs"])
        assert report["reproduce_inputs"]["run"] == marker["key"]
    assert "cell type: batch 256, at most 10 epochs or 3 steps" in page.read_text()
    # the untouched original keeps its 4-step runs
    original = work / "runs" / "smoke" / "seed0" / "celltype" / "supervised"
    assert json.loads((original / "reproduce-step.json").read_text())["summary"]["step"] == 4


def test_a_dataset_name_that_matches_nothing_is_refused(real_census_uri: str) -> None:
    from ssl_census.census.open import open_census
    from ssl_census.shards.selection import select_datasets
    from ssl_census.shards.source import read_datasets, read_eligible_obs

    with open_census(uri=real_census_uri) as c:
        datasets = read_datasets(c)
        obs = read_eligible_obs(c, "is_primary_data == True")
    kept = select_datasets(obs, datasets, (KANG_CTRL,), ())
    assert set(kept["dataset_id"].astype(str)) == set(
        datasets.loc[datasets["dataset_title"] == KANG_CTRL, "dataset_id"])
    with pytest.raises(UserError, match="names no dataset"):
        select_datasets(obs, datasets, (), ("Kang et al. 2018",))


def _row(name: str, values: dict[int, float]) -> Row:
    row = Row(name)
    for seed, v in values.items():
        row.add(seed, Path("x"), {"m": v})
    return row


def test_verdicts_follow_the_paired_differences() -> None:
    a = _row("a", {0: 0.80, 1: 0.82, 2: 0.81})
    assert compare(a, _row("b", {0: 0.70, 1: 0.71, 2: 0.72}), "m").verdict == HOLDS
    assert compare(_row("b", {0: 0.70, 1: 0.71, 2: 0.72}), a, "m").verdict == CONTRADICTED
    noisy = compare(a, _row("c", {0: 0.90, 1: 0.70, 2: 0.80}), "m")
    assert noisy.verdict == UNCLEAR and noisy.n == 3
    # only seeds both rows have are paired; one seed has no uncertainty estimate
    assert compare(a, _row("d", {1: 0.5}), "m").n == 1
    assert compare(a, _row("d", {1: 0.5}), "m").verdict == ONE_SEED


def test_in_short_sorts_findings_by_verdict_and_states_the_uncertainty() -> None:
    base = _row("base", {0: 0.70, 1: 0.71, 2: 0.72})
    better = compare(_row("a", {0: 0.80, 1: 0.82, 2: 0.81}), base, "m")
    worse = compare(_row("c", {0: 0.60, 1: 0.60, 2: 0.62}), base, "m")
    noisy = compare(_row("d", {0: 0.90, 1: 0.60, 2: 0.70}), base, "m")
    text = "\n".join(in_short([Finding("A wins", "", [better]), Finding("C wins", "", [worse]),
                                Finding("D wins", "", [noisy, better])]))
    assert "of 4 comparisons 2 hold, 1 are reversed and 1 are within" in text
    assert "*Hold in every comparison*: A wins." in text
    assert "*Reversed in every comparison*: C wins." in text
    assert "*Mixed or not resolved*: D wins." in text
    # the half-width of a 95 % t interval (2 degrees of freedom): the widest is D's
    widest = stats.t.ppf(0.975, 2) * noisy.sd / 3 ** 0.5
    assert f"to {widest:.3f}, on 0-1 scores" in text
