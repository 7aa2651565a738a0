"""Who the cells of a synthetic census are: datasets, donors, cell types, and their obs rows.

A layout says, for any range of cells, each cell's dataset, donor (tech_sample) and cell type;
:mod:`ssl_census.census.synth_expression` then gives the cells their counts. Two layouts exist:
:class:`PbmcLayout` here (the default: a small blood census) and the scTab-shaped one in
:mod:`ssl_census.census.synth_sctab`. Cells of a dataset are contiguous, as in the census.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd

from ssl_census.census.layout import ASSAYS, OBS_COLUMNS, TENX_ASSAYS
from ssl_census.census.synth_expression import CellBlock

BLOOD = ("blood", "UBERON:0000178")
# PBMC cell types (real Cell Ontology terms below native cell, each with more than 7
# ancestors so that a scTab-style filter keeps them) with rough shares of PBMCs.
CELL_TYPES: tuple[tuple[str, str, float], ...] = (
    ("CL:0000624", "CD4-positive, alpha-beta T cell", 0.12),
    ("CL:0000625", "CD8-positive, alpha-beta T cell", 0.08),
    ("CL:0000897", "CD4-positive, alpha-beta memory T cell", 0.08),
    ("CL:0000815", "regulatory T cell", 0.03),
    ("CL:0000492", "CD4-positive helper T cell", 0.04),
    ("CL:0000794", "CD8-positive, alpha-beta cytotoxic T cell", 0.05),
    ("CL:0000895", "naive thymus-derived CD4-positive, alpha-beta T cell", 0.10),
    ("CL:0000900", "naive thymus-derived CD8-positive, alpha-beta T cell", 0.05),
    ("CL:0000236", "B cell", 0.04),
    ("CL:0000788", "naive B cell", 0.04),
    ("CL:0000787", "memory B cell", 0.025),
    ("CL:0000623", "natural killer cell", 0.09),
    ("CL:0001054", "CD14-positive monocyte", 0.15),
    ("CL:0002396", "CD14-low, CD16-positive monocyte", 0.04),
    ("CL:0000451", "dendritic cell", 0.015),
    ("CL:0000784", "plasmacytoid dendritic cell", 0.01),
)
# How far a dataset's type mix strays from the shares above (Dirichlet concentration).
_MIX_CONCENTRATION = 40.0
DONORS_PER_DATASET = (30, 60)  # enough tech_samples for a 70/15/15 split of a demo census


@dataclass(frozen=True)
class SynthDataset:
    dataset_id: str
    title: str
    assay: str
    primary: bool
    donors: tuple[str, ...]
    n_cells: int
    start: int
    tissue: tuple[str, str] = BLOOD  # label, UBERON term

    @property
    def eligible(self) -> bool:
        """Primary 10x cells: what a scTab-style query keeps."""
        return self.primary and self.assay in TENX_ASSAYS


class CensusLayout(Protocol):
    datasets: tuple[SynthDataset, ...]
    cell_types: tuple[tuple[str, str], ...]  # (Cell Ontology term id, label)
    n_cells: int

    def cells(self, start: int, stop: int, rng: np.random.Generator) -> CellBlock: ...


def largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
    """Integers in proportion to ``weights`` that sum to ``total`` (largest remainder)."""
    exact = weights / weights.sum() * total
    out = np.floor(exact).astype(np.int64)
    out[np.argsort(out - exact)[: total - out.sum()]] += 1
    return out


class PbmcLayout:
    """``n_datasets`` blood datasets: the seven 10x assays in turn, the last one Smart-seq2 and
    the one before it a re-submission (``is_primary_data == False``); 30-60 donors each; per
    cell a donor of its dataset and a type from the dataset's mix, drawn at random."""

    def __init__(self, n_cells: int, n_datasets: int, rng: np.random.Generator) -> None:
        if n_datasets < 3:
            raise ValueError("a synthetic census needs at least 3 datasets")
        self.n_cells = n_cells
        self.cell_types = tuple((t, label) for t, label, _ in CELL_TYPES)
        assays = [list(TENX_ASSAYS)[i % len(TENX_ASSAYS)] for i in range(n_datasets - 1)]
        assays.append("Smart-seq2")
        sizes = largest_remainder(rng.dirichlet(np.full(n_datasets, 4.0)), n_cells)
        starts = np.concatenate([[0], np.cumsum(sizes)])
        datasets = []
        for i in range(n_datasets):
            n_donors = int(rng.integers(DONORS_PER_DATASET[0], DONORS_PER_DATASET[1] + 1))
            datasets.append(SynthDataset(
                dataset_id=f"synth-{i:04d}", title=f"Synthetic PBMC dataset {i} ({assays[i]})",
                assay=assays[i], primary=i != n_datasets - 2,
                donors=tuple(f"synth-d{i:02d}-donor{j}" for j in range(n_donors)),
                n_cells=int(sizes[i]), start=int(starts[i])))
        self.datasets = tuple(datasets)
        shares = np.array([s for _, _, s in CELL_TYPES])
        self.type_probs = rng.dirichlet(_MIX_CONCENTRATION * shares / shares.sum(),
                                        size=n_datasets)
        self._starts = starts[:-1]
        self._n_donors = np.array([len(d.donors) for d in self.datasets])
        self._donor_offset = np.concatenate([[0], np.cumsum(self._n_donors)])

    def cells(self, start: int, stop: int, rng: np.random.Generator) -> CellBlock:
        ds = np.searchsorted(self._starts, np.arange(start, stop), side="right") - 1
        n = stop - start
        donor = self._donor_offset[ds] + rng.integers(0, 1 << 30, n) % self._n_donors[ds]
        cum = np.cumsum(self.type_probs[ds], axis=1)
        ctype = (rng.random(n)[:, None] > cum).sum(axis=1).clip(max=len(self.cell_types) - 1)
        return CellBlock(ds, donor, ctype)


