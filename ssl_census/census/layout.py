"""The CELLxGENE census layout, and a writer that streams cells into it.

A census is a SOMA collection::

    census_info/summary               label, value (census_schema_version, census_build_date, ...)
    census_info/datasets              one row per source dataset
    census_info/summary_cell_counts   cells per (category, term), all and primary only
    census_data/homo_sapiens          SOMA experiment
        obs                           one row per cell (census obs columns)
        ms/RNA/var                    the whole gene annotation
        ms/RNA/X/raw                  integer counts stored as float32
        ms/RNA/feature_dataset_presence_matrix   datasets x genes, True where measured

Schema "1.0.0" is what census 2023-05-15 has; "1.2.0" adds what later releases added (per-cell
raw_sum, nnz, ..., ``dataset_version_id``, per-gene nnz and n_measured_obs, ``X/normalized``),
so code can be tested against both (see ``docs/census.md``).

:class:`CensusWriter` builds a store under ``<out>.partial`` and renames it to ``<out>`` only
when complete: a failed build leaves no store behind.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import tiledbsoma as soma

from ssl_census.core.errors import UserError

SCHEMA_2023_05_15 = "1.0.0"
LATER_SCHEMA = "1.2.0"
SCHEMA_ALIASES = {"1.0.0": SCHEMA_2023_05_15, "later": LATER_SCHEMA, "1.2.0": LATER_SCHEMA}
DATASET_SCHEMA_VERSION = {SCHEMA_2023_05_15: "3.0.0", LATER_SCHEMA: "3.1.0"}
ORGANISM = "homo_sapiens"
ORGANISM_LABEL = "Homo sapiens"

TENX_ASSAYS = {
    "10x 3' v1": "EFO:0009901",
    "10x 3' v2": "EFO:0009899",
    "10x 3' v3": "EFO:0009922",
    "10x 5' v1": "EFO:0011025",
    "10x 5' v2": "EFO:0009900",
    "10x 3' transcription profiling": "EFO:0030003",
    "10x 5' transcription profiling": "EFO:0030004",
}
ASSAYS = {
    **TENX_ASSAYS,
    "Smart-seq2": "EFO:0008931",
    "CEL-seq2": "EFO:0010010",
    "Drop-seq": "EFO:0008722",
    "ECCITE-seq": "EFO:0700014",
    "single cell library construction": "EFO:0010183",
}

# Census obs columns in census order; all but soma_joinid and is_primary_data are
# dictionary-encoded strings, as in the census.
OBS_TERM_COLUMNS: tuple[str, ...] = (
    "assay", "cell_type", "development_stage", "disease", "self_reported_ethnicity", "sex",
    "tissue", "tissue_general",
)
OBS_COLUMNS: tuple[str, ...] = (
    "dataset_id", "assay", "assay_ontology_term_id", "cell_type", "cell_type_ontology_term_id",
    "development_stage", "development_stage_ontology_term_id", "disease",
    "disease_ontology_term_id", "donor_id", "is_primary_data", "self_reported_ethnicity",
    "self_reported_ethnicity_ontology_term_id", "sex", "sex_ontology_term_id",
    "suspension_type", "tissue", "tissue_ontology_term_id", "tissue_general",
    "tissue_general_ontology_term_id",
)
OBS_LATER_NUMERIC = {
    "raw_sum": pa.float64(), "nnz": pa.int64(), "raw_mean_nnz": pa.float64(),
    "raw_variance_nnz": pa.float64(), "n_measured_vars": pa.int64(),
}
SUMMARY_CATEGORIES = (
    "assay", "cell_type", "disease", "self_reported_ethnicity", "sex", "suspension_type",
    "tissue", "tissue_general",
)
_CATEGORY = pa.dictionary(pa.int32(), pa.large_string())


def normalise_schema(schema: str | None) -> str:
    if schema is None:
        return SCHEMA_2023_05_15
    if schema not in SCHEMA_ALIASES:
        raise UserError(f"unknown census schema {schema!r}",
                        f"use one of {', '.join(sorted(SCHEMA_ALIASES))}")
    return SCHEMA_ALIASES[schema]


def obs_schema(schema: str) -> pa.Schema:
    fields = [pa.field("soma_joinid", pa.int64(), nullable=False)]
    fields += [pa.field(c, pa.bool_() if c == "is_primary_data" else _CATEGORY)
               for c in OBS_COLUMNS]
    if schema != SCHEMA_2023_05_15:
        fields += [pa.field(c, t) for c, t in OBS_LATER_NUMERIC.items()]
    return pa.schema(fields)


def datasets_schema(schema: str) -> pa.Schema:
    names = ["collection_id", "collection_name", "collection_doi", "dataset_id"]
    if schema != SCHEMA_2023_05_15:
        names.append("dataset_version_id")
    names += ["dataset_title", "dataset_h5ad_path"]
    return pa.schema(
        [pa.field("soma_joinid", pa.int64(), nullable=False)]
        + [pa.field(n, pa.large_string()) for n in names]
        + [pa.field("dataset_total_cell_count", pa.int64())]
    )


def var_schema(schema: str) -> pa.Schema:
    fields = [
        pa.field("soma_joinid", pa.int64(), nullable=False),
        pa.field("feature_id", pa.large_string()),
        pa.field("feature_name", pa.large_string()),
        pa.field("feature_length", pa.int64()),
    ]
    if schema != SCHEMA_2023_05_15:
        fields += [pa.field("nnz", pa.int64()), pa.field("n_measured_obs", pa.int64())]
    return pa.schema(fields)


def _table(frame: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    cols = []
    for f in schema:
        values = frame[f.name]
        if f.type == _CATEGORY and isinstance(values.dtype, pd.CategoricalDtype):
            # Codes and categories as they are: no per-row strings (synthetic blocks).
            categories = pa.array(np.asarray(values.cat.categories, dtype=object),
                                  type=pa.large_string())
            codes = pa.array(values.cat.codes.to_numpy().astype(np.int32), type=pa.int32())
            cols.append(pa.DictionaryArray.from_arrays(codes, categories))
        elif f.type == _CATEGORY:
            arr = pa.array(np.asarray(values, dtype=object), type=pa.large_string())
            cols.append(arr.dictionary_encode().cast(_CATEGORY))
        else:
            cols.append(pa.array(np.asarray(values), type=f.type))
    return pa.Table.from_arrays(cols, schema=schema)


def _new_dataframe(parent: soma.Collection, key: str, schema: pa.Schema, n_rows: int,
                   frame: pd.DataFrame | None = None) -> str:
    """Create a dataframe, and write ``frame`` through a fresh handle.

    tiledbsoma 2.3.0 drops the category labels of dictionary columns written through the handle
    ``add_new_dataframe`` returns, so the dataframe is created, closed and reopened to write.
    """
    uri = f"{parent.uri.rstrip('/')}/{key}"
    soma.DataFrame.create(uri, schema=schema, domain=[(0, max(n_rows, 1) - 1)]).close()
    with soma.DataFrame.open(uri) as df:
        parent.set(key, df, use_relative_uri=True)
    if frame is not None and len(frame):
        with soma.DataFrame.open(uri, "w") as df:
            df.write(_table(frame, schema))
    return uri


def _row_tiles(n_cols: int) -> dict:
    """Tiles that span whole rows, so that row-major coordinates are TileDB's global order.

    Blocks then write in global order without TileDB re-sorting them (``_SORTED_WRITE``),
    several times faster than the default tiling. Row ids are delta-coded (long runs of one
    row), gene ids and values byte-shuffled before zstd: a fifth smaller than the default
    filters and faster to write, as fast to read.
    """
    zstd = {"_type": "ZstdFilter", "level": 3}
    return {"tiledb": {"create": {
        "dims": {
            "soma_dim_0": {"tile": 2048,
                           "filters": ["DoubleDeltaFilter", "BitWidthReductionFilter", zstd]},
            "soma_dim_1": {"tile": max(n_cols, 1), "filters": ["ByteShuffleFilter", zstd]}},
        "attrs": {"soma_data": {"filters": ["ByteShuffleFilter", zstd]}},
        "cell_order": "row-major", "tile_order": "row-major"}}}


_SORTED_WRITE = {"tiledb": {"write": {"sort_coords": False}}}
# TileDB's checks of written coordinates (duplicates, bounds, global order) cost as much as
# the write itself; a writer whose blocks are sorted and unique by construction skips them.
_UNCHECKED = {"sm.check_coord_dups": "false", "sm.check_coord_oob": "false",
              "sm.check_global_order": "false"}


def _new_sparse(parent: soma.Collection, key: str, dtype: pa.DataType,
                shape: tuple[int, int]) -> str:
    uri = f"{parent.uri.rstrip('/')}/{key}"
    soma.SparseNDArray.create(uri, type=dtype, shape=(max(shape[0], 1), max(shape[1], 1)),
                              platform_config=_row_tiles(shape[1])).close()
    with soma.SparseNDArray.open(uri) as arr:
        parent.set(key, arr, use_relative_uri=True)
    return uri


def _coo(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, dtype: pa.DataType) -> pa.Table:
    return pa.table({
        "soma_dim_0": pa.array(rows, pa.int64()),
        "soma_dim_1": pa.array(cols, pa.int64()),
        "soma_data": pa.array(values, dtype),
    })


def local_path(uri: str | os.PathLike[str]) -> Path:
    s = str(uri)
    if "://" in s and not s.startswith("file://"):
        raise UserError(f"cannot write a census to {s}", "give a local directory path")
    return Path(s.removeprefix("file://")).absolute()


def is_census_store(path: Path) -> bool:
    return path.exists() and (path.is_file() or any(path.iterdir()))


def _codes(values: pd.Series) -> tuple[np.ndarray, pd.Index]:
    if isinstance(values.dtype, pd.CategoricalDtype):
        codes = values.cat.codes.to_numpy()
        if codes.min(initial=0) >= 0:  # no missing values: the codes as they are
            return codes, values.cat.categories
    codes, uniques = pd.factorize(values)
    return codes, pd.Index(uniques)


def _pair_counts(a: pd.Series, b: pd.Series, flag: np.ndarray):
    """Each distinct (a, b) pair of the rows as strings, with its rows and flagged rows."""
    a_codes, a_values = _codes(a)
    b_codes, b_values = _codes(b)
    pair = a_codes.astype(np.int64) * max(len(b_values), 1) + b_codes
    codes, inverse = np.unique(pair, return_inverse=True)
    n = np.bincount(inverse)
    flagged = np.bincount(inverse, weights=flag)
    for code, rows, hits in zip(codes, n, flagged, strict=True):
        i, j = divmod(int(code), max(len(b_values), 1))
        yield (str(a_values[i]), str(b_values[j])), int(rows), int(hits)


@dataclass
class _Tallies:
    """Running counts for summary_cell_counts and the later schema's var columns."""

    n_var: int
    total: Counter = field(default_factory=Counter)
    primary: Counter = field(default_factory=Counter)
    donors: set = field(default_factory=set)
    n_cells: int = 0
    n_primary: int = 0
    gene_nnz: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.gene_nnz = np.zeros(self.n_var, dtype=np.int64)

    def add(self, obs: pd.DataFrame, cols: np.ndarray) -> None:
        primary = obs["is_primary_data"].to_numpy(bool)
        self.n_cells += len(obs)
        self.n_primary += int(primary.sum())
        for (dataset, donor), _, _ in _pair_counts(obs["dataset_id"], obs["donor_id"], primary):
            self.donors.add((dataset, donor))
        for cat in SUMMARY_CATEGORIES:
            term = f"{cat}_ontology_term_id" if f"{cat}_ontology_term_id" in obs else cat
            for (label, term_id), n, p in _pair_counts(obs[cat], obs[term], primary):
                self.total[(cat, label, term_id)] += n
                self.primary[(cat, label, term_id)] += p
        self.gene_nnz += np.bincount(cols, minlength=self.n_var)

    def summary_cell_counts(self) -> pd.DataFrame:
        rows = [("all", "na", "na", self.n_cells, self.n_primary)]
        rows += [(cat, label, term, n, self.primary.get((cat, label, term), 0))
                 for (cat, label, term), n in sorted(self.total.items())]
        frame = pd.DataFrame(rows, columns=["category", "label", "ontology_term_id",
                                            "total_cell_count", "unique_cell_count"])
        frame.insert(0, "organism", ORGANISM_LABEL)
        frame.insert(0, "soma_joinid", np.arange(len(frame), dtype=np.int64))
        return frame


