"""A seeded synthetic census in the exact census layout, streamed block by block.

Structure (all drawn from one ``numpy.random.Generator`` seeded by ``seed``):

- datasets: all seven 10x assays, one Smart-seq2 dataset (a scTab-style filter drops it)
  and one re-submitted dataset whose cells are ``is_primary_data == False``; each dataset has
  its own donors, cell-type mix and gene panel (the presence matrix); cells of a dataset are
  contiguous, as in the census;
- expression: each cell draws genes from a mixture of a base profile over the annotation
  (protein-coding genes dominate), a lineage programme, a cell-type programme, a dataset
  (batch) programme and a donor programme; a gene's count is the number of times it was drawn
  plus gamma-Poisson (negative-binomial) overdispersion scaled by the cell's depth, which
  carries donor and dataset effects too;
- non-zeros per cell in ``nnz_range`` (default 1,000-3,000).

Cells are generated and written ``block_cells`` at a time, so memory does not grow with
``n_cells``. The same seed gives the same store content.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ssl_census.census.genes import load_annotation
from ssl_census.census.layout import (
    ASSAYS,
    SCHEMA_2023_05_15,
    TENX_ASSAYS,
    CensusWriter,
    normalise_schema,
)
from ssl_census.core.errors import UserError
from ssl_census.core.progress import progress

# PBMC cell types (real Cell Ontology terms below native cell, each with more than 7
# ancestors so that a scTab-style filter keeps them), with a lineage each.
CELL_TYPES: tuple[tuple[str, str, str], ...] = (
    ("CL:0000624", "CD4-positive, alpha-beta T cell", "T"),
    ("CL:0000625", "CD8-positive, alpha-beta T cell", "T"),
    ("CL:0000897", "CD4-positive, alpha-beta memory T cell", "T"),
    ("CL:0000815", "regulatory T cell", "T"),
    ("CL:0000492", "CD4-positive helper T cell", "T"),
    ("CL:0000794", "CD8-positive, alpha-beta cytotoxic T cell", "T"),
    ("CL:0000895", "naive thymus-derived CD4-positive, alpha-beta T cell", "T"),
    ("CL:0000900", "naive thymus-derived CD8-positive, alpha-beta T cell", "T"),
    ("CL:0000236", "B cell", "B"),
    ("CL:0000788", "naive B cell", "B"),
    ("CL:0000787", "memory B cell", "B"),
    ("CL:0000623", "natural killer cell", "NK"),
    ("CL:0001054", "CD14-positive monocyte", "myeloid"),
    ("CL:0002396", "CD14-low, CD16-positive monocyte", "myeloid"),
    ("CL:0000451", "dendritic cell", "myeloid"),
    ("CL:0000784", "plasmacytoid dendritic cell", "myeloid"),
)
# Share of a cell's gene draws from each source: base, lineage, type, dataset, donor.
MIXTURE = np.array([0.55, 0.12, 0.18, 0.08, 0.07])
PROGRAMME_GENES = 300
# Gene draws per wanted non-zero (some draws repeat a gene); extra ones are thinned away.
_OVERDRAW = 1.6
_SUB_BLOCK = 1_024  # cells per sampling step: keys cell*65536+gene stay within uint32


@dataclass(frozen=True)
class SynthDataset:
    dataset_id: str
    title: str
    assay: str
    primary: bool
    donors: tuple[str, ...]
    n_cells: int
    start: int


class _AliasTable:
    """Walker's alias method: O(1) draws from a fixed discrete distribution."""

    def __init__(self, weights: np.ndarray) -> None:
        p = np.asarray(weights, dtype=np.float64)
        n = len(p)
        scaled = p / p.sum() * n
        prob = np.ones(n)
        alias = np.arange(n, dtype=np.int64)
        small = [i for i in range(n) if scaled[i] < 1.0]
        large = [i for i in range(n) if scaled[i] >= 1.0]
        while small and large:
            s, g = small.pop(), large.pop()
            prob[s] = scaled[s]
            alias[s] = g
            scaled[g] -= 1.0 - scaled[s]
            (small if scaled[g] < 1.0 else large).append(g)
        self.prob = prob
        self.alias = alias
        self.n = n

    def draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        u = rng.random(size) * self.n
        i = u.astype(np.int64)
        return np.where(u - i < self.prob[i], i, self.alias[i])


