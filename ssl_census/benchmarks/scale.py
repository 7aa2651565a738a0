"""``ssl-census bench scale``: the whole path at a ladder of census sizes, up to the full atlas.

For each size (default 0.5M, 2M, 8M, 22.2M cells of the synthetic census's sctab profile,
at ``--nnz-per-cell`` non-zeros so that the full size fits a small machine's disk) it
measures, each stage in a fresh process with the peak RSS of its whole process tree:

- census: the synthetic census written (cells/s, bytes on disk);
- shard build: cells/s, phases, peak RSS, the scratch space of its parts, bytes of the store;
  then ``shards verify`` (seconds);
- curation: cell types kept (against the profile's intended set), tech_samples and cells per
  split;
- loader: start-up (construction to first batch) at world sizes 1 and 8, and two full epochs
  over the train split at batch 8,192 (cells/s, peak RSS): cold, with the store dropped from
  the page cache first (read from disk, as a store larger than the memory always is), then
  warm, right after it (from memory as far as the page cache holds the store; the share it
  held is recorded). Cold against cold and warm against warm compare sizes fairly: at 0.5M
  cells a store fits in any page cache, at 22.2M it may not;
- trainer host path: cells/s of the real ``Trainer`` (``ssl-census pretrain``) at batch 8,192
  with a one-layer model, i.e. the rate at which this host prepares batches for a device.

Optionally one build is killed at a random point and resumed, and its checksums compared with
the uninterrupted build's. Results go to one JSON (written after every stage, so a long run
that is stopped keeps what it measured), a PNG and a Markdown table.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ssl_census.core import atomic
from ssl_census.core.errors import UserError
from ssl_census.core.measure import (
    TreeRssSampler,
    directory_bytes,
    evict_from_page_cache,
    in_fresh_process,
    page_cache_bytes,
)

DEFAULT_SIZES = (500_000, 2_000_000, 8_000_000, 22_200_000)
# The census: the synthetic census's sctab profile (census/synth_sctab.py) at each size, built
# with scTab's preset at the curation thresholds that size was designed for, so "kept as
# intended" compares with the profile's exact set (164 types at every size).
PROFILE = "sctab"
EPOCHS = {"loader_epoch_cold": True, "loader_epoch": False}  # keys of a size's row: cold first
TRAIN_STEPS = 10  # trainer host path: steps timed after the first window (8 s each on 2 CPUs)
GIB = 2**30


# -- stages (each runs in its own process) --------------------------------------------------


def write_census(uri: str, n_cells: int, seed: int, nnz_per_cell: int) -> dict[str, Any]:
    from ssl_census.census.synth import write_synthetic_census

    t0 = time.perf_counter()
    summary = write_synthetic_census(uri, n_cells, seed=seed, profile=PROFILE,
                                     nnz_per_cell=nnz_per_cell)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "cells_per_s": n_cells / seconds, "summary": summary}


def build_store(out: str, uri: str, n_cells: int, workers: int,
                memory_budget: int) -> dict[str, Any]:
    from ssl_census.census.synth_sctab import SctabScale, shards_config
    from ssl_census.shards.build import build_shards
    from ssl_census.shards.config import parse_shards_config

    config = parse_shards_config(shards_config(SctabScale.at(n_cells)))
    report = build_shards(out, config, census_uri=uri, workers=workers,
                          memory_budget=memory_budget, gene_list=_gene_list(uri))
    return {"seconds": report.seconds, "cells_read": report.cells_read,
            "phases": report.phase_seconds, "parts": report.parts_total,
            "parts_bytes": report.parts_bytes, "peak_rss_main_bytes": report.peak_rss_bytes,
            "phase_peak_rss_main_bytes": report.phase_peak_rss_bytes}


def verify_store(out: str) -> dict[str, Any]:
    from ssl_census.shards.verify import verify_shards

    t0 = time.perf_counter()
    report = verify_shards(out)
    return {"seconds": time.perf_counter() - t0, "ok": report.ok, "problems": report.problems[:5]}


def curation_outcome(out: str, intended_types: list[str]) -> dict[str, Any]:
    from ssl_census.shards.store import open_shards, read_parquet

    store = open_shards(out)
    kept = set(store.labels["cell_type_ontology_term_id"].astype(str))
    intended = set(intended_types)
    splits = {}
    for s in store.splits:
        ts = read_parquet(Path(out) / s / "obs.parquet")["tech_sample"]
        splits[s] = {"cells": int(len(ts)), "tech_samples": int(ts.nunique())}
    return {"types_kept": len(kept), "types_intended": len(intended),
            "kept_equals_intended": kept == intended,
            "unexpected": sorted(kept - intended)[:10], "missing": sorted(intended - kept)[:10],
            "splits": splits}


def loader_startup(out: str, world_size: int, batch_size: int, workers: int) -> dict[str, Any]:
    """Seconds from constructing the loader (rank 0 of ``world_size``) to its first batch."""
    from ssl_census.data import BlockShuffleLoader

    t0 = time.perf_counter()
    loader = BlockShuffleLoader(out, "train", batch_size=batch_size, dense=False,
                                obs_columns=(), rank=0, world_size=world_size, workers=workers)
    built = time.perf_counter() - t0
    next(iter(loader))
    first = time.perf_counter() - t0
    loader.close()
    return {"construct_seconds": built, "first_batch_seconds": first}


def loader_epoch(out: str, batch_size: int, workers: int, cold: bool) -> dict[str, Any]:
    """One full epoch of the train split as CSR batches (what a device would be sent); with
    ``cold`` the store is dropped from the page cache first."""
    from ssl_census.data import BlockShuffleLoader

    evicted = evict_from_page_cache(out) if cold else 0
    cached = page_cache_bytes(out)
    loader = BlockShuffleLoader(out, "train", batch_size=batch_size, dense=False,
                                obs_columns=(), rank=0, world_size=1, workers=workers)
    cells, t0 = 0, time.perf_counter()
    for batch in loader:
        cells += len(batch)
    seconds = time.perf_counter() - t0
    return {"cells": cells, "seconds": seconds, "cells_per_s": cells / seconds, "cold": cold,
            "evicted_bytes": evicted, "store_cached_bytes": cached,
            "store_bytes": directory_bytes(out)}


# -- driver ---------------------------------------------------------------------------------


def _gene_list(uri: str) -> str:
    """The scTab gene list where the shared data has it, else the census's own genes."""
    from ssl_census.census.genes import SCTAB_FEATURES_FILE, data_dir

    root = data_dir()
    if root is not None and (root / SCTAB_FEATURES_FILE).is_file():
        return str(root / SCTAB_FEATURES_FILE)
    raise UserError("bench scale needs scTab's gene list",
                    "set SSL_CENSUS_DATA to the shared data folder")


