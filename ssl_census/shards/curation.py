"""Which cell types a store keeps: scTab's rule on the Cell Ontology; and what the rule's
ontology part makes of scTab's own 164 types in a CL release."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources

import pandas as pd

from ssl_census.core.ontology import CellOntology, TermCheck, load_cell_ontology
from ssl_census.shards.config import CurationConfig

# scTab's 164 types (names as scTab wrote them, CL ids): the file's header names its source.
SCTAB_CELL_TYPES = "sctab_cell_types.tsv"


@dataclass(frozen=True)
class CellTypeStats:
    table: pd.DataFrame  # one row per cell type: id, label, n_cells, n_tech_samples, ..., kept

    @property
    def kept(self) -> pd.DataFrame:
        return self.table[self.table["kept"]].reset_index(drop=True)


def ontology_checks(terms: Iterable[str], ontology: CellOntology,
                    cfg: CurationConfig) -> list[TermCheck]:
    """The ontology part of the rule (below ``cfg.root``, more than ``cfg.min_ancestors``
    ancestors) for each term."""
    return [ontology.check_term(t, cfg.root, cfg.min_ancestors) for t in terms]


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
    checks = ontology_checks(table["cell_type_ontology_term_id"], ontology, cfg)
    table["in_ontology"] = [c.in_ontology for c in checks]
    table["n_ancestors"] = [c.n_ancestors for c in checks]
    table["descends_from_root"] = [c.below_root for c in checks]
    table["kept"] = (
        pd.Series([c.passes for c in checks], index=table.index)
        & (table["n_cells"] >= cfg.min_cells)
        & (table["n_tech_samples"] > cfg.min_tech_samples)
    )
    return CellTypeStats(table.sort_values("cell_type_ontology_term_id").reset_index(drop=True))


def sctab_cell_types() -> pd.DataFrame:
    """scTab's 164 types: cell_type_ontology_term_id and cell_type (scTab's name)."""
    with resources.files("ssl_census.shards").joinpath(SCTAB_CELL_TYPES).open() as f:
        return pd.read_csv(f, sep="\t", comment="#", dtype=str, keep_default_na=False)


@dataclass(frozen=True)
class SctabComparison:
    """scTab's types under the ontology part of the rule in one CL release. ``table``: one row
    per type, sorted by id: cell_type_ontology_term_id, cell_type (scTab's name), resolved
    (its replacement when obsolete), label (in the release), obsolete, in_ontology,
    n_ancestors, below_root, passes, reason ('' when it passes)."""

    release: str
    root: str  # as configured
    root_in_release: str  # what the release replaces an obsolete root with
    min_ancestors: int
    table: pd.DataFrame

    @property
    def passing(self) -> pd.DataFrame:
        return self.table[self.table["passes"]].reset_index(drop=True)

    @property
    def failing(self) -> pd.DataFrame:
        return self.table[~self.table["passes"]].reset_index(drop=True)

    @property
    def changed(self) -> pd.DataFrame:
        """Types the release made obsolete, dropped or relabelled since scTab named them."""
        t = self.table
        return t[t["obsolete"] | ~t["in_ontology"] | (t["label"] != t["cell_type"])
                 ].reset_index(drop=True)

    def rule(self) -> str:
        root = (self.root if self.root == self.root_in_release
                else f"{self.root} ({self.root_in_release} in this release)")
        return f"below {root} with more than {self.min_ancestors} ancestors"

    def summary(self) -> str:
        return (f"{len(self.passing)} of scTab's {len(self.table)} cell types pass the ontology "
                f"part of its rule in CL {self.release}, {self.rule()}; "
                f"{len(self.failing)} fail")

    def failure_lines(self) -> list[str]:
        """'name (id): why' for each type that fails."""
        return [f"{r.cell_type} ({r.cell_type_ontology_term_id}): {r.reason}"
                for r in self.failing.itertuples()]

    def change_lines(self) -> list[str]:
        """'name (id): what the release did to it' for each obsolete, missing or relabelled
        type."""
        out = []
        for r in self.changed.itertuples():
            if not r.in_ontology:
                what = "not in the release"
            elif r.obsolete:
                what = (f"obsolete, replaced by {r.resolved} ({r.label})"
                        if r.resolved != r.cell_type_ontology_term_id
                        else "obsolete without a replacement")
            else:
                what = f"now labelled '{r.label}'"
            out.append(f"{r.cell_type} ({r.cell_type_ontology_term_id}): {what}")
        return out

    def in_sctab(self, terms: Iterable[str]) -> list[bool]:
        """Whether each term is one of scTab's types (directly or as a replacement)."""
        known = set(self.table["cell_type_ontology_term_id"]) | set(self.table["resolved"])
        return [t in known for t in terms]


def compare_with_sctab(cfg: CurationConfig | None = None) -> SctabComparison:
    """scTab's 164 types under the ontology part of ``cfg``'s rule (scTab's own, with the
    pinned CL release, when None) in ``cfg.cl_release``."""
    cfg = cfg or CurationConfig()
    ontology = load_cell_ontology(cfg.cl_release)
    table = sctab_cell_types()
    checks = ontology_checks(table["cell_type_ontology_term_id"], ontology, cfg)
    table = table.assign(
        resolved=[c.resolved for c in checks],
        label=[c.label for c in checks],
        obsolete=[c.obsolete for c in checks],
        in_ontology=[c.in_ontology for c in checks],
        n_ancestors=[c.n_ancestors for c in checks],
        below_root=[c.below_root for c in checks],
        passes=[c.passes for c in checks],
        reason=["; ".join(c.reasons) for c in checks],
    )
    return SctabComparison(ontology.release, cfg.root, ontology.resolve(cfg.root),
                           cfg.min_ancestors,
                           table.sort_values("cell_type_ontology_term_id").reset_index(drop=True))
