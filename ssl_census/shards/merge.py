"""Phase 2 of a build: the parts of one split -> the split's shuffled CSR store.

External shuffle with bounded memory, in parallel: the split's order is the sort by shuffle
key (a seeded hash of dataset_id and the cell's dataset-relative position,
``split.shuffle_order``). Every part is already sorted by that key, so the cells of any
contiguous range of the final order are a contiguous slice of each part.

The main process plans the split (which part and row each cell of the final order comes
from: a few bytes a cell, plus the obs it writes to ``obs.parquet`` and then drops), writes
``indptr`` and obs, and cuts the non-zeros into the store's shards (``core.store.SHARD``
elements, one file each). Each shard is a task: gather the cells that overlap it from the
memory-mapped parts, normalise them (parts hold raw counts), and write that shard of
``indices``, ``data`` and ``counts`` whole. Tasks run in worker processes as the memory budget
allows; a shard finished is marked, so a killed merge resumes at the shards it had not done.
The bytes depend only on the cells, not on the number of workers or the order tasks finish
in. Parts store positions, not soma_joinid; the stored obs gets the current release's
soma_joinid here.
"""

from __future__ import annotations

import json
import shutil
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr

from ssl_census.core import atomic
from ssl_census.core.measure import released_rss
from ssl_census.core.progress import progress
from ssl_census.core.store import counts_dtype, create_csr_group, shard_bounds
from ssl_census.shards.csr import concat_rows, take_rows
from ssl_census.shards.parts import (
    PART_OBS_COLUMNS,
    PROCESS_BASELINE,
    NpySlices,
    PartIds,
    open_part_arrays,
)
from ssl_census.shards.split import shuffle_order
from ssl_census.shards.store import UNLABELLED_CODE, concat_columns, read_parquet, write_obs
from ssl_census.shards.values import normalise

# bytes a non-zero of a shard task costs: the part slices (6 bytes), the row gathers (int64
# positions and copies), float64 normalisation, the float32 data and the compressed output
TASK_BYTES_PER_NNZ = 48
NORMALISE_NNZ = 1 << 20
PLAN_OBS_COLUMNS = (*PART_OBS_COLUMNS, "library_size", "max_count", "cell_type_code",
                    "soma_joinid")
STATE_FILE = ".merge.json"  # which build and sizes a half-merged split belongs to
SHARDS_DONE = ".shards-done"  # one empty file per finished shard task


@dataclass(frozen=True)
class SplitPlan:
    """The cells of one split in final order, and where each comes from."""

    obs: pd.DataFrame  # final order, with cell_type_code
    part: np.ndarray  # index into parts, per cell
    row: np.ndarray  # row inside its part, per cell
    nnz: np.ndarray  # non-zeros per cell
    max_count: int


@dataclass(frozen=True)
class ShardTask:
    """Elements [start, stop) of the split's value arrays: one shard file of each."""

    index: int
    start: int
    stop: int
    skip: int  # elements of the first cell that lie before ``start``
    part: np.ndarray  # part and row of each cell overlapping the range, in final order
    row: np.ndarray


def cell_codes(term_ids: pd.Series, codes: Mapping[str, int], keep_unlabelled: bool
               ) -> tuple[np.ndarray, np.ndarray]:
    """(kept mask, cell_type_code) for cells with these CL ids."""
    terms = pd.Categorical(term_ids)  # looked up per category, not per cell
    per_term = np.array([codes.get(str(t), UNLABELLED_CODE) for t in terms.categories]
                        + [UNLABELLED_CODE], dtype=np.int32)
    code = per_term[terms.codes]  # code -1 (missing) takes the appended UNLABELLED_CODE
    kept = np.ones(len(code), bool) if keep_unlabelled else code != UNLABELLED_CODE
    return kept, code


def reordered(columns: dict[str, Any], order: np.ndarray) -> pd.DataFrame:
    """The columns in ``order``, one at a time, each original dropped once taken: the split's
    obs exists once plus one column, not twice (millions of cells at census scale)."""
    out: dict[str, Any] = {}
    for name in list(columns):
        col = columns.pop(name)
        out[name] = col.take(order) if isinstance(col, pd.Categorical) else col[order]
        del col
    return pd.DataFrame(out, copy=False)


