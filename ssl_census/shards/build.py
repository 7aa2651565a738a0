"""``shards build``: census -> curated, donor-split, normalised, shuffled shard store.

One code path for a census release (``--census-version``) and a local census-layout store
(``--census-uri``)::

    open census -> obs of eligible cells (value filter, needed columns only)
      -> gene space (gene list matched by feature_name, census var order)
      -> split per tech_sample (hash) -> cell types kept (Cell Ontology thresholds)
      -> phase 1: parts, per dataset slice, in worker processes   (shards.parts)
      -> labels.parquet, var.parquet
      -> phase 2: per split, external shuffle into X.zarr + obs.parquet (shards.merge)
      -> manifest.json with checksums, written last

Resuming: the output directory records what it is being built for (``.build.json`` with a
``build_id``); a rerun with the same inputs skips finished parts and splits, one with other
inputs is refused. Every step's output is deterministic, so a resumed build ends with the
same bytes as an uninterrupted one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import resource
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ssl_census import __version__
from ssl_census.core import atomic
from ssl_census.core.errors import UserError
from ssl_census.core.measure import directory_bytes, released_rss
from ssl_census.core.ontology import load_cell_ontology, ontology_package
from ssl_census.core.progress import progress
from ssl_census.shards import merge, parts, source
from ssl_census.shards.config import ShardsConfig
from ssl_census.shards.curation import curate_cell_types
from ssl_census.shards.genes import GeneSpace, fetch_gene_list, match_genes
from ssl_census.shards.selection import select_datasets
from ssl_census.shards.source import CensusSpec
from ssl_census.shards.split import SHUFFLE_RULE, SPLIT_RULE, assign_splits, tech_sample
from ssl_census.shards.store import (
    MANIFEST,
    SPLITS,
    STORE_FORMAT,
    finish_store,
    label_table,
    read_manifest,
    write_tables,
)
from ssl_census.shards.values import NORMALISATION, NORMALISATION_VERSION, TARGET_SUM

BUILD_FILE = ".build.json"
PARTS_DIR = ".parts"
DEFAULT_MEMORY_BUDGET = 4 << 30
# bytes a non-zero costs on disk at the build's peak: parts (4, uint16 indices and counts)
# beside the store (about 5.5: indices, counts and float32 data, compressed), with a margin
DISK_BYTES_PER_NNZ = 12
SAMPLE_DATASETS, SAMPLE_CELLS = 8, 512  # cells read to estimate non-zeros per cell


@dataclass
class BuildReport:
    out: Path
    manifest: dict[str, Any]
    parts_total: int = 0
    parts_built: int = 0
    cells_read: int = 0
    seconds: float = 0.0
    phase_seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_bytes: int = 0
    peak_rss_worker_bytes: int = 0
    # per dataset_id: parts planned, parts found finished in the parts directory, cells read
    datasets: dict[str, dict[str, int]] = field(default_factory=dict)
    parts_bytes: int = 0  # the parts on disk after phase 1: the build's peak scratch space
    # the main process's peak RSS at the end of each phase (cumulative: where the peak rises)
    phase_peak_rss_bytes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class BuildInputs:
    """Everything the store's content depends on (hashed into build_id)."""

    census: dict[str, str]
    census_summary: dict[str, str]
    config: dict[str, Any]
    gene_list_sha256: str
    cl_release: str

    def build_id(self) -> str:
        blob = json.dumps({"format": STORE_FORMAT, "norm": NORMALISATION_VERSION,
                           "shuffle": SHUFFLE_RULE, **self.__dict__}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()


def _peak_rss() -> tuple[int, int]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return own, children


@contextmanager
def _disk_errors(out: Path) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise UserError(f"no space left on the device holding {out}",
                            "free space (or use another --out) and rerun: finished work is kept"
                            ) from None
        raise


def check_out_dir(out: Path, build_id: str, replace: bool = False) -> bool:
    """Refuse an ``out`` that holds anything but this build (with ``replace``, delete a store
    or half-built store of another build instead); True when it is complete."""
    manifest = read_manifest(out)
    recorded = _read_json(out / BUILD_FILE)
    owner = (manifest or recorded or {}).get("build_id")  # None: not made by a shards build
    if replace and owner not in (None, build_id):
        shutil.rmtree(out)
        return False
    if manifest is not None and manifest.get("build_id") != build_id:
        raise UserError(f"{out} holds another shard store (built from other inputs)",
                        "choose a new --out, or delete the directory to rebuild")
    if manifest is not None and manifest.get("complete") is True:
        return True
    if recorded is not None and recorded.get("build_id") != build_id:
        raise UserError(f"{out} holds a half-built store of another build",
                        "choose a new --out, or delete the directory to start over")
    if recorded is None and out.exists() and any(p.name != PARTS_DIR for p in out.iterdir()):
        raise UserError(f"{out} is not empty and holds no shard build",
                        "choose an empty or new --out directory")
    return False


def claim_out_dir(out: Path, build_id: str, request: dict[str, Any]) -> None:
    """Record in ``out`` which build it is for (what a resumed run checks)."""
    out.mkdir(parents=True, exist_ok=True)
    if _read_json(out / BUILD_FILE) is None:
        atomic.write_json(out / BUILD_FILE, {"build_id": build_id, **request})


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


@dataclass(frozen=True)
class DensitySample:
    """Non-zeros per cell over the gene space, from the first cells of a few datasets."""

    mean: float  # over all sampled cells: the disk check
    densest: float  # the densest sampled dataset's mean: the size of parts

    @classmethod
    def of(cls, census: Any, obs: pd.DataFrame, gene_joinids: np.ndarray) -> DensitySample:
        """Read up to SAMPLE_CELLS cells of SAMPLE_DATASETS datasets spread over the census."""
        if obs.empty:
            return cls(0.0, 0.0)
        datasets = np.asarray(obs["dataset_id"].unique()).astype(str)  # not a string per cell
        picks = datasets[np.linspace(0, len(datasets) - 1,
                                     min(SAMPLE_DATASETS, len(datasets))).astype(int)]
        cells = nnz = 0
        densest = 0.0
        for d in picks:
            ids = obs["soma_joinid"].to_numpy()[(obs["dataset_id"] == d).to_numpy()]
            d_cells = d_nnz = 0
            for _, m in source.iter_raw_blocks(census, ids[:SAMPLE_CELLS], gene_joinids,
                                               SAMPLE_CELLS):
                d_cells, d_nnz = d_cells + m.shape[0], d_nnz + m.nnz
            cells, nnz = cells + d_cells, nnz + d_nnz
            densest = max(densest, d_nnz / max(d_cells, 1))
        return cls(nnz / max(cells, 1), densest)


def check_free_space(out: Path, n_cells: int, nnz_per_cell: float) -> None:
    need = int(n_cells * nnz_per_cell * DISK_BYTES_PER_NNZ)
    probe = out if out.exists() else next(p for p in out.parents if p.exists())
    free = shutil.disk_usage(probe).free
    if free < need:
        raise UserError(
            f"not enough free disk space for {n_cells:,} cells (about {nnz_per_cell:,.0f} "
            f"non-zeros each) at {out}: about {need / 2**30:.1f} GiB needed, "
            f"{free / 2**30:.1f} GiB free",
            "free space or choose another --out",
        )


def resolve_gene_space(var: pd.DataFrame, cfg: ShardsConfig, gene_list: str | None,
                       cache_dir: Path) -> GeneSpace:
    path = Path(gene_list) if gene_list else fetch_gene_list(cfg.genes, cache_dir)
    return match_genes(var, path, cfg.genes.min_matched)


def plan_parts(obs: pd.DataFrame, fingerprints: dict[str, str], space: GeneSpace,
               cfg: ShardsConfig, parts_dir: Path, cells: int) -> list[parts.PartSlice]:
    """Slices of at most ``cells`` eligible cells per dataset, each named by its content.

    ``obs`` holds each dataset's cells together in soma_joinid order
    (:func:`group_by_dataset`), with each cell's dataset-relative ``position``; a slice is a
    range of positions, so an unchanged dataset gives the same slices and part names in a
    release that renumbered its cells."""
    # the value filter decides which cells a position counts, so it is part of every name
    settings = {"genes": space.sha256, "norm": NORMALISATION_VERSION, "split": cfg.split,
                "seed": cfg.shuffle_seed, "n_genes": space.n_genes,
                "filter": cfg.query.value_filter(), "shuffle": SHUFFLE_RULE,
                "part_format": parts.PART_FORMAT}
    slices = []
    for dataset_id, start, stop in dataset_runs(obs):
        fp = fingerprints.get(dataset_id, dataset_id)
        for lo in range(start, stop, cells):
            chunk = obs.iloc[lo : min(lo + cells, stop)]
            key = parts.part_key(fp, chunk, chunk["split"].to_numpy(), settings)
            slices.append(parts.PartSlice(key, parts_dir / key, dataset_id, lo, lo + len(chunk)))
    return slices


def group_by_dataset(obs: pd.DataFrame) -> pd.DataFrame:
    """``obs`` (in soma_joinid order) with each dataset's cells together, joinid order kept
    inside: a census numbers its cells dataset after dataset, so usually ``obs`` itself."""
    codes = obs["dataset_id"].cat.codes.to_numpy()
    run_codes = codes[_run_starts(codes)]
    if len(np.unique(run_codes)) == len(run_codes):
        return obs
    return obs.take(np.argsort(codes, kind="stable")).reset_index(drop=True)


def _run_starts(codes: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.flatnonzero(np.diff(codes)) + 1]) if len(codes) else codes


