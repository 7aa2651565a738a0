"""Phase 1 of a build: census cells -> normalised "parts", one directory per slice of a dataset.

A part holds the eligible cells of one slice of one dataset, restricted to the gene space,
normalised, grouped by split and sorted by the shuffle key (``split.shuffle_order``). Its name
is a hash of everything its bytes depend on (dataset fingerprint, the cells' positions in the
dataset and their obs, gene list, normalisation, value filter, split rule, shuffle seed), so a
rerun - or a later build that shares the dataset - finds it done and skips it. Nothing in a
part depends on soma_joinid, which a census release renumbers: cells are identified by their
dataset-relative ``position`` (rank among the dataset's eligible cells in soma_joinid order),
and the merge maps positions to the current release's soma_joinid (:class:`PartIds`). A part
is written under ``<key>.partial`` and renamed when whole: a directory named ``<key>`` is
always finished.

Files of a part, per split present (``s`` in train/val/test)::

    s.indptr.npy (int64)  s.indices.npy (uint16/32)  s.counts.npy (uint16, uint32 if needed)
    s.obs.parquet         the cells' position and obs (+ library_size, max_count), same order
    summary.json          cells, non-zeros, largest count and cell types per split; dropped cells

Parts hold raw counts only: the merge normalises each row (``values.normalise`` is per row,
so the value does not depend on where it is computed). That keeps the scratch space of a
build at about 4 bytes a non-zero, below the finished store's size, instead of 10.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ssl_census.core import atomic
from ssl_census.core.store import index_dtype
from ssl_census.shards.csr import concat_rows, take_rows
from ssl_census.shards.source import CensusSpec, iter_raw_blocks
from ssl_census.shards.split import shuffle_order
from ssl_census.shards.store import SPLITS, sorted_categorical, write_parquet
from ssl_census.shards.values import library_sizes

PART_ARRAYS = ("indptr", "indices", "counts")
PART_FORMAT = 2  # 1 stored normalised data beside the counts
PART_OBS_COLUMNS = ("position", "dataset_id", "donor_id", "tech_sample", "assay",
                    "tissue_general", "cell_type", "cell_type_ontology_term_id")
# Memory model (measured here): a process with the census open and a read block in flight
# uses about PROCESS_BASELINE bytes; assembling a part costs about BYTES_PER_NNZ a non-zero
# (compact block copies, the row gather, float64 normalisation, the sorted outputs). Parts are
# sized for the densest dataset of the build's sample (build.sample_density) with
# DENSITY_MARGIN to spare, at least MIN_ASSUMED_NNZ_PER_CELL: sized for a fixed 2,500, a
# census of 200 non-zeros per cell was cut into 12 times more parts than its memory needed.
PROCESS_BASELINE = 600 << 20
BYTES_PER_NNZ = 56
DENSITY_MARGIN = 1.5
MIN_ASSUMED_NNZ_PER_CELL = 100
READ_BLOCK_CELLS = 2048  # cells per census read: larger blocks only cost memory here


@dataclass(frozen=True)
class PartSlice:
    """A part as planned: rows [start, stop) of the build's obs, all of one dataset. The main
    process keeps one obs and makes a part's task (a copy of its rows) only when the part is
    sent to a worker, so the plan costs a few bytes a part, not a second copy of obs."""

    key: str
    directory: Path  # the finished part's path
    dataset_id: str
    start: int
    stop: int

    @property
    def n_cells(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class PartTask:
    """One unit of phase-1 work, sent to a worker process."""

    census: CensusSpec
    key: str
    directory: Path  # the finished part's path
    obs: pd.DataFrame  # the cells (soma_joinid + PART_OBS_COLUMNS + split), joinid order
    gene_joinids: np.ndarray  # sorted census var joinids of the gene space
    block_cells: int
    shuffle_seed: int

    @classmethod
    def of(cls, part: PartSlice, obs: pd.DataFrame, census: CensusSpec,
           gene_joinids: np.ndarray, shuffle_seed: int) -> PartTask:
        cells = obs.iloc[part.start : part.stop][["soma_joinid", *PART_OBS_COLUMNS, "split"]]
        return cls(census, part.key, part.directory, cells.reset_index(drop=True),
                   gene_joinids, READ_BLOCK_CELLS, shuffle_seed)


@dataclass(frozen=True)
class PartIds:
    """The current release's soma_joinid of a part's cells, by dataset-relative position.

    Stored as runs of consecutive soma_joinids (a census numbers a dataset's cells
    consecutively, so a part is usually one run): bytes per run, not per cell."""

    first_position: int
    run_offsets: np.ndarray  # position - first_position where each run starts
    run_joinids: np.ndarray  # soma_joinid of each run's first cell

    @classmethod
    def of(cls, first_position: int, soma_joinid: np.ndarray) -> PartIds:
        """``soma_joinid`` of positions first_position, first_position + 1, ..."""
        ids = np.asarray(soma_joinid, dtype=np.int64)
        starts = np.flatnonzero(np.diff(ids) != 1) + 1
        starts = np.concatenate([[0], starts]) if len(ids) else starts
        return cls(int(first_position), starts.astype(np.int64), ids[starts])

    def lookup(self, positions: np.ndarray) -> np.ndarray:
        offsets = np.asarray(positions, dtype=np.int64) - self.first_position
        run = np.searchsorted(self.run_offsets, offsets, side="right") - 1
        return self.run_joinids[run] + (offsets - self.run_offsets[run])


def part_key(fingerprint: str, obs: pd.DataFrame, splits: np.ndarray,
             settings: dict[str, Any]) -> str:
    """Name of a part: a hash of the dataset, its cells (positions and the obs stored with
    them, never soma_joinid), their splits and the build settings."""
    h = hashlib.sha256()
    h.update(fingerprint.encode())
    h.update(np.ascontiguousarray(obs["position"], dtype=np.int64).tobytes())
    for col in PART_OBS_COLUMNS[1:]:  # by value, whatever categories the census obs has
        values = sorted_categorical(obs[col])
        h.update("\0".join(values.categories).encode() + b"\1")
        h.update(np.ascontiguousarray(values.codes, dtype=np.int32).tobytes())
    h.update(np.ascontiguousarray(splits, dtype=np.int8).tobytes())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


def cells_per_part(memory_budget: int, workers: int, main_bytes: int,
                   densest_nnz_per_cell: float) -> int:
    """Cells a worker may assemble at once: its share of what the main process leaves, at the
    densest sampled dataset's non-zeros per cell (with a margin)."""
    share = (memory_budget - main_bytes) // max(workers, 1) - PROCESS_BASELINE
    nnz = max(MIN_ASSUMED_NNZ_PER_CELL, DENSITY_MARGIN * densest_nnz_per_cell)
    return int(max(READ_BLOCK_CELLS, share // (BYTES_PER_NNZ * nnz)))


_OPEN: dict[CensusSpec, Any] = {}


def _census(spec: CensusSpec) -> Any:
    # one open census per worker process, reused by every part the worker builds
    if spec not in _OPEN:
        _OPEN[spec] = spec.open()
    return _OPEN[spec]


def read_part_cells(task: PartTask) -> tuple[np.ndarray, tuple[np.ndarray, list[np.ndarray]]]:
    """The task's cells as one CSR (rows in task.obs order; counts as uint32)."""
    joinids = task.obs["soma_joinid"].to_numpy(np.int64)
    pieces, seen = [], []
    for obs_ids, m in iter_raw_blocks(_census(task.census), joinids, task.gene_joinids,
                                      task.block_cells):
        counts = m.data
        rounded = np.rint(counts)
        if np.any(rounded != counts) or np.any(rounded < 0):
            raise ValueError(f"X['raw'] holds non-integer or negative counts (cells {obs_ids[:3]})")
        pieces.append((m.indptr.astype(np.int64),
                       [m.indices.astype(index_dtype(len(task.gene_joinids))),
                        rounded.astype(np.uint32)]))
        seen.append(obs_ids)
    read_ids = np.concatenate(seen) if seen else np.zeros(0, dtype=np.int64)
    indptr, arrays = concat_rows(pieces)
    if len(read_ids) != len(joinids) or not np.array_equal(np.sort(read_ids), joinids):
        raise RuntimeError(f"census returned {len(read_ids)} rows for {len(joinids)} cells")
    if np.array_equal(read_ids, joinids):
        return joinids, (indptr, arrays)
    return joinids, take_rows(indptr, np.argsort(read_ids, kind="stable"), *arrays)


def write_part(task: PartTask) -> dict[str, Any]:
    """Build one part (in a worker); returns its summary."""
    t0 = time.perf_counter()
    joinids, (indptr, (indices, counts)) = read_part_cells(task)
    lib = library_sizes(indptr, counts)
    splits = task.obs["split"].to_numpy()
    empty = lib == 0
    partial = task.directory.with_name(task.directory.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    summary: dict[str, Any] = {"key": task.key, "n_cells_read": int(len(joinids)),
                               "dropped_empty": int(empty.sum()), "splits": {}}
    for s_index, s_name in enumerate(SPLITS):
        rows = np.flatnonzero((splits == s_index) & ~empty)
        if not len(rows):
            continue
        cells = task.obs.iloc[rows]
        rows = rows[shuffle_order(cells["dataset_id"], cells["position"], task.shuffle_seed)]
        p_indptr, (p_indices, p_counts) = take_rows(indptr, rows, indices, counts)
        max_count = np.maximum.reduceat(p_counts, p_indptr[:-1]).astype(np.int64)
        p_counts = p_counts.astype(np.uint16 if max_count.max() <= 0xFFFF else np.uint32)
        for name, arr in zip(PART_ARRAYS, (p_indptr, p_indices, p_counts), strict=True):
            np.save(partial / f"{s_name}.{name}.npy", arr)
        obs = task.obs.iloc[rows][list(PART_OBS_COLUMNS)].reset_index(drop=True)
        obs["library_size"] = lib[rows]
        obs["max_count"] = max_count
        write_parquet(partial / f"{s_name}.obs.parquet", obs)
        types = obs["cell_type_ontology_term_id"].astype(str).value_counts()
        summary["splits"][s_name] = {"n_cells": int(len(rows)), "nnz": int(p_indptr[-1]),
                                     "max_count": int(max_count.max()),
                                     "cell_types": {str(k): int(v) for k, v in types.items()}}
    summary["seconds"] = time.perf_counter() - t0
    summary["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    atomic.write_json(partial / "summary.json", summary)
    if task.directory.exists():  # a finished copy from a concurrent or earlier run
        shutil.rmtree(partial)
    else:
        os.replace(partial, task.directory)
    return summary


def read_summary(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "summary.json").read_text())


class NpySlices:
    """Reads ranges of a ``.npy`` file with plain file reads. Not a memory map: mapped pages
    of every part a merge worker touched would stay in its resident memory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with open(path, "rb") as f:
            fmt = np.lib.format
            header = fmt.read_array_header_1_0 if fmt.read_magic(f) == (1, 0) \
                else fmt.read_array_header_2_0
            shape, _, dtype = header(f)
            self.offset = f.tell()
        self.dtype, self.length = np.dtype(dtype), int(shape[0])

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.fromfile(self.path, dtype=self.dtype, count=stop - start,
                           offset=self.offset + start * self.dtype.itemsize)


def open_part_arrays(directory: Path, split: str) -> dict[str, NpySlices]:
    """A finished part's arrays of ``split``, for reading ranges (nothing read yet)."""
    return {name: NpySlices(directory / f"{split}.{name}.npy") for name in PART_ARRAYS}


def remove_split_files(directories: list[Path], split: str) -> None:
    """Delete one split's arrays and obs from finished parts (the summaries stay)."""
    for d in directories:
        for name in (*PART_ARRAYS, "obs"):
            suffix = "parquet" if name == "obs" else "npy"
            (d / f"{split}.{name}.{suffix}").unlink(missing_ok=True)
