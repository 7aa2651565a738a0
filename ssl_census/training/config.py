"""The typed configuration of a training run, read from a merged TOML table.

Pre-training and fine-tuning share the ``[model]``, ``[data]`` and ``[train]`` tables and
``device``; pre-training adds ``method``, ``gene_sets`` and the method's ``[options]``
(:mod:`ssl_census.pretext.options`), fine-tuning its task's keys (``ssl_census.tasks``). Every
table refuses keys it does not know, so a typo is an error instead of a silent default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ssl_census.core.config import check_keys, section
from ssl_census.core.errors import UserError
from ssl_census.models.mlp import ModelConfig, model_config
from ssl_census.pretext import check_method
from ssl_census.pretext.options import method_options
from ssl_census.training.trainer import TrainConfig

DEFAULT_BATCH = 8192  # the paper's batch size


@dataclass(frozen=True)
class DataConfig:
    """The ``[data]`` table: batch sizes and the loader's settings (None: the loader's
    default, docs/loader.md)."""

    batch_size: int = DEFAULT_BATCH
    val_batch_size: int | None = None
    workers: int | None = None
    reader: str | None = None
    memory_budget_bytes: int | None = None
    block_size: int | None = None

    def loader_settings(self) -> dict[str, Any]:
        """The loader keyword arguments this table sets."""
        keys = ("workers", "reader", "memory_budget_bytes", "block_size")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


def _table(raw: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, Mapping):
        raise UserError(f"{name} = {value!r} is not a table", f"write it as [{name}] key = value")
    return value


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """What every training run reads: the device and the model, data and train tables."""

    device: str = "auto"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @classmethod
    def _common(cls, raw: Mapping[str, Any], what: str) -> dict[str, Any]:
        check_keys(raw, (f.name for f in fields(cls)), f"the {what} config")
        return {
            "device": str(raw.get("device", "auto")),
            "model": model_config(_table(raw, "model")),
            "data": section(DataConfig, _table(raw, "data"), "[data]"),
            "train": TrainConfig.from_dict(_table(raw, "train")),
        }

    def to_dict(self) -> dict[str, Any]:
        """Every setting, defaults filled in (what a run directory's config.toml records)."""
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class PretrainConfig(RunConfig):
    method: str
    gene_sets: str | None = None  # a GMT path or msigdb:<collection>; None: the method's own
    options: Any = None  # the method's options dataclass

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> PretrainConfig:
        method = check_method(raw.get("method"))
        return cls(method=method, gene_sets=raw.get("gene_sets") or None,
                   options=method_options(method, _table(raw, "options")),
                   **cls._common(raw, "pretrain"))
