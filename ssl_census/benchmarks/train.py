"""``ssl-census bench train``: cells/s of the full Trainer per method, dense against sparse
input, beside the FLOP ceiling of the machine.

For every method (the six pre-training methods and the cell-type fine-tuning task), batch size
and input layout it trains the configured model (default the paper's [512, 512, 256, 256, 64]
over 19,331 genes) through the real ``Trainer`` and ``BlockShuffleLoader`` on a synthetic
store of scTab's density, and times the steps after a warm-up (``timed_cells`` cells each).

The ceiling: the matrix-product FLOPs of one training step of the model as configured, with a
dense first layer, per cell (every linear layer the step runs: 2 x in x out forward, as much
again for the weight gradient of a trained layer and for the input gradient where the input
takes one; BYOL's target network only forward), against the machine's fp32 peak, read from a
short matrix product in the same run. The fraction of the ceiling is cells/s over
peak / FLOPs per cell; the sparse path can pass 1, as it skips zeros the ceiling counts.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ssl_census.benchmarks.loader_synthetic import N_GENES, write_synthetic_store
from ssl_census.core.errors import UserError
from ssl_census.data import BlockShuffleLoader
from ssl_census.models.mlp import PAPER_HIDDEN, Encoder
from ssl_census.pretext import METHODS, build_method
from ssl_census.pretext.base import Objective
from ssl_census.shards.store import ShardStore, open_shards
from ssl_census.tasks.objectives import CellTypeClassifier
from ssl_census.training.trainer import TrainConfig, Trainer, seed_everything

TASKS = ("celltype",)  # fine-tuning tasks that train on a shard store's cells alone
OBJECTIVES = (*METHODS, *TASKS)
LAYOUTS = ("dense", "sparse")
GENE_SET_METHODS = {"gp_mask": "programmes", "gp_to_gp": "programmes", "gp_to_tf": "tf_targets"}


# -- the machine and the model ------------------------------------------------------------------


def peak_gflops(size: int = 2048, repeats: int = 5) -> float:
    """fp32 GFLOPS of the best of ``repeats`` square matrix products of side ``size``."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up: threads started, pages touched
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e9


def flops_per_cell(objective: Objective, batch: Any) -> float:
    """Matrix-product FLOPs of one training step per cell, counted on a dense ``batch``: each
    linear layer's forward, and for a layer with a trained weight its weight gradient, and
    the gradient of its input where that input takes one (not the encoder's genes)."""
    counted: list[float] = []

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], _: Any) -> None:
        x = inputs[0]
        one = 2.0 * module.in_features * module.out_features * x.shape[0]
        trained = module.weight.requires_grad and torch.is_grad_enabled()
        counted.append(one * (1 + trained + (trained and x.requires_grad)))

    hooks = [m.register_forward_hook(count) for m in objective.modules()
             if isinstance(m, nn.Linear)]
    try:
        objective.train()
        objective.loss(batch)
    finally:
        for h in hooks:
            h.remove()
    return sum(counted) / batch.x.shape[0]


# -- the data ---------------------------------------------------------------------------------


def nnz_range(nnz_per_cell: int, n_genes: int) -> tuple[int, int]:
    """Non-zeros per cell around ``nnz_per_cell``, spread as scTab's 1,500-2,000 are."""
    if not 1 <= nnz_per_cell <= n_genes:
        raise UserError(f"--nnz-per-cell {nnz_per_cell} does not fit {n_genes} genes",
                        "choose between 1 and --genes")
    return max(1, round(0.86 * nnz_per_cell)), min(n_genes, round(1.14 * nnz_per_cell))


