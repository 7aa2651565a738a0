"""Real data for the pre-training tests: PBMC 10k (10x, 4,000 genes) as a shard store, and
an in-memory loader with the BlockShuffleLoader protocol for trainer tests."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata
import numpy as np
import pandas as pd
import torch

from ssl_census.shards.store import ShardStore, write_store_from_arrays

PBMC = "h5ad/pbmc10k_cite_totalvi.h5ad"
BESCA = "genesets/besca_celltype_signatures.gmt"
DOROTHEA = "genesets/dorothea_ABC_tf_targets.gmt"
N_CELLS = 3000


def pbmc_store(shared_data: Path, out: Path) -> ShardStore:
    """3,000 real PBMCs split 80/20 into train/val, written through the shard writer."""
    a = anndata.read_h5ad(shared_data / PBMC)[:N_CELLS]
    genes = [str(g) for g in a.var_names]
    var = pd.DataFrame({"feature_id": genes, "feature_name": genes})
    rng = np.random.default_rng(0)
    is_val = rng.random(a.n_obs) < 0.2
    obs = pd.DataFrame({"cell_type": "unknown", "cell_type_ontology_term_id": "unknown"},
                       index=range(a.n_obs))
    splits = {
        name: (a.X[mask], obs[mask])
        for name, mask in (("train", ~is_val), ("val", is_val))
    }
    return write_store_from_arrays(out, var, splits, manifest={"gene_list": {"sha256": "test"}})


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
    """Shuffled batches of an in-memory matrix, resumable mid-epoch like BlockShuffleLoader."""

    def __init__(self, x: torch.Tensor, batch_size: int, shuffle: bool = True, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        self.x, self.batch_size, self.shuffle, self.seed = x, batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
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
            yield Batch(self.x[per_rank[i : i + self.batch_size]])


TINY = {"hidden": [128, 32], "dropout": 0.1}
# besca's signatures cover well under half of these 4,000 genes: GP masking needs a rate they
# can reach (at the paper's 0.5 it refuses to start)
GP_MASK_RATE = 0.05
SMALL_HEADS = {"projector_hidden": 256, "predictor_hidden": 256, "projection_dim": 64}


def options_for(method: str, **wanted: Any) -> dict[str, Any]:
    """Those of ``wanted`` that ``method`` takes (each method refuses keys it does not know)."""
    from dataclasses import fields

    from ssl_census.pretext.options import OPTIONS

    known = {f.name for f in fields(OPTIONS[method])}
    if method == "gp_mask":
        wanted = {"mask_rate": GP_MASK_RATE, **wanted}
    return {k: v for k, v in wanted.items() if k in known}


def gene_sets_for(method: str, shared_data: Path) -> str | None:
    name = {"gp_mask": BESCA, "gp_to_gp": BESCA, "gp_to_tf": DOROTHEA}.get(method)
    return str(shared_data / name) if name else None


def ddp_worker(rank: int, world: int, init_file: str, shared_data: str, store_dir: str,
               out_dir: str) -> None:
    """One rank of a gloo DDP run of the Trainer; saves its final weights as rank<r>.pt."""
    import torch.distributed as dist

    from ssl_census.pretext import build_method
    from ssl_census.shards.store import open_shards
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
