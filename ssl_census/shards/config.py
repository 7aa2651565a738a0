"""Build settings, read from a TOML preset (configs/shards/*.toml) with defaults for the rest."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ssl_census.core.config import check_keys, load_toml, section
from ssl_census.core.errors import UserError
from ssl_census.core.ontology import PINNED_CL_RELEASE

TENX_ASSAYS = (
    "10x 5' v2", "10x 3' v3", "10x 3' v2", "10x 5' v1", "10x 3' v1",
    "10x 3' transcription profiling", "10x 5' transcription profiling",
)


@dataclass(frozen=True)
class QueryConfig:
    """Which cells are eligible: the obs value filter, then an optional dataset selection.

    ``include_datasets`` / ``exclude_datasets`` name census datasets by ``dataset_id``,
    ``dataset_title`` or ``collection_name`` (census_info/datasets), so two stores of one
    census can hold disjoint datasets (e.g. pre-training data without the fine-tuning data).
    """

    is_primary_data: bool = True
    assays: tuple[str, ...] = TENX_ASSAYS
    include_datasets: tuple[str, ...] = ()
    exclude_datasets: tuple[str, ...] = ()

    def value_filter(self) -> str:
        """The obs value filter (tiledbsoma syntax) that selects eligible cells."""
        assays = ", ".join(repr(a) for a in self.assays)
        return f"is_primary_data == {self.is_primary_data} and assay in [{assays}]"


@dataclass(frozen=True)
class CurationConfig:
    """scTab's cell-type rule: at least ``min_cells`` cells, more than ``min_tech_samples``
    tech_samples, more than ``min_ancestors`` CL ancestors, descending from ``root``."""

    min_cells: int = 5000
    min_tech_samples: int = 30
    min_ancestors: int = 7
    root: str = "CL:0000003"
    cl_release: str | None = PINNED_CL_RELEASE
    keep_unlabelled: bool = False


@dataclass(frozen=True)
class GenesConfig:
    url: str | None = None
    sha256: str | None = None
    min_matched: int = 1000


@dataclass(frozen=True)
class SplitConfig:
    salt: str = "ssl-census/split/v1"
    fractions: tuple[float, float, float] = (0.70, 0.15, 0.15)


@dataclass(frozen=True)
class ShardsConfig:
    name: str = "custom"
    query: QueryConfig = field(default_factory=QueryConfig)
    curation: CurationConfig = field(default_factory=CurationConfig)
    genes: GenesConfig = field(default_factory=GenesConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    shuffle_seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_shards_config(path: str | Path) -> ShardsConfig:
    """Read a shards config: a TOML path or a preset name under configs/shards/."""
    return parse_shards_config(load_toml(path, kind="shards"), Path(path).stem)


def parse_shards_config(raw: Mapping[str, Any], default_name: str = "custom") -> ShardsConfig:
    """A shards config from its TOML tables (unknown keys refused)."""
    sections = {"query": QueryConfig, "curation": CurationConfig, "genes": GenesConfig,
                "split": SplitConfig}
    check_keys(raw, (*sections, "name", "shuffle_seed"), "the shards config")
    cfg = ShardsConfig(
        name=str(raw.get("name", default_name)),
        shuffle_seed=int(raw.get("shuffle_seed", 0)),
        **{k: section(cls, raw.get(k, {}), f"[{k}] of the shards config")
           for k, cls in sections.items()},
    )
    fr = cfg.split.fractions
    if len(fr) != 3 or abs(sum(fr) - 1.0) > 1e-9 or min(fr) < 0:
        raise UserError(f"split fractions {fr} must be three non-negative numbers summing to 1",
                        "e.g. fractions = [0.70, 0.15, 0.15]")
    return cfg
