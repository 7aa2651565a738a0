"""One loader run of ``ssl-census bench loader``, in its own process (so its peak RSS is its own).

``python -m ssl_census.benchmarks.loader_child KIND ARGS_JSON OUT_DIR`` iterates batches for at
most ``cells_limit`` cells and writes ``OUT_DIR/result.json`` (cells, seconds, peak RSS,
settings) and ``OUT_DIR/labels.npy`` (the dataset_id code of every yielded cell, in order,
with the batch sizes in ``OUT_DIR/batches.npy``) for the shuffle-quality figure. KIND is:

``ssl-census``   BlockShuffleLoader (any reader), CSR batches, as the training loop gets them
``scdataset``    scDataset block shuffling over the same arrays, read through anndata/zarr(s)
``raw``          decompression of the same chunks, no per-batch work: the ceiling
``tiledbsoma-ml`` ExperimentDataset over the census-layout source the store was built from

annbatch needs Python 3.12 and runs from :mod:`ssl_census.benchmarks.loader_annbatch_child`.
"""

from __future__ import annotations

import json
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads (what the work cost, whatever
    else the machine was running)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed_batches(
    batches: Iterable[Any],
    limit: int,
    size: Callable[[Any], int],
    labels: Callable[[Any], np.ndarray] | None,
) -> dict[str, Any]:
    """Pull batches until ``limit`` cells; record time, sizes and labels."""
    sizes, codes = [], []
    cells = 0
    cpu0 = cpu_seconds()
    start = time.perf_counter()
    for batch in batches:
        n = size(batch)
        sizes.append(n)
        if labels is not None:
            codes.append(np.asarray(labels(batch), dtype=np.int32))
        cells += n
        if cells >= limit:
            break
    seconds = time.perf_counter() - start
    return {
        "cells": cells,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds() - cpu0,
        "sizes": np.array(sizes),
        "labels": np.concatenate(codes) if codes else None,
    }


def run_ssl_census(args: dict[str, Any]) -> dict[str, Any]:
    from ssl_census.data import BlockShuffleLoader

    loader = BlockShuffleLoader(
        args["shards"],
        "train",
        batch_size=args["batch_size"],
        dense=False,
        obs_columns=("dataset_id",),
        workers=args["workers"],
        reader=args["reader"],
        seed=1,
        **{k: args[k] for k in ("block_size", "buffer_cells") if args.get(k)},
    )
    out = timed_batches(loader, args["cells_limit"], len, lambda b: b.obs["dataset_id"].numpy())
    out["settings"] = {
        "reader": args["reader"],
        "workers": loader.workers,
        "block_size": loader.block_size,
        "buffer_cells": loader.buffer_cells,
    }
    return out


def run_scdataset(args: dict[str, Any]) -> dict[str, Any]:
    import anndata as ad
    import pandas as pd
    import zarr
    from scdataset import BlockShuffling, scDataset

    with zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"}):
        x = ad.io.sparse_dataset(zarr.open_group(args["anndata_zarr"], mode="r")["X"])
    codes = pd.read_parquet(Path(args["shards"]) / "train" / "obs.parquet", columns=["dataset_id"])[
        "dataset_id"
    ].cat.codes.to_numpy()

    class Rows:
        """Batched row access for scDataset: sorted indices in, CSR rows and their ids out."""

        def __len__(self) -> int:
            return x.shape[0]

        def __getitem__(self, idx: np.ndarray) -> tuple[Any, np.ndarray]:
            idx = np.asarray(idx)
            return x[idx], idx

    ds = scDataset(
        Rows(),
        BlockShuffling(block_size=args["scd_block_size"]),
        batch_size=args["batch_size"],
        fetch_factor=args["scd_fetch_factor"],
        batch_callback=lambda fetched, i: (fetched[0][i], fetched[1][i]),
        seed=1,
    )
    out = timed_batches(
        iter(ds), args["cells_limit"], lambda b: b[0].shape[0], lambda b: codes[b[1]]
    )
    out["settings"] = {
        "block_size": args["scd_block_size"],
        "fetch_factor": args["scd_fetch_factor"],
        "backend": "anndata+zarrs",
    }
    return out


