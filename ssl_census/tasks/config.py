"""The typed configuration of a fine-tuning run: the shared run tables plus the task's keys."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ssl_census.core.errors import UserError
from ssl_census.training.config import RunConfig

TASKS = ("celltype", "reconstruction", "cross_modality", "integration")


def check_task(task: str | None) -> str:
    """``task`` when it is a task, else a UserError listing the tasks."""
    if task not in TASKS:
        raise UserError(f"unknown or missing task {task!r}", f"choose one of {', '.join(TASKS)}")
    return task


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig(RunConfig):
    task: str
    batch_key: str = "dataset_id"  # integration: the obs column fed to the decoder
    target_obsm: str = "protein_counts"  # cross_modality: the h5ad's obsm key of the targets
    shallow: bool = False  # fine-tune only the encoder's last layer (the paper's SSL-shallow)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> FinetuneConfig:
        own = {k: raw[k] for k in ("batch_key", "target_obsm", "shallow") if k in raw}
        return cls(task=check_task(raw.get("task")), **own, **cls._common(raw, "finetune"))
