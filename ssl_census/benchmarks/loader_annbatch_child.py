"""annbatch's side of ``ssl-census bench loader``: run by the Python 3.12 venv that has it.

``python -m ssl_census.benchmarks.loader_annbatch_child convert|annbatch ARGS_JSON OUT_DIR``
(with the repository on ``PYTHONPATH``; only numpy and the standard library are shared with
the main environment). ``convert`` turns the same cells into an annbatch collection with
annbatch's own writer (``DatasetCollection.add_adatas``: shuffled, sharded Zarr v3);
``annbatch`` times its ``Loader`` over that collection with the zarrs codec pipeline.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from ssl_census.benchmarks.loader_child import main, timed_batches


def convert(args: dict[str, Any]) -> dict[str, Any]:
    import anndata as ad
    import numpy as np
    from annbatch import DatasetCollection

    def load(path: Any) -> ad.AnnData:
        lazy = ad.experimental.read_lazy(path)
        return ad.AnnData(
            X=lazy.X, obs=lazy.obs[["dataset_id"]].to_memory(), var=lazy.var.to_memory()
        )

    start = time.perf_counter()
    DatasetCollection(args["collection"]).add_adatas(
        [args["anndata_zarr"]],
        load_adata=load,
        dataset_size=args["dataset_size"],
        rng=np.random.default_rng(0),
    )
    seconds = time.perf_counter() - start
    return {
        "cells": 0,
        "seconds": seconds,
        "sizes": np.array([0]),
        "labels": None,
        "settings": {"dataset_size": args["dataset_size"]},
    }


def run_annbatch(args: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import pandas as pd
    import zarr
    from annbatch import DatasetCollection, Loader

    zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"})
    loader = Loader(
        batch_size=args["batch_size"],
        chunk_size=args["ab_chunk_size"],
        preload_nchunks=args["ab_preload_nchunks"],
        shuffle=True,
        preload_to_gpu=False,
        rng=np.random.default_rng(1),
    )
    collection = DatasetCollection(args["collection"], mode="r")
    # one code per dataset_id across the collection's files (each has its own categories)
    names = sorted(collection.obs(columns=["dataset_id"])["dataset_id"].astype(str).unique())
    loader.use_collection(collection)
    out = timed_batches(
        iter(loader),
        args["cells_limit"],
        lambda b: b["X"].shape[0],
        lambda b: pd.Categorical(b["obs"]["dataset_id"].astype(str), categories=names).codes,
    )
    import annbatch
    import zarrs

    out["settings"] = {
        "chunk_size": args["ab_chunk_size"],
        "preload_nchunks": args["ab_preload_nchunks"],
        "annbatch": annbatch.__version__,
        "zarrs": zarrs.__version__,
        "zarr": zarr.__version__,
    }
    return out


if __name__ == "__main__":
    main(sys.argv[1:], {"convert": convert, "annbatch": run_annbatch})
