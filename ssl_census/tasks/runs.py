"""A task model and the run it lives in: building the objective of a task, reading a fine-tuned
run back (``evaluate``, ``embed``), and the gene space a run's encoder reads.

A fine-tuning run keeps its own copy of the gene space (``var.parquet``) and, for cell types,
the label table (``labels.parquet``), so it can embed and label an h5ad without the shard store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ssl_census.core.errors import UserError
from ssl_census.models.mlp import Encoder, ModelConfig
from ssl_census.pretext.base import Objective
from ssl_census.shards.store import ShardStore, open_shards, read_parquet
from ssl_census.tasks.config import TASKS
from ssl_census.tasks.objectives import (
    CellTypeClassifier,
    CrossModalityRegressor,
    NegativeBinomialReconstruction,
)
from ssl_census.training.pretrain import gene_list_sha256
from ssl_census.training.rundir import RunDir, load_encoder

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


def pretrained_decoder(init: str) -> dict[str, torch.Tensor]:
    """The decoder weights of the pre-training run ``init`` (its best checkpoint, else its
    last), keyed as in :class:`~ssl_census.models.mlp.Decoder`; empty for a random init or a
    method without a decoder (BYOL, Barlow twins)."""
    if init == "random":
        return {}
    run = RunDir(init)
    name = "best" if (run.checkpoints / "best.pt").is_file() else "last"
    model = run.load(name)["model"]
    prefix = "decoder."
    return {k.removeprefix(prefix): v for k, v in model.items() if k.startswith(prefix)}


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