def dataset_runs(obs: pd.DataFrame) -> list[tuple[str, int, int]]:
    """(dataset_id, first row, end row) of each dataset of grouped ``obs``, by dataset_id."""
    codes = obs["dataset_id"].cat.codes.to_numpy()
    starts = _run_starts(codes)
    ends = np.append(starts[1:], len(codes)).astype(np.int64)
    names = obs["dataset_id"].cat.categories.astype(str)[codes[starts]]
    return sorted(zip(names, starts.tolist(), ends.tolist(), strict=True))


def dataset_positions(obs: pd.DataFrame) -> np.ndarray:
    """Each cell's rank among its dataset's cells of grouped ``obs``."""
    positions = np.arange(len(obs), dtype=np.int64)
    for _, start, stop in dataset_runs(obs):
        positions[start:stop] -= start
    return positions


def run_parts(slices: list[parts.PartSlice], task_of: Callable[[parts.PartSlice], parts.PartTask],
              workers: int) -> tuple[int, int]:
    """Build the parts not yet done; returns (parts built, cells read). Tasks are made as
    workers take them (``task_of``), a few ahead, so their copies of obs stay few."""
    todo = [t for t in slices if not t.directory.is_dir()]
    total = sum(t.n_cells for t in todo)
    with progress(total=total, desc="shards: read + normalise") as bar:
        if workers <= 1:
            for t in todo:
                parts.write_part(task_of(t))
                bar.update(t.n_cells)
        else:
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                queue, pending = iter(todo), {}
                for t in islice(queue, 2 * workers):
                    pending[pool.submit(parts.write_part, task_of(t))] = t.n_cells
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for f in done:
                        f.result()
                        bar.update(pending.pop(f))
                        for t in islice(queue, 1):
                            pending[pool.submit(parts.write_part, task_of(t))] = t.n_cells
    return len(todo), total


