"""A fine-tuning run: an encoder (pre-trained run or random init) + a task head, trained with
the generic Trainer, written as a run directory that ``evaluate`` and ``embed`` read back
(:mod:`ssl_census.tasks.runs`).

Besides the Trainer's files (config.toml, model_card.json, metrics.jsonl, checkpoints/), a
fine-tuning run keeps its own copy of the gene space (``var.parquet``) and, for cell types, the
label table (``labels.parquet``), so it can embed and label an h5ad without the shard store.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ssl_census import __version__
from ssl_census.core import atomic
from ssl_census.core.errors import UserError
from ssl_census.models.mlp import Encoder, ModelConfig
from ssl_census.shards.store import ShardStore, open_shards, write_parquet
from ssl_census.tasks.config import FinetuneConfig
from ssl_census.tasks.cross_modality import cross_modality_data, score_cross_modality
from ssl_census.tasks.inputs import shard_task_data
from ssl_census.tasks.objectives import (
    NegativeBinomialReconstruction,
    freeze_all_but_last_layer,
)
from ssl_census.tasks.runs import (
    RUN_LABELS,
    RUN_VAR,
    build_objective,
    initial_encoder,
    pretrained_decoder,
    run_gene_space,
)
from ssl_census.training.pretrain import model_card
from ssl_census.training.rundir import RunDir
from ssl_census.training.setup import distributed_run, layout_card, train_run
from ssl_census.training.trainer import seed_everything


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
            td = shard_task_data(task, store, cfg, train_cfg.seed, env, device)
            card = model_card(f"finetune:{task}", store, _encoder_shape(encoder))
        if cfg.shallow:
            freeze_all_but_last_layer(encoder)
        objective = build_objective(task, encoder, td.spec)
        decoder_from = []
        if isinstance(objective, NegativeBinomialReconstruction):
            decoder_from = objective.start_decoder_from(pretrained_decoder(init))
        init_path = init if init == "random" else str(Path(init).resolve())
        card.update(method=f"finetune:{task}", task=task, task_spec=td.spec, init=init_path,
                    init_method=(init_card or {}).get("method", "random"),
                    shallow=cfg.shallow, decoder_from_pretrained=decoder_from,
                    **layout_card(td.layout, td.density))

        def write_tables(run: RunDir) -> None:
            _write_run_tables(run, var, td.store)
            if td.cells is not None:
                write_split_indices(run.path, td.cells)

        summary, run = train_run(objective, td.train, td.val, train_cfg, out, cfg.to_dict(), card,
                                 env, device, resume, on_create=write_tables)
        if task == "cross_modality" and env.is_main:
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
    keep = ("gene_list_sha256", "n_genes", "shards")
    return {"tool_version": __version__, **{k: init_card[k] for k in keep if k in init_card},
            "encoder": {"n_genes": encoder.n_genes, "hidden": list(encoder.hidden),
                        "dropout": encoder.dropout}, "step": 0,
            "best_val_loss": None}


def _write_run_tables(run: RunDir, var: pd.DataFrame, store: ShardStore | None) -> None:
    write_parquet(run.path / RUN_VAR, var[["feature_id", "feature_name"]].astype(str))
    if store is not None:
        shutil.copyfile(store.path / "labels.parquet", run.path / f".{RUN_LABELS}.tmp")
        (run.path / f".{RUN_LABELS}.tmp").replace(run.path / RUN_LABELS)


def write_split_indices(run_dir: Path, splits: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **splits)
    atomic.write_bytes(run_dir / "cells.npz", buf.getvalue())
