"""A fine-tuning run: an encoder (pre-trained run or random init) + a task head, trained with
the generic Trainer, written as a run directory that ``evaluate`` and ``embed`` read back.

Besides the Trainer's files (config.toml, model_card.json, metrics.jsonl, checkpoints/), a
fine-tuning run keeps its own copy of the gene space (``var.parquet``) and, for cell types, the
label table (``labels.parquet``), so it can embed and label an h5ad without the shard store.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ssl_census.core import atomic
from ssl_census.core.errors import UserError
from ssl_census.models.mlp import Encoder, ModelConfig
from ssl_census.pretext.base import Objective
from ssl_census.shards.store import ShardStore, open_shards, read_parquet
from ssl_census.tasks.config import TASKS, FinetuneConfig
from ssl_census.tasks.objectives import (
    CellTypeClassifier,
    CrossModalityRegressor,
    NegativeBinomialReconstruction,
    freeze_all_but_last_layer,
)
from ssl_census.training.distributed import DistEnv
from ssl_census.training.pretrain import gene_list_sha256, model_card
from ssl_census.training.rundir import RunDir, load_encoder
from ssl_census.training.setup import distributed_run, shard_loaders, train_run
from ssl_census.training.trainer import seed_everything

RUN_VAR = "var.parquet"
RUN_LABELS = "labels.parquet"


# -- the gene space of a run ------------------------------------------------------------------


def run_gene_space(run_dir: str | Path) -> pd.DataFrame:
    """The genes a run's encoder reads (feature_id, feature_name in input order).

    A fine-tuning run keeps its own copy; a pre-training run names its shard store.
    """
    run = RunDir(run_dir)
    if (run.path / RUN_VAR).is_file():
        return read_parquet(run.path / RUN_VAR)
    card = run.card
    store_path = card.get("shards", {}).get("path")
    if not store_path or not Path(store_path).is_dir():
        raise UserError(f"the gene space of run {run.path} is unknown (its shard store "
                        f"{store_path} is gone)", "fine-tune it on a shard store first")
    return open_shards(store_path).var


def check_same_gene_space(card: dict[str, Any], store: ShardStore, what: str) -> None:
    """Refuse a run whose encoder reads a different gene list than ``store`` holds."""
    expected = gene_list_sha256(store)
    if card.get("n_genes") != store.n_genes or card.get("gene_list_sha256") != expected:
        raise UserError(
            f"{what} was trained on another gene space ({card.get('n_genes')} genes, list "
            f"{str(card.get('gene_list_sha256'))[:12]}) than the shards at {store.path} "
            f"({store.n_genes} genes, list {expected[:12]})",
            "use shards built with the same gene list, or fine-tune from --init random",
        )


def initial_encoder(init: str, n_genes: int, model: ModelConfig,
                    store: ShardStore | None = None) -> tuple[Encoder, dict[str, Any] | None]:
    """A fresh encoder (``init == "random"``) or the encoder of a run, checked against the
    gene space it will read."""
    if init == "random":
        return Encoder(n_genes, model.hidden, model.dropout), None
    encoder, card = load_encoder(init)
    if store is not None:
        check_same_gene_space(card, store, f"--init run {init}")
    elif card["encoder"]["n_genes"] != n_genes:
        raise UserError(f"--init run {init} reads {card['encoder']['n_genes']} genes, not "
                        f"{n_genes}", "use a run from the same gene space")
    return encoder.train(), card


# -- building the objective of a task (also used to read a run back) ---------------------------


def build_objective(task: str, encoder: Encoder, spec: dict[str, Any]) -> Objective:
    if task == "celltype":
        weight = torch.tensor(spec["class_weight"], dtype=torch.float32)
        return CellTypeClassifier(encoder, len(spec["class_weight"]), weight)
    if task in ("reconstruction", "integration"):
        batches = spec.get("batch_categories") or []
        return NegativeBinomialReconstruction(encoder, len(batches), spec.get("batch_key"))
    if task == "cross_modality":
        return CrossModalityRegressor(encoder, len(spec["target_names"]), spec.get("head", 256))
    raise UserError(f"unknown task {task!r}", f"choose one of {', '.join(TASKS)}")


def load_task(run_dir: str | Path, checkpoint: str = "best",
              device: str | torch.device = "cpu") -> tuple[Objective, dict[str, Any]]:
    """The whole fine-tuned model (encoder + head) of a run, in eval mode, with its card."""
    encoder, card = load_encoder(run_dir, checkpoint, str(device))
    if "task" not in card:
        raise UserError(f"{run_dir} is a pre-training run, not a fine-tuning run",
                        "give the --out of `ssl-census finetune`")
    run = RunDir(run_dir)
    name = checkpoint if (run.checkpoints / f"{checkpoint}.pt").is_file() else "last"
    objective = build_objective(card["task"], encoder, card["task_spec"])
    objective.load_state_dict(run.load(name, device)["model"])
    return objective.to(device).eval(), card


# -- the run ----------------------------------------------------------------------------------


@dataclass
class TaskData:
    """What a task trains on: loaders, the objective's spec, and the run card's extra fields."""

    train: Any
    val: Any
    spec: dict[str, Any]
    store: ShardStore | None
    cells: dict[str, np.ndarray] | None = None  # row indices per split, for in-memory data


class BatchCodes:
    """A loader whose ``obs[key]`` codes are translated into a fixed category list.

    The loader codes a string column by the categories of its own split; the batch covariate
    must mean the same in every split, so codes are re-mapped to the training categories
    (a category the model never saw becomes -1: no batch information).
    """

    def __init__(self, loader: Any, key: str, categories: list[str]) -> None:
        self.loader, self.key = loader, key
        position = {c: i for i, c in enumerate(categories)}
        own = [str(c) for c in loader.categories[key]]
        self.table = torch.tensor([position.get(c, -1) for c in own] + [-1], dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: Any) -> None:
        self.loader.load_state_dict(state)

    def __iter__(self) -> Any:
        for batch in self.loader:
            codes = batch.obs[self.key].long().cpu()
            codes = torch.where(codes >= 0, codes, len(self.table) - 1)
            batch.obs[self.key] = self.table[codes].to(batch.x.device)
            yield batch


def _shard_task_data(task: str, store: ShardStore, config: FinetuneConfig, seed: int,
                     env: DistEnv, device: torch.device) -> TaskData:
    data = config.data
    if task == "celltype":
        labels = store.labels.sort_values("cell_type_code")
        train, val = shard_loaders(store.path, data, seed, env, device, ("x",),
                                   ("cell_type_code",))
        spec = {"class_weight": labels["class_weight"].astype(float).tolist()}
        return TaskData(train, val, spec, store)
    if task == "integration":
        key = config.batch_key
        _, obs = store.split("train")
        if key not in obs.columns:
            raise UserError(f"--batch-key {key!r} is not an obs column of the shards",
                            f"use one of {', '.join(obs.columns)}")
        train, val = shard_loaders(store.path, data, seed, env, device, ("x", "counts"), (key,))
        categories = [str(c) for c in train.categories[key]]
        spec = {"batch_key": key, "batch_categories": categories}
        return TaskData(BatchCodes(train, key, categories), BatchCodes(val, key, categories),
                        spec, store)
    train, val = shard_loaders(store.path, data, seed, env, device, ("x", "counts"))
    return TaskData(train, val, {}, store)


def run_finetune(config: FinetuneConfig | Mapping[str, Any], out: Path, init: str,
                 shards: Path | None = None, h5ad: Path | None = None,
                 resume: bool = False) -> dict[str, Any]:
    """Fine-tune for the config's task and write the run to ``out``; returns the trainer's
    summary. Under ``torchrun`` it trains with DDP, as pre-training does.
    """
    cfg = config if isinstance(config, FinetuneConfig) else FinetuneConfig.from_dict(config)
    task, train_cfg, model = cfg.task, cfg.train, cfg.model
    with distributed_run(cfg.device) as (env, device):
        seed_everything(train_cfg.seed)  # identical initial weights on every rank
        if task == "cross_modality":
            from ssl_census.tasks.cross_modality import cross_modality_data

            if h5ad is None:
                raise UserError("the cross_modality task reads an h5ad", "pass --h5ad")
            if init != "random":
                var = run_gene_space(init)
                encoder, init_card = initial_encoder(init, len(var), model)
                card = _card_from_init(init_card, encoder)
            else:
                store = _store_for_random_init(shards)
                var = store.var
                encoder, init_card = initial_encoder(init, store.n_genes, model, store)
                card = model_card(f"finetune:{task}", store, _encoder_shape(encoder))
            td = cross_modality_data(h5ad, var, cfg, env, device)
        else:
            if shards is None:
                raise UserError(f"the {task} task trains on a shard store", "pass --shards")
            store = open_shards(shards)
            var = store.var
            encoder, init_card = initial_encoder(init, store.n_genes, model, store)
            td = _shard_task_data(task, store, cfg, train_cfg.seed, env, device)
            card = model_card(f"finetune:{task}", store, _encoder_shape(encoder))
        if cfg.shallow:
            freeze_all_but_last_layer(encoder)
        objective = build_objective(task, encoder, td.spec)
        init_path = init if init == "random" else str(Path(init).resolve())
        card.update(method=f"finetune:{task}", task=task, task_spec=td.spec, init=init_path,
                    init_method=(init_card or {}).get("method", "random"),
                    shallow=cfg.shallow)

        def write_tables(run: RunDir) -> None:
            _write_run_tables(run, var, td.store)
            if td.cells is not None:
                write_split_indices(run.path, td.cells)

        summary, run = train_run(objective, td.train, td.val, train_cfg, out, cfg.to_dict(), card,
                                 env, device, resume, on_create=write_tables)
        if task == "cross_modality" and env.is_main:
            from ssl_census.tasks.cross_modality import score_cross_modality

            summary["test"] = score_cross_modality(run.path, device)
        return summary


def _encoder_shape(encoder: Encoder) -> ModelConfig:
    return ModelConfig(encoder.hidden, encoder.dropout)


def _store_for_random_init(shards: Path | None) -> ShardStore:
    if shards is None:
        raise UserError("--init random needs a gene space",
                        "pass --shards (its var.parquet is the gene space)")
    return open_shards(shards)


def _card_from_init(init_card: dict[str, Any], encoder: Encoder) -> dict[str, Any]:
    """A run trained off any store keeps the gene space (and store) of the run it starts from."""
    from ssl_census import __version__

    keep = ("gene_list_sha256", "n_genes", "shards")
    return {"tool_version": __version__, **{k: init_card[k] for k in keep if k in init_card},
            "encoder": {"n_genes": encoder.n_genes, "hidden": list(encoder.hidden),
                        "dropout": encoder.dropout}, "step": 0,
            "best_val_loss": None}


def _write_run_tables(run: RunDir, var: pd.DataFrame, store: ShardStore | None) -> None:
    from ssl_census.shards.store import write_parquet

    write_parquet(run.path / RUN_VAR, var[["feature_id", "feature_name"]].astype(str))
    if store is not None:
        shutil.copyfile(store.path / "labels.parquet", run.path / f".{RUN_LABELS}.tmp")
        (run.path / f".{RUN_LABELS}.tmp").replace(run.path / RUN_LABELS)


def write_split_indices(run_dir: Path, splits: dict[str, np.ndarray]) -> None:
    import io

    buf = io.BytesIO()
    np.savez(buf, **splits)
    atomic.write_bytes(run_dir / "cells.npz", buf.getvalue())