def plan_split(parts: list[Path], split: str, codes: Mapping[str, int], keep_unlabelled: bool,
               shuffle_seed: int, ids: list[PartIds]) -> SplitPlan:
    """The split's cells in final order; ``ids[i]`` gives part i's cells their soma_joinid."""
    frames, part_ids, rows, nnz = [], [], [], []
    for i, d in enumerate(parts):
        f = d / f"{split}.obs.parquet"
        if not f.is_file():
            continue
        obs = read_parquet(f)
        kept, code = cell_codes(obs["cell_type_ontology_term_id"], codes, keep_unlabelled)
        indptr = np.load(d / f"{split}.indptr.npy")
        obs = obs[kept].reset_index(drop=True)
        obs["cell_type_code"] = code[kept]
        obs["soma_joinid"] = ids[i].lookup(obs["position"].to_numpy())
        frames.append(obs)
        idx = np.flatnonzero(kept)
        part_ids.append(np.full(len(idx), i, dtype=np.int32))
        rows.append(idx.astype(np.int32))
        nnz.append(np.diff(indptr)[kept].astype(np.int32))  # a cell has < 2**31 genes
    if not frames:  # no cell of any part is in this split: it is written with 0 cells
        empty = np.zeros(0, dtype=np.int32)
        obs = pd.DataFrame({c: pd.Series([], dtype=object) for c in PLAN_OBS_COLUMNS})
        return SplitPlan(obs, empty, empty, empty, 0)
    columns = concat_columns(frames)  # empties frames
    order = shuffle_order(columns["dataset_id"], columns["position"], shuffle_seed)
    max_count = int(columns.pop("max_count").max())
    del columns["position"]
    obs = reordered(columns, order)
    part, row, cell_nnz = (_concat(pieces)[order] for pieces in (part_ids, rows, nnz))
    return SplitPlan(obs, part, row, cell_nnz, max_count)


def _concat(pieces: list[np.ndarray]) -> np.ndarray:
    """The pieces as one array, the list emptied (one copy alive, not two)."""
    out = np.concatenate(pieces)
    pieces.clear()
    return out


def shard_tasks(plan: SplitPlan, shard: int) -> list[ShardTask]:
    """One task per shard of the value arrays, with the cells that overlap it."""
    cum = np.concatenate([[0], np.cumsum(plan.nnz, dtype=np.int64)])
    tasks = []
    for j, (start, stop) in enumerate(shard_bounds(int(cum[-1]), shard)):
        first = int(np.searchsorted(cum, start, side="right")) - 1  # the cell holding start
        end = int(np.searchsorted(cum, stop, side="left"))  # one past the cell holding stop-1
        tasks.append(ShardTask(j, start, stop, start - int(cum[first]),
                               plan.part[first:end], plan.row[first:end]))
    return tasks


class _PartCache:
    """Part arrays' file layouts, the most recently used kept: a shard task touches every part
    with cells in its range, and the next task touches most of them again."""

    def __init__(self, size: int = 2048) -> None:
        self.size = size
        self.open: OrderedDict[tuple[Path, str], dict[str, NpySlices]] = OrderedDict()

    def get(self, directory: Path, split: str) -> dict[str, NpySlices]:
        key = (directory, split)
        if key in self.open:
            self.open.move_to_end(key)
        else:
            self.open[key] = open_part_arrays(directory, split)
            if len(self.open) > self.size:
                self.open.popitem(last=False)
        return self.open[key]


_CACHE = _PartCache()


def gather_cells(parts: list[Path], split: str, part: np.ndarray, row: np.ndarray,
                 cache: _PartCache = _CACHE) -> tuple[np.ndarray, list[np.ndarray]]:
    """The cells (part[i], row[i]) as CSR (indptr, [indices, counts]), in the given order."""
    pieces, positions = [], []
    by_part = np.argsort(part, kind="stable")  # stable: each part's rows stay ascending
    starts = np.flatnonzero(np.diff(part[by_part])) + 1
    for where in np.split(by_part, starts) if len(part) else []:
        rows = row[where]  # ascending: parts are sorted by the same key
        arrays = cache.get(parts[part[where[0]]], split)
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        ptr = arrays["indptr"].read(lo, hi + 1)
        a, b = int(ptr[0]), int(ptr[-1])
        sliced = [arrays["indices"].read(a, b),
                  arrays["counts"].read(a, b).astype(np.uint32, copy=False)]
        if len(rows) == hi - lo:  # every row of the slice: no gather needed
            pieces.append((ptr - a, sliced))
        else:
            pieces.append(take_rows(ptr - a, rows - lo, *sliced))
        positions.append(where)
    indptr, arrays = concat_rows(pieces)
    inverse = np.argsort(np.concatenate(positions), kind="stable")
    if np.array_equal(inverse, np.arange(len(inverse))):
        return indptr, arrays
    return take_rows(indptr, inverse, *arrays)