def _tree_run(cmd: list[str], log: Path) -> tuple[float, int, int]:
    """Run ``cmd``; (seconds, exit code, peak RSS of its tree)."""
    sampler = TreeRssSampler()
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        sampler.start(proc.pid)
        code = proc.wait()
    return time.perf_counter() - t0, code, sampler.stop()


def trainer_host_path(out: str, run_dir: Path, batch_size: int, workers: int,
                      steps: int) -> dict[str, Any]:
    """``ssl-census pretrain`` with a one-layer model: cells/s after the first log window."""
    shutil.rmtree(run_dir, ignore_errors=True)
    window = max(1, steps // 5)
    cmd = [sys.executable, "-m", "ssl_census.cli", "pretrain", "--method", "random_mask",
           "--shards", out, "--out", str(run_dir), "--batch-size", str(batch_size),
           "--max-steps", str(steps + window), "--hidden", "16", "--log-every", str(window),
           "--val-every", str(10 * (steps + window)), "--val-batches", "1",
           "--workers", str(workers), "--device", "cpu"]
    seconds, code, peak = _tree_run(cmd, run_dir.with_suffix(".log"))
    if code != 0:
        return {"error": run_dir.with_suffix(".log").read_text()[-500:]}
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["cells_per_s"] for r in records if r.get("split") == "train"][1:]
    return {"cells_per_s": float(np.median(rates)), "windows": len(rates), "seconds": seconds,
            "peak_rss_bytes": peak, "hidden": [16], "batch_size": batch_size}


def kill_and_resume(out: Path, uri: str, n_cells: int, workers: int, memory_budget: int,
                    uninterrupted: dict[str, Any], seed: int, log: Callable[[str], None]
                    ) -> dict[str, Any]:
    """Build again, SIGKILL the whole process group at a random point, resume, compare."""
    from ssl_census.shards.store import read_manifest

    shutil.rmtree(out, ignore_errors=True)
    at = random.Random(seed).uniform(0.2, 0.9) * uninterrupted["seconds"]
    code = (f"from ssl_census.benchmarks.scale import build_store; "
            f"build_store({str(out)!r}, {uri!r}, {n_cells}, {workers}, {memory_budget})")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=at)
        return {"error": "the build ended before it was killed"}
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    state = _build_state(out)
    if state == "complete":
        return {"error": f"the build was complete when killed after {at:.0f} s"}
    log(f"  killed the build after {at:.0f} s (in its {state} phase); resuming")
    resumed, _ = in_fresh_process(build_store, str(out), uri, n_cells, workers, memory_budget)
    return {"killed_after_seconds": at, "killed_in": state, "resume_seconds": resumed["seconds"],
            "same_checksums": read_manifest(out)["splits"] == uninterrupted["manifest_splits"]}


