"""``ssl-census bench train`` run tiny: a row per method, batch size and layout, with the FLOP
ceiling beside the measured rate (the timings themselves are not checked)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ssl_census.cli import main

METHODS = ("random_mask", "gp_mask", "byol", "celltype")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    work = tmp_path_factory.mktemp("bench-train")
    r = CliRunner().invoke(main, [
        "bench", "train", "--methods", ",".join(METHODS), "--batch-sizes", "16,32",
        "--timed-cells", "32", "--genes", "200", "--nnz-per-cell", "20", "--hidden", "16,4",
        "--workers", "1", "--work", str(work), "--json", str(work / "train.json")])
    assert r.exit_code == 0, (r.output, r.exception)
    return json.loads((work / "train.json").read_text()), r.output


def test_every_method_batch_size_and_layout_is_a_row_beside_its_ceiling(report):
    figures, output = report
    rows = figures["rows"]
    assert [(r["method"], r["batch_size"], r["layout"]) for r in rows] == [
        (m, b, layout) for m in METHODS for b in (16, 32) for layout in ("dense", "sparse")]
    assert {r["steps"] for r in rows if r["batch_size"] == 16} == {2}  # 32 cells, 2 steps
    assert figures["machine"]["peak_gflops"] > 0
    assert 0.01 < figures["model"]["density"] < 0.2  # about 20 of 200 genes
    for r in rows:
        assert r["cells_per_s"] > 0
        assert r["fraction_of_ceiling"] == pytest.approx(r["cells_per_s"]
                                                         / r["ceiling_cells_per_s"])
    table = [line for line in output.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(rows) and "vs dense" in table[0]


def test_flops_count_every_linear_layer_of_the_step(report):
    flops = {r["method"]: r["flops_per_cell"] for r in report[0]["rows"]}
    # random_mask, encoder 200 -> 16 -> 4 and its mirror: 2 x in x out forward, the same for
    # each weight gradient and for each input gradient but the genes'
    forward = 2 * (200 * 16 + 16 * 4 + 4 * 16 + 16 * 200)
    assert flops["random_mask"] == forward * 3 - 2 * 200 * 16
    assert flops["gp_mask"] == flops["random_mask"]  # the same model, another mask
    # celltype: the encoder and a linear head over the store's cell types
    head = flops["celltype"] - 2 * (200 * 16 * 2 + 16 * 4 * 3)
    assert head % (2 * 4 * 3) == 0 and 1 <= head // (2 * 4 * 3) <= 30
    assert flops["byol"] > 2 * flops["celltype"]  # two views, heads, a forward-only target


def test_bad_options_are_one_line_errors(tmp_path):
    for args, message in [(["--methods", "random"], "unknown methods"),
                          (["--layouts", "csr"], "--layouts"),
                          (["--batch-sizes", "256,x"], "not a cell count")]:
        r = CliRunner().invoke(main, ["bench", "train", "--work", str(tmp_path), *args])
        assert r.exit_code == 2 and message in r.output, r.output
