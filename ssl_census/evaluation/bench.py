"""``bench embed``: ``ssl-census embed`` on a synthetic h5ad far larger than a chunk.

The h5ad (CSR counts, ``--nnz`` genes per cell out of ``--genes``, obs with only an index) is
written once under ``--work`` by h5py, a chunk at a time. The model is an untrained encoder of
the paper's shape over the same genes (throughput does not depend on the weights). The embed
runs in a fresh process (:func:`ssl_census.core.measure.in_fresh_process`), so its peak RSS is
its own, at the full cell count and at a tenth of it: equal peaks show that memory does not
grow with the file.
"""

from __future__ import annotations

import hashlib
import resource
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import torch

from ssl_census.core.measure import in_fresh_process
from ssl_census.data.h5ad_inputs import quiet_anndata
from ssl_census.models.mlp import PAPER_HIDDEN, Encoder

_WRITE_CHUNK = 20_000
_DICT = {"encoding-type": "dict", "encoding-version": "0.1.0"}


def synthetic_var(n_genes: int) -> pd.DataFrame:
    ids = [f"ENSG{i:011d}" for i in range(n_genes)]
    return pd.DataFrame({"feature_id": ids, "feature_name": [f"GENE{i}" for i in range(n_genes)]})


def _chunk_counts(rng: np.random.Generator, n: int, n_genes: int,
                  nnz: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR parts of ``n`` cells with about ``nnz`` distinct genes each (counts >= 1)."""
    genes = np.sort(rng.integers(0, n_genes, size=(n, nnz), dtype=np.int32), axis=1)
    keep = np.ones_like(genes, dtype=bool)
    keep[:, 1:] = genes[:, 1:] != genes[:, :-1]
    indptr = np.concatenate([[0], np.cumsum(keep.sum(1), dtype=np.int64)])
    indices = genes[keep]
    data = rng.geometric(0.4, size=len(indices)).astype(np.float32)
    return indptr, indices, data


def write_synthetic_h5ad(path: Path, n_cells: int, var: pd.DataFrame, nnz: int,
                         seed: int = 0) -> Path:
    """An anndata-readable h5ad of raw counts, streamed to disk (memory: one chunk)."""
    from anndata.io import write_elem

    tmp = path.with_name(f".{path.name}.partial")
    rng = np.random.default_rng(seed)
    with h5py.File(tmp, "w") as f:
        f.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        x = f.create_group("X")
        x.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0",
                        "shape": (n_cells, len(var))})
        data = x.create_dataset("data", shape=(0,), maxshape=(None,), dtype=np.float32,
                                chunks=(1 << 20,))
        indices = x.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=np.int32,
                                   chunks=(1 << 20,))
        indptr = x.create_dataset("indptr", shape=(n_cells + 1,), dtype=np.int64)
        obs = f.create_group("obs")
        obs.attrs.update({"encoding-type": "dataframe", "encoding-version": "0.2.0",
                          "_index": "_index", "column-order": np.array([], dtype="S1")})
        names = obs.create_dataset("_index", shape=(n_cells,), dtype=h5py.string_dtype())
        names.attrs.update({"encoding-type": "string-array", "encoding-version": "0.2.0"})
        done = 0
        for start in range(0, n_cells, _WRITE_CHUNK):
            stop = min(start + _WRITE_CHUNK, n_cells)
            ptr, idx, values = _chunk_counts(rng, stop - start, len(var), nnz)
            data.resize((done + len(values),))
            indices.resize((done + len(values),))
            data[done:] = values
            indices[done:] = idx
            indptr[start : stop + 1] = ptr + done
            names[start:stop] = np.array([f"cell{i}" for i in range(start, stop)], dtype=object)
            done += len(values)
        with quiet_anndata():
            write_elem(f, "var", var.set_index("feature_id"))
        for name in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
            f.create_group(name).attrs.update(_DICT)
    tmp.replace(path)
    return path


def random_run(out: Path, var: pd.DataFrame, hidden: tuple[int, ...], seed: int = 0) -> Path:
    """A run directory holding an untrained encoder over ``var`` (written once)."""
    from ssl_census.shards.store import write_parquet
    from ssl_census.tasks.runs import RUN_VAR
    from ssl_census.training.rundir import RunDir

    if (out / "checkpoints" / "last.pt").is_file():
        return out
    torch.manual_seed(seed)
    encoder = Encoder(len(var), hidden)
    genes = hashlib.sha256("\n".join(var["feature_id"]).encode()).hexdigest()
    card = {"method": "random-init (benchmark)", "gene_list_sha256": genes,
            "n_genes": len(var), "step": 0, "best_val_loss": None,
            "encoder": {"n_genes": len(var), "hidden": list(hidden), "dropout": 0.1}}
    run = RunDir.create(out, {}, card)
    write_parquet(out / RUN_VAR, var)
    run.save("last", {"encoder": encoder.state_dict()})
    return out


def _embed_child(run: str, h5ad: str, out: str, batch_size: int) -> dict[str, Any]:
    from ssl_census.evaluation.model import load_model

    t0 = time.perf_counter()
    card = load_model(run).embed_h5ad(h5ad, out, batch_size=batch_size, on_note=print)
    seconds = time.perf_counter() - t0
    return {"n_cells": card["n_cells"], "seconds": seconds, "peak_rss_bytes": _peak_rss()}


def _peak_rss() -> int:
    """This process's exact peak RSS since it started (in_fresh_process samples, and may miss
    a short peak). Not ru_maxrss: across exec Linux keeps the high-water mark of the forked
    parent's image, so a spawned child would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip() if Path("/proc/loadavg").is_file() else ""


