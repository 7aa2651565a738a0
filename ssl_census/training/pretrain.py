"""A pre-training run from a merged config: shards -> loaders -> method -> Trainer -> run dir."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ssl_census import __version__
from ssl_census.pretext import build_method
from ssl_census.shards.store import MANIFEST, ShardStore, open_shards
from ssl_census.training.setup import distributed_run, shard_loaders, train_run
from ssl_census.training.trainer import TrainConfig, seed_everything


def model_card(method: str, store: ShardStore, model: dict[str, Any]) -> dict[str, Any]:
    manifest_sha = hashlib.sha256((store.path / MANIFEST).read_bytes()).hexdigest()
    gene_list = store.manifest.get("gene_list", {})
    gene_sha = gene_list.get("sha256") or hashlib.sha256(
        "\n".join(store.var["feature_id"].astype(str)).encode()
    ).hexdigest()
    return {
        "method": method,
        "tool_version": __version__,
        "shards": {"path": str(store.path.resolve()), "manifest_sha256": manifest_sha},
        "gene_list_sha256": gene_sha,
        "n_genes": store.n_genes,
        "encoder": {"n_genes": store.n_genes, "hidden": list(model["hidden"]),
                    "dropout": float(model["dropout"])},
        "step": 0,
        "best_val_loss": None,
    }


def run_pretraining(config: dict[str, Any], shards: Path, out: Path,
                    resume: bool = False) -> dict[str, Any]:
    """Train ``config['method']`` on the store at ``shards``, writing the run to ``out``."""
    with distributed_run(config.get("device", "auto")) as (env, device):
        store = open_shards(shards)
        train_cfg = TrainConfig.from_dict(config.get("train", {}))
        seed_everything(train_cfg.seed)  # identical initial weights on every rank
        model = {"hidden": [512, 512, 256, 256, 64], "dropout": 0.1, **config.get("model", {})}
        objective = build_method(
            config["method"], store.var["feature_name"].astype(str).tolist(), model=model,
            options=config.get("options", {}), gene_sets=config.get("gene_sets") or None,
        )
        train, val = shard_loaders(store.path, config.get("data", {"batch_size": 8192}),
                                   train_cfg.seed, env, device, drop_last=True)
        card = model_card(config["method"], store, model)
        summary, _ = train_run(objective, train, val, train_cfg, out, config, card, env, device,
                               resume)
        return summary
