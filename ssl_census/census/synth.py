"""A seeded synthetic census in the exact census layout, streamed block by block.

Two profiles (``profile=``):

- ``pbmc`` (default): a small blood census, :class:`~ssl_census.census.synth_layout.PbmcLayout`
  (10 datasets of 30-60 donors, all seven 10x assays, one Smart-seq2 dataset and one
  re-submitted dataset, 16 PBMC cell types);
- ``sctab``: shaped like scTab's build of census 2023-05-15 at any size,
  :mod:`ssl_census.census.synth_sctab`.

Counts come from :mod:`ssl_census.census.synth_expression` (library sizes, non-zeros, gene
means and dispersions fitted to real 10x PBMC data; identity programmes from the Cell
Ontology, dataset, donor and cell-state programmes). 10x datasets miss part of the non-coding
genes (the presence matrix). Cells are generated and written ``block_cells`` at a time, so
memory does not grow with ``n_cells``; the same seed and settings give the same store.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ssl_census.census.genes import load_annotation
from ssl_census.census.layout import (
    SCHEMA_2023_05_15,
    TENX_ASSAYS,
    CensusWriter,
    normalise_schema,
)
from ssl_census.census.synth_expression import ExpressionModel, identity_nodes
from ssl_census.census.synth_layout import (
    CELL_TYPES,
    CensusLayout,
    ObsColumns,
    PbmcLayout,
)
from ssl_census.census.synth_sctab import SctabLayout
from ssl_census.core.errors import UserError
from ssl_census.core.ontology import CellOntology, load_cell_ontology
from ssl_census.core.progress import progress

__all__ = ["CELL_TYPES", "PROFILES", "SyntheticCensusModel", "write_synthetic_census"]

PROFILES = ("pbmc", "sctab")
DEFAULT_DATASETS = 10  # of the pbmc profile
BLOCK_NNZ = 3_200_000  # non-zeros per written block, by default ...
BLOCK_CELLS = (8_192, 32_768)  # ... within these many cells


def presence_matrix(layout: CensusLayout, coding: np.ndarray,
                    rng: np.random.Generator) -> np.ndarray:
    """Datasets x genes: 10x datasets miss 10-40 % of the non-coding genes, others have all."""
    presence = np.ones((len(layout.datasets), len(coding)), dtype=bool)
    noncoding = np.flatnonzero(~coding)
    for i, d in enumerate(layout.datasets):
        if d.assay in TENX_ASSAYS and len(noncoding):
            missing = rng.choice(noncoding, int(len(noncoding) * rng.uniform(0.1, 0.4)),
                                 replace=False)
            presence[i, missing] = False
    return presence


def type_ancestry(cell_types: tuple[tuple[str, str], ...],
                  ontology: CellOntology) -> list[frozenset[str]]:
    """Each type's Cell Ontology term with its ancestors (empty for a term not in the CL)."""
    return [frozenset({t, *ontology.ancestors(t)}) if t in ontology else frozenset()
            for t, _ in cell_types]


class SyntheticCensusModel:
    """A layout (who the cells are) with an expression model (their counts)."""

    def __init__(self, var: pd.DataFrame, layout: CensusLayout, seed: int,
                 ontology: CellOntology, nnz_per_cell: float | None = None,
                 nnz_range: tuple[int, int] | None = None) -> None:
        self.var = var
        self.layout = layout
        self.seed = seed
        rng = np.random.default_rng([seed, 0])
        coding = var["gene_biotype"].to_numpy() == "protein_coding"
        self.presence = presence_matrix(layout, coding, rng)
        n_donors = sum(len(d.donors) for d in layout.datasets)
        self.expression = ExpressionModel(
            var, identity_nodes(type_ancestry(layout.cell_types, ontology)),
            [d.n_cells for d in layout.datasets], self.presence, n_donors, seed, nnz_per_cell,
            nnz_range)
        self.obs = ObsColumns(layout)

    @property
    def datasets(self):
        return self.layout.datasets

    def datasets_frame(self) -> pd.DataFrame:
        ds = self.layout.datasets
        return pd.DataFrame({
            "collection_id": [f"synth-collection-{self.seed}"] * len(ds),
            "collection_name": ["ssl-census synthetic census"] * len(ds),
            "collection_doi": [""] * len(ds),
            "dataset_id": [d.dataset_id for d in ds],
            "dataset_version_id": [f"{d.dataset_id}-v1-seed{self.seed}" for d in ds],
            "dataset_title": [d.title for d in ds],
            "dataset_h5ad_path": [f"{d.dataset_id}.h5ad" for d in ds],
            "dataset_total_cell_count": [d.n_cells for d in ds],
        })

    def block(self, start: int, stop: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray,
                                                    np.ndarray, np.ndarray]:
        """Cells [start, stop): obs, CSR indptr, gene positions, counts, dataset index."""
        rng = np.random.default_rng([self.seed, 1, start])
        cells = self.layout.cells(start, stop, rng)
        indptr, cols, counts = self.expression.sample(rng, cells)
        return self.obs.frame(cells), indptr, cols, counts, cells.dataset