def split_label_counts(part_dirs: list[Path]) -> dict[str, dict[str, int]]:
    """Cells per split and cell type, from the parts' summaries."""
    counts: dict[str, dict[str, int]] = {s: {} for s in SPLITS}
    for d in part_dirs:
        for s, split in parts.read_summary(d)["splits"].items():
            for term, n in split["cell_types"].items():
                counts[s][term] = counts[s].get(term, 0) + n
    return counts


def build_shards(
    out: str | os.PathLike[str],
    config: ShardsConfig,
    census_version: str | None = None,
    census_uri: str | None = None,
    gene_list: str | None = None,
    workers: int = 1,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    parts_dir: str | os.PathLike[str] | None = None,
    keep_parts: bool = False,
    replace: bool = False,
) -> BuildReport:
    """Build (or resume) a shard store at ``out``; see the module docstring. ``replace``: an
    ``out`` holding a store of other inputs is deleted and built again (for callers that own
    ``out``, such as make reproduce) instead of refused."""
    t0 = time.perf_counter()
    out = Path(out)
    spec = CensusSpec(version=None if census_uri else (census_version or "2023-05-15"),
                      uri=census_uri)
    phases: dict[str, float] = {}
    peaks: dict[str, int] = {}
    with _disk_errors(out), spec.open() as census:
        summary = source.read_summary(census)
        var = source.read_var(census)
        fingerprints = source.dataset_fingerprints(source.read_datasets(census))
        space = resolve_gene_space(var, config, gene_list, out.parent / ".ssl-census-cache")
        ontology = load_cell_ontology(config.curation.cl_release)
        inputs = BuildInputs(spec.identity(), summary, config.to_dict(), space.sha256,
                             ontology.release)
        build_id = inputs.build_id()
        if check_out_dir(out, build_id, replace):
            _clean_up(out, parts_dir is None and not keep_parts)
            return BuildReport(out, read_manifest(out) or {})
        obs = source.read_eligible_obs(census, config.query.value_filter())
        obs = select_datasets(obs, source.read_datasets(census), config.query.include_datasets,
                              config.query.exclude_datasets)
        density = DensitySample.of(census, obs, space.var["soma_joinid"].to_numpy())
        phases["obs"] = time.perf_counter() - t0
        peaks["obs"] = _peak_rss()[0]
    if obs.empty:
        raise UserError(f"the filter `{config.query.value_filter()}` selects no census cells",
                        "check the census and the [query] section of the config")
    obs = group_by_dataset(obs)
    obs["tech_sample"] = tech_sample(obs["dataset_id"], obs["donor_id"])
    obs["split"] = assign_splits(obs["tech_sample"], config.split)
    obs["position"] = dataset_positions(obs)
    types = curate_cell_types(obs, ontology, config.curation)
    if types.kept.empty and not config.curation.keep_unlabelled:
        raise UserError("no cell type passes the curation thresholds",
                        "lower the thresholds in [curation] or set keep_unlabelled = true")
    check_free_space(out, len(obs), density.mean)
    claim_out_dir(out, build_id, {"census": spec.identity(), "config": config.name})

    part_root = Path(parts_dir) if parts_dir else out / PARTS_DIR
    part_root.mkdir(parents=True, exist_ok=True)
    # workers share what the main process, holding the eligible obs, leaves of the budget
    slices = plan_parts(obs, fingerprints, space, config, part_root,
                        parts.cells_per_part(memory_budget, workers, released_rss(),
                                             density.densest))
    reuse = dataset_reuse(slices)
    t1 = time.perf_counter()
    peaks["plan"] = _peak_rss()[0]  # curation, split and part slices
    gene_joinids = space.var["soma_joinid"].to_numpy(np.int64)
    with _disk_errors(out):
        built, cells_read = run_parts(
            slices, partial(parts.PartTask.of, obs=obs, census=spec, gene_joinids=gene_joinids,
                            shuffle_seed=config.shuffle_seed), workers)
        phases["parts"] = time.perf_counter() - t1
        peaks["parts"] = _peak_rss()[0]
        part_dirs = [t.directory for t in slices]
        part_ids = [parts.PartIds.of(obs["position"].iat[t.start],
                                     obs["soma_joinid"].to_numpy()[t.start : t.stop])
                    for t in slices]
        del obs
        parts_bytes = sum(directory_bytes(d) for d in part_dirs)

        kept = types.kept
        labels = label_table(kept, split_label_counts(part_dirs))
        codes = dict(zip(labels["cell_type_ontology_term_id"], labels["cell_type_code"],
                         strict=True))
        t2 = time.perf_counter()
        n_cells = {}
        private_parts = parts_dir is None and not keep_parts
        for s in SPLITS:
            n_cells[s] = _merge_once(out, s, part_dirs, part_ids, codes, config,
                                     space.n_genes, memory_budget, build_id, workers)
            if private_parts:  # nobody else reads them: free the scratch space split by split
                parts.remove_split_files(part_dirs, s)
        phases["merge"] = time.perf_counter() - t2
        peaks["merge"] = _peak_rss()[0]
        write_tables(out, space.var, labels)
        dropped = sum(parts.read_summary(d)["dropped_empty"] for d in part_dirs)
        manifest = finish_store(out, _manifest(build_id, spec, summary, config, space,
                                               ontology.release, types, dropped, n_cells))
    _clean_up(out, parts_dir is None and not keep_parts)
    own, children = _peak_rss()
    return BuildReport(out, manifest, len(slices), built, cells_read,
                       time.perf_counter() - t0, phases, own, children, reuse, parts_bytes,
                       peaks)


