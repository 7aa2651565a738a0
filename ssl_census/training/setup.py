"""What pre-training and fine-tuning share around the Trainer: the process group, the layout of
the batches (sparse or dense), the loaders of a shard store (the only place a rank reaches a
loader), and the run directory's life.

Under ``torchrun`` every rank trains through DDP on its own part of each epoch; rank 0 alone
writes the run directory, and at the end the ranks compare their parameters.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ssl_census.data import BlockShuffleLoader
from ssl_census.pretext.base import Objective
from ssl_census.shards.store import ShardStore
from ssl_census.training.config import DataConfig
from ssl_census.training.distributed import DistEnv, barrier, init_distributed, shutdown
from ssl_census.training.rundir import RunDir
from ssl_census.training.trainer import Loader, TrainConfig, Trainer

# ``input_layout = "auto"``: below this share of non-zero entries in what the encoder reads,
# the sparse first layer is faster on the CPU than the dense one. Measured roughly on 2 cores,
# batch 256 to 8,192: the two break even near 25 % over 19,331 genes but near 12 % over 2,000 (a
# small dense layer runs closer to the CPU's peak), so 10 % is faster in both.
SPARSE_BELOW = 0.1


@contextmanager
def distributed_run(device_name: str = "auto") -> Iterator[tuple[DistEnv, torch.device]]:
    """The process group ``torchrun`` describes (none outside it) and this rank's device."""
    env, device = init_distributed(device_name)
    try:
        yield env, device
    finally:
        shutdown(env)


def input_layout(requested: str, device: torch.device, density: float) -> str:
    """The layout the batches go to the encoder in: ``requested`` unless it is ``auto``, which
    picks sparse on the CPU when what the encoder reads holds fewer than SPARSE_BELOW
    non-zero entries (``density``, see ``Objective.encoder_density``), else dense."""
    if requested != "auto":
        return requested
    return "sparse" if device.type == "cpu" and density < SPARSE_BELOW else "dense"


def layout_card(layout: str, density: float) -> dict[str, Any]:
    """What a run's model card records of its input: the layout that ran and the density
    it was chosen by."""
    return {"input_layout": layout, "input_density": round(density, 4)}


def store_density(store: ShardStore) -> float:
    """The share of non-zero entries in the training split of ``store``."""
    csr, _ = store.split("train")
    return csr.nnz / max(1, csr.n_cells * csr.n_genes)


def shard_loaders(
    shards: str | Path, data: DataConfig, seed: int, env: DistEnv, device: torch.device,
    layers: tuple[str, ...] = ("x",), obs_columns: tuple[str, ...] = (),
    drop_last: bool = False, dense: bool = True,
) -> tuple[BlockShuffleLoader, BlockShuffleLoader]:
    """The train loader (shuffled) and the val loader (stored order) of this rank, handing
    batches over dense or as CSR tensors (``dense``, see :func:`input_layout`)."""
    common: dict[str, Any] = dict(layers=layers, obs_columns=obs_columns, dense=dense,
                                  device=str(device), seed=seed, rank=env.rank,
                                  world_size=env.world_size, **data.loader_settings())
    train = BlockShuffleLoader(shards, split="train", batch_size=data.batch_size, shuffle=True,
                               drop_last=drop_last, **common)
    val = BlockShuffleLoader(shards, split="val",
                             batch_size=data.val_batch_size or data.batch_size, shuffle=False,
                             drop_last=False, **common)
    return train, val


def parameters_in_sync(module: nn.Module, env: DistEnv) -> bool:
    """Whether every rank ends with bit-identical parameters (DDP's promise, checked).

    Buffers are left out: BatchNorm running statistics follow each rank's own last batch
    (DDP re-broadcasts rank 0's before every forward), and checkpoints hold rank 0's.
    """
    if not env.enabled:
        return True
    digest = hashlib.sha256()
    for t in module.parameters():
        digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    digests: list[str | None] = [None] * env.world_size
    dist.all_gather_object(digests, digest.hexdigest())
    return len(set(digests)) == 1


def train_run(
    objective: Objective, train: Loader, val: Any, train_cfg: TrainConfig, out: Path,
    config: Mapping[str, Any], card: Mapping[str, Any], env: DistEnv, device: torch.device,
    resume: bool = False, on_create: Callable[[RunDir], None] | None = None,
) -> tuple[dict[str, Any], RunDir]:
    """Train ``objective`` into the run directory ``out``; returns the summary and the run.

    Rank 0 creates the run (then ``on_create`` writes what else a new run keeps); every rank
    reads checkpoints on ``resume``.
    """
    run = RunDir(out)
    if env.is_main:
        run = RunDir.create(out, config, card, resume)
        if on_create is not None and not resume:
            on_create(run)
    barrier(env)
    trainer = Trainer(objective, train, val, train_cfg, run, device, env)
    summary = trainer.fit(resume=resume)
    summary["ranks_in_sync"] = parameters_in_sync(trainer.objective, env)
    summary["rank"] = env.rank
    if env.is_main:
        run.update_card(ranks_in_sync=summary["ranks_in_sync"], world_size=env.world_size)
    return summary, run
