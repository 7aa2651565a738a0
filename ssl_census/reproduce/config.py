"""The experiment of ``make reproduce``, read from a TOML preset (configs/reproduce/*.toml).

The config only says what to run; each stage keeps its own settings in its own preset and the
``[pretrain]`` / ``[finetune.<task>]`` tables here are laid over them (core.config.merge).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssl_census.core.config import load_toml, merge
from ssl_census.core.errors import UserError
from ssl_census.pretext import METHODS

FINETUNE_TASKS = ("celltype", "cross_modality", "integration")


@dataclass(frozen=True)
class H5adView:
    """An h5ad of the data folder, optionally restricted to the cells whose ``column`` holds
    one of ``values`` (written once under the work directory)."""

    name: str
    file: str
    label_key: str
    batch_key: str | None = None
    select: dict[str, Any] | None = None
    donor_key: str | None = None  # obs column of donors (the page checks them against training)


@dataclass(frozen=True)
class Variant:
    """A pre-training method run a second time with other options, beside the method
    (``[variants.<name>]``): pre-trained, fine-tuned for cell types and evaluated like the
    methods, and compared with the method's own rows in a finding of its own."""

    name: str
    method: str
    options: dict[str, Any]
    claim: str  # the finding's claim: the method's settings beat the variant's
    paper: str  # what the paper (or its code) says


@dataclass(frozen=True)
class ReproduceConfig:
    name: str
    seeds: tuple[int, ...]
    methods: tuple[str, ...]
    census_config: str
    gene_list: str
    genes_measured_by: tuple[str, ...]
    genes_add_set_members: tuple[str, ...]
    genes_add_set_regulators: tuple[str, ...]
    method_options: dict[str, dict[str, Any]]
    shards_base: str
    shards_workers: int
    stores: dict[str, dict[str, Any]]
    gene_sets: dict[str, str]
    pretrain: dict[str, Any]
    finetune: dict[str, dict[str, Any]]
    unseen: H5adView
    cross_modality_file: str
    cross_modality_target: str
    cross_modality_methods: tuple[str, ...]
    integration_methods: tuple[str, ...]
    integration_batch_key: str
    integration_sets: tuple[H5adView, ...]
    integration_max_cells: int
    # scVI beside the integration runs (when the scvi extra is installed); None epochs:
    # scvi-tools' own heuristic over the training cells
    integration_scvi: bool = True
    integration_scvi_max_epochs: int | None = None
    variants: dict[str, Variant] = field(default_factory=dict)
    device: str = "cpu"
    threads: int | None = None
    source: str = ""
    raw: dict[str, Any] = field(default_factory=dict)


def _require(raw: dict[str, Any], key: str, where: str) -> Any:
    if key not in raw:
        raise UserError(f"the reproduce config has no {where}{key}",
                        f"add {key} to [{where.rstrip('.') or 'the top level'}]")
    return raw[key]


def _methods(names: list[str], where: str) -> tuple[str, ...]:
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise UserError(f"unknown methods in {where}: {', '.join(unknown)}",
                        f"choose from {', '.join(METHODS)}")
    return tuple(names)


def _variants(raw: dict[str, Any]) -> dict[str, Variant]:
    out = {}
    for name, v in raw.items():
        where = f"variants.{name}."
        if name in METHODS:
            raise UserError(f"variant {name!r} has the name of a method",
                            "name it after the change, e.g. random_mask_unscaled")
        method = _methods([_require(v, "method", where)], f"[variants.{name}]")[0]
        unknown = set(v) - {"method", "options", "claim", "paper"}
        if unknown:
            raise UserError(f"unknown keys in [variants.{name}]: {', '.join(sorted(unknown))}",
                            "use method, options, claim, paper")
        out[name] = Variant(name, method, dict(v.get("options", {})),
                            str(v.get("claim", f"{method} beats {name}")),
                            str(v.get("paper", "")))
    return out


