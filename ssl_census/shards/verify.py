"""``shards verify``: recompute what a store claims and report every disagreement.

Checks, per split: per-array checksums against the manifest; cell and non-zero counts
(manifest, zarr attributes, indptr, obs rows); CSR structure (monotone indptr, sorted gene
indices in range); values (``data`` equals the build's normalisation of ``counts``, expm1 of
each row sums to 10,000, obs.library_size equals the counts' row sums); labels (codes in
range, per-split counts in labels.parquet). Across splits: no tech_sample and no soma_joinid
in two splits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ssl_census.core.store import ARRAYS, CsrArrays, open_csr, tree_checksum
from ssl_census.shards.store import (
    MANIFEST,
    STORE_FORMAT,
    TABLES,
    UNLABELLED_CODE,
    read_manifest,
    read_parquet,
    split_summary,
)
from ssl_census.shards.values import TARGET_SUM, library_sizes, normalise

ROW_SUM_RTOL = 1e-3
VALUE_ATOL = 1e-6
CHECK_BLOCK_NNZ = 1 << 23


@dataclass
class VerifyReport:
    path: Path
    problems: list[str] = field(default_factory=list)
    n_cells: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_values(arrays: CsrArrays, obs: pd.DataFrame, split: str) -> list[str]:
    problems: list[str] = []
    indptr = arrays.indptr[:]
    if indptr[0] != 0 or np.any(np.diff(indptr) < 0) or indptr[-1] != arrays.nnz:
        return [f"{split}: indptr is not a valid row-offset array for {arrays.nnz} non-zeros"]
    lib = obs["library_size"].to_numpy(np.int64)
    start = 0
    while start < arrays.n_cells:
        stop = int(np.searchsorted(indptr, indptr[start] + CHECK_BLOCK_NNZ, side="right")) - 1
        stop = min(max(stop, start + 1), arrays.n_cells)
        lo, hi = int(indptr[start]), int(indptr[stop])
        ptr = indptr[start : stop + 1] - lo
        idx = arrays.indices[lo:hi].astype(np.int64)
        data, counts = arrays.data[lo:hi], arrays.counts[lo:hi]
        where = f"{split} rows {start}-{stop - 1}"
        if len(idx) and int(idx.max()) >= arrays.n_genes:
            problems.append(f"{where}: gene index out of range")
        within = np.diff(idx) > 0
        row_starts = ptr[1:-1][(ptr[1:-1] > 0) & (ptr[1:-1] < len(idx))] - 1
        within[row_starts] = True
        if not within.all():
            problems.append(f"{where}: gene indices not strictly increasing within rows")
        if np.any(np.diff(ptr) == 0):
            problems.append(f"{where}: empty rows")
            break
        if not np.array_equal(library_sizes(ptr, counts), lib[start:stop]):
            problems.append(f"{where}: obs.library_size differs from the stored counts")
        expected, _ = normalise(ptr, counts)
        if not np.allclose(data, expected, rtol=0, atol=VALUE_ATOL):
            problems.append(f"{where}: data differ from log1p(counts / library_size * 1e4)")
        sums = np.add.reduceat(np.expm1(data.astype(np.float64)), ptr[:-1])
        if not np.allclose(sums, TARGET_SUM, rtol=ROW_SUM_RTOL):
            problems.append(f"{where}: expm1 row sums are not {TARGET_SUM:g}")
        start = stop
    return problems


def _check_split(root: Path, split: str, claimed: dict, labels: pd.DataFrame) -> list[str]:
    d = root / split
    try:
        arrays, obs = open_csr(d / "X.zarr"), read_parquet(d / "obs.parquet")
    except (OSError, ValueError, KeyError) as e:
        return [f"{split}: cannot open ({e})"]
    problems = []
    actual = split_summary(root, split)
    for name, sha in claimed.get("checksums", {}).items():
        if actual["checksums"].get(name) != sha:
            problems.append(f"{split}: checksum of {name} differs from the manifest")
    if problems:  # the bytes are not the ones built: checking their values says no more
        return problems
    if not (claimed.get("n_cells") == arrays.n_cells == len(obs) == arrays.indptr.shape[0] - 1):
        problems.append(f"{split}: cell counts disagree (manifest {claimed.get('n_cells')}, "
                        f"X {arrays.n_cells}, obs {len(obs)}, indptr {arrays.indptr.shape[0] - 1})")
        return problems
    if claimed.get("nnz") != arrays.nnz:
        problems.append(f"{split}: manifest says {claimed.get('nnz')} non-zeros, "
                        f"X has {arrays.nnz}")
    codes = obs["cell_type_code"].to_numpy()
    if np.any((codes < UNLABELLED_CODE) | (codes >= len(labels))):
        problems.append(f"{split}: cell_type_code outside -1..{len(labels) - 1}")
    else:
        per_code = np.bincount(codes[codes >= 0], minlength=len(labels))
        if not np.array_equal(per_code, labels[f"n_{split}"].to_numpy()):
            problems.append(f"{split}: cells per type differ from labels.parquet n_{split}")
        terms = labels["cell_type_ontology_term_id"].to_numpy()[codes[codes >= 0]]
        cell_terms = pd.Categorical(obs["cell_type_ontology_term_id"])  # not a string per cell
        labelled = cell_terms.codes[codes >= 0]
        if (labelled < 0).any() or not np.array_equal(
                terms, cell_terms.categories.astype(str)[labelled]):
            problems.append(f"{split}: cell_type_code does not match cell_type_ontology_term_id")
    return problems + _check_values(arrays, obs, split)


def _check_disjoint(root: Path, splits: list[str]) -> list[str]:
    seen_ts: dict[str, str] = {}
    seen_ids: list[np.ndarray] = []
    problems = []
    for s in splits:
        obs = read_parquet(root / s / "obs.parquet")
        for ts in np.asarray(obs["tech_sample"].unique()).astype(str):
            if ts in seen_ts and seen_ts[ts] != s:
                problems.append(f"tech_sample {ts} is in both {seen_ts[ts]} and {s}")
            seen_ts[ts] = s
        seen_ids.append(obs["soma_joinid"].to_numpy())
    ids = np.concatenate(seen_ids) if seen_ids else np.zeros(0)
    if len(np.unique(ids)) != len(ids):
        problems.append("some soma_joinid occur more than once across splits")
    return problems


def verify_shards(path: str | os.PathLike[str]) -> VerifyReport:
    """Check the store at ``path``; the report lists every problem found (none: ok)."""
    root = Path(path)
    report = VerifyReport(root)
    manifest = read_manifest(root)
    if manifest is None or manifest.get("format") != STORE_FORMAT:
        report.problems.append(f"no valid {MANIFEST}: not a shard store")
        return report
    if manifest.get("complete") is not True:
        report.problems.append("the manifest does not mark the store complete")
    for name, sha in manifest.get("tables", {}).items():
        if name in TABLES and (not (root / name).is_file() or tree_checksum(root / name) != sha):
            report.problems.append(f"checksum of {name} differs from the manifest")
    try:
        labels = read_parquet(root / "labels.parquet")
    except OSError as e:
        report.problems.append(f"cannot read labels.parquet ({e})")
        return report
    splits = list(manifest.get("splits", {}))
    for s in splits:
        claimed = manifest["splits"][s]
        report.problems += _check_split(root, s, claimed, labels)
        report.n_cells[s] = int(claimed.get("n_cells", 0))
    if not report.problems:
        report.problems += _check_disjoint(root, splits)
    missing = set(ARRAYS) - {k for s in splits for k in manifest["splits"][s]["checksums"]}
    if splits and missing:
        report.problems.append(f"the manifest has no checksum for {', '.join(sorted(missing))}")
    return report