def _write(writer: CensusWriter, block: tuple) -> int:
    writer.write_block(*block)
    return len(block[0])


def make_layout(profile: str, n_cells: int, seed: int, ontology: CellOntology,
                n_datasets: int | None = None) -> CensusLayout:
    """The layout of ``profile`` at ``n_cells`` cells."""
    if profile not in PROFILES:
        raise UserError(f"unknown synthetic profile {profile!r}",
                        f"use one of {', '.join(PROFILES)}")
    if profile == "sctab":
        if n_datasets is not None:
            raise UserError("--datasets does not apply to the sctab profile",
                            "leave it out: the profile sets its datasets from --cells")
        return SctabLayout(n_cells, seed, ontology)
    n_datasets = DEFAULT_DATASETS if n_datasets is None else n_datasets
    if n_cells < n_datasets:
        raise UserError(f"{n_cells} cells cannot fill {n_datasets} datasets",
                        "ask for more cells or fewer datasets")
    return PbmcLayout(n_cells, n_datasets, np.random.default_rng([seed, 0, 1]))


def write_synthetic_census(uri: str | os.PathLike[str], n_cells: int, seed: int = 0,
                           schema: str = SCHEMA_2023_05_15, *, annotation: str | None = None,
                           data_dir: str | os.PathLike[str] | None = None,
                           profile: str = "pbmc", n_datasets: int | None = None,
                           nnz_per_cell: float | None = None,
                           nnz_range: tuple[int, int] | None = None,
                           block_cells: int | None = None, build_date: str = "2023-05-15"
                           ) -> dict[str, Any]:
    """Write a synthetic census of ``n_cells`` cells at ``uri``; returns a summary dict.

    ``nnz_per_cell`` sets the mean number of non-zeros per cell (default: as fitted to real
    10x PBMC cells, about 950; lower it to fit large censuses on a disk); ``nnz_range`` clips
    each cell's target into a range and caps it there. ``block_cells``: cells sampled and
    written at a time (default: about 3.2M non-zeros, 8,192 to 32,768 cells). The sctab
    profile's summary adds the curation thresholds it was designed for and the types they keep.
    """
    if nnz_per_cell is not None and nnz_per_cell < 1:
        raise UserError(f"--nnz-per-cell {nnz_per_cell} is below 1", "ask for 1 or more")
    schema = normalise_schema(schema)
    ontology = load_cell_ontology()
    layout = make_layout(profile, n_cells, seed, ontology, n_datasets)
    full_var = load_annotation(annotation, data_dir)
    model = SyntheticCensusModel(full_var, layout, seed, ontology, nnz_per_cell, nnz_range)
    var = full_var[["feature_id", "feature_name", "feature_length"]]
    if block_cells is None:
        # Fewer, larger TileDB writes cost less per cell; the bound keeps memory flat.
        block_cells = int(np.clip(BLOCK_NNZ // model.expression.mean_nnz, *BLOCK_CELLS))
    nnz = 0
    with CensusWriter(uri, var, model.datasets_frame(), model.presence, n_cells, schema,
                      build_date, checked=False) as writer, \
            progress(n_cells, desc="synthetic census") as bar, \
            ThreadPoolExecutor(max_workers=1) as pool:
        # TileDB writes one block while numpy samples the next (both release the GIL).
        pending: Future | None = None
        for start in range(0, n_cells, block_cells):
            block = model.block(start, min(start + block_cells, n_cells))
            if pending is not None:
                bar.update(pending.result())
            pending = pool.submit(_write, writer, block)
            nnz += len(block[2])
        if pending is not None:
            bar.update(pending.result())
    summary: dict[str, Any] = {
        "uri": str(Path(writer.final)), "profile": profile, "n_cells": n_cells,
        "n_genes": len(var), "nnz": nnz, "nnz_per_cell": round(nnz / n_cells, 1),
        "n_datasets": len(layout.datasets), "seed": seed, "schema": schema,
        "n_eligible": sum(d.n_cells for d in layout.datasets if d.eligible),
        "n_tech_samples_eligible": sum(len(d.donors) for d in layout.datasets if d.eligible),
    }
    if isinstance(layout, SctabLayout):
        summary.update(sctab_summary(layout, ontology))
    return summary


def sctab_summary(layout: SctabLayout, ontology: CellOntology) -> dict[str, Any]:
    """What the sctab profile intends at its size: thresholds and the types they keep."""
    design = layout.design
    roles = design.cell_types["role"].value_counts()
    return {
        "cell_ontology_release": ontology.release,
        "curation": design.scale.curation(),
        "cell_types_by_role": {str(k): int(v) for k, v in roles.items()},
        "intended_cell_types": list(design.intended_cell_types),
    }