def _view(raw: dict[str, Any], name: str) -> H5adView:
    select = raw.get("select")
    if select is not None and (set(select) != {"column", "values"} or not select["values"]):
        raise UserError(f"select of {name} must be {{ column = ..., values = [...] }}",
                        "e.g. select = { column = \"condition\", values = [\"stim\"] }")
    return H5adView(name=name, file=_require(raw, "file", name + "."),
                    label_key=_require(raw, "label_key", name + "."),
                    batch_key=raw.get("batch_key"), select=select,
                    donor_key=raw.get("donor_key"))


def load_reproduce_config(path: str | Path) -> ReproduceConfig:
    """Read and check a reproduce config (a TOML path or a preset name)."""
    raw = load_toml(path, kind="reproduce")
    if "extends" in raw:  # a variant: the base preset with this file's keys laid over it
        raw = merge(load_toml(raw.pop("extends"), kind="reproduce"), raw)
    methods = _methods(list(_require(raw, "methods", "")), "methods")
    seeds = tuple(int(s) for s in _require(raw, "seeds", ""))
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"seeds {list(seeds)} must be distinct and at least one",
                        "e.g. seeds = [0, 1, 2]")
    stores = dict(_require(raw.get("shards", {}), "stores", "shards."))
    cm, integ = raw.get("cross_modality", {}), raw.get("integration", {})
    needed = ("auxiliary", "kang") + (("integration",) if integ.get("datasets") else ())
    for store in needed:
        if store not in stores:
            raise UserError(f"[shards.stores] has no {store!r} store",
                            f"the experiment needs the stores {', '.join(needed)}")
    finetune = raw.get("finetune", {})
    unknown = set(finetune) - set(FINETUNE_TASKS)
    if unknown:
        raise UserError(f"unknown [finetune.*] tasks: {', '.join(sorted(unknown))}",
                        f"use {', '.join(FINETUNE_TASKS)}")
    return ReproduceConfig(
        name=str(raw.get("name", Path(str(path)).stem)),
        seeds=seeds,
        methods=methods,
        census_config=str(_require(raw.get("census", {}), "config", "census.")),
        gene_list=str(_require(raw.get("genes", {}), "list", "genes.")),
        genes_measured_by=tuple(raw.get("genes", {}).get("measured_by", ())),
        genes_add_set_members=tuple(raw.get("genes", {}).get("add_set_members", ())),
        genes_add_set_regulators=tuple(raw.get("genes", {}).get("add_set_regulators", ())),
        method_options={m: dict(v) for m, v in raw.get("method_options", {}).items()},
        shards_base=str(_require(raw["shards"], "base", "shards.")),
        shards_workers=int(raw["shards"].get("workers", 1)),
        stores=stores,
        gene_sets=dict(raw.get("gene_sets", {})),
        pretrain=dict(raw.get("pretrain", {})),
        finetune={t: dict(finetune.get(t, {})) for t in FINETUNE_TASKS},
        unseen=_view(_require(raw, "unseen", ""), "unseen"),
        cross_modality_file=str(_require(cm, "file", "cross_modality.")),
        cross_modality_target=str(cm.get("target_obsm", "protein_counts")),
        cross_modality_methods=_methods(list(cm.get("methods", methods)), "cross_modality"),
        integration_methods=_methods(list(integ.get("methods", methods)), "integration"),
        integration_batch_key=str(integ.get("batch_key", "dataset_id")),
        integration_sets=tuple(_view(d, d.get("name", f"set{i}"))
                               for i, d in enumerate(integ.get("datasets", []))),
        integration_max_cells=int(integ.get("max_cells", 20_000)),
        integration_scvi=bool(integ.get("scvi", True)),
        integration_scvi_max_epochs=(int(integ["scvi_max_epochs"])
                                     if integ.get("scvi_max_epochs") is not None else None),
        variants=_variants(raw.get("variants", {})),
        device=str(raw.get("device", "cpu")),
        threads=raw.get("threads"),
        source=str(path),
        raw=raw,
    )