def _build_state(out: Path) -> str:
    """How far a build in ``out`` got: parts, merge or complete."""
    from ssl_census.shards.merge import STATE_FILE
    from ssl_census.shards.store import read_manifest

    if (read_manifest(out) or {}).get("complete") is True:
        return "complete"
    return "merge" if any(out.glob(f"*/{STATE_FILE}")) else "parts"


def run_scale(work: Path, sizes: list[int], nnz_per_cell: int, workers: int,
              memory_budget: int, batch_size: int, loader_workers: int, seed: int,
              kill_at: int | None, json_path: Path, keep: bool,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    from ssl_census.shards.store import read_manifest

    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"settings": {
        "nnz_per_cell": nnz_per_cell, "workers": workers, "memory_budget_bytes": memory_budget,
        "batch_size": batch_size, "loader_workers": loader_workers, "seed": seed,
        "cpus": os.cpu_count(), "load_average_before": os.getloadavg()}, "sizes": []}
    for n in sizes:
        row: dict[str, Any] = {"cells": n}
        result["sizes"].append(row)

        def stage(name: str, fn: Callable[..., dict[str, Any]], *args: Any,
                  row: dict[str, Any] = row, n: int = n) -> dict[str, Any]:
            log(f"[{n:,} cells] {name} ...")
            out, peak = in_fresh_process(fn, *args)
            out["peak_rss_tree_bytes"] = peak
            row[name] = out
            atomic.write_json(json_path, result)
            return out

        uri, store = work / f"census-{n}", work / f"store-{n}"
        if not (uri / "census_data").is_dir() or not (work / f"census-{n}.json").is_file():
            shutil.rmtree(uri, ignore_errors=True)
            census = stage("census", write_census, str(uri), n, seed, nnz_per_cell)
            atomic.write_json(work / f"census-{n}.json", census)
        else:  # kept from an earlier run (--keep)
            row["census"] = json.loads((work / f"census-{n}.json").read_text())
        row["census_bytes"] = directory_bytes(uri)
        shutil.rmtree(store, ignore_errors=True)
        build = stage("build", build_store, str(store), str(uri), n, workers, memory_budget)
        build["cells_per_s"] = build["cells_read"] / build["seconds"]
        build["store_bytes"] = directory_bytes(store)
        stage("verify", verify_store, str(store))
        stage("curation", curation_outcome, str(store),
              row["census"]["summary"]["intended_cell_types"])
        for ws in (1, 8):
            stage(f"loader_startup_ws{ws}", loader_startup, str(store), ws, batch_size,
                  loader_workers)
        for epoch, cold in EPOCHS.items():
            stage(epoch, loader_epoch, str(store), batch_size, loader_workers, cold)
        log(f"[{n:,} cells] trainer host path ...")
        row["trainer"] = trainer_host_path(str(store), work / f"run-{n}", batch_size,
                                           loader_workers, TRAIN_STEPS)
        if kill_at == n:
            build["manifest_splits"] = read_manifest(store)["splits"]
            log(f"[{n:,} cells] kill and resume ...")
            row["kill_resume"] = kill_and_resume(work / f"store-{n}-killed", str(uri), n,
                                                 workers, memory_budget, build, seed, log)
            del build["manifest_splits"]
            shutil.rmtree(work / f"store-{n}-killed", ignore_errors=True)
        atomic.write_json(json_path, result)
        if not keep:  # the next size needs the disk
            shutil.rmtree(store, ignore_errors=True)
            shutil.rmtree(uri, ignore_errors=True)
    result["settings"]["load_average_after"] = os.getloadavg()
    atomic.write_json(json_path, result)
    return result


# -- rendering ------------------------------------------------------------------------------