def row_statistics(values: np.ndarray, row_nnz: np.ndarray) -> dict[str, np.ndarray]:
    """The later schema's per-cell columns from a block's CSR values and row lengths."""
    row = np.repeat(np.arange(len(row_nnz)), row_nnz)
    v = values.astype(np.float64)
    raw_sum = np.bincount(row, weights=v, minlength=len(row_nnz))
    squares = np.bincount(row, weights=v * v, minlength=len(row_nnz))
    n = np.maximum(row_nnz, 1)
    mean = raw_sum / n
    # Sample variance of the non-zero values (0 for cells with fewer than two).
    variance = np.maximum(squares - n * mean**2, 0.0) / np.maximum(n - 1, 1)
    return {"raw_sum": raw_sum, "nnz": row_nnz.astype(np.int64), "raw_mean_nnz": mean,
            "raw_variance_nnz": variance}


SUMMARY_CELL_COUNTS_SCHEMA = pa.schema(
    [pa.field("soma_joinid", pa.int64(), nullable=False)]
    + [pa.field(n, pa.large_string())
       for n in ("organism", "category", "label", "ontology_term_id")]
    + [pa.field("total_cell_count", pa.int64()), pa.field("unique_cell_count", pa.int64())]
)
SUMMARY_SCHEMA = pa.schema([pa.field("soma_joinid", pa.int64(), nullable=False),
                            pa.field("label", pa.large_string()),
                            pa.field("value", pa.large_string())])


