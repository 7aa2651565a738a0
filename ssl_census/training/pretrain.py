"""A pre-training run from its config: shards -> loaders -> method -> Trainer -> run dir."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ssl_census import __version__
from ssl_census.models.mlp import ModelConfig
from ssl_census.pretext import build_method
from ssl_census.shards.store import MANIFEST, ShardStore, open_shards
from ssl_census.training.config import PretrainConfig
from ssl_census.training.setup import (
    distributed_run,
    input_layout,
    layout_card,
    shard_loaders,
    store_density,
    train_run,
)
from ssl_census.training.trainer import seed_everything


def gene_list_sha256(store: ShardStore) -> str:
    """The identity of a store's gene space: its gene list's digest (or of its feature ids)."""
    return store.manifest.get("gene_list", {}).get("sha256") or hashlib.sha256(
        "\n".join(store.var["feature_id"].astype(str)).encode()
    ).hexdigest()


def model_card(method: str, store: ShardStore, model: ModelConfig) -> dict[str, Any]:
    manifest_sha = hashlib.sha256((store.path / MANIFEST).read_bytes()).hexdigest()
    return {
        "method": method,
        "tool_version": __version__,
        "shards": {"path": str(store.path.resolve()), "manifest_sha256": manifest_sha},
        "gene_list_sha256": gene_list_sha256(store),
        "n_genes": store.n_genes,
        "encoder": {"n_genes": store.n_genes, "hidden": list(model.hidden),
                    "dropout": model.dropout},
        "step": 0,
        "best_val_loss": None,
    }


def run_pretraining(config: PretrainConfig | Mapping[str, Any], shards: Path, out: Path,
                    resume: bool = False) -> dict[str, Any]:
    """Train the config's method on the store at ``shards``, writing the run to ``out``."""
    cfg = config if isinstance(config, PretrainConfig) else PretrainConfig.from_dict(config)
    with distributed_run(cfg.device) as (env, device):
        store = open_shards(shards)
        seed_everything(cfg.train.seed)  # identical initial weights on every rank
        objective = build_method(cfg.method, store.var["feature_name"].astype(str).tolist(),
                                 model=cfg.model, options=cfg.options, gene_sets=cfg.gene_sets)
        density = objective.encoder_density(store_density(store))
        layout = input_layout(cfg.train.input_layout, device, density)
        train, val = shard_loaders(store.path, cfg.data, cfg.train.seed, env, device,
                                   drop_last=True, dense=layout == "dense")
        card = {**model_card(cfg.method, store, cfg.model),
                **layout_card(layout, density)}
        summary, _ = train_run(objective, train, val, cfg.train, out, cfg.to_dict(), card, env,
                               device, resume)
        return summary
