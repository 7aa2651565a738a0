"""Benchmark of the census stage: synthetic census and real local census build throughput.

    python -m ssl_census.census.bench --cells 100000 --work work/bench-census [--data-dir D]

Prints wall time, CPU time, cells/s, non-zeros/s and the peak resident memory of each build
(measured in this process, so run it alone: the figures include everything it allocated).
"""

from __future__ import annotations

import json
import resource
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ssl_census.census.genes import resolve_data_dir


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _timed(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    wall0, cpu0 = time.perf_counter(), time.process_time()
    out = fn()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    n = out["n_cells"]
    figures = {"n_cells": n, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
               "cells_per_s": round(n / wall), "cells_per_cpu_s": round(n / cpu),
               "peak_rss_mib": round(_peak_rss_mib())}
    if "nnz" in out:
        figures["nnz"] = out["nnz"]
        figures["nnz_per_s"] = round(out["nnz"] / wall)
    return figures


def run_census_bench(work: Path, n_cells: int, data: Path | None,
                     seed: int = 0) -> dict[str, Any]:
    from ssl_census.census.build_local import build_local_census
    from ssl_census.census.synth import write_synthetic_census

    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {}
    synth = work / f"synth-{n_cells}"
    shutil.rmtree(synth, ignore_errors=True)
    report["synth"] = _timed(lambda: write_synthetic_census(synth, n_cells, seed=seed,
                                                            data_dir=data))
    if data is not None and (data / "h5ad").is_dir():
        real = work / "pbmc-real"
        shutil.rmtree(real, ignore_errors=True)
        config = Path(__file__).resolve().parents[2] / "configs" / "census" / "pbmc-real.toml"
        report["build_local"] = _timed(lambda: build_local_census(config, real, data))
    return report


@click.command()
@click.option("--cells", default=100_000, show_default=True, type=click.IntRange(10))
@click.option("--work", default="work/bench-census", show_default=True,
              type=click.Path(file_okay=False))
@click.option("--data-dir", default=None, type=click.Path(file_okay=False),
              help="Shared data folder (default $SSL_CENSUS_DATA); adds the real build.")
@click.option("--seed", default=0, show_default=True)
def main(cells: int, work: str, data_dir: str | None, seed: int) -> None:
    """Time a synthetic census of --cells cells and the real local census build."""
    report = run_census_bench(Path(work), cells, resolve_data_dir(data_dir), seed)
    click.echo(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.exit(main())
