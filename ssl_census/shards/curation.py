"""Which cell types a store keeps: scTab's rule on the Cell Ontology."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ssl_census.core.ontology import CellOntology
from ssl_census.shards.config import CurationConfig


@dataclass(frozen=True)
class CellTypeStats:
    table: pd.DataFrame  # one row per cell type: id, label, n_cells, n_tech_samples, ..., kept

    @property
    def kept(self) -> pd.DataFrame:
        return self.table[self.table["kept"]].reset_index(drop=True)


def curate_cell_types(obs: pd.DataFrame, ontology: CellOntology,
                      cfg: CurationConfig) -> CellTypeStats:
    """Per cell type of ``obs`` (eligible cells with cell_type, cell_type_ontology_term_id,
    tech_sample): counts, ontology facts, and whether scTab's thresholds keep it."""
    grouped = obs.groupby("cell_type_ontology_term_id", observed=True)
    table = pd.DataFrame({
        "cell_type": grouped["cell_type"].first().astype(str),
        "n_cells": grouped.size(),
        "n_tech_samples": grouped["tech_sample"].nunique(),
    }).reset_index()
    table["cell_type_ontology_term_id"] = table["cell_type_ontology_term_id"].astype(str)
    terms = [ontology.resolve(t) for t in table["cell_type_ontology_term_id"]]
    table["in_ontology"] = [t in ontology for t in terms]
    table["n_ancestors"] = [ontology.n_ancestors(t) for t in terms]
    table["descends_from_root"] = [ontology.is_descendant(t, cfg.root) for t in terms]
    table["kept"] = (
        table["in_ontology"] & table["descends_from_root"]
        & (table["n_cells"] >= cfg.min_cells)
        & (table["n_tech_samples"] > cfg.min_tech_samples)
        & (table["n_ancestors"] > cfg.min_ancestors)
    )
    return CellTypeStats(table.sort_values("cell_type_ontology_term_id").reset_index(drop=True))
