"""``bench shards``: the shard build beside a plain census read of the same cells.

Both run on one synthetic census (>= 500,000 cells by default, made once under ``--work``),
each in a fresh process so that its peak RSS is its own:

- plain read: the eligible cells (same value filter) restricted to the gene space, read with
  ``axis_query(...).X("raw").blockwise(axis=0, size=N).scipy()`` and nothing else done;
- build: ``build_shards`` end to end (obs, parts in worker processes, merge, checksums).

Printed: cells/s of each, their ratio (target: build at least half as fast as the read), and
the build's peak RSS (main process, largest worker, and their sum bound) beside the budget.
"""

from __future__ import annotations

import os
import resource
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from ssl_census.core.errors import UserError
from ssl_census.core.measure import in_fresh_process
from ssl_census.shards import source
from ssl_census.shards.config import ShardsConfig
from ssl_census.shards.genes import match_genes
from ssl_census.shards.parts import READ_BLOCK_CELLS
from ssl_census.shards.source import CensusSpec

BENCH_CONFIG = "local-pbmc"  # synthetic PBMC types; keeps unlabelled cells like a local build


def default_gene_list() -> Path:
    from ssl_census.census.genes import SCTAB_FEATURES_FILE, data_dir

    root = data_dir()
    if root is None or not (root / SCTAB_FEATURES_FILE).is_file():
        raise UserError("the benchmark needs scTab's gene list",
                        "set SSL_CENSUS_DATA to the shared data folder")
    return root / SCTAB_FEATURES_FILE


def ensure_census(work: Path, n_cells: int, seed: int) -> Path:
    """The synthetic census of this size and seed under ``work`` (written once)."""
    from ssl_census.census.synth import write_synthetic_census

    uri = work / f"census-synth-{n_cells}-s{seed}"
    if not (uri / "census_data").is_dir():
        write_synthetic_census(uri, n_cells, seed=seed)
    return uri


def _peak_rss() -> tuple[int, int]:
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)


def plain_read(uri: str, value_filter: str, gene_list: str, min_matched: int) -> dict[str, Any]:
    """Read the eligible cells' raw counts over the gene space, blockwise; time it."""
    spec = CensusSpec(uri=uri)
    t0 = time.perf_counter()
    cells = nnz = 0
    with spec.open() as census:
        space = match_genes(source.read_var(census), gene_list, min_matched)
        genes = space.var["soma_joinid"].to_numpy(np.int64)
        t0 = time.perf_counter()
        exp = source.experiment(census)
        import tiledbsoma as soma

        with exp.axis_query("RNA", obs_query=soma.AxisQuery(value_filter=value_filter),
                            var_query=soma.AxisQuery(coords=(genes,))) as query:
            blocks = query.X("raw").blockwise(axis=0, size=READ_BLOCK_CELLS).scipy()
            for m, _ in blocks:
                cells += m.shape[0]
                nnz += m.nnz
    seconds = time.perf_counter() - t0
    own, _ = _peak_rss()
    return {"cells": cells, "nnz": nnz, "seconds": seconds, "cells_per_s": cells / seconds,
            "peak_rss_bytes": own}


def timed_build(out: str, config: ShardsConfig, uri: str, gene_list: str, workers: int,
                memory_budget: int) -> dict[str, Any]:
    from ssl_census.shards.build import build_shards

    report = build_shards(out, config, census_uri=uri, gene_list=gene_list, workers=workers,
                          memory_budget=memory_budget)
    own, child = _peak_rss()
    cells = sum(s["n_cells"] for s in report.manifest["splits"].values())
    return {"cells_read": report.cells_read, "cells_stored": cells, "seconds": report.seconds,
            "cells_per_s": report.cells_read / report.seconds, "phases": report.phase_seconds,
            "peak_rss_main_bytes": own, "peak_rss_worker_bytes": child,
            "peak_rss_bound_bytes": own + workers * child, "parts": report.parts_total}


def run_shards_bench(work: Path, n_cells: int, workers: int, memory_budget: int,
                     seed: int = 0, gene_list: str | None = None) -> dict[str, Any]:
    from ssl_census.shards.config import load_shards_config

    work.mkdir(parents=True, exist_ok=True)
    gene_list = str(gene_list or default_gene_list())
    config = load_shards_config(BENCH_CONFIG)
    uri = str(ensure_census(work, n_cells, seed))
    read, read_tree = in_fresh_process(plain_read, uri, config.query.value_filter(), gene_list,
                                        config.genes.min_matched)
    read["peak_rss_sampled_bytes"] = read_tree
    out = work / "shards"
    if out.exists():
        shutil.rmtree(out)
    build, build_tree = in_fresh_process(timed_build, str(out), config, uri, gene_list,
                                          workers, memory_budget)
    build["peak_rss_tree_bytes"] = build_tree
    return {"census_cells": n_cells, "workers": workers, "cpus": os.cpu_count(),
            "memory_budget_bytes": memory_budget, "plain_read": read, "build": build,
            "ratio": build["cells_per_s"] / read["cells_per_s"], "store": str(out)}


def format_report(r: dict[str, Any]) -> str:
    read, build, gib = r["plain_read"], r["build"], 2**30
    return "\n".join([
        f"synthetic census: {r['census_cells']:,} cells; eligible (primary 10x) "
        f"{read['cells']:,} cells, {read['nnz']:,} non-zeros over the gene space",
        f"plain census read (axis_query blockwise, 1 process): {read['cells_per_s']:,.0f} cells/s "
        f"({read['seconds']:.1f} s), peak RSS {read['peak_rss_bytes'] / gib:.2f} GiB",
        f"shard build ({r['workers']} workers, {r['cpus']} CPUs): {build['cells_per_s']:,.0f} "
        f"cells/s ({build['seconds']:.1f} s: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in build["phases"].items()) + ")",
        f"ratio build / read: {r['ratio']:.2f} (target >= 0.5)",
        f"build peak RSS: whole process tree (sampled every 0.2 s) "
        f"{build['peak_rss_tree_bytes'] / gib:.2f} GiB vs budget "
        f"{r['memory_budget_bytes'] / gib:.2f} GiB; main process "
        f"{build['peak_rss_main_bytes'] / gib:.2f} GiB, largest worker "
        f"{build['peak_rss_worker_bytes'] / gib:.2f} GiB",
        f"store: {r['store']} ({build['cells_stored']:,} cells)",
    ])
