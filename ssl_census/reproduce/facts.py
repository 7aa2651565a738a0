"""What the results page states besides the tables, gathered in one place: the commit and
versions, the stores' splits, the training lengths, and the figures of the data that frame the
comparison. Everything that reads a file, a store or git is here; :mod:`.page` only renders.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import anndata as ad

from ssl_census.evaluation.integration import scib_available
from ssl_census.evaluation.scvi_baseline import scvi_available
from ssl_census.reproduce import results as res
from ssl_census.reproduce.config import ReproduceConfig
from ssl_census.shards.config import CurationConfig
from ssl_census.shards.curation import SctabComparison, compare_with_sctab
from ssl_census.shards.store import open_shards

VERSIONED = ("ssl-census", "torch", "numpy", "scikit-learn", "scib-metrics", "scvi-tools",
             "tiledbsoma", "zarr")


@dataclass(frozen=True)
class StoreFacts:
    """A shard store's row on the page: which datasets it selected, cells and donors per split."""

    name: str
    path: Path
    selection: str
    cells: tuple[int, int, int]  # train, val, test
    donors: tuple[int, int, int]
    cell_types: tuple[tuple[str, str], ...]  # the kept types: (CL id, label), by id
    min_ancestors: int | None  # the curation's ancestor threshold, from the manifest


@dataclass(frozen=True)
class PageFacts:
    generated: str  # UTC time the page was made
    commit: str
    versions: str
    cpu_count: int | None
    recorded_seconds: float  # compute the finished runs and evaluations recorded
    invocation_seconds: float  # the reproduce invocation that wrote the page
    n_genes: int
    training: dict[str, res.Training]
    stores: list[StoreFacts]
    scib: tuple[bool, str]
    scvi: tuple[bool, str]  # whether scvi-tools is importable (else why); the scVI rows need it
    aux_cells: int
    aux_datasets: int
    kang_types: int | None
    genes_matched: dict[str, int | None]  # per table (cross, integration-<view>)
    cross_targets: int | None  # proteins in the CITE-seq file, once a cross run has scores
    unseen_shared_donors: list[str] | None  # None when the config names no donor column
    cell_ontology: str | None  # the CL release the kang store was curated with
    kang_type_names: list[str]  # the cell types the kang store keeps
    masked_fractions: dict[str, float]  # masking method -> realised hidden share in pre-training
    sctab: SctabComparison  # scTab's 164 types under scTab's ontology rule, kang's CL release


def versions() -> str:
    out = [f"python {platform.python_version()}"]
    for pkg in VERSIONED:
        try:
            out.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            out.append(f"{pkg} (not installed)")
    return ", ".join(out) + f"; {sys.platform}"


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def store_facts(name: str, path: Path) -> StoreFacts:
    store = open_shards(path)
    q = store.manifest.get("query", {})
    selection = ("include " + "; ".join(q["include_datasets"]) if q.get("include_datasets")
                 else "all but " + "; ".join(q.get("exclude_datasets", [])))
    cells, donors = [], []
    for split in ("train", "val", "test"):
        _, obs = store.split(split)
        cells.append(len(obs))
        donors.append(int(obs["tech_sample"].nunique() if "tech_sample" in obs
                          else obs["donor_id"].nunique()))
    labels = store.labels.sort_values("cell_type_ontology_term_id")
    kept = tuple(zip(labels["cell_type_ontology_term_id"].astype(str),
                     labels["cell_type"].astype(str), strict=True))
    return StoreFacts(name, path, selection, tuple(cells), tuple(donors),  # type: ignore[arg-type]
                      kept, store.manifest.get("thresholds", {}).get("min_ancestors"))


def genes_matched(table: res.Table) -> int | None:
    """The number of model genes the table's data file had, from its first report."""
    for row in table.rows.values():
        for src in row.sources:
            n = json.loads(src.read_text()).get("genes_matched")
            if n is not None:
                return int(n)
    return None


def _cross_targets(cross: res.Table) -> int | None:
    sources = [src for row in cross.rows.values() for src in row.sources]
    return len(json.loads(sources[0].read_text())["targets"]) if sources else None


def _shared_donors(conf: ReproduceConfig, inputs: Any, kang_obs: Any) -> list[str] | None:
    if not conf.unseen.donor_key:
        return None
    h5ad, _ = inputs.unseen
    donors = set(ad.read_h5ad(h5ad, backed="r").obs[conf.unseen.donor_key].astype(str))
    return sorted(donors & set(kang_obs["donor_id"].astype(str)))


def gather_facts(conf: ReproduceConfig, work: Path, inputs: Any, genes: Path, seconds: float,
                 cross: res.Table, integration: dict[str, res.Table]) -> PageFacts:
    aux = open_shards(inputs.stores["auxiliary"]).split("train")[1]
    kang_store = open_shards(inputs.stores["kang"])
    kang = kang_store.split("train")[1]
    release = kang_store.manifest.get("thresholds", {}).get("cl_release")
    matched = {"cross": genes_matched(cross)}
    matched.update({f"integration-{n}": genes_matched(t) for n, t in integration.items()})
    return PageFacts(
        generated=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        commit=git_commit(),
        versions=versions(),
        cpu_count=os.cpu_count(),
        recorded_seconds=res.step_seconds(conf, work),
        invocation_seconds=seconds,
        n_genes=sum(1 for line in genes.read_text().splitlines() if line.strip()),
        training=res.training_lengths(conf, work),
        stores=[store_facts(n, p) for n, p in inputs.stores.items()],
        scib=scib_available(),
        scvi=scvi_available(),
        aux_cells=len(aux),
        aux_datasets=int(aux["dataset_id"].nunique()),
        kang_types=int(kang["cell_type"].nunique()) if "cell_type" in kang else None,
        genes_matched=matched,
        cross_targets=_cross_targets(cross),
        unseen_shared_donors=_shared_donors(conf, inputs, kang),
        cell_ontology=release,
        kang_type_names=sorted(kang_store.labels["cell_type"].astype(str)),
        masked_fractions=res.masked_fractions(conf, work),
        # scTab's thresholds are CurationConfig's defaults; the release is the store's
        sctab=compare_with_sctab(replace(CurationConfig(), cl_release=release)),
    )