class SyntheticCensusModel:
    """The generative model: datasets, donors, programmes; samples blocks of cells."""

    def __init__(self, var: pd.DataFrame, n_cells: int, seed: int, n_datasets: int = 10,
                 nnz_range: tuple[int, int] = (1_000, 3_000)) -> None:
        if n_datasets < 3:
            raise ValueError("a synthetic census needs at least 3 datasets")
        self.var = var
        self.n_genes = len(var)
        self.nnz_range = nnz_range
        self.seed = seed
        rng = np.random.default_rng([seed, 0])
        self.datasets = self._make_datasets(rng, n_cells, n_datasets)
        self.type_probs = rng.dirichlet(np.full(len(CELL_TYPES), 1.5), size=n_datasets)
        coding = np.flatnonzero(var["gene_biotype"].to_numpy() == "protein_coding")
        if len(coding) < PROGRAMME_GENES:
            coding = np.arange(self.n_genes)
        base = rng.lognormal(0.0, 1.2, self.n_genes) * 0.01
        base[coding] *= 100.0
        self.base = _AliasTable(base)
        rank_cdf = np.cumsum(1.0 / (np.arange(PROGRAMME_GENES) + 20.0))
        # Programme ranks by table lookup: 2**16 equally likely slots (1/65536 resolution).
        self.rank_lut = np.searchsorted(rank_cdf / rank_cdf[-1],
                                        (np.arange(2**16) + 0.5) / 2**16).astype(np.int64)
        lineages = sorted({lin for _, _, lin in CELL_TYPES})
        self.lineage_of_type = np.array([lineages.index(lin) for _, _, lin in CELL_TYPES])
        n_donors = sum(len(d.donors) for d in self.datasets)
        # Programme gene tables, stacked: lineages, types, datasets, donors.
        sizes = [len(lineages), len(CELL_TYPES), n_datasets, n_donors]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])[:-1]
        self.programmes = np.stack([rng.choice(coding, PROGRAMME_GENES, replace=False)
                                    for _ in range(sum(sizes))])
        # Gene panels: 10x datasets miss part of the non-coding genes, Smart-seq2 measures all.
        self.presence = np.ones((n_datasets, self.n_genes), dtype=bool)
        noncoding = np.setdiff1d(np.arange(self.n_genes), coding)
        for i, d in enumerate(self.datasets):
            if d.assay in TENX_ASSAYS:
                missing = rng.choice(noncoding, int(len(noncoding) * rng.uniform(0.1, 0.4)),
                                     replace=False)
                self.presence[i, missing] = False
        self.dataset_depth = rng.lognormal(0.0, 0.3, n_datasets)
        self.donor_depth = rng.lognormal(0.0, 0.2, n_donors)
        self.donor_offset = np.concatenate([[0], np.cumsum([len(d.donors)
                                                            for d in self.datasets])])

    @staticmethod
    def _make_datasets(rng: np.random.Generator, n_cells: int, n: int) -> list[SynthDataset]:
        assays = [list(TENX_ASSAYS)[i % len(TENX_ASSAYS)] for i in range(n - 1)] + ["Smart-seq2"]
        shares = rng.dirichlet(np.full(n, 4.0))
        sizes = np.floor(shares * n_cells).astype(np.int64)
        sizes[: n_cells - sizes.sum()] += 1
        starts = np.concatenate([[0], np.cumsum(sizes)])
        out = []
        for i in range(n):
            donors = tuple(f"synth-d{i:02d}-donor{j}" for j in range(int(rng.integers(2, 7))))
            out.append(SynthDataset(
                dataset_id=f"synth-{i:04d}", title=f"Synthetic PBMC dataset {i} ({assays[i]})",
                assay=assays[i], primary=i != n - 2, donors=donors, n_cells=int(sizes[i]),
                start=int(starts[i])))
        return out

    def datasets_frame(self) -> pd.DataFrame:
        return pd.DataFrame({
            "collection_id": [f"synth-collection-{self.seed}"] * len(self.datasets),
            "collection_name": ["ssl-census synthetic census"] * len(self.datasets),
            "collection_doi": [""] * len(self.datasets),
            "dataset_id": [d.dataset_id for d in self.datasets],
            "dataset_version_id": [f"{d.dataset_id}-v1-seed{self.seed}" for d in self.datasets],
            "dataset_title": [d.title for d in self.datasets],
            "dataset_h5ad_path": [f"{d.dataset_id}.h5ad" for d in self.datasets],
            "dataset_total_cell_count": [d.n_cells for d in self.datasets],
        })

    def block(self, start: int, stop: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray,
                                                    np.ndarray, np.ndarray]:
        """Cells [start, stop): obs, CSR indptr, gene positions, counts, dataset index."""
        rng = np.random.default_rng([self.seed, 1, start])
        starts = np.array([d.start for d in self.datasets])
        ds = np.searchsorted(starts, np.arange(start, stop), side="right") - 1
        n = stop - start
        n_donors = np.array([len(d.donors) for d in self.datasets])
        donor_local = rng.integers(0, 1 << 30, n) % n_donors[ds]
        donor = self.donor_offset[ds] + donor_local
        cum = np.cumsum(self.type_probs[ds], axis=1)
        ctype = (rng.random(n)[:, None] > cum).sum(axis=1).clip(max=len(CELL_TYPES) - 1)
        depth = self.dataset_depth[ds] * self.donor_depth[donor] * rng.lognormal(0.0, 0.25, n)
        lo, hi = self.nnz_range
        # Targets keep clear of the lower bound so that thinning noise stays inside the range.
        target = np.clip(np.round(np.sqrt(lo * hi) * depth), lo + 4 * np.sqrt(lo), hi)
        target = target.astype(np.int64)
        parts = [self._sample(rng, ds[a:b], ctype[a:b], donor[a:b], depth[a:b], target[a:b])
                 for a in range(0, n, _SUB_BLOCK) for b in [min(a + _SUB_BLOCK, n)]]
        row_nnz = np.concatenate([p[0] for p in parts])
        indptr = np.concatenate([[0], np.cumsum(row_nnz)]).astype(np.int64)
        cols = np.concatenate([p[1] for p in parts])
        counts = np.concatenate([p[2] for p in parts])
        return self._obs(ds, donor, ctype), indptr, cols, counts, ds

    def _sample(self, rng: np.random.Generator, ds: np.ndarray, ctype: np.ndarray,
                donor: np.ndarray, depth: np.ndarray, target: np.ndarray):
        n = len(ds)
        draws = np.ceil(target * _OVERDRAW).astype(np.int64)
        owners = (self.lineage_of_type[ctype], ctype, ds, donor)
        cells, genes = [], []
        # A fixed share of each cell's draws comes from each source: no per-draw source choice.
        for source, share in enumerate(MIXTURE):
            per_cell = np.round(draws * share).astype(np.int64)
            cell = np.repeat(np.arange(n, dtype=np.int64), per_cell)
            if source == 0:
                gene = self.base.draw(rng, len(cell))
            else:
                row = self.offsets[source - 1] + owners[source - 1][cell]
                gene = self.programmes[row, self.rank_lut[rng.integers(0, len(self.rank_lut),
                                                                       len(cell))]]
            cells.append(cell)
            genes.append(gene)
        cell = np.concatenate(cells)
        gene = np.concatenate(genes)
        keep = self.presence[ds[cell], gene]
        keys = np.sort((cell[keep] << 16 | gene[keep]).astype(np.uint32))
        first = np.empty(len(keys), dtype=bool)
        first[:1] = True
        np.not_equal(keys[1:], keys[:-1], out=first[1:])
        starts = np.flatnonzero(first)
        times_drawn = np.diff(np.append(starts, len(keys)))
        unique = keys[starts]
        ucell = (unique >> 16).astype(np.int64)
        kept = self._thin(rng, ucell, target, n)
        ucell, unique, times_drawn = ucell[kept], unique[kept], times_drawn[kept]
        extra = rng.poisson(rng.gamma(2.0, times_drawn * depth[ucell] / 2.0))
        counts = (times_drawn + extra).astype(np.float32)
        return np.bincount(ucell, minlength=n), (unique & 0xFFFF).astype(np.int64), counts

    def _thin(self, rng: np.random.Generator, ucell: np.ndarray, target: np.ndarray,
              n: int) -> np.ndarray:
        """Keep each cell's distinct genes with probability target/distinct, at most nnz_max."""
        distinct = np.bincount(ucell, minlength=n)
        keep_p = np.minimum(1.0, target / np.maximum(distinct, 1))
        kept = rng.random(len(ucell)) < keep_p[ucell]
        # Binomial noise may overshoot the cap: drop the overshoot (a few genes at most).
        rank = np.cumsum(kept) - 1
        cell_start = np.concatenate([[0], np.cumsum(np.bincount(ucell[kept], minlength=n))])
        return kept & (rank - cell_start[ucell] < self.nnz_range[1])

    def _obs(self, ds: np.ndarray, donor: np.ndarray, ctype: np.ndarray) -> pd.DataFrame:
        n = len(ds)
        donors = np.concatenate([np.array(d.donors) for d in self.datasets])
        assay = np.array([d.assay for d in self.datasets])[ds]
        return pd.DataFrame({
            "dataset_id": np.array([d.dataset_id for d in self.datasets])[ds],
            "assay": assay,
            "assay_ontology_term_id": np.array([ASSAYS[a] for a in assay]),
            "cell_type": np.array([t[1] for t in CELL_TYPES])[ctype],
            "cell_type_ontology_term_id": np.array([t[0] for t in CELL_TYPES])[ctype],
            "development_stage": np.full(n, "adult stage"),
            "development_stage_ontology_term_id": np.full(n, "HsapDv:0000087"),
            "disease": np.full(n, "normal"),
            "disease_ontology_term_id": np.full(n, "PATO:0000461"),
            "donor_id": donors[donor],
            "is_primary_data": np.array([d.primary for d in self.datasets])[ds],
            "self_reported_ethnicity": np.full(n, "unknown"),
            "self_reported_ethnicity_ontology_term_id": np.full(n, "unknown"),
            "sex": np.full(n, "unknown"),
            "sex_ontology_term_id": np.full(n, "unknown"),
            "suspension_type": np.full(n, "cell"),
            "tissue": np.full(n, "blood"),
            "tissue_ontology_term_id": np.full(n, "UBERON:0000178"),
            "tissue_general": np.full(n, "blood"),
            "tissue_general_ontology_term_id": np.full(n, "UBERON:0000178"),
        })


