"""``ssl-census pretrain``: options override the keys of a TOML preset (configs/pretrain/)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ssl_census.core.config import load_toml, merge
from ssl_census.core.errors import UserError
from ssl_census.pretext import METHODS


def parse_hidden(value: str | None) -> list[int] | None:
    """``--hidden 512,512,256,256,64`` as a list of layer sizes."""
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",")]
    except ValueError:
        raise UserError(f"--hidden {value!r} is not a list of sizes",
                        "write it like 512,512,256,256,64") from None


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _drop_none(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}


TRAIN_OPTIONS = ("max_steps", "max_epochs", "lr", "weight_decay", "val_every", "val_batches",
                 "patience", "seed", "log_every")


def training_overrides(options: dict[str, Any]) -> dict[str, Any]:
    """The model, data and train keys that the options of pretrain and finetune share."""
    return {
        "device": options["device"],
        "model": {"hidden": parse_hidden(options["hidden"]), "dropout": options["dropout"]},
        "data": {"batch_size": options["batch_size"], "workers": options["workers"]},
        "train": {k: options[k] for k in TRAIN_OPTIONS},
    }


def pretrain_config(config: str | None, method: str | None, **options: Any) -> dict[str, Any]:
    """The method's preset, then ``--config`` (a file or preset name), then the options."""
    user = load_toml(config, kind="pretrain") if config else {}
    method = method or user.get("method")
    if method not in METHODS:
        raise UserError(f"unknown or missing method {method!r}",
                        f"pass --method (one of {', '.join(METHODS)}) or set it in --config")
    overrides = {"method": method, "gene_sets": options["gene_sets"],
                 **training_overrides(options)}
    return merge(merge(load_toml(method, kind="pretrain"), user), _drop_none(overrides))


@click.command()
@click.option("--method", type=click.Choice(METHODS), help="pre-training method")
@click.option("--shards", type=click.Path(path_type=Path), required=True,
              help="shard store (the --out of `ssl-census shards build`)")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="run directory")
@click.option("--config", help="TOML file or preset name (default: the method's preset)")
@click.option("--gene-sets", help="GMT file, or msigdb:c8 / msigdb:c3_tft (fetched, cached)")
@click.option("--max-steps", type=int)
@click.option("--max-epochs", type=int)
@click.option("--batch-size", type=int)
@click.option("--lr", type=float)
@click.option("--weight-decay", type=float)
@click.option("--hidden", help="encoder sizes, e.g. 512,512,256,256,64")
@click.option("--dropout", type=float)
@click.option("--val-every", type=int, help="validate every N steps")
@click.option("--val-batches", type=int, help="validate on the first N val batches")
@click.option("--patience", type=int, help="validations without improvement before stopping")
@click.option("--log-every", type=int)
@click.option("--seed", type=int)
@click.option("--workers", type=int, help="loader worker threads")
@click.option("--device", help="auto, cpu, cuda or cuda:N")
@click.option("--resume", is_flag=True, help="continue the run in --out from its last checkpoint")
def pretrain(shards: Path, out: Path, config: str | None, method: str | None, resume: bool,
             **options: Any) -> None:
    """Pre-train an encoder with a self-supervised method on a shard store.

    Under `torchrun --nproc_per_node N` it trains with DDP (NCCL on GPUs, gloo on CPUs).
    """
    from ssl_census.training.pretrain import run_pretraining

    cfg = pretrain_config(config, method, **options)
    summary = run_pretraining(cfg, shards, out, resume=resume)
    if summary["rank"] != 0:
        return
    early = " (early stop)" if summary["stopped_early"] else ""
    click.echo(f"{cfg['method']}: {summary['step']} steps, best val loss "
               f"{summary['best_val_loss']:.4f}{early} -> {out}")
