"""``ssl-census bench loader``: this loader against annbatch, scDataset and a raw ceiling.

Every loader reads the same cells of the same store (annbatch a copy made by its own writer),
at the same batch size, each in its own process (:mod:`.loader_child`) so that its peak RSS
is its own. Files are read once before each timed run (warm page cache). Shuffle quality is
the mean per-batch entropy of ``dataset_id`` divided by that of a true random permutation of
the same cells cut into batches of the same sizes (1.0 = as mixed as a random permutation).
A competitor that cannot be installed or run is reported under ``skipped`` with the reason.

Besides wall-clock cells/s, each run reports cells per CPU-second of its own process (user +
system, all threads): on a shared machine the wall clock measures the neighbours too, the CPU
time only what the loader spent. ``*_cpu`` ratios compare those.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ssl_census.core.errors import UserError
from ssl_census.data.readers import READERS
from ssl_census.shards.store import open_shards

LOADERS = ("ssl-census", "annbatch", "scdataset", "tiledbsoma-ml", "raw", "readers")
ROOT = Path(__file__).resolve().parents[2]
# annbatch needs Python 3.12: $SSL_CENSUS_PYTHON312, else python3.12 on the PATH
PYTHON312 = os.environ.get("SSL_CENSUS_PYTHON312") or shutil.which("python3.12") or ""
ANNBATCH_PINS = ("annbatch==0.3.1", "zarrs==0.2.3")
ANNBATCH_DEFAULTS = {"ab_chunk_size": 512, "ab_preload_nchunks": 32, "dataset_size": "2GB"}
SCDATASET_DEFAULTS = {"scd_block_size": 256, "scd_fetch_factor": 8}
SLOW_CELLS = 65_536  # scDataset and tiledbsoma-ml run at a few thousand cells/s: time 8 batches


def batch_entropy(labels: np.ndarray, sizes: Iterable[int]) -> float:
    """Mean Shannon entropy (nats) of the label mix of each full batch."""
    out, pos = [], 0
    sizes = list(sizes)
    full = max(sizes) if sizes else 0
    for n in sizes:
        if n == full:
            _, counts = np.unique(labels[pos : pos + n], return_counts=True)
            p = counts / n
            out.append(float(-(p * np.log(p)).sum()))
        pos += n
    return float(np.mean(out)) if out else float("nan")


def shuffle_quality(labels: np.ndarray, sizes: Iterable[int]) -> float:
    """Mean batch entropy of the yielded order over that of a random permutation of the same
    yielded cells: the cells a loader covered set its own reference (a loader timed on part
    of an epoch, or on another source such as tiledbsoma-ml's census, is judged fairly)."""
    sizes = list(sizes)
    shuffled = np.random.default_rng(0).permutation(labels)
    return batch_entropy(labels, sizes) / batch_entropy(shuffled, sizes)


def warm(paths: Iterable[Path]) -> None:
    """Read every file under ``paths`` once so the timed runs find them in the page cache."""
    for root in paths:
        for p in sorted(Path(root).rglob("*")) if Path(root).is_dir() else [Path(root)]:
            if p.is_file():
                with open(p, "rb") as f:
                    while f.read(1 << 24):
                        pass


def anndata_view(shards: Path, work: Path) -> Path:
    """The split as an AnnData Zarr group whose X arrays are links to the store's own files."""
    import anndata as ad
    import zarr

    out = work / "anndata.zarr"
    if (out / "X" / "zarr.json").is_file():
        return out
    x_dir = shards / "train" / "X.zarr"
    attrs = json.loads((x_dir / "zarr.json").read_text())["attributes"]
    obs = pd.read_parquet(shards / "train" / "obs.parquet", columns=["dataset_id"])
    obs.index = obs.index.astype(str)
    var = pd.read_parquet(shards / "var.parquet")
    var.index = var["feature_id"].astype(str)
    tmp = work / "anndata.zarr.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    ad.io.write_elem(group, "obs", obs)
    ad.io.write_elem(group, "var", var[[]])
    group.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
    (tmp / "X").mkdir()
    (tmp / "X" / "zarr.json").write_text(
        json.dumps(
            {
                "zarr_format": 3,
                "node_type": "group",
                "attributes": {
                    "encoding-type": "csr_matrix",
                    "encoding-version": "0.1.0",
                    "shape": [attrs["n_cells"], attrs["n_genes"]],
                },
            }
        )
    )
    for name in ("indptr", "indices", "data"):
        (tmp / "X" / name).symlink_to((x_dir / name).resolve(), target_is_directory=True)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def annbatch_python(work: Path) -> tuple[Path | None, str]:
    """The venv's python with annbatch, made if missing; (None, reason) when it cannot be."""
    venv = work / ".venv-annbatch"
    py = venv / "bin" / "python"
    if py.is_file() and _run([str(py), "-c", "import annbatch, zarrs"]).returncode == 0:
        return py, ""
    if not PYTHON312 or not Path(PYTHON312).is_file():
        return None, ("annbatch needs Python 3.12; none found (put python3.12 on the PATH or "
                      "set SSL_CENSUS_PYTHON312)")
    made = _run([PYTHON312, "-m", "venv", str(venv)])
    if made.returncode == 0:
        made = _run([str(py), "-m", "pip", "install", "-q", *ANNBATCH_PINS, "psutil"])
    if made.returncode != 0:
        return None, f"installing {' '.join(ANNBATCH_PINS)} failed: {made.stderr.strip()[-300:]}"
    return py, ""


def _run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def run_child(
    kind: str,
    args: dict[str, Any],
    python: str | Path = sys.executable,
    module: str = "ssl_census.benchmarks.loader_child",
) -> dict[str, Any]:
    """One loader run in a fresh process; its result, labels and batch sizes."""
    with tempfile.TemporaryDirectory(prefix="ssl-census-bench-") as tmp:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
        }
        done = _run([str(python), "-m", module, kind, json.dumps(args), tmp], env=env)
        if done.returncode != 0:
            raise RuntimeError(f"{kind} run failed:\n{done.stderr.strip()[-2000:]}")
        result = json.loads((Path(tmp) / "result.json").read_text())
        result["sizes"] = np.load(Path(tmp) / "batches.npy")
        labels = Path(tmp) / "labels.npy"
        result["labels"] = np.load(labels) if labels.is_file() else None
    return result


