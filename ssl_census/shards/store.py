"""The shard store on disk: open a finished one, and the writer steps every store goes through.

Layout (docs/shard-format.md)::

    <out>/manifest.json        written last; "complete": true marks a finished store
    <out>/var.parquet          the gene space: feature_id, feature_name (row i = gene i)
    <out>/labels.parquet       cell_type_code, cell_type, cell_type_ontology_term_id,
                               n_train, n_val, n_test, class_weight
    <out>/<split>/X.zarr       core.store CSR group (indptr, indices, data, counts)
    <out>/<split>/obs.parquet  one row per cell, in X order

The build (``shards.build``) and :func:`write_store_from_arrays` (small stores for tests and
benchmarks) share :func:`write_split`, :func:`write_tables` and :func:`finish_store`, so a
store made either way has the same bytes for the same cells.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp
from pandas.api.types import union_categoricals

from ssl_census import __version__
from ssl_census.core import atomic
from ssl_census.core.errors import UserError
from ssl_census.core.store import (
    ARRAYS,
    CsrArrays,
    CsrWriter,
    counts_dtype,
    open_csr,
    tree_checksum,
)
from ssl_census.shards.values import NORMALISATION, TARGET_SUM, normalise

STORE_FORMAT = "ssl-census-shards/1"
SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
UNLABELLED_CODE = -1

OBS_COLUMNS = (
    "soma_joinid", "dataset_id", "donor_id", "tech_sample", "assay", "tissue_general",
    "cell_type", "cell_type_ontology_term_id", "cell_type_code", "library_size",
)
STRING_OBS_COLUMNS = (
    "dataset_id", "donor_id", "tech_sample", "assay", "tissue_general", "cell_type",
    "cell_type_ontology_term_id",
)
TABLES = ("var.parquet", "labels.parquet")
LABEL_COLUMNS = (
    "cell_type_code", "cell_type", "cell_type_ontology_term_id", "n_train", "n_val", "n_test",
    "class_weight",
)


@dataclass(frozen=True)
class ShardStore:
    """A finished shard store, opened read-only."""

    path: Path
    manifest: dict[str, Any]
    var: pd.DataFrame
    labels: pd.DataFrame

    @property
    def n_genes(self) -> int:
        return len(self.var)

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(s for s in SPLITS if s in self.manifest.get("splits", {}))

    def split(self, name: str) -> tuple[CsrArrays, pd.DataFrame]:
        """The CSR arrays and obs table of split ``name`` (rows in the same order)."""
        if name not in self.splits:
            raise UserError(
                f"split {name!r} not in shard store {self.path}",
                f"choose one of {', '.join(self.splits)}",
            )
        return open_csr(self.path / name / "X.zarr"), read_parquet(self.path / name / "obs.parquet")


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The manifest of the store at ``path``, or None when there is none (yet)."""
    f = Path(path) / MANIFEST
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError:
        return None


def check_manifest(root: str | os.PathLike[str], manifest: dict[str, Any] | None) -> dict[str, Any]:
    """The manifest of a finished store; a missing, foreign or incomplete one is a UserError."""
    if manifest is None or manifest.get("format") != STORE_FORMAT:
        raise UserError(
            f"{root} is not an ssl-census shard store (no valid {MANIFEST})",
            "point at the --out directory of `ssl-census shards build`",
        )
    if manifest.get("complete") is not True:
        raise UserError(
            f"shard store {root} is incomplete (the build did not finish)",
            "rerun the same `ssl-census shards build` command to resume it",
        )
    return manifest


def open_shards(path: str | os.PathLike[str]) -> ShardStore:
    """Open a finished shard store; a missing, unfinished or foreign directory is a UserError."""
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"shard store not found: {root}",
                        "build one with `ssl-census shards build`")
    manifest = check_manifest(root, read_manifest(root))
    missing = [p for p in ("var.parquet", "labels.parquet") if not (root / p).is_file()]
    missing += [
        f"{s}/{f}" for s in manifest.get("splits", {}) for f in ("X.zarr", "obs.parquet")
        if not (root / s / f).exists()
    ]
    if missing:
        raise UserError(
            f"shard store {root} lacks {', '.join(missing)}",
            "rebuild it, or run `ssl-census shards verify` to see what is wrong",
        )
    return ShardStore(root, manifest, read_parquet(root / "var.parquet"),
                      read_parquet(root / "labels.parquet"))


# ---------------------------------------------------------------------------------------------
# writing


def read_parquet(path: str | os.PathLike[str]) -> pd.DataFrame:
    return pq.read_table(path).to_pandas()


