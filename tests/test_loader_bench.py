"""`ssl-census bench loader` on a small synthetic store: figures come out, shuffle
quality means it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ssl_census.benchmarks.loader_bench import batch_entropy, shuffle_quality
from ssl_census.cli import main


@pytest.fixture(scope="session")
def store(synth_loader_store: Path) -> Path:
    return synth_loader_store


def test_batch_entropy_tells_mixed_from_sorted_batches() -> None:
    labels = np.repeat(np.arange(8), 1000)
    mixed = batch_entropy(np.random.default_rng(0).permutation(labels), [500] * 16)
    assert mixed == pytest.approx(np.log(8), rel=0.02)
    assert batch_entropy(labels, [500] * 16) == 0.0
    # a trailing partial batch is left out
    assert batch_entropy(labels[:1100], [1000, 100]) == 0.0
    # quality is judged against a permutation of the same cells, whatever their label mix
    assert shuffle_quality(labels, [500] * 16) == 0.0
    two = np.repeat([0, 1], [7000, 1000])  # a skewed mix
    assert shuffle_quality(np.random.default_rng(1).permutation(two), [500] * 16) == \
        pytest.approx(1.0, abs=0.05)


def test_bench_loader_cli_writes_the_figures(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "loader.json"
    result = CliRunner().invoke(main, [
        "bench", "loader", "--shards", str(store), "--json", str(out), "--batch-size", "1024",
        "--work", str(tmp_path / "work"), "--skip", "annbatch", "--skip", "scdataset",
        "--skip", "readers",
    ])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert set(report["cells_per_s"]) == {"ssl-census", "raw"}
    for key in ("cells_per_s", "peak_rss_bytes"):
        assert all(v > 0 for v in report[key].values())
    # the store is ordered by donor (= dataset): only a shuffling loader mixes batches
    assert report["shuffle_quality"]["ssl-census"] > 0.8
    assert report["skipped"]["tiledbsoma-ml"] == "no --census-uri given"
    assert "ratio_vs_annbatch" not in report  # annbatch was skipped: no ratio is made up
    assert "ssl-census" in result.output


def test_bench_loader_rejects_unknown_skip(store: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["bench", "loader", "--shards", str(store),
                                       "--work", str(tmp_path), "--skip", "merlin"])
    assert result.exit_code == 2 and "unknown --skip merlin" in result.output