def _write(writer: CensusWriter, block: tuple) -> int:
    writer.write_block(*block)
    return len(block[0])


def write_synthetic_census(uri: str | os.PathLike[str], n_cells: int, seed: int = 0,
                           schema: str = SCHEMA_2023_05_15, *, annotation: str | None = None,
                           data_dir: str | os.PathLike[str] | None = None,
                           n_datasets: int = 10, nnz_range: tuple[int, int] = (1_000, 3_000),
                           block_cells: int = 8_192, build_date: str = "2023-05-15") -> dict:
    """Write a synthetic census of ``n_cells`` cells at ``uri``; returns a summary dict."""
    if n_cells < n_datasets:
        raise UserError(f"{n_cells} cells cannot fill {n_datasets} datasets",
                        "ask for more cells or fewer datasets")
    schema = normalise_schema(schema)
    full_var = load_annotation(annotation, data_dir)
    model = SyntheticCensusModel(full_var, n_cells, seed, n_datasets, nnz_range)
    var = full_var[["feature_id", "feature_name", "feature_length"]]
    nnz = 0
    with CensusWriter(uri, var, model.datasets_frame(), model.presence, n_cells, schema,
                      build_date) as writer, progress(n_cells, desc="synthetic census") as bar, \
            ThreadPoolExecutor(max_workers=1) as pool:
        # TileDB writes one block while numpy samples the next (both release the GIL).
        pending: Future | None = None
        for start in range(0, n_cells, block_cells):
            stop = min(start + block_cells, n_cells)
            block = model.block(start, stop)
            if pending is not None:
                bar.update(pending.result())
            pending = pool.submit(_write, writer, block)
            nnz += len(block[2])
        if pending is not None:
            bar.update(pending.result())
    return {"uri": str(Path(writer.final)), "n_cells": n_cells, "n_genes": len(var),
            "nnz": nnz, "n_datasets": n_datasets, "seed": seed, "schema": schema}
