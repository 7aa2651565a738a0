"""A pre-training run from a merged config: shards -> loaders -> method -> Trainer -> run dir."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ssl_census import __version__
from ssl_census.pretext import build_method
from ssl_census.shards.store import MANIFEST, ShardStore, open_shards
from ssl_census.training.distributed import barrier, init_distributed, shutdown
from ssl_census.training.rundir import RunDir
from ssl_census.training.trainer import TrainConfig, Trainer, seed_everything


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


def _loaders(shards: Path, data: dict[str, Any], seed: int, env: Any, device: Any):
    from ssl_census.data import BlockShuffleLoader

    common = dict(layers=("x",), obs_columns=(), dense=True, device=str(device),
                  rank=env.rank if env.enabled else None,
                  world_size=env.world_size if env.enabled else None)
    extra = {k: data[k] for k in ("workers", "reader", "memory_budget_bytes", "block_size")
             if k in data}
    train = BlockShuffleLoader(shards, split="train", batch_size=data["batch_size"],
                               shuffle=True, seed=seed, drop_last=True, **common, **extra)
    val = BlockShuffleLoader(shards, split="val", batch_size=data.get("val_batch_size",
                             data["batch_size"]), shuffle=False, seed=seed, drop_last=False,
                             **common, **extra)
    return train, val


def run_pretraining(config: dict[str, Any], shards: Path, out: Path,
                    resume: bool = False) -> dict[str, Any]:
    """Train ``config['method']`` on the store at ``shards``, writing the run to ``out``."""
    env, device = init_distributed(config.get("device", "auto"))
    try:
        store = open_shards(shards)
        train_cfg = TrainConfig.from_dict(config.get("train", {}))
        seed_everything(train_cfg.seed)  # identical initial weights on every rank
        model = {"hidden": [512, 512, 256, 256, 64], "dropout": 0.1, **config.get("model", {})}
        objective = build_method(
            config["method"], store.var["feature_name"].astype(str).tolist(), model=model,
            options=config.get("options", {}), gene_sets=config.get("gene_sets") or None,
        )
        train, val = _loaders(store.path, config.get("data", {"batch_size": 8192}),
                              train_cfg.seed, env, device)
        # Every rank reads checkpoints on --resume; only rank 0 writes.
        run = RunDir(out)
        if env.is_main:
            run = RunDir.create(out, config, model_card(config["method"], store, model), resume)
        barrier(env)
        trainer = Trainer(objective, train, val, train_cfg, run, device, env)
        summary = trainer.fit(resume=resume)
        summary["ranks_in_sync"] = _ranks_in_sync(trainer, env)
        summary["rank"] = env.rank
        if env.is_main:
            run.update_card(ranks_in_sync=summary["ranks_in_sync"], world_size=env.world_size)
        return summary
    finally:
        shutdown(env)


def _ranks_in_sync(trainer: Trainer, env: Any) -> bool:
    """Whether every rank ends with bit-identical parameters (DDP's promise, checked).

    Buffers are left out: BatchNorm running statistics follow each rank's own last batch
    (DDP re-broadcasts rank 0's before every forward), and checkpoints hold rank 0's.
    """
    import torch
    import torch.distributed as dist

    if not env.enabled:
        return True
    digest = hashlib.sha256()
    for t in trainer.objective.parameters():
        digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    digests: list[str | None] = [None] * env.world_size
    dist.all_gather_object(digests, digest.hexdigest())
    return len(set(digests)) == 1