def run_loader_bench(
    shards: Path,
    work: Path,
    cells_limit: int | None = None,
    skip: Iterable[str] = (),
    batch_size: int = 8192,
    workers: int = 2,
    census_uri: str | None = None,
    reader_cells: int = 200_000,
    log: Any = print,
) -> dict[str, Any]:
    store = open_shards(shards)
    if "train" not in store.splits:
        raise UserError(f"{shards} has no train split", "benchmark a store with a train split")
    skip = set(skip)
    unknown = skip - set(LOADERS)
    if unknown:
        raise UserError(
            f"unknown --skip {', '.join(sorted(unknown))}", f"choose from {', '.join(LOADERS)}"
        )
    work.mkdir(parents=True, exist_ok=True)
    n_cells = int(store.manifest["splits"]["train"]["n_cells"])
    limit = min(n_cells, cells_limit or n_cells)
    base = {
        "shards": str(shards),
        "batch_size": batch_size,
        "workers": workers,
        "cells_limit": limit,
        "reader": "auto",
    }
    x_dir = shards / "train" / "X.zarr"
    ours_files = [x_dir / a for a in ("indptr", "indices", "data")]

    report: dict[str, Any] = {
        "store": str(shards),
        "n_cells": n_cells,
        "cells_timed": limit,
        "batch_size": batch_size,
        "nnz_per_cell": store.manifest["splits"]["train"]["nnz"] / n_cells,
        "n_genes": store.n_genes,
        "cpus": os.cpu_count(),
        "load_average_before": os.getloadavg(),
        "cells_per_s": {},
        "peak_rss_bytes": {},
        "shuffle_quality": {},
        "settings": {},
        "cells_timed_per_loader": {},
        "cells_per_cpu_s": {},
        "skipped": {},
        "readers": {},
        "readers_cells_per_cpu_s": {},
    }

    def record(name: str, result: dict[str, Any]) -> None:
        rate = result["cells"] / result["seconds"]
        report["cells_per_s"][name] = rate
        report["peak_rss_bytes"][name] = result["peak_rss_bytes"]
        report["cells_timed_per_loader"][name] = result["cells"]
        report["cells_per_cpu_s"][name] = result["cells"] / max(result["cpu_seconds"], 1e-9)
        report["settings"][name] = result.get("settings", {})
        if result["labels"] is not None:
            q = shuffle_quality(result["labels"], result["sizes"])
            report["shuffle_quality"][name] = q
        rss = result["peak_rss_bytes"] / 2**30
        q = report["shuffle_quality"].get(name, float("nan"))
        log(f"{name:>14}: {rate:>10,.0f} cells/s  peak RSS {rss:.2f} GiB  shuffle {q:.3f}")

    warm(ours_files)
    if "raw" not in skip:
        record("raw", run_child("raw", base))
    if "ssl-census" not in skip:
        record("ssl-census", run_child("ssl-census", base))
    if "readers" not in skip:
        for reader in READERS:
            res = run_child(
                "ssl-census", {**base, "reader": reader, "cells_limit": min(limit, reader_cells)}
            )
            report["readers"][reader] = res["cells"] / res["seconds"]
            report["readers_cells_per_cpu_s"][reader] = res["cells"] / res["cpu_seconds"]
            log(
                f"{'reader ' + reader:>20}: {report['readers'][reader]:>10,.0f} cells/s, "
                f"{report['readers_cells_per_cpu_s'][reader]:>10,.0f} cells/CPU-s"
            )
    if "annbatch" not in skip:
        _annbatch(shards, work, {**base, **ANNBATCH_DEFAULTS}, report, record, log)
    if "scdataset" not in skip:
        try:
            import scdataset  # noqa: F401
        except ImportError:
            report["skipped"]["scdataset"] = "scdataset is not installed (pip install scdataset)"
        else:
            args = {
                **base,
                **SCDATASET_DEFAULTS,
                "anndata_zarr": str(anndata_view(shards, work)),
                "cells_limit": min(limit, SLOW_CELLS),
            }
            record("scdataset", run_child("scdataset", args))
    if "tiledbsoma-ml" not in skip:
        if not census_uri:
            report["skipped"]["tiledbsoma-ml"] = "no --census-uri given"
        else:
            _tiledbsoma_ml(census_uri, base, report, record)
    for suffix, rates in (("", report["cells_per_s"]), ("_cpu", report["cells_per_cpu_s"])):
        if "annbatch" in rates and "ssl-census" in rates:
            report["ratio_vs_annbatch" + suffix] = rates["ssl-census"] / rates["annbatch"]
        if "raw" in rates and "ssl-census" in rates:
            report["fraction_of_raw_ceiling" + suffix] = rates["ssl-census"] / rates["raw"]
    report["load_average_after"] = os.getloadavg()
    return report