def write_gene_sets(store: ShardStore, folder: Path, seed: int = 0) -> dict[str, Path]:
    """GMT files of random programmes over the store's genes (timing does not depend on what
    they mean): ``programmes`` covering well over half the genes (GP masking's rate), and
    ``tf_targets`` named ``<gene>_TARGET_GENES`` (GP to TF)."""
    rng = np.random.default_rng(seed)
    genes = store.var["feature_name"].astype(str).to_numpy()
    n = len(genes)
    sizes = (max(3, n // 400), max(6, n // 100))

    def programmes(names: Sequence[str]) -> str:
        rows = []
        for name in names:
            members = rng.choice(n, rng.integers(sizes[0], sizes[1] + 1), replace=False)
            rows.append("\t".join([name, "synthetic", *genes[np.sort(members)]]))
        return "\n".join(rows) + "\n"

    folder.mkdir(parents=True, exist_ok=True)
    paths = {"programmes": folder / "programmes.gmt", "tf_targets": folder / "tf_targets.gmt"}
    paths["programmes"].write_text(programmes([f"PROGRAMME_{i}" for i in range(200)]))
    factors = rng.choice(n, min(200, n), replace=False)
    paths["tf_targets"].write_text(programmes([f"{genes[f]}_TARGET_GENES" for f in factors]))
    return paths


def build_objective(name: str, store: ShardStore, hidden: Sequence[int],
                    gene_sets: dict[str, Path]) -> Objective:
    """A fresh objective for ``name`` over the store's genes, the model at ``hidden``."""
    model = {"hidden": list(hidden)}
    if name == "celltype":
        encoder = Encoder(store.n_genes, hidden)
        weight = torch.tensor(store.labels.sort_values("cell_type_code")["class_weight"]
                              .to_numpy(dtype=np.float32))
        return CellTypeClassifier(encoder, len(weight), weight)
    sets = gene_sets.get(GENE_SET_METHODS.get(name, ""))
    return build_method(name, store.var["feature_name"].astype(str).tolist(), model=model,
                        gene_sets=str(sets) if sets else None)


# -- one measurement --------------------------------------------------------------------------


def _loader(store: ShardStore, name: str, batch_size: int, dense: bool,
            workers: int | None) -> BlockShuffleLoader:
    obs = ("cell_type_code",) if name == "celltype" else ()
    return BlockShuffleLoader(store.path, "train", batch_size=batch_size, obs_columns=obs,
                              dense=dense, shuffle=True, drop_last=True,
                              **({"workers": workers} if workers else {}))


def time_training(store: ShardStore, name: str, batch_size: int, layout: str, steps: int,
                  warmup: int, hidden: Sequence[int], gene_sets: dict[str, Path],
                  workers: int | None) -> dict[str, Any]:
    """cells/s of ``steps`` Trainer steps after ``warmup`` ones (a fresh model and loader)."""
    seed_everything(0)
    objective = build_objective(name, store, hidden, gene_sets)
    loader = _loader(store, name, batch_size, layout == "dense", workers)
    stamps: list[float] = []
    config = TrainConfig(max_steps=warmup + steps, max_epochs=None, log_every=1,
                         val_every=warmup + steps + 1, warmup_steps=1)
    trainer = Trainer(objective, loader, None, config, None, "cpu",
                      on_step=lambda step, figures: stamps.append(time.perf_counter()))
    try:
        trainer.fit()
    finally:
        loader.close()
    seconds = stamps[-1] - stamps[warmup - 1]
    return {"method": name, "batch_size": batch_size, "layout": layout, "steps": steps,
            "seconds": seconds, "cells_per_s": steps * batch_size / seconds}


def _flops(store: ShardStore, name: str, hidden: Sequence[int],
           gene_sets: dict[str, Path]) -> float:
    loader = _loader(store, name, 8, True, 1)
    try:
        batch = next(iter(loader))
    finally:
        loader.close()
    return flops_per_cell(build_objective(name, store, hidden, gene_sets), batch)


def run_train_bench(work: Path, methods: Sequence[str], batch_sizes: Sequence[int],
                    layouts: Sequence[str] = LAYOUTS, timed_cells: int = 16_384,
                    warmup: int = 1, n_genes: int = N_GENES, nnz_per_cell: int = 1_750,
                    hidden: Sequence[int] = PAPER_HIDDEN, threads: int | None = None,
                    workers: int | None = None,
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every (method, batch size, layout) timed; figures and the machine's ceiling as a dict."""
    unknown = sorted(set(methods) - set(OBJECTIVES))
    if unknown:
        raise UserError(f"unknown methods: {', '.join(unknown)}",
                        f"choose from {', '.join(OBJECTIVES)}")
    if threads:
        torch.set_num_threads(threads)
    steps = {b: max(2, math.ceil(timed_cells / b)) for b in batch_sizes}
    n_cells = max((warmup + steps[b] + 1) * b for b in batch_sizes)
    log(f"synthetic store: {n_cells} cells x {n_genes} genes, ~{nnz_per_cell} non-zeros a cell")
    store = open_shards(write_synthetic_store(work / "store", n_cells, n_genes=n_genes,
                                              nnz_range=nnz_range(nnz_per_cell, n_genes)))
    gene_sets = write_gene_sets(store, work / "genesets")
    peak = peak_gflops()
    log(f"peak: {peak:.1f} GFLOPS fp32 on {torch.get_num_threads()} threads")
    rows = []
    for name in methods:
        per_cell = _flops(store, name, hidden, gene_sets)
        ceiling = peak * 1e9 / per_cell
        for batch_size in batch_sizes:
            for layout in layouts:
                row = time_training(store, name, batch_size, layout, steps[batch_size], warmup,
                                    hidden, gene_sets, workers)
                row.update(flops_per_cell=per_cell, ceiling_cells_per_s=ceiling,
                           fraction_of_ceiling=row["cells_per_s"] / ceiling)
                log(f"{name} batch {batch_size} {layout}: {row['cells_per_s']:.0f} cells/s "
                    f"({row['fraction_of_ceiling']:.2f} of {ceiling:.0f})")
                rows.append(row)
    csr, _ = store.split("train")
    return {
        "machine": {"peak_gflops": peak, "threads": torch.get_num_threads(),
                    "processor": _processor(), "torch": torch.__version__},
        "model": {"n_genes": n_genes, "hidden": list(hidden),
                  "density": csr.nnz / (csr.n_cells * csr.n_genes)},
        "warmup_steps": warmup, "rows": rows,
    }


def _processor() -> str:
    """The CPU's model name (Linux), else the architecture."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def format_report(report: dict[str, Any]) -> str:
    """A table: cells/s per method, batch size and layout, the ceiling and the fraction of it,
    and the sparse path's speed-up over the dense one."""
    m, model = report["machine"], report["model"]
    lines = [f"model {model['hidden']} over {model['n_genes']} genes, density "
             f"{model['density']:.3f}; peak {m['peak_gflops']:.1f} GFLOPS fp32, "
             f"{m['threads']} threads",
             "",
             "| method | batch | layout | cells/s | ceiling cells/s | of ceiling | vs dense |",
             "|---|---:|---|---:|---:|---:|---:|"]
    dense = {(r["method"], r["batch_size"]): r["cells_per_s"] for r in report["rows"]
             if r["layout"] == "dense"}
    for r in report["rows"]:
        base = dense.get((r["method"], r["batch_size"]))
        speedup = f"{r['cells_per_s'] / base:.2f}x" if base else "-"
        lines.append(f"| {r['method']} | {r['batch_size']} | {r['layout']} | "
                     f"{r['cells_per_s']:,.0f} | {r['ceiling_cells_per_s']:,.0f} | "
                     f"{r['fraction_of_ceiling']:.2f} | {speedup} |")
    return "\n".join(lines)