def dataset_reuse(slices: list[parts.PartSlice]) -> dict[str, dict[str, int]]:
    """Per dataset, before phase 1: parts planned, parts already finished (an earlier run or
    build with the same dataset content made them) and cells still to read."""
    out: dict[str, dict[str, int]] = {}
    for t in slices:
        counts = out.setdefault(t.dataset_id, {"parts": 0, "parts_reused": 0, "cells_read": 0})
        counts["parts"] += 1
        if t.directory.is_dir():
            counts["parts_reused"] += 1
        else:
            counts["cells_read"] += t.n_cells
    return out


_DONE = ".done"


def _clean_up(out: Path, remove_parts: bool) -> None:
    """Remove the build's work files from a complete store (also after a kill at the end)."""
    if remove_parts:
        shutil.rmtree(out / PARTS_DIR, ignore_errors=True)
    (out / BUILD_FILE).unlink(missing_ok=True)
    for s in SPLITS:
        (out / s / _DONE).unlink(missing_ok=True)
        merge.finish_split(out / s)


def _merge_once(out: Path, split: str, part_dirs: list[Path], part_ids: list[parts.PartIds],
                codes: dict[str, int], config: ShardsConfig, n_genes: int, memory_budget: int,
                build_id: str, workers: int) -> int:
    """Merge one split unless a previous run of this build finished it (a run killed in the
    middle of a split resumes at the shards it had not written)."""
    done = _read_json(out / split / _DONE)
    if done is not None and done.get("build_id") == build_id:
        return int(done["n_cells"])
    n = merge.merge_split(part_dirs, split, out, codes, config.curation.keep_unlabelled,
                          config.shuffle_seed, n_genes, memory_budget, part_ids, build_id,
                          workers)
    merge.finish_split(out / split)
    atomic.write_json(out / split / _DONE, {"build_id": build_id, "n_cells": n})
    return n