def _annbatch(
    shards: Path, work: Path, args: dict[str, Any], report: dict[str, Any], record: Any, log: Any
) -> None:
    py, reason = annbatch_python(work)
    if py is None:
        report["skipped"]["annbatch"] = reason
        return
    module = "ssl_census.benchmarks.loader_annbatch_child"
    collection = work / "annbatch.zarr"
    marker = work / "annbatch.converted.json"
    if not marker.is_file() or json.loads(marker.read_text()).get("n_cells") != report["n_cells"]:
        shutil.rmtree(collection, ignore_errors=True)
        log("converting the store with annbatch's writer (once) ...")
        conv = run_child(
            "convert",
            {
                **args,
                "anndata_zarr": str(anndata_view(shards, work)),
                "collection": str(collection),
            },
            python=py,
            module=module,
        )
        marker.write_text(json.dumps({"n_cells": report["n_cells"], "seconds": conv["seconds"]}))
    report["settings"]["annbatch-convert"] = json.loads(marker.read_text())
    warm([collection])
    record(
        "annbatch",
        run_child("annbatch", {**args, "collection": str(collection)}, python=py, module=module),
    )


def _tiledbsoma_ml(
    census_uri: str, base: dict[str, Any], report: dict[str, Any], record: Any
) -> None:
    try:
        import tiledbsoma_ml  # noqa: F401
    except ImportError:
        report["skipped"]["tiledbsoma-ml"] = (
            "tiledbsoma-ml is not installed (pip install tiledbsoma-ml)"
        )
        return
    args = {**base, "census_uri": census_uri, "cells_limit": min(base["cells_limit"], SLOW_CELLS)}
    record("tiledbsoma-ml", run_child("tiledbsoma-ml", args))


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"store {report['store']}: {report['n_cells']:,} cells, "
        f"{report['nnz_per_cell']:.0f} nnz/cell, {report['n_genes']:,} genes; "
        f"batch {report['batch_size']:,}, {report['cells_timed']:,} cells timed",
        f"{'loader':<14}{'cells/s':>12}{'cells/CPU-s':>13}{'peak RSS GiB':>14}{'shuffle':>9}",
    ]
    for name, rate in report["cells_per_s"].items():
        q = report["shuffle_quality"].get(name)
        lines.append(
            f"{name:<14}{rate:>12,.0f}{report['cells_per_cpu_s'][name]:>13,.0f}"
            f"{report['peak_rss_bytes'][name] / 2**30:>14.2f}{'' if q is None else f'{q:.3f}':>9}"
        )
    for name, rate in report["readers"].items():
        cpu = report["readers_cells_per_cpu_s"][name]
        lines.append(f"  reader {name:<12}{rate:>10,.0f} cells/s {cpu:>10,.0f} cells/CPU-s")
    lines.append(
        f"load average before/after: {report['load_average_before'][0]:.1f} / "
        f"{report['load_average_after'][0]:.1f} on {report['cpus']} CPUs"
    )
    for key in (
        "ratio_vs_annbatch",
        "fraction_of_raw_ceiling",
        "ratio_vs_annbatch_cpu",
        "fraction_of_raw_ceiling_cpu",
    ):
        if key in report:
            lines.append(f"{key}: {report[key]:.2f}")
    for name, why in report["skipped"].items():
        lines.append(f"skipped {name}: {why}")
    return "\n".join(lines)
