"""What the build reads from a census: one code path for a release and a local store."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
import tiledbsoma as soma

from ssl_census.shards.store import concat_columns

ORGANISM = "homo_sapiens"
OBS_COLUMNS = ("soma_joinid", "dataset_id", "donor_id", "assay", "tissue_general", "cell_type",
               "cell_type_ontology_term_id")


@dataclass(frozen=True)
class CensusSpec:
    """A census named by release version or by URI; picklable, so workers can open it too."""

    version: str | None = None
    uri: str | None = None

    def open(self) -> Any:
        from ssl_census.census.open import open_census

        return open_census(version=self.version, uri=self.uri)

    def identity(self) -> dict[str, str]:
        return {"uri": str(self.uri)} if self.uri else {"version": str(self.version)}


def experiment(census: Any) -> soma.Experiment:
    return census["census_data"][ORGANISM]


def read_summary(census: Any) -> dict[str, str]:
    df = census["census_info"]["summary"].read().concat().to_pandas()
    return dict(zip(df["label"].astype(str), df["value"].astype(str), strict=False))


def read_datasets(census: Any) -> pd.DataFrame:
    return census["census_info"]["datasets"].read().concat().to_pandas()


def read_var(census: Any) -> pd.DataFrame:
    var = experiment(census).ms["RNA"].var.read(
        column_names=["soma_joinid", "feature_id", "feature_name"]).concat().to_pandas()
    return var.sort_values("soma_joinid").reset_index(drop=True)


def read_eligible_obs(census: Any, value_filter: str) -> pd.DataFrame:
    """The obs columns the build needs, of the cells the filter selects, in joinid order.

    Read batch by batch, each batch's strings made categorical at once: the release stores
    obs strings undictionaried, and 22 million cells of them as Python strings are several
    GiB, where the categorical frame is about 20 bytes a cell."""
    batches = experiment(census).obs.read(value_filter=value_filter,
                                          column_names=list(OBS_COLUMNS))
    frames = [_categorical(_dictionary_strings(batch).to_pandas()) for batch in batches]
    if not frames:
        return _categorical(pd.DataFrame({c: pd.Series(dtype="int64" if c == "soma_joinid"
                                                       else "object") for c in OBS_COLUMNS}))
    obs = pd.DataFrame(concat_columns(frames, sort_categories=True), copy=False)
    del frames
    joinids = obs["soma_joinid"].to_numpy()
    if np.all(joinids[1:] > joinids[:-1]):  # the usual read order: no copy of the frame
        return obs
    return obs.take(np.argsort(joinids, kind="stable")).reset_index(drop=True)


def _dictionary_strings(table: pa.Table) -> pa.Table:
    """String columns dictionary-encoded in Arrow, so that pandas gets categoricals without
    making a Python string per cell (a batch holds millions of cells)."""
    for i, field in enumerate(table.schema):
        if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
            table = table.set_column(i, field.name, pc.dictionary_encode(table.column(i)))
    return table


def _categorical(frame: pd.DataFrame) -> pd.DataFrame:
    for col in OBS_COLUMNS[1:]:
        frame[col] = frame[col].astype("category")
    return frame


def dataset_fingerprints(datasets: pd.DataFrame) -> dict[str, str]:
    """What identifies a dataset's content across census releases.

    dataset_version_id where the schema has it (1.1.0 on); census 2023-05-15 lacks it, so
    there the h5ad path and cell count stand in.
    """
    out = {}
    for row in datasets.itertuples(index=False):
        version = getattr(row, "dataset_version_id", None)
        if version:
            out[str(row.dataset_id)] = f"{row.dataset_id}@{version}"
        else:
            out[str(row.dataset_id)] = (f"{row.dataset_id}@{getattr(row, 'dataset_h5ad_path', '')}"
                                        f"#{getattr(row, 'dataset_total_cell_count', '')}")
    return out


def iter_raw_blocks(census: Any, joinids: np.ndarray, gene_joinids: np.ndarray,
                    block_cells: int) -> Iterator[tuple[np.ndarray, sp.csr_matrix]]:
    """(obs joinids, CSR counts over the gene space, columns in gene order) per block.

    Reads ``X["raw"]`` at the block's obs coordinates (all genes) and maps the entries with
    plain lookups: a gene-position table over var joinids (-1 outside the gene space) and a
    search in the block's sorted joinids. This is about twice the speed of the census's
    ``axis_query(...).blockwise(...)`` reader here and needs less memory, since nothing is
    re-indexed through Arrow; rows come out in ``joinids`` order.
    """
    joinids = np.asarray(joinids, dtype=np.int64)
    gene_joinids = np.asarray(gene_joinids, dtype=np.int64)
    X = experiment(census).ms["RNA"].X["raw"]
    gene_pos = np.full(int(X.shape[1]), -1, dtype=np.int32)
    gene_pos[gene_joinids] = np.arange(len(gene_joinids), dtype=np.int32)
    for lo in range(0, len(joinids), block_cells):
        ids = joinids[lo : lo + block_cells]
        # joinids of a block are sorted and nearly contiguous: a table beats a search
        row_pos = np.full(int(ids[-1] - ids[0]) + 1, -1, dtype=np.int32)
        row_pos[ids - ids[0]] = np.arange(len(ids), dtype=np.int32)
        rows, cols, vals = [], [], []
        for table in X.read(coords=(ids,)).tables():
            col = gene_pos[table.column("soma_dim_1").to_numpy()]
            keep = np.flatnonzero(col >= 0)
            rows.append(row_pos[table.column("soma_dim_0").to_numpy()[keep] - ids[0]])
            cols.append(col[keep])
            vals.append(table.column("soma_data").to_numpy()[keep])
        m = sp.csr_matrix(
            (np.concatenate(vals) if vals else np.zeros(0, np.float32),
             (np.concatenate(rows) if rows else np.zeros(0, np.int32),
              np.concatenate(cols) if cols else np.zeros(0, np.int32))),
            shape=(len(ids), len(gene_joinids)),
        )
        m.sort_indices()
        yield ids, m