class CensusWriter:
    """Streams cells into a new census-layout store.

    ``datasets`` holds the census_info/datasets columns (its row order gives the datasets'
    soma_joinids, which the presence matrix uses); ``presence`` is a boolean datasets x genes
    matrix. Cells arrive in blocks (:meth:`write_block`) and get consecutive soma_joinids.
    Use as a context manager: the store appears at ``out`` only when the block exits cleanly.
    ``checked=False`` skips TileDB's checks of the X coordinates, for callers whose blocks are
    sorted and free of duplicates by construction (the synthetic census).
    """

    def __init__(self, out: str | os.PathLike[str], var: pd.DataFrame, datasets: pd.DataFrame,
                 presence: np.ndarray, n_cells: int, schema: str = SCHEMA_2023_05_15,
                 build_date: str = "2023-05-15", *, checked: bool = True) -> None:
        self.final = local_path(out)
        if is_census_store(self.final):
            raise UserError(f"{self.final} already holds a store",
                            "choose a new --out path or delete the old store first")
        self.schema = normalise_schema(schema)
        self.var = var
        self.datasets = datasets
        self.presence = np.asarray(presence, dtype=bool)
        self.n_cells = int(n_cells)
        self.build_date = build_date
        self.partial = self.final.with_name(self.final.name + ".partial")
        self._next = 0
        self._tallies = _Tallies(len(var))
        self._measured = self.presence.sum(axis=1)
        self._x_context = None if checked else soma.SOMATileDBContext(tiledb_config=_UNCHECKED)
        self._handles: dict[str, Any] = {}
        self._obs_tables: list[pa.Table] = []
        self._obs_buffered = 0

    def __enter__(self) -> CensusWriter:
        if self.partial.exists():
            shutil.rmtree(self.partial)
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        self._create()
        self._open_handles()
        return self

    # Opening an array to write reads its fragment list, so reopened for every block the
    # cost grows with the blocks written (1 s a block after 1,400 blocks: a third of the write
    # rate at 22 million cells). X stays open for all blocks; obs cannot (a handle kept open
    # writes wrong category labels once a later block brings new ones), so its rows are
    # buffered and written OBS_WRITE_CELLS at a time through a fresh handle.
    OBS_WRITE_CELLS = 1 << 20

    def _open_handles(self) -> None:
        for name, uri in self.x_uri.items():
            self._handles[name] = soma.SparseNDArray.open(uri, "w", context=self._x_context)

    def _close_handles(self) -> None:
        while self._handles:
            self._handles.popitem()[1].close()

    def _flush_obs(self) -> None:
        if not self._obs_tables:
            return
        table = pa.concat_tables(self._obs_tables).unify_dictionaries().combine_chunks()
        self._obs_tables, self._obs_buffered = [], 0
        with soma.DataFrame.open(self.obs_uri, "w") as df:
            df.write(table)

    def __exit__(self, exc_type, exc, tb) -> None:
        self._close_handles()
        if exc_type is not None:
            shutil.rmtree(self.partial, ignore_errors=True)
            return
        try:
            self._flush_obs()
            self._finish()
        except BaseException:
            shutil.rmtree(self.partial, ignore_errors=True)
            raise
        if self.final.exists():
            self.final.rmdir()  # an empty directory, checked in __init__
        os.replace(self.partial, self.final)

    def _create(self) -> None:
        n_var = len(self.var)
        root_uri = str(self.partial)
        with soma.Collection.create(root_uri) as root:
            info = root.add_new_collection("census_info")
            data = root.add_new_collection("census_data")
            exp = data.add_new_collection(ORGANISM, soma.Experiment)
            self.obs_uri = _new_dataframe(exp, "obs", obs_schema(self.schema), self.n_cells)
            ms = exp.add_new_collection("ms")
            rna = ms.add_new_collection("RNA", soma.Measurement)
            x = rna.add_new_collection("X")
            self.x_uri = {"raw": _new_sparse(x, "raw", pa.float32(), (self.n_cells, n_var))}
            if self.schema != SCHEMA_2023_05_15:
                self.x_uri["normalized"] = _new_sparse(x, "normalized", pa.float32(),
                                                       (self.n_cells, n_var))
            presence_uri = _new_sparse(rna, "feature_dataset_presence_matrix", pa.bool_(),
                                       (len(self.datasets), n_var))
            ds_rows, genes = np.nonzero(self.presence)
            with soma.SparseNDArray.open(presence_uri, "w", context=self._x_context) as arr:
                arr.write(_coo(ds_rows, genes, np.ones(len(genes), bool), pa.bool_()),
                          platform_config=_SORTED_WRITE)
            self._rna_uri = rna.uri
            frame = self.datasets.copy()
            frame.insert(0, "soma_joinid", np.arange(len(frame), dtype=np.int64))
            _new_dataframe(info, "datasets", datasets_schema(self.schema), len(frame), frame)
            self._info_uri = info.uri

    def write_block(self, obs: pd.DataFrame, indptr: np.ndarray, cols: np.ndarray,
                    counts: np.ndarray, dataset_index: np.ndarray) -> None:
        """Append cells: census obs columns, CSR (indptr, gene positions, integer counts).

        Gene positions must be ascending within each row (scipy's ``sort_indices``).

        ``dataset_index`` gives each cell's row in ``datasets`` (for n_measured_vars).
        """
        n = len(obs)
        start = self._next
        if start + n > self.n_cells:
            raise ValueError(f"more cells than announced ({start + n} > {self.n_cells})")
        joinids = np.arange(start, start + n, dtype=np.int64)
        obs = obs.copy()
        obs["soma_joinid"] = joinids
        row_nnz = np.diff(indptr)
        rows = np.repeat(joinids, row_nnz)
        values = counts.astype(np.float32, copy=False)
        if self.schema != SCHEMA_2023_05_15:
            stats = row_statistics(values, row_nnz)
            for name, column in stats.items():
                obs[name] = column
            obs["n_measured_vars"] = self._measured[dataset_index].astype(np.int64)
            raw_sum = stats["raw_sum"]
            norm = values / np.repeat(np.maximum(raw_sum, 1.0), row_nnz).astype(np.float32)
            self._handles["normalized"].write(_coo(rows, cols, norm, pa.float32()),
                                              platform_config=_SORTED_WRITE)
        self._obs_tables.append(_table(obs, obs_schema(self.schema)))
        self._obs_buffered += n
        if self._obs_buffered >= self.OBS_WRITE_CELLS:
            self._flush_obs()
        self._handles["raw"].write(_coo(rows, cols, values, pa.float32()),
                                   platform_config=_SORTED_WRITE)
        self._tallies.add(obs, cols)
        self._next += n

    def _finish(self) -> None:
        if self._next != self.n_cells:
            raise ValueError(f"{self._next} cells written, {self.n_cells} announced")
        t = self._tallies
        var = self.var.copy()
        var.insert(0, "soma_joinid", np.arange(len(var), dtype=np.int64))
        if self.schema != SCHEMA_2023_05_15:
            cells_per_dataset = np.asarray(self.datasets["dataset_total_cell_count"], np.int64)
            var["nnz"] = t.gene_nnz
            var["n_measured_obs"] = cells_per_dataset @ self.presence.astype(np.int64)
        with soma.open(self._rna_uri, "w") as rna:
            _new_dataframe(rna, "var", var_schema(self.schema), len(var), var)
        summary = pd.DataFrame({
            "label": ["census_schema_version", "census_build_date", "dataset_schema_version",
                      "total_cell_count", "unique_cell_count", f"number_donors_{ORGANISM}"],
            "value": [self.schema, self.build_date, DATASET_SCHEMA_VERSION[self.schema],
                      str(t.n_cells), str(t.n_primary), str(len(t.donors))],
        })
        summary.insert(0, "soma_joinid", np.arange(len(summary), dtype=np.int64))
        counts = t.summary_cell_counts()
        with soma.open(self._info_uri, "w") as info:
            _new_dataframe(info, "summary", SUMMARY_SCHEMA, len(summary), summary)
            _new_dataframe(info, "summary_cell_counts", SUMMARY_CELL_COUNTS_SCHEMA, len(counts),
                           counts)