def _fmt(row: dict[str, Any]) -> list[str]:
    b, lo, tr, cur = row["build"], row["loader_epoch"], row.get("trainer", {}), row["curation"]
    cold = row.get("loader_epoch_cold")
    census = row.get("census", {})
    splits = cur["splits"]
    return [
        f"{row['cells']:,}",
        f"{census['cells_per_s']:,.0f}" if "cells_per_s" in census else "-",
        f"{b['cells_per_s']:,.0f}",
        ", ".join(f"{k} {b['phases'][k]:.0f}" for k in PHASES if k in b["phases"]),
        f"{b['peak_rss_tree_bytes'] / GIB:.2f} / {b['peak_rss_main_bytes'] / GIB:.2f}",
        f"{b['parts_bytes'] / GIB:.1f} / {b['store_bytes'] / GIB:.1f} / "
        f"{row['census_bytes'] / GIB:.1f}",
        f"{row['verify']['seconds']:.0f}" + ("" if row["verify"]["ok"] else " (FAILED)"),
        f"{cur['types_kept']}" + ("" if cur["kept_equals_intended"] else " (not as intended)"),
        " / ".join(f"{splits[s]['tech_samples']:,}" for s in ("train", "val", "test")),
        " / ".join(f"{splits[s]['cells']:,}" for s in ("train", "val", "test")),
        f"{row['loader_startup_ws1']['first_batch_seconds']:.2f} / "
        f"{row['loader_startup_ws8']['first_batch_seconds']:.2f}",
        (f"{cold['cells_per_s']:,.0f}" if cold else "-") + f" / {lo['cells_per_s']:,.0f}",
        _cached_share(lo),
        f"{lo['peak_rss_tree_bytes'] / GIB:.2f}",
        f"{tr['cells_per_s']:,.0f}" if "cells_per_s" in tr else "-",
    ]


def _cached_share(epoch: dict[str, Any]) -> str:
    if "store_cached_bytes" not in epoch:
        return "-"
    return f"{100 * epoch['store_cached_bytes'] / max(epoch['store_bytes'], 1):.0f} %"


PHASES = ("obs", "parts", "merge")  # of the shard build, in the order they run
HEADER = ["cells in census", "census written cells/s", "build cells/s", "build phases (s)",
          "build peak RSS tree / main (GiB)",
          "parts / store / census (GiB)", "verify (s)", "types kept", "tech_samples t/v/t",
          "cells t/v/t", "loader start ws1 / ws8 (s)", "loader epoch cells/s cold / warm",
          "store in page cache (warm)",
          "loader peak RSS (GiB)", "trainer host cells/s"]


def format_table(result: dict[str, Any]) -> str:
    rows = [r for r in result["sizes"] if "loader_epoch" in r]
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(_fmt(r)) + " |" for r in rows]
    if len(rows) >= 2:
        first, last = rows[0], rows[-1]
        build = last["build"]["cells_per_s"] / first["build"]["cells_per_s"]
        loader = " and ".join(
            f"{last[e]['cells_per_s'] / first[e]['cells_per_s']:.2f}x {label}"
            for e, label in (("loader_epoch_cold", "cold"), ("loader_epoch", "warm"))
            if e in first and e in last)
        lines += ["", f"{last['cells']:,} against {first['cells']:,} cells: build cells/s "
                  f"{build:.2f}x, loader cells/s {loader}"]
    for r in rows:
        if "kill_resume" in r:
            k = r["kill_resume"]
            lines.append(f"kill and resume at {r['cells']:,} cells: {k}")
    return "\n".join(lines)


def plot(result: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["sizes"] if "loader_epoch" in r]
    x = [r["cells"] for r in rows]
    panels = [
        ("cells/s", [("shard build", [r["build"]["cells_per_s"] for r in rows]),
                     ("loader epoch, cold", [r.get("loader_epoch_cold", {}).get(
                         "cells_per_s", np.nan) for r in rows]),
                     ("loader epoch, warm", [r["loader_epoch"]["cells_per_s"] for r in rows]),
                     ("trainer host path", [r.get("trainer", {}).get("cells_per_s", np.nan)
                                            for r in rows])]),
        ("peak RSS (GiB)", [("shard build", [r["build"]["peak_rss_tree_bytes"] / GIB
                                             for r in rows]),
                            ("loader epoch", [r["loader_epoch"]["peak_rss_tree_bytes"] / GIB
                                              for r in rows])]),
        ("disk (GiB)", [("parts (scratch, peak)", [r["build"]["parts_bytes"] / GIB
                                                   for r in rows]),
                        ("store", [r["build"]["store_bytes"] / GIB for r in rows]),
                        ("census", [r["census_bytes"] / GIB for r in rows])]),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    for ax, (title, series) in zip(axes, panels, strict=True):
        for label, ys in series:
            ax.plot(x, ys, marker="o", label=label)
        ax.set_xscale("log")
        if title == "cells/s":  # the stages differ by orders of magnitude
            ax.set_yscale("log")
        ax.set_xlabel("cells in the census")
        ax.set_title(title)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(f"ssl-census at scale ({result['settings']['nnz_per_cell']} non-zeros per "
                 f"cell, {result['settings']['cpus']} CPUs)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