def _manifest(build_id: str, spec: CensusSpec, summary: dict[str, str], config: ShardsConfig,
              space: GeneSpace, cl_release: str, types: Any, dropped_empty: int,
              n_cells: dict[str, int]) -> dict[str, Any]:
    table = types.table
    return {
        "build_id": build_id,
        "tool_version": __version__,
        "census": {**spec.identity(),
                   "schema_version": summary.get("census_schema_version"),
                   "build_date": summary.get("census_build_date")},
        "query": {"value_filter": config.query.value_filter(),
                  "is_primary_data": config.query.is_primary_data,
                  "assays": list(config.query.assays),
                  "include_datasets": list(config.query.include_datasets),
                  "exclude_datasets": list(config.query.exclude_datasets)},
        "thresholds": {**config.curation.__dict__, "cl_release": cl_release},
        "cell_ontology": {"release": cl_release, "source": ontology_package()},
        "cell_types": {"candidates": int(len(table)), "kept": int(table["kept"].sum())},
        "gene_list": {"sha256": space.sha256, "n_genes": space.n_genes,
                      "n_listed": space.n_listed, "source": Path(space.source).name},
        "split": {"rule": SPLIT_RULE, "salt": config.split.salt,
                  "fractions": list(config.split.fractions), "unit": "tech_sample"},
        "shuffle": {"rule": SHUFFLE_RULE, "seed": config.shuffle_seed},
        "normalisation": {"rule": NORMALISATION, "target_sum": TARGET_SUM,
                          "version": NORMALISATION_VERSION},
        "dropped": {"empty_cells": dropped_empty},
        "config_name": config.name,
        "manifest_file": MANIFEST,
    }
