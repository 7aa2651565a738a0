"""``ssl-census bench scvi``: an scVI epoch from a shard store against scvi-tools' own
in-memory AnnData loader, on the same cells.

Both sides train ``scvi.model.SCVI`` (scvi-tools' defaults, batch covariate ``dataset_id``,
batch 128) over every cell of a synthetic store's train split
(:func:`~ssl_census.benchmarks.loader_synthetic.write_synthetic_store`), each in a fresh
process whose peak RSS (its whole process tree) is measured
(:func:`~ssl_census.core.measure.in_fresh_process`):

- ``shard store``: :class:`~ssl_census.data.scvi.ShardDataModule` streaming the store's raw
  counts (block-shuffled, bounded memory);
- ``AnnData in memory``: the same counts read into a scipy CSR matrix in an AnnData, then
  ``SCVI.setup_anndata`` and scvi-tools' ``DataSplitter`` / ``AnnDataLoader``
  (``train_size=1.0``: every cell, as the store's side).

Epoch time is the wall time of each training epoch (a Lightning callback); the AnnData side
also reports the time it took to get the cells into memory, which the store side never pays.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ssl_census.benchmarks.loader_synthetic import write_synthetic_store
from ssl_census.core.measure import in_fresh_process
from ssl_census.evaluation.scvi_baseline import require_scvi

BATCH_KEY = "dataset_id"
SIDES = ("shard store", "AnnData in memory")


def _epoch_timer() -> Any:
    """A Lightning callback recording each training epoch's wall time."""
    from lightning.pytorch.callbacks import Callback

    class EpochTimer(Callback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self._t0 = 0.0

        def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
            self._t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
            self.seconds.append(time.perf_counter() - self._t0)

    return EpochTimer()


def _store_side(store: str, epochs: int, batch_size: int, workers: int | None,
                threads: int | None) -> dict[str, Any]:
    """Runs in a fresh process: SCVI trained from the shard store."""
    from ssl_census.evaluation.scvi_baseline import train_scvi

    _threads(threads)
    timer = _epoch_timer()
    t0 = time.perf_counter()
    trained = train_scvi(store, BATCH_KEY, seed=0, max_epochs=epochs, accelerator="cpu",
                         batch_size=batch_size, workers=workers, callbacks=[timer])
    return {"epoch_seconds": timer.seconds, "steps": trained.steps,
            "cells": trained.datamodule.n_obs, "total_seconds": time.perf_counter() - t0}


def _anndata_side(store: str, epochs: int, batch_size: int, threads: int | None
                  ) -> dict[str, Any]:
    """Runs in a fresh process: the same cells in an AnnData, SCVI through scvi-tools' own
    loader."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp
    import scvi

    from ssl_census.evaluation.scvi_baseline import quiet_lightning
    from ssl_census.shards.store import open_shards

    _threads(threads)
    quiet_lightning()
    t0 = time.perf_counter()
    shards = open_shards(store)
    x, obs = shards.split("train")
    # each array read and converted in turn: beside the matrix, at most one array's stored
    # (uint16 / uint32) copy is alive, as when a user loads counts into memory
    counts = sp.csr_matrix((x.counts[:].astype(np.float32), x.indices[:].astype(np.int32),
                            x.indptr[:]), shape=(x.n_cells, x.n_genes))
    cells = pd.DataFrame({BATCH_KEY: obs[BATCH_KEY].astype(str).to_numpy()},
                         index=np.arange(x.n_cells).astype(str))
    adata = ad.AnnData(counts, obs=cells)
    adata.var_names = shards.var["feature_id"].astype(str).to_numpy()
    load = time.perf_counter() - t0
    scvi.settings.seed = 0
    scvi.model.SCVI.setup_anndata(adata, batch_key=BATCH_KEY)
    model = scvi.model.SCVI(adata)
    timer = _epoch_timer()
    model.train(max_epochs=epochs, accelerator="cpu", devices=1, train_size=1.0,
                batch_size=batch_size, enable_progress_bar=False, callbacks=[timer])
    return {"epoch_seconds": timer.seconds, "steps": int(model.trainer.global_step),
            "cells": int(adata.n_obs), "load_seconds": load,
            "total_seconds": time.perf_counter() - t0}


def _threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def run_scvi_bench(work: Path, cells: int, genes: int, nnz_per_cell: int, epochs: int = 1,
                   batch_size: int = 128, workers: int | None = None,
                   threads: int | None = None,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Both sides on one synthetic store (written under ``work``, reused when there)."""
    require_scvi()
    nnz = (max(1, int(nnz_per_cell * 0.85)), min(genes, int(nnz_per_cell * 1.15)))
    store = work / f"scvi-store-{cells}-{genes}g"
    log(f"synthetic store: {cells:,} cells x {genes:,} genes, {nnz[0]}-{nnz[1]} non-zeros "
        f"per cell -> {store}")
    write_synthetic_store(store, cells, n_genes=genes, nnz_range=nnz)
    report: dict[str, Any] = {"cells": cells, "genes": genes, "nnz_per_cell": list(nnz),
                              "epochs": epochs, "batch_size": batch_size, "store": str(store),
                              "sides": {}}
    for side in SIDES:
        log(f"{side}: training {epochs} epoch(s) in a fresh process")
        if side == SIDES[0]:
            result, peak = in_fresh_process(_store_side, str(store), epochs, batch_size,
                                            workers, threads)
        else:
            result, peak = in_fresh_process(_anndata_side, str(store), epochs, batch_size,
                                            threads)
        result["peak_rss_bytes"] = peak
        report["sides"][side] = result
    report["scvi_tools"] = _version()
    return report


def _version() -> str:
    import scvi

    return str(scvi.__version__)


def format_report(report: dict[str, Any]) -> str:
    lines = [f"scVI (scvi-tools {report['scvi_tools']}, defaults, batch {report['batch_size']},"
             f" covariate {BATCH_KEY}) on {report['cells']:,} synthetic cells x "
             f"{report['genes']:,} genes",
             f"{'loader':<20}{'epoch s (each)':>22}{'cells/s':>10}{'load s':>9}"
             f"{'peak RSS GiB':>14}"]
    for side, r in report["sides"].items():
        epochs = r["epoch_seconds"]
        each = ", ".join(f"{s:.1f}" for s in epochs)
        rate = r["cells"] / min(epochs) if epochs else float("nan")
        load = f"{r['load_seconds']:.1f}" if "load_seconds" in r else "-"
        lines.append(f"{side:<20}{each:>22}{rate:>10,.0f}{load:>9}"
                     f"{r['peak_rss_bytes'] / 2**30:>14.2f}")
    return "\n".join(lines)