def write_parquet(path: str | os.PathLike[str], df: pd.DataFrame) -> None:
    """Write ``df`` atomically with fixed settings, so equal frames give equal bytes."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", compression_level=3, use_dictionary=True,
                   write_statistics=True, row_group_size=1 << 20)
    atomic.write_bytes(path, buf.getvalue())


def concat_columns(frames: list[pd.DataFrame], sort_categories: bool = False
                   ) -> dict[str, Any]:
    """Stack obs frames column by column, string columns kept categorical (pd.concat would turn
    categoricals with different categories into one Python string per row).

    The frames are emptied as their columns are stacked, so the rows exist once plus one
    column, not twice (obs of the full census: tens of millions of rows)."""
    out: dict[str, Any] = {}
    for col in list(frames[0].columns) if frames else []:
        pieces = [f.pop(col) for f in frames]
        if isinstance(pieces[0].dtype, pd.CategoricalDtype):
            out[col] = union_categoricals(pieces, sort_categories=sort_categories)
        else:
            out[col] = np.concatenate([p.to_numpy() for p in pieces])
        del pieces
    return out


def sorted_categorical(values: pd.Series) -> pd.Categorical:
    """``values`` as strings in a categorical whose categories are the used values, sorted.

    Categorical input is recoded without materialising one string per row (obs of a split
    of the full census has millions of rows)."""
    s = pd.Series(values).reset_index(drop=True)
    if not isinstance(s.dtype, pd.CategoricalDtype):
        s = s.astype("string").astype(str).astype("category")
    s = s.cat.remove_unused_categories()
    s = s.cat.rename_categories(s.cat.categories.astype(str))
    return pd.Categorical(s.cat.reorder_categories(sorted(s.cat.categories)))


def tidy_obs(obs: pd.DataFrame, categories: Mapping[str, list[str]] | None = None
             ) -> pd.DataFrame:
    """The stored obs columns in their stored order and types (categories sorted).

    ``categories`` fixes the categories of the string columns (the sorted values used in the
    whole split) when ``obs`` is one row group of a larger split."""
    out = pd.DataFrame(index=pd.RangeIndex(len(obs)))
    for col in OBS_COLUMNS:
        if col in STRING_OBS_COLUMNS:
            values = sorted_categorical(obs[col])
            if categories is not None:
                values = values.set_categories(categories[col])
            out[col] = values
        elif col == "cell_type_code":
            out[col] = obs[col].to_numpy(np.int32)
        else:
            out[col] = obs[col].to_numpy(np.int64)
    return out


OBS_ROW_GROUP = 1 << 20


def write_obs(path: str | os.PathLike[str], obs: pd.DataFrame) -> None:
    """Write a split's ``obs.parquet`` one row group at a time (atomically, deterministic bytes).

    A split of the full census has millions of rows: converting it whole to Arrow would hold
    two more copies of it, so each row group is tidied and written on its own, with the
    split-wide sorted categories."""
    path = Path(path)
    categories = {c: list(sorted_categorical(obs[c]).categories) for c in STRING_OBS_COLUMNS}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    writer = None
    try:
        for lo in range(0, max(len(obs), 1), OBS_ROW_GROUP):
            chunk = tidy_obs(obs.iloc[lo : lo + OBS_ROW_GROUP], categories)
            table = pa.Table.from_pandas(chunk, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema, compression="zstd",
                                          compression_level=3, use_dictionary=True,
                                          write_statistics=True)
            writer.write_table(table, row_group_size=OBS_ROW_GROUP)
    finally:
        if writer is not None:
            writer.close()
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_split(
    split_dir: str | os.PathLike[str],
    blocks: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    obs: pd.DataFrame,
    nnz: int,
    n_genes: int,
    max_count: int,
) -> None:
    """Write one split: ``X.zarr`` from CSR ``blocks`` (indptr, indices, data, counts), then obs.

    ``obs`` has one row per cell in block order; its row count and ``nnz`` are the totals the
    blocks must add up to (CsrWriter refuses anything else).
    """
    split_dir = Path(split_dir)
    split_dir.mkdir(parents=True, exist_ok=True)
    writer = CsrWriter(split_dir / "X.zarr", len(obs), nnz, n_genes, counts_dtype(max_count))
    for indptr, indices, data, counts in blocks:
        writer.append(indptr, indices, data, counts)
    writer.close()
    write_obs(split_dir / "obs.parquet", obs)


def class_weights(n_train: np.ndarray) -> np.ndarray:
    """Balanced weights n / (K * n_k) over training counts; a class absent from train gets 0."""
    n_train = np.asarray(n_train, dtype=np.float64)
    k, total = len(n_train), n_train.sum()
    with np.errstate(divide="ignore"):
        w = np.where(n_train > 0, total / (k * np.maximum(n_train, 1)), 0.0)
    return w.astype(np.float64)


def label_table(
    cell_types: pd.DataFrame, split_counts: Mapping[str, Mapping[str, int]]
) -> pd.DataFrame:
    """labels.parquet from the kept cell types (cell_type_ontology_term_id, cell_type), coded in
    term-id order, and per-split cell counts ``{split: {term_id: n}}``."""
    ct = (cell_types[["cell_type_ontology_term_id", "cell_type"]].drop_duplicates()
          .sort_values("cell_type_ontology_term_id").reset_index(drop=True))
    out = pd.DataFrame({
        "cell_type_code": np.arange(len(ct), dtype=np.int32),
        "cell_type": ct["cell_type"].astype(str).to_numpy(),
        "cell_type_ontology_term_id": ct["cell_type_ontology_term_id"].astype(str).to_numpy(),
    })
    for s in SPLITS:
        counts = split_counts.get(s, {})
        out[f"n_{s}"] = np.array([int(counts.get(t, 0)) for t in out["cell_type_ontology_term_id"]],
                                 dtype=np.int64)
    out["class_weight"] = class_weights(out["n_train"].to_numpy())
    return out


def write_tables(out: str | os.PathLike[str], var: pd.DataFrame, labels: pd.DataFrame) -> None:
    out = Path(out)
    write_parquet(out / "var.parquet",
                  var[["feature_id", "feature_name"]].astype(str).reset_index(drop=True))
    write_parquet(out / "labels.parquet", labels[list(LABEL_COLUMNS)].reset_index(drop=True))


def split_summary(out: str | os.PathLike[str], split: str) -> dict[str, Any]:
    """Cells, non-zeros and per-array checksums of a written split (for the manifest)."""
    d = Path(out) / split
    arrays = open_csr(d / "X.zarr")
    checksums = {name: tree_checksum(d / "X.zarr" / name) for name in ARRAYS}
    checksums["X.zarr/zarr.json"] = tree_checksum(d / "X.zarr" / "zarr.json")
    checksums["obs.parquet"] = tree_checksum(d / "obs.parquet")
    return {"n_cells": arrays.n_cells, "nnz": arrays.nnz, "checksums": checksums}


def finish_store(out: str | os.PathLike[str], manifest: Mapping[str, Any],
                 splits: Iterable[str] = SPLITS) -> dict[str, Any]:
    """Checksum the written splits and tables, then write manifest.json with complete=true.

    This is the last write of every build: before it, the directory is not a store.
    """
    out = Path(out)
    final = dict(manifest)
    final["format"] = STORE_FORMAT
    final.setdefault("tool_version", __version__)
    final["splits"] = {s: split_summary(out, s) for s in splits}
    final["tables"] = {name: tree_checksum(out / name) for name in TABLES}
    final["complete"] = True
    atomic.write_json(out / MANIFEST, final)
    return final


def write_store_from_arrays(
    out: str | os.PathLike[str],
    var: pd.DataFrame,
    splits: Mapping[str, tuple[sp.csr_matrix, pd.DataFrame]],
    manifest: Mapping[str, Any] | None = None,
) -> ShardStore:
    """Write a complete small store from in-memory raw counts, for tests and benchmarks.

    ``splits`` maps a split name to (raw-count CSR matrix cells x genes, obs). obs needs
    ``cell_type_ontology_term_id`` and ``cell_type`` (``"unknown"`` marks unlabelled cells);
    other stored columns that are missing are filled (soma_joinid numbered across splits, strings
    ``"unknown"``); ``library_size`` and ``cell_type_code`` are always computed here. Values
    are normalised with the build's own function and written through the build's own writer.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prepared: dict[str, tuple[sp.csr_matrix, pd.DataFrame]] = {}
    next_id = 0
    for name, (m, obs) in splits.items():
        m = sp.csr_matrix(m)
        m.sort_indices()
        if m.shape[1] != len(var):
            raise ValueError(f"split {name}: {m.shape[1]} genes, var has {len(var)}")
        obs = obs.reset_index(drop=True).copy()
        for col in STRING_OBS_COLUMNS:
            if col not in obs:
                obs[col] = "unknown"
        if "soma_joinid" not in obs:  # unique across splits, as census ids are
            obs["soma_joinid"] = np.arange(next_id, next_id + len(obs), dtype=np.int64)
        next_id += len(obs)
        prepared[name] = (m, obs)
    labelled = pd.concat([o for _, o in prepared.values()], ignore_index=True)
    labelled = labelled[labelled["cell_type"].astype(str) != "unknown"]
    counts = {
        name: o["cell_type_ontology_term_id"].astype(str).value_counts().to_dict()
        for name, (_, o) in prepared.items()
    }
    labels = label_table(labelled, counts)
    code_of = dict(zip(labels["cell_type_ontology_term_id"], labels["cell_type_code"], strict=True))
    for name, (m, obs) in prepared.items():
        data, lib = normalise(m.indptr, m.data)
        obs["library_size"] = lib
        obs["cell_type_code"] = [code_of.get(t, UNLABELLED_CODE)
                                 for t in obs["cell_type_ontology_term_id"].astype(str)]
        block = (m.indptr, m.indices, data, m.data.astype(np.int64))
        max_count = int(m.data.max()) if m.nnz else 0
        write_split(out / name, [block], obs, m.nnz, len(var), max_count)
    write_tables(out, var, labels)
    base = {"source": "write_store_from_arrays", "normalisation": NORMALISATION,
            "target_sum": TARGET_SUM}
    finish_store(out, {**base, **(manifest or {})}, splits=list(prepared))
    return open_shards(out)