def normalise_rows(indptr: np.ndarray, counts: np.ndarray, block_nnz: int = NORMALISE_NNZ
                   ) -> np.ndarray:
    """``values.normalise`` a block of rows at a time (a row's value does not depend on the
    block): its float64 temporaries stay small however many non-zeros a shard task has."""
    data = np.empty(len(counts), dtype=np.float32)
    cum, start = np.asarray(indptr, dtype=np.int64), 0
    while start < len(cum) - 1:
        stop = max(start + 1, int(np.searchsorted(cum, cum[start] + block_nnz, "right")) - 1)
        stop = min(stop, len(cum) - 1)
        lo, hi = int(cum[start]), int(cum[stop])
        data[lo:hi] = normalise(cum[start : stop + 1] - lo, counts[lo:hi])[0]
        start = stop
    return data


def write_shard(parts: list[Path], split: str, x_path: Path, task: ShardTask) -> int:
    """Gather, normalise and write one shard of indices, data and counts; returns its size."""
    indptr, (indices, counts) = gather_cells(parts, split, task.part, task.row)
    data = normalise_rows(indptr, counts)
    window = slice(task.skip, task.skip + task.stop - task.start)
    for name, values in (("indices", indices), ("data", data), ("counts", counts)):
        array = zarr.open_array(str(x_path / name), mode="r+")
        array[task.start : task.stop] = values[window].astype(array.dtype, copy=False)
    (x_path.parent / SHARDS_DONE / str(task.index)).touch()
    return task.stop - task.start


def merge_workers(workers: int, memory_budget: int, main_bytes: int, shard: int) -> int:
    """Processes for the shard tasks: as many as asked that the budget holds (at least one)."""
    per_task = PROCESS_BASELINE + shard * TASK_BYTES_PER_NNZ
    return max(1, min(workers, (memory_budget - main_bytes) // per_task))


def merge_split(parts: list[Path], split: str, out: Path, codes: Mapping[str, int],
                keep_unlabelled: bool, shuffle_seed: int, n_genes: int,
                memory_budget: int, part_ids: list[PartIds], build_id: str,
                workers: int = 1) -> int:
    """Write ``out/<split>`` from the parts (``part_ids[i]`` maps part i's positions to this
    release's soma_joinid), resuming a merge of the same build; returns its cell count."""
    split_dir = out / split
    plan = plan_split(parts, split, codes, keep_unlabelled, shuffle_seed, part_ids)
    nnz = int(plan.nnz.sum())
    state = {"build_id": build_id, "n_cells": len(plan.obs), "nnz": nnz,
             "max_count": plan.max_count}
    if _read_state(split_dir) != state:
        shutil.rmtree(split_dir, ignore_errors=True)
        arrays = create_csr_group(split_dir / "X.zarr", len(plan.obs), nnz, n_genes,
                                  counts_dtype(plan.max_count))
        arrays["indptr"][:] = np.concatenate([[0], np.cumsum(plan.nnz, dtype=np.int64)])
        write_obs(split_dir / "obs.parquet", plan.obs)
        (split_dir / SHARDS_DONE).mkdir()
        atomic.write_json(split_dir / STATE_FILE, state)
    plan = SplitPlan(plan.obs.iloc[:0], plan.part, plan.row, plan.nnz, plan.max_count)
    main_bytes = released_rss()  # the workers get what the main process leaves of the budget
    shard = zarr.open_array(str(split_dir / "X.zarr" / "data"), mode="r").shards[0]
    done = {int(p.name) for p in (split_dir / SHARDS_DONE).iterdir()}
    tasks = [t for t in shard_tasks(plan, shard) if t.index not in done]
    _run_shard_tasks(parts, split, split_dir / "X.zarr", tasks,
                     merge_workers(workers, memory_budget, main_bytes, shard), nnz)
    _CACHE.open.clear()
    return state["n_cells"]


def _run_shard_tasks(parts: list[Path], split: str, x_path: Path, tasks: list[ShardTask],
                     workers: int, nnz: int) -> None:
    with progress(total=nnz, desc=f"shards: shuffle {split}") as bar:
        bar.update(nnz - sum(t.stop - t.start for t in tasks))
        if workers <= 1 or len(tasks) <= 1:
            for t in tasks:
                bar.update(write_shard(parts, split, x_path, t))
            return
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(write_shard, parts, split, x_path, t) for t in tasks]
            for f in as_completed(futures):
                bar.update(f.result())


def finish_split(split_dir: Path) -> None:
    """Remove the merge's resume state from a finished split."""
    (split_dir / STATE_FILE).unlink(missing_ok=True)
    shutil.rmtree(split_dir / SHARDS_DONE, ignore_errors=True)


def _read_state(split_dir: Path) -> dict | None:
    try:
        return json.loads((split_dir / STATE_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