def run_tiledbsoma_ml(args: dict[str, Any]) -> dict[str, Any]:
    """tiledbsoma-ml's ExperimentDataset over the census-layout source (raw X, primary cells)."""
    import tiledbsoma as soma
    from tiledbsoma_ml import ExperimentDataset

    exp_uri = args["census_uri"].rstrip("/") + "/census_data/homo_sapiens"
    ctx = soma.SOMATileDBContext(tiledb_config={"soma.init_buffer_bytes": 256 * 2**20})
    with soma.Experiment.open(exp_uri, context=ctx) as exp:
        query = exp.axis_query(
            "RNA", obs_query=soma.AxisQuery(value_filter="is_primary_data == True")
        )
        ds = ExperimentDataset(
            query,
            layer_name="raw",
            obs_column_names=["dataset_id"],
            batch_size=args["batch_size"],
            shuffle=True,
            seed=1,
            return_sparse_X=True,
        )
        names: dict[str, int] = {}
        out = timed_batches(
            iter(ds),
            args["cells_limit"],
            lambda b: b[0].shape[0],
            lambda b: [names.setdefault(v, len(names)) for v in b[1]["dataset_id"].astype(str)],
        )
    out["settings"] = {"source": "census-layout SOMA store, X['raw']", "shuffle": True}
    return out


def run_raw(args: dict[str, Any]) -> dict[str, Any]:
    """Decompress every chunk of the cells' indices and data in ``workers`` threads."""
    from ssl_census.data.readers import DirectReader

    x_root = str(Path(args["shards"]) / "train" / "X.zarr")
    reader = DirectReader(x_root, ("indptr", "indices", "data"))
    n = reader.arrays["indptr"].meta.size - 1
    cells = min(n, args["cells_limit"])
    nnz = int(reader.read("indptr", cells, cells + 1, np.dtype(np.int64))[0])
    jobs = []
    for name in ("indices", "data"):
        arr = reader.arrays[name]
        step = arr.meta.chunk * 8
        jobs += [(arr, lo, min(lo + step, nnz)) for lo in range(0, nnz, step)]

    local = threading.local()

    def work(job: tuple[Any, int, int]) -> None:
        arr, lo, hi = job
        key = f"buf_{arr.name}"
        if not hasattr(local, key):
            setattr(local, key, np.empty(arr.meta.chunk * 8, dtype=arr.meta.dtype))
        arr.read_into(lo, hi, getattr(local, key)[: hi - lo])

    cpu0 = cpu_seconds()
    start = time.perf_counter()
    with ThreadPoolExecutor(args["workers"]) as pool:
        list(pool.map(work, jobs))
    seconds = time.perf_counter() - start
    return {
        "cells": cells,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds() - cpu0,
        "sizes": np.array([cells]),
        "labels": None,
        "settings": {"workers": args["workers"], "what": "decompress indices+data chunks"},
    }


RUNS = {
    "ssl-census": run_ssl_census,
    "scdataset": run_scdataset,
    "raw": run_raw,
    "tiledbsoma-ml": run_tiledbsoma_ml,
}


def write_result(result: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / "batches.npy", result.pop("sizes"))
    labels = result.pop("labels")
    if labels is not None:
        np.save(out_dir / "labels.npy", labels)
    result["peak_rss_bytes"] = peak_rss_bytes()
    (out_dir / "result.json").write_text(json.dumps(result))


def main(argv: list[str], runs: dict[str, Callable[[dict[str, Any]], dict[str, Any]]]) -> None:
    kind, args, out_dir = argv[0], json.loads(argv[1]), Path(argv[2])
    write_result(runs[kind](args), out_dir)


if __name__ == "__main__":
    main(sys.argv[1:], RUNS)
