"""``ssl-census finetune``: options override the keys of a TOML preset (configs/finetune/)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ssl_census.core.config import load_toml, merge
from ssl_census.tasks.config import TASKS, FinetuneConfig
from ssl_census.tasks.finetune import run_finetune
from ssl_census.training.commands import training_options, training_overrides


def finetune_config(task: str, config: str | None, **options: Any) -> FinetuneConfig:
    """The task's preset, then ``--config`` (a file or preset name), then the options."""
    base = load_toml(task, kind="finetune")
    if config:
        base = merge(base, load_toml(config, kind="finetune"))
    overrides = {
        "task": task, "batch_key": options["batch_key"], "target_obsm": options["target_obsm"],
        "shallow": True if options["shallow"] else None, **training_overrides(options),
    }
    return FinetuneConfig.from_dict(merge(base, overrides))


@click.command()
@click.option("--task", type=click.Choice(TASKS), required=True)
@click.option("--init", required=True,
              help="a pre-training run directory, or 'random' (the supervised baseline)")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="run directory")
@click.option("--shards", type=click.Path(path_type=Path),
              help="shard store to train on (celltype, reconstruction, integration)")
@click.option("--h5ad", type=click.Path(path_type=Path),
              help="h5ad with the other modality in obsm (cross_modality)")
@click.option("--target-obsm", help="obsm key of the target modality (default protein_counts)")
@click.option("--batch-key", help="obs column used as batch covariate (integration)")
@click.option("--shallow", is_flag=True, help="fine-tune only the encoder's last layer")
@click.option("--config", help="TOML file or preset name (default: the task's preset)")
@training_options
def finetune(task: str, init: str, out: Path, shards: Path | None, h5ad: Path | None,
             config: str | None, resume: bool, **options: Any) -> None:
    """Fine-tune an encoder (pre-trained or random) with a task head.

    Under `torchrun --nproc_per_node N` it trains with DDP (NCCL on GPUs, gloo on CPUs).
    """
    cfg = finetune_config(task, config, **options)
    summary = run_finetune(cfg, out, init, shards=shards, h5ad=h5ad, resume=resume)
    if summary["rank"] != 0:
        return
    click.echo(f"{task}: {summary['step']} steps, best val loss {summary['best_val_loss']:.4f}"
               f"{' (early stop)' if summary['stopped_early'] else ''} -> {out}")
    if "test" in summary:
        t = summary["test"]
        click.echo(json.dumps({"test_pearson": t["model"]["pearson"],
                               "mean_baseline_pearson": t["mean_baseline"]["pearson"],
                               "test_pearson_per_cell": t["model"]["pearson_per_cell_mean"],
                               "mean_baseline_pearson_per_cell":
                                   t["mean_baseline"]["pearson_per_cell_mean"]}))