def run_embed_bench(work: Path, n_cells: int, n_genes: int, nnz: int, batch_size: int,
                    hidden: tuple[int, ...] = PAPER_HIDDEN, seed: int = 0,
                    keep: bool = False) -> dict[str, Any]:
    """Embed synthetic h5ad files of ``n_cells`` and ``n_cells // 10`` cells, each in a fresh
    process; cells/s and peak RSS of each. The big files are deleted unless ``keep``."""
    work.mkdir(parents=True, exist_ok=True)
    var = synthetic_var(n_genes)
    run = random_run(work / f"embed-run-{n_genes}g", var, hidden, seed)
    result: dict[str, Any] = {"n_genes": n_genes, "nnz_per_cell": nnz, "batch_size": batch_size,
                              "hidden": list(hidden), "loadavg_before": _loadavg(), "runs": []}
    for cells in (max(1, n_cells // 10), n_cells):
        h5ad = work / f"embed-synth-{cells}x{n_genes}-nnz{nnz}.h5ad"
        out = work / f"embed-synth-{cells}.embedded.h5ad"
        t0 = time.perf_counter()
        if not h5ad.is_file():
            write_synthetic_h5ad(h5ad, cells, var, nnz, seed)
        write_seconds = time.perf_counter() - t0
        child, sampled = in_fresh_process(_embed_child, str(run), str(h5ad), str(out),
                                          batch_size)
        child["peak_rss_bytes"] = max(child["peak_rss_bytes"], sampled)
        child.update(input_bytes=h5ad.stat().st_size, output_bytes=out.stat().st_size,
                     write_seconds=write_seconds,
                     cells_per_s=child["n_cells"] / child["seconds"])
        result["runs"].append(child)
        if not keep:
            h5ad.unlink()
            out.unlink()
    result["loadavg_after"] = _loadavg()
    return result


def format_report(result: dict[str, Any]) -> str:
    lines = [f"embed: {result['n_genes']:,} genes, ~{result['nnz_per_cell']} non-zero per cell, "
             f"batch {result['batch_size']:,}, encoder {result['hidden']}",
             f"{'cells':>12}{'cells/s':>12}{'seconds':>10}{'peak RSS MiB':>14}"
             f"{'input GiB':>11}{'output GiB':>12}"]
    for r in result["runs"]:
        lines.append(f"{r['n_cells']:>12,}{r['cells_per_s']:>12,.0f}{r['seconds']:>10.1f}"
                     f"{r['peak_rss_bytes'] / 2**20:>14,.0f}{r['input_bytes'] / 2**30:>11.2f}"
                     f"{r['output_bytes'] / 2**30:>12.2f}")
    lines.append(f"load average before: {result['loadavg_before']}; "
                 f"after: {result['loadavg_after']}")
    return "\n".join(lines)
