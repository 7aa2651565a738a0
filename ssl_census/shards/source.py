"""What the build reads from a census: one code path for a release and a local store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import tiledbsoma as soma

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
    """The obs columns the build needs, of the cells the filter selects, in joinid order."""
    obs = experiment(census).obs.read(value_filter=value_filter,
                                      column_names=list(OBS_COLUMNS)).concat().to_pandas()
    for col in OBS_COLUMNS[1:]:
        obs[col] = obs[col].astype("category")
    return obs.sort_values("soma_joinid").reset_index(drop=True)


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


def iter_raw_blocks(census: Any, joinids: np.ndarray, gene_joinids: np.ndarray, block_cells: int):
    """(obs joinids, CSR counts restricted to the genes, columns in gene order) per block.

    Uses the census's own blockwise reader (``axis_query(...).X("raw").blockwise``); the
    reindexed columns are mapped back to positions in ``gene_joinids`` explicitly.
    """
    exp = experiment(census)
    query = exp.axis_query(
        "RNA",
        obs_query=soma.AxisQuery(coords=(np.asarray(joinids, dtype=np.int64),)),
        var_query=soma.AxisQuery(coords=(np.asarray(gene_joinids, dtype=np.int64),)),
    )
    with query:
        blocks = query.X("raw").blockwise(axis=0, size=block_cells).scipy()
        for m, (obs_ids, var_ids) in blocks:
            col_pos = np.searchsorted(gene_joinids, var_ids)
            m = m.tocsr()
            if not np.array_equal(col_pos, np.arange(len(col_pos))):
                m.indices = col_pos[m.indices].astype(m.indices.dtype)
                m.has_sorted_indices = False
            m.sort_indices()
            yield np.asarray(obs_ids, dtype=np.int64), m
