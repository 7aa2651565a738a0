"""What a task trains on: the loaders of a shard store (or, for cross-modality, of an h5ad),
the objective's spec and, for in-memory data, the cells of each split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ssl_census.core.errors import UserError
from ssl_census.shards.store import ShardStore
from ssl_census.tasks.config import FinetuneConfig
from ssl_census.training.distributed import DistEnv
from ssl_census.training.setup import input_layout, shard_loaders, store_density


@dataclass
class TaskData:
    """What a task trains on: loaders, the objective's spec, and the run card's extra fields."""

    train: Any
    val: Any
    spec: dict[str, Any]
    store: ShardStore | None
    layout: str  # the batches' layout, sparse or dense (training.setup.input_layout)
    density: float  # the share of non-zero entries the layout was chosen by
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


def shard_task_data(task: str, store: ShardStore, config: FinetuneConfig, seed: int,
                     env: DistEnv, device: torch.device) -> TaskData:
    data = config.data
    density = store_density(store)
    layout = input_layout(config.train.input_layout, device, density)
    dense = layout == "dense"
    if task == "celltype":
        labels = store.labels.sort_values("cell_type_code")
        train, val = shard_loaders(store.path, data, seed, env, device, ("x",),
                                   ("cell_type_code",), dense=dense)
        spec = {"class_weight": labels["class_weight"].astype(float).tolist()}
        return TaskData(train, val, spec, store, layout, density)
    if task == "integration":
        key = config.batch_key
        _, obs = store.split("train")
        if key not in obs.columns:
            raise UserError(f"--batch-key {key!r} is not an obs column of the shards",
                            f"use one of {', '.join(obs.columns)}")
        train, val = shard_loaders(store.path, data, seed, env, device, ("x", "counts"), (key,),
                                   dense=dense)
        categories = [str(c) for c in train.categories[key]]
        spec = {"batch_key": key, "batch_categories": categories}
        return TaskData(BatchCodes(train, key, categories), BatchCodes(val, key, categories),
                        spec, store, layout, density)
    train, val = shard_loaders(store.path, data, seed, env, device, ("x", "counts"),
                               dense=dense)
    return TaskData(train, val, {}, store, layout, density)
