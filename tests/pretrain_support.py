"""Synthetic cells for the pre-training tests: 3,000 cells of the synthetic census as a shard
store, and an in-memory loader with the BlockShuffleLoader protocol for trainer tests."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import torch
from synth_support import write_cells

from ssl_census.shards.store import ShardStore, open_shards

N_CELLS = 3000


def pretrain_store(cells: ad.AnnData, out: Path) -> ShardStore:
    """N_CELLS of ``cells``, drawn at random, split 80/20 into train/val, written through the
    shard writer."""
    rng = np.random.default_rng(0)
    picked = np.sort(rng.choice(cells.n_obs, N_CELLS, replace=False))
    split = (rng.random(N_CELLS) < 0.2).astype(np.int8)  # 0 train, 1 val
    return open_shards(write_cells(out, cells[picked], split))


def split_matrix(store: ShardStore, split: str) -> torch.Tensor:
    """The split's log1p-normalised values as a dense tensor."""
    csr, _ = store.split(split)
    indptr, indices, data = csr.rows(0, csr.n_cells)
    x = np.zeros((csr.n_cells, csr.n_genes), dtype=np.float32)
    rows = np.repeat(np.arange(csr.n_cells), np.diff(indptr))
    x[rows, indices.astype(np.int64)] = data
    return torch.from_numpy(x)


@dataclass
class Batch:
    x: torch.Tensor


class TensorLoader:
    """Shuffled batches of an in-memory matrix, resumable mid-epoch like BlockShuffleLoader;
    ``sparse``: batches as CSR tensors, as the loader's ``dense=False`` hands them over."""

    def __init__(self, x: torch.Tensor, batch_size: int, shuffle: bool = True, seed: int = 0,
                 rank: int = 0, world_size: int = 1, sparse: bool = False) -> None:
        self.x, self.batch_size, self.shuffle, self.seed = x, batch_size, shuffle, seed
        self.rank, self.world_size, self.sparse = rank, world_size, sparse
        self.epoch, self.position = 0, 0

    def __len__(self) -> int:
        return len(self.x) // (self.batch_size * self.world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.position = epoch, 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]

    def __iter__(self) -> Iterator[Batch]:
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        order = torch.randperm(len(self.x), generator=g) if self.shuffle else torch.arange(
            len(self.x))
        per_rank = order[self.rank :: self.world_size]
        while self.position < len(self):
            i = self.position * self.batch_size
            self.position += 1
            x = self.x[per_rank[i : i + self.batch_size]]
            yield Batch(x.to_sparse_csr() if self.sparse else x)


TINY = {"hidden": [128, 32], "dropout": 0.1}
SMALL_HEADS = {"projector_hidden": 256, "predictor_hidden": 256, "projection_dim": 64}


def options_for(method: str, **wanted: Any) -> dict[str, Any]:
    """Those of ``wanted`` that ``method`` takes (each method refuses keys it does not know)."""
    from dataclasses import fields

    from ssl_census.pretext.options import OPTIONS

    known = {f.name for f in fields(OPTIONS[method])}
    return {k: v for k, v in wanted.items() if k in known}


def gene_sets_for(method: str, gene_sets: Mapping[str, Path]) -> str | None:
    """The GMT file a method reads from the synth_gene_sets fixture (None: it reads none)."""
    name = {"gp_mask": "programmes", "gp_to_gp": "programmes", "gp_to_tf": "tf_targets"}.get(
        method)
    return str(gene_sets[name]) if name else None


def ddp_worker(rank: int, world: int, init_file: str, store_dir: str, out_dir: str) -> None:
    """One rank of a gloo DDP run of the Trainer; saves its final weights as rank<r>.pt."""
    import torch.distributed as dist

    from ssl_census.pretext import build_method
    from ssl_census.training.distributed import DistEnv
    from ssl_census.training.trainer import TrainConfig, Trainer, seed_everything

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    store = open_shards(store_dir)
    seed_everything(rank)  # different initial weights: DDP must make them equal
    objective = build_method("random_mask", store.var["feature_name"].tolist(), model=TINY)
    loader = TensorLoader(split_matrix(store, "train"), 64, rank=rank, world_size=world)
    cfg = TrainConfig(max_steps=8, val_every=4, log_every=1, warmup_steps=1)
    trainer = Trainer(objective, loader, None, cfg, None, "cpu", DistEnv(rank, world, 0))
    trainer.fit()
    first_batch = next(iter(TensorLoader(loader.x, 64, rank=rank, world_size=world))).x
    torch.save({"state": objective.state_dict(), "first_batch": first_batch},
               Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()
