"""Phase 2 of a build: the parts of one split -> the split's shuffled CSR store.

External shuffle with bounded memory: the split's order is the sort by shuffle key (a seeded
hash of dataset_id and the cell's dataset-relative position, ``split.shuffle_order``). Every
part is already sorted by that key, so the cells of any
contiguous range of the final order are a contiguous slice of each part. The order is cut
into buckets of at most ``bucket_nnz`` non-zeros; each bucket gathers its slices from the
parts (memory-mapped), puts them in final order and is appended to the writer. Only the obs
columns of the split are held whole. The result does not depend on the bucket size. Parts
store positions, not soma_joinid; the stored obs gets the current release's soma_joinid here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pandas.api.types import union_categoricals

from ssl_census.core.progress import progress
from ssl_census.shards.csr import concat_rows, take_rows
from ssl_census.shards.parts import (
    PART_OBS_COLUMNS,
    PROCESS_BASELINE,
    PartIds,
    open_part_arrays,
)
from ssl_census.shards.split import shuffle_order
from ssl_census.shards.store import UNLABELLED_CODE, read_parquet, write_split

# bytes a non-zero costs in a bucket: slices read from the parts, the per-part and the final
# row gathers (int64 gather positions and 10-byte copies each), the writer's shard buffers
BUCKET_BYTES_PER_NNZ = 64
WRITER_BYTES = 320 << 20  # CsrWriter's four whole-shard buffers
PLAN_OBS_COLUMNS = (*PART_OBS_COLUMNS, "library_size", "max_count", "cell_type_code",
                    "soma_joinid")


@dataclass(frozen=True)
class SplitPlan:
    """The cells of one split in final order, and where each comes from."""

    obs: pd.DataFrame  # final order, with cell_type_code
    part: np.ndarray  # index into parts, per cell
    row: np.ndarray  # row inside its part, per cell
    nnz: np.ndarray  # non-zeros per cell
    max_count: int


def cell_codes(term_ids: pd.Series, codes: Mapping[str, int], keep_unlabelled: bool
               ) -> tuple[np.ndarray, np.ndarray]:
    """(kept mask, cell_type_code) for cells with these CL ids."""
    code = term_ids.astype(str).map(codes).fillna(UNLABELLED_CODE).to_numpy(np.int32)
    kept = np.ones(len(code), bool) if keep_unlabelled else code != UNLABELLED_CODE
    return kept, code


def concat_obs(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Stack obs frames keeping string columns categorical (pd.concat would turn categoricals
    with different categories into one Python string per row)."""
    out = {}
    for col in frames[0].columns:
        if isinstance(frames[0][col].dtype, pd.CategoricalDtype):
            out[col] = union_categoricals([f[col] for f in frames])
        else:
            out[col] = np.concatenate([f[col].to_numpy() for f in frames])
    return pd.DataFrame(out)


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
        rows.append(idx.astype(np.int64))
        nnz.append(np.diff(indptr)[kept])
    if not frames:  # no cell of any part is in this split: it is written with 0 cells
        empty = np.zeros(0, dtype=np.int64)
        obs = pd.DataFrame({c: pd.Series([], dtype=object) for c in PLAN_OBS_COLUMNS})
        return SplitPlan(obs, empty.astype(np.int32), empty, empty, 0)
    obs = concat_obs(frames)
    order = shuffle_order(obs["dataset_id"], obs["position"].to_numpy(), shuffle_seed)
    max_count = int(obs["max_count"].max()) if len(obs) else 0
    return SplitPlan(obs.iloc[order].reset_index(drop=True), np.concatenate(part_ids)[order],
                     np.concatenate(rows)[order], np.concatenate(nnz)[order], max_count)


def bucket_bounds(nnz: np.ndarray, bucket_nnz: int) -> list[tuple[int, int]]:
    """Consecutive cell ranges of at most ``bucket_nnz`` non-zeros (at least one cell each)."""
    bounds, start, n = [], 0, len(nnz)
    cum = np.concatenate([[0], np.cumsum(nnz, dtype=np.int64)])
    while start < n:
        stop = int(np.searchsorted(cum, cum[start] + bucket_nnz, side="right")) - 1
        stop = min(max(stop, start + 1), n)
        bounds.append((start, stop))
        start = stop
    return bounds


def _bucket(parts: list[Path], split: str, part: np.ndarray, row: np.ndarray):
    """The cells (part[i], row[i]) as CSR arrays, in the given order."""
    pieces, positions = [], []
    for p in np.unique(part):
        where = np.flatnonzero(part == p)
        rows = row[where]  # ascending: parts are sorted by the same key
        arrays = open_part_arrays(parts[p], split)
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        ptr = np.asarray(arrays["indptr"][lo : hi + 1])
        a, b = int(ptr[0]), int(ptr[-1])
        sliced = [np.asarray(arrays[k][a:b]) for k in ("indices", "data", "counts")]
        if len(rows) == hi - lo:  # every row of the slice: no gather needed
            pieces.append((ptr - a, sliced))
        else:
            pieces.append(take_rows(ptr - a, rows - lo, *sliced))
        positions.append(where)
        del arrays
    indptr, arrays = concat_rows(pieces)
    inverse = np.argsort(np.concatenate(positions), kind="stable")
    if np.array_equal(inverse, np.arange(len(inverse))):
        return indptr, arrays
    return take_rows(indptr, inverse, *arrays)


def iter_buckets(parts: list[Path], split: str, plan: SplitPlan, bucket_nnz: int
                 ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    with progress(total=len(plan.obs), desc=f"shards: shuffle {split}") as bar:
        for start, stop in bucket_bounds(plan.nnz, bucket_nnz):
            indptr, (indices, data, counts) = _bucket(parts, split, plan.part[start:stop],
                                                      plan.row[start:stop])
            yield indptr, indices, data, counts
            bar.update(stop - start)


def merge_split(parts: list[Path], split: str, out: Path, codes: Mapping[str, int],
                keep_unlabelled: bool, shuffle_seed: int, n_genes: int,
                memory_budget: int, part_ids: list[PartIds]) -> int:
    """Write ``out/<split>`` from the parts (``part_ids[i]`` maps part i's positions to this
    release's soma_joinid); returns its cell count."""
    plan = plan_split(parts, split, codes, keep_unlabelled, shuffle_seed, part_ids)
    obs_bytes = int(plan.obs.memory_usage(deep=False).sum()) if len(plan.obs) else 0
    free = memory_budget - PROCESS_BASELINE - WRITER_BYTES - 3 * obs_bytes
    bucket_nnz = max(1 << 16, free // BUCKET_BYTES_PER_NNZ)
    write_split(out / split, iter_buckets(parts, split, plan, bucket_nnz), plan.obs,
                int(plan.nnz.sum()), n_genes, plan.max_count)
    return len(plan.obs)