class ObsColumns:
    """Builds census obs rows for blocks of cells as categorical columns (codes into fixed
    category lists), which is what keeps writing millions of rows cheap."""

    _CONSTANT = {
        "development_stage": "adult stage", "development_stage_ontology_term_id": "HsapDv:0000087",
        "disease": "normal", "disease_ontology_term_id": "PATO:0000461",
        "self_reported_ethnicity": "unknown", "self_reported_ethnicity_ontology_term_id": "unknown",
        "sex": "unknown", "sex_ontology_term_id": "unknown", "suspension_type": "cell",
    }

    def __init__(self, layout: CensusLayout) -> None:
        ds = layout.datasets
        self._dataset_id = pd.Index([d.dataset_id for d in ds])
        assays = sorted({d.assay for d in ds})
        self._assay = pd.Index(assays)
        self._assay_code = np.array([assays.index(d.assay) for d in ds])
        self._assay_term = pd.Index([ASSAYS[a] for a in assays])
        tissues = sorted({d.tissue for d in ds})
        self._tissue_code = np.array([tissues.index(d.tissue) for d in ds])
        self._tissue = pd.Index([t[0] for t in tissues])
        self._tissue_term = pd.Index([t[1] for t in tissues])
        self._type_label = pd.Index([label for _, label in layout.cell_types])
        self._type_term = pd.Index([t for t, _ in layout.cell_types])
        self._donor = pd.Index([donor for d in ds for donor in d.donors])
        self._primary = np.array([d.primary for d in ds])

    @staticmethod
    def _cat(codes: np.ndarray, categories: pd.Index) -> pd.Categorical:
        return pd.Categorical.from_codes(codes, categories=categories, validate=False)

    def frame(self, cells: CellBlock) -> pd.DataFrame:
        ds, n = cells.dataset, len(cells.dataset)
        zeros = np.zeros(n, dtype=np.int8)
        assay, tissue = self._assay_code[ds], self._tissue_code[ds]
        columns = {
            "dataset_id": self._cat(ds, self._dataset_id),
            "assay": self._cat(assay, self._assay),
            "assay_ontology_term_id": self._cat(assay, self._assay_term),
            "cell_type": self._cat(cells.cell_type, self._type_label),
            "cell_type_ontology_term_id": self._cat(cells.cell_type, self._type_term),
            "donor_id": self._cat(cells.donor, self._donor),
            "is_primary_data": self._primary[ds],
            "tissue": self._cat(tissue, self._tissue),
            "tissue_ontology_term_id": self._cat(tissue, self._tissue_term),
            "tissue_general": self._cat(tissue, self._tissue),
            "tissue_general_ontology_term_id": self._cat(tissue, self._tissue_term),
        }
        for name, value in self._CONSTANT.items():
            columns[name] = self._cat(zeros, pd.Index([value]))
        return pd.DataFrame({c: columns[c] for c in OBS_COLUMNS})
