"""``ssl-census pretrain``: options override the keys of a TOML preset (configs/pretrain/).

The options every training command takes (model shape, data, schedule, device, resume) are
declared once here, in :func:`training_options`, and read by :func:`training_overrides`;
``ssl-census finetune`` uses both.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ssl_census.core.config import load_toml, merge
from ssl_census.core.errors import UserError
from ssl_census.pretext import METHODS
from ssl_census.training.config import PretrainConfig
from ssl_census.training.pretrain import run_pretraining
from ssl_census.training.trainer import INPUT_LAYOUTS


def parse_hidden(value: str | None) -> list[int] | None:
    """``--hidden 512,512,256,256,64`` as a list of layer sizes."""
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",")]
    except ValueError:
        raise UserError(f"--hidden {value!r} is not a list of sizes",
                        "write it like 512,512,256,256,64") from None


# option name -> (config table, type, help); the table's key is the option's name
_TRAINING_OPTIONS: dict[str, tuple[str, type | click.ParamType, str]] = {
    "hidden": ("model", str, "encoder sizes, e.g. 512,512,256,256,64 (fine-tuning: with "
                             "--init random only; a pre-trained run brings its own)"),
    "dropout": ("model", float, "encoder dropout (fine-tuning: with --init random only)"),
    "batch_size": ("data", int, "cells per batch"),
    "workers": ("data", int, "loader worker threads (default: up to 4, within the budget)"),
    "max_steps": ("train", int, "stop after this many optimiser steps"),
    "max_epochs": ("train", int, "stop after this many epochs"),
    "lr": ("train", float, "peak learning rate"),
    "weight_decay": ("train", float, "weight decay (matrices only)"),
    "val_every": ("train", int, "validate every N steps"),
    "val_batches": ("train", int, "validate on the first N val batches"),
    "patience": ("train", int, "validations without improvement before stopping"),
    "log_every": ("train", int, "log every N steps"),
    "seed": ("train", int, "seed of weights, masks and the loader's order"),
    "input_layout": ("train", click.Choice(INPUT_LAYOUTS),
                     "batches to the encoder as CSR (sparse first layer) or dense; auto: "
                     "sparse on CPUs for sparse enough data"),
}


def training_options(command: Callable) -> Callable:
    """The options of every training command (pretrain, finetune), declared once."""
    options = [click.option(f"--{name.replace('_', '-')}", type=kind, help=text)
               for name, (_, kind, text) in _TRAINING_OPTIONS.items()]
    options += [
        click.option("--device", help="auto, cpu, cuda or cuda:N"),
        click.option("--resume", is_flag=True,
                     help="continue the run in --out from its last checkpoint"),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def training_overrides(options: dict[str, Any]) -> dict[str, Any]:
    """The config keys the options of :func:`training_options` set (None: not given)."""
    tables: dict[str, dict[str, Any]] = {"model": {}, "data": {}, "train": {}}
    for name, (table, _, _) in _TRAINING_OPTIONS.items():
        tables[table][name] = options[name]
    tables["model"]["hidden"] = parse_hidden(options["hidden"])
    return {"device": options["device"], **tables}


def pretrain_config(config: str | None, method: str | None, **options: Any) -> PretrainConfig:
    """The method's preset, then ``--config`` (a file or preset name), then the options."""
    user = load_toml(config, kind="pretrain") if config else {}
    method = method or user.get("method")
    if method not in METHODS:
        raise UserError(f"unknown or missing method {method!r}",
                        f"pass --method (one of {', '.join(METHODS)}) or set it in --config")
    overrides = {"method": method, "gene_sets": options["gene_sets"],
                 **training_overrides(options)}
    raw = merge(merge(load_toml(method, kind="pretrain"), user), overrides)
    return PretrainConfig.from_dict(raw)


@click.command()
@click.option("--method", type=click.Choice(METHODS), help="pre-training method")
@click.option("--shards", type=click.Path(path_type=Path), required=True,
              help="shard store (the --out of `ssl-census shards build`)")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="run directory")
@click.option("--config", help="TOML file or preset name (default: the method's preset)")
@click.option("--gene-sets", help="GMT file, or msigdb:c8 / msigdb:c3_tft (fetched, cached)")
@training_options
def pretrain(shards: Path, out: Path, config: str | None, method: str | None, resume: bool,
             **options: Any) -> None:
    """Pre-train an encoder with a self-supervised method on a shard store.

    Under `torchrun --nproc_per_node N` it trains with DDP (NCCL on GPUs, gloo on CPUs).
    """
    cfg = pretrain_config(config, method, **options)
    summary = run_pretraining(cfg, shards, out, resume=resume)
    if summary["rank"] != 0:
        return
    early = " (early stop)" if summary["stopped_early"] else ""
    click.echo(f"{cfg.method}: {summary['step']} steps, best val loss "
               f"{summary['best_val_loss']:.4f}{early} -> {out}")
