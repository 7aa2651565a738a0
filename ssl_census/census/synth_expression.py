"""Expression of synthetic cells, with its constants fitted to real 10x PBMC data.

A cell's counts come from a multinomial-like process over the 60,664 genes:

- a target number of non-zeros (log-normal, fitted) and a library size given it (fitted
  log-log relation), both scaled by the cell's dataset and donor depth;
- gene draws from a mixture: a base profile over all genes (gene means fitted to real data),
  identity programmes (one per Cell Ontology node above the cell's type: types that share
  ancestors share programmes, so a subtype sits close to its parent), a dataset (batch)
  programme, a donor programme and a cell-state programme (shared by all types);
- as many draws as the type's saturation curve says give the target number of distinct genes;
  the distinct genes are the cell's non-zeros;
- a gene's count is 1 plus a gamma-mixed (negative-binomial-like) share of the rest of the
  library, in proportion to how often it was drawn; the gamma shape is the gene's fitted
  dispersion.

Everything is vectorised over blocks of cells, so a block of 8,192 cells at 200 non-zeros
takes a fraction of a second on one core.

How the constants were fitted (once, offline, from ``../shared/data/h5ad``; the files are never
read here): library size and non-zeros per cell from the whole-transcriptome 10x PBMC files
(celltypist_sample_unlabelled, pbmc_donorA_mudan, eccite_ctrl500_citefuse: 3,955 cells with at
least 200 non-zeros), ``ln nnz ~ Normal`` and ``ln lib = a + b ln nnz + Normal(0, sd)`` by least
squares; gene means as fractions of all UMIs in pbmc_donorA_mudan (genes detected in at least
2 of 2,896 cells), split into protein-coding and other genes by the Ensembl 104 biotype, with
the share of the 10x reference's genes that were detected and 21 quantiles of log10 fraction
among detected genes; negative-binomial dispersion by the moment estimator with size factors
within (cell type, donor) groups of kang_ctrl_muscat_se (groups of at least 50 cells), then
``ln theta = c0 + c1 log10(mean fraction) + Normal(0, sd)`` by least squares over 1,283 genes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

# -- fitted to real 10x PBMC cells (see the module docstring) --------------------------------
NNZ_LOG_MEAN = 6.7555  # ln non-zeros per cell: mean (median 858 non-zeros) ...
NNZ_LOG_SD = 0.4604  # ... and standard deviation
LIB_LOG_INTERCEPT, LIB_LOG_SLOPE, LIB_LOG_SD = 0.2856, 1.1123, 0.1870  # ln lib vs ln nnz
CODING_DETECTED = 0.6324  # share of protein-coding genes with any UMI
CODING_UMI_SHARE = 0.9346  # share of UMIs in protein-coding genes
OTHER_DETECTED_GENES = 2_634  # other (non-coding) genes with any UMI
_QUANTILES = np.linspace(0.0, 1.0, 21)
CODING_LOG10_FRACTION = np.array([
    -6.511, -6.335, -6.113, -5.909, -5.733, -5.581, -5.47, -5.35, -5.256, -5.159, -5.064,
    -4.979, -4.883, -4.783, -4.685, -4.574, -4.452, -4.299, -4.118, -3.817, -1.854])
OTHER_LOG10_FRACTION = np.array([
    -6.511, -6.511, -6.511, -6.335, -6.335, -6.21, -6.113, -6.113, -5.967, -5.909, -5.771,
    -5.666, -5.533, -5.432, -5.321, -5.191, -5.017, -4.843, -4.59, -4.215, -1.653])
THETA_LOG_INTERCEPT, THETA_LOG_SLOPE, THETA_LOG_SD = 5.1624, 1.2623, 0.7218

# -- programme shares: the share of a cell's gene draws from each source ---------------------
# Calibrated so that PCA-64 + kNN (k = 5) on the default synthetic census gives a macro F1 in
# the range real PBMC data gives (docs/census.md); marker shares measured on kang (share of a
# type's UMIs in genes >= 4x the other types' mean: 0.6 % for CD4 T, 5 % for NK, 16 % for
# CD14 monocytes; 0.6-2.8 % between CD4 and CD8 T cells) bound them.
IDENTITY_SHARE = 0.20
DATASET_SHARE = 0.04
DONOR_SHARE = 0.02
STATE_SHARE = 0.03  # mean; each cell's share is exponential around it
N_STATES = 6  # cell states shared by all types (cycling, stress, interferon, ...)
PROGRAMME_GENES = 300
DATASET_DEPTH_SD, DONOR_DEPTH_SD = 0.25, 0.15  # ln depth factors of datasets and donors
_BASE_LUT_BITS = 20  # base profile resolution: 1 / 1,048,576 of the draws (2 MB)
_NODE_SLOTS = 256  # identity node choice resolution per type
_GAMMA_QUANTILES = 1_024  # 10 bits
_THETA_BINS = np.geomspace(0.05, 50.0, 24)
_SUB_BLOCK_DRAWS = 4_000_000  # draws per vectorised step (bounds memory)
_CURVE_NNZ = np.geomspace(1.0, 60_000.0, 96)  # grid of the draws-for-nnz curves
_MAX_CELLS_PER_STEP = 65_535  # keys cell << 16 | gene stay within uint32
_MAX_GENES = 65_536


def _lut(weights: np.ndarray, bits: int, rng: np.random.Generator) -> np.ndarray:
    """A table of 2**bits slots, gene i in about weights[i] / sum of them (stochastic rounding).

    Drawing a uniform slot then is drawing from the distribution: one random integer and one
    gather per draw.
    """
    slots = 1 << bits
    exact = weights / weights.sum() * slots
    counts = np.floor(exact).astype(np.int64)
    counts += rng.random(len(exact)) < exact - counts
    # Fix the total by adding or removing slots of the largest entries.
    diff = slots - counts.sum()
    order = np.argsort(-exact)
    counts[order[: abs(diff)]] += np.sign(diff)
    return np.repeat(np.arange(len(weights), dtype=np.uint16 if len(weights) < 65536
                               else np.int32), counts)


def base_profile(coding: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per gene, its fraction of a cell's UMIs: detected genes get fitted fractions, others 0."""
    n = len(coding)
    frac = np.zeros(n)
    other_detected = min(1.0, OTHER_DETECTED_GENES / max(int((~coding).sum()), 1))
    for mask, detected, log10_q, share in (
            (coding, CODING_DETECTED, CODING_LOG10_FRACTION, CODING_UMI_SHARE),
            (~coding, other_detected, OTHER_LOG10_FRACTION, 1.0 - CODING_UMI_SHARE)):
        idx = np.flatnonzero(mask)
        on = idx[rng.random(len(idx)) < detected]
        frac[on] = 10.0 ** np.interp(rng.random(len(on)), _QUANTILES, log10_q)
        if frac[idx].sum() > 0:
            frac[idx] *= share / frac[idx].sum()
    return frac / frac.sum()


def _gamma_table(rng: np.random.Generator) -> np.ndarray:
    """Quantiles of Gamma(theta, 1 / theta) (mean 1) for each theta bin: [bins, quantiles]."""
    step = 64
    table = np.empty((len(_THETA_BINS), _GAMMA_QUANTILES), dtype=np.float32)
    for i, theta in enumerate(_THETA_BINS):
        sample = np.sort(rng.gamma(theta, 1.0 / theta, _GAMMA_QUANTILES * step))
        table[i] = sample[step // 2::step]
    return table


def _rank_weights() -> np.ndarray:
    w = 1.0 / (np.arange(PROGRAMME_GENES) + 20.0)
    return w / w.sum()


def identity_nodes(type_ancestry: Sequence[frozenset[str]]) -> list[list[int]]:
    """Programme nodes of each type: its ontology terms (itself and ancestors) minus the terms
    every type shares (those are part of the base profile); nodes numbered in sorted order.
    A type without terms (not in the ontology) gets no identity programme."""
    known = [a for a in type_ancestry if a]
    shared = frozenset.intersection(*known) if known else frozenset()
    nodes = sorted(set().union(*type_ancestry) - shared)
    number = {t: i for i, t in enumerate(nodes)}
    return [sorted(number[t] for t in terms - shared) for terms in type_ancestry]


@dataclass(frozen=True)
class CellBlock:
    """Which dataset, donor (tech_sample, numbered over the census) and type each cell has."""

    dataset: np.ndarray
    donor: np.ndarray
    cell_type: np.ndarray


class ExpressionModel:
    """Samples the counts of blocks of cells; see the module docstring for the process."""

    def __init__(self, var: pd.DataFrame, type_nodes: Sequence[Sequence[int]],
                 dataset_cells: Sequence[int], presence: np.ndarray, n_donors: int, seed: int,
                 nnz_per_cell: float | None = None,
                 nnz_range: tuple[int, int] | None = None) -> None:
        rng = np.random.default_rng([seed, 2])
        self.n_genes = len(var)
        if self.n_genes > _MAX_GENES:
            raise ValueError(f"{self.n_genes} genes: the sampler packs gene positions in 16 bits")
        coding = var["gene_biotype"].to_numpy() == "protein_coding"
        if coding.sum() < PROGRAMME_GENES:
            coding = np.ones(self.n_genes, dtype=bool)
        self.coding = np.flatnonzero(coding)
        self.base = base_profile(coding, rng)
        self.base_lut = _lut(self.base, _BASE_LUT_BITS, rng)
        self.presence = presence  # datasets x genes, True where the dataset measured it
        self.maybe_missing = ~presence.all(axis=0)
        log_theta = (THETA_LOG_INTERCEPT + THETA_LOG_SLOPE * np.log10(np.maximum(self.base, 1e-9))
                     + THETA_LOG_SD * rng.standard_normal(self.n_genes))
        self.theta_bin = np.searchsorted(_THETA_BINS, np.exp(log_theta)).clip(
            0, len(_THETA_BINS) - 1).astype(np.int16)
        self.gamma = _gamma_table(rng)
        n_datasets = len(dataset_cells)
        n_nodes = 1 + max((max(n) for n in type_nodes if n), default=-1)
        # Programme rows: identity nodes, datasets, donors, states; genes in rank order.
        self.rows = {"dataset": n_nodes, "donor": n_nodes + n_datasets,
                     "state": n_nodes + n_datasets + n_donors}
        n_rows = n_nodes + n_datasets + n_donors + N_STATES
        self.programmes = np.stack([rng.choice(self.coding, PROGRAMME_GENES, replace=False)
                                    for _ in range(n_rows)]).astype(np.uint16).ravel()
        self.rank_lut = _lut(_rank_weights(), 16, rng).astype(np.int64)
        self.type_nodes = [list(n) for n in type_nodes]
        self.node_lut = np.stack([self._node_slots(n) for n in self.type_nodes])
        self.identity = np.array([IDENTITY_SHARE if n else 0.0 for n in self.type_nodes])
        # Depth factors average 1 over the cells, so that nnz_per_cell is the census's mean.
        dataset_depth = np.exp(DATASET_DEPTH_SD * rng.standard_normal(n_datasets))
        weight = np.asarray(dataset_cells, dtype=np.float64)
        self.dataset_depth = dataset_depth / (weight @ dataset_depth / max(weight.sum(), 1.0))
        self.donor_depth = np.exp(DONOR_DEPTH_SD * rng.standard_normal(n_donors)
                                  - DONOR_DEPTH_SD**2 / 2)
        self.state_probs = rng.dirichlet(np.full(N_STATES, 2.0))
        self.nnz_range = nnz_range
        mean_nnz = np.exp(NNZ_LOG_MEAN + NNZ_LOG_SD**2 / 2)
        self.nnz_log_mean = NNZ_LOG_MEAN + (np.log(nnz_per_cell / mean_nnz)
                                            if nnz_per_cell else 0.0)
        self.draws_curve = self._draws_curves()

    @property
    def mean_nnz(self) -> float:
        """Expected non-zeros per cell (before any nnz_range clipping)."""
        return float(np.exp(self.nnz_log_mean + NNZ_LOG_SD**2 / 2))

    def _node_slots(self, nodes: list[int]) -> np.ndarray:
        if not nodes:
            return np.zeros(_NODE_SLOTS, dtype=np.int64)
        slots = np.arange(_NODE_SLOTS) * len(nodes) // _NODE_SLOTS
        return np.asarray(nodes, dtype=np.int64)[slots]

    def _draws_curves(self) -> np.ndarray:
        """Per type, the number of draws that gives each nnz of ``_CURVE_NNZ`` distinct genes:
        [types, grid].

        Expected distinct genes after m draws (Poisson approximation): the base profile's
        sum(1 - exp(-m share p_g)) plus, for each programme the cell draws from, the same sum
        over its 300 rank weights. Overlaps between the programmes and the base are ignored:
        programme genes are mostly rare in the base profile.
        """
        draws = np.geomspace(1.0, 1e6, 160)
        live = self.base[self.base > 0]
        rank = _rank_weights()

        def distinct(weights: np.ndarray, share: float) -> np.ndarray:
            return np.array([(1.0 - np.exp(-m * share * weights)).sum() for m in draws])

        fixed = sum(distinct(rank, s) for s in (DATASET_SHARE, DONOR_SHARE, STATE_SHARE))
        by_share: dict[float, np.ndarray] = {}
        by_design: dict[tuple[float, int], np.ndarray] = {}
        curves = []
        for k, nodes in enumerate(self.type_nodes):
            design = (float(self.identity[k]), len(nodes))
            if design not in by_design:
                share, n_nodes = design
                if share not in by_share:
                    by_share[share] = distinct(
                        live, 1.0 - share - DATASET_SHARE - DONOR_SHARE - STATE_SHARE)
                total = by_share[share]
                if n_nodes:
                    total = total + n_nodes * distinct(rank, share / n_nodes)
                by_design[design] = np.interp(np.log(_CURVE_NNZ), np.log(total + fixed),
                                              np.log(draws))
            curves.append(by_design[design])
        return np.exp(np.stack(curves))

    def _draws_for(self, ctype: np.ndarray, nnz: np.ndarray) -> np.ndarray:
        pos = np.interp(np.log(nnz), np.log(_CURVE_NNZ), np.arange(len(_CURVE_NNZ)))
        i = np.minimum(pos.astype(np.int64), len(_CURVE_NNZ) - 2)
        t = pos - i
        curve = self.draws_curve
        return np.exp((1 - t) * np.log(curve[ctype, i]) + t * np.log(curve[ctype, i + 1]))

    def targets(self, rng: np.random.Generator, cells: CellBlock) -> tuple[np.ndarray, ...]:
        """Per cell: target non-zeros, library size and number of gene draws."""
        n = len(cells.dataset)
        depth = self.dataset_depth[cells.dataset] * self.donor_depth[cells.donor]
        nnz = np.exp(self.nnz_log_mean + NNZ_LOG_SD * rng.standard_normal(n)) * depth
        if self.nnz_range is not None:
            nnz = np.clip(nnz, *self.nnz_range)
        nnz = np.clip(nnz, 1.0, min(self.n_genes / 4, _CURVE_NNZ[-1]))
        lib = np.exp(LIB_LOG_INTERCEPT + LIB_LOG_SLOPE * np.log(nnz)
                     + LIB_LOG_SD * rng.standard_normal(n))
        draws = np.maximum(np.round(self._draws_for(cells.cell_type, nnz)), 1).astype(np.int64)
        return nnz, np.maximum(lib, nnz), draws

    def sample(self, rng: np.random.Generator,
               cells: CellBlock) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """CSR of the block: indptr, gene positions (ascending per row), counts (float32)."""
        _, lib, draws = self.targets(rng, cells)
        n = len(draws)
        state = rng.choice(N_STATES, n, p=self.state_probs)
        state_share = np.minimum(STATE_SHARE * rng.standard_exponential(n), 0.25)
        shares = np.stack([self.identity[cells.cell_type], np.full(n, DATASET_SHARE),
                           np.full(n, DONOR_SHARE), state_share], axis=1)
        rows = np.stack([cells.cell_type, self.rows["dataset"] + cells.dataset,
                         self.rows["donor"] + cells.donor, self.rows["state"] + state], axis=1)
        parts = []
        for a, b in self._steps(draws):
            parts.append(self._sample_step(rng, draws[a:b], lib[a:b], shares[a:b], rows[a:b],
                                           cells.dataset[a:b]))
        row_nnz = np.concatenate([p[0] for p in parts])
        indptr = np.concatenate([[0], np.cumsum(row_nnz)]).astype(np.int64)
        return (indptr, np.concatenate([p[1] for p in parts]),
                np.concatenate([p[2] for p in parts]))

    @staticmethod
    def _steps(draws: np.ndarray) -> list[tuple[int, int]]:
        """Consecutive cell ranges of at most ~_SUB_BLOCK_DRAWS draws and 65,535 cells."""
        cum = np.cumsum(draws)
        steps, a = [], 0
        while a < len(draws):
            limit = (cum[a - 1] if a else 0) + _SUB_BLOCK_DRAWS
            b = int(np.searchsorted(cum, limit, side="right"))
            b = min(max(b, a + 1), a + _MAX_CELLS_PER_STEP, len(draws))
            steps.append((a, b))
            a = b
        return steps

    def _sample_step(self, rng: np.random.Generator, draws: np.ndarray, lib: np.ndarray,
                     shares: np.ndarray, rows: np.ndarray,
                     dataset: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = len(draws)
        cell_ids = np.arange(n, dtype=np.uint32)
        per_source = np.round(draws[:, None] * shares).astype(np.int64)
        n_base = np.maximum(draws - per_source.sum(axis=1), 0)
        # Base draws, with the genes the cell's dataset did not measure removed.
        base_cell = np.repeat(cell_ids, n_base)
        base_gene = self.base_lut[rng.integers(0, len(self.base_lut), len(base_cell),
                                               dtype=np.uint32)]
        # Only non-coding genes can be missing from a panel: look those draws up.
        check = np.flatnonzero(self.maybe_missing[base_gene])
        measured = np.ones(len(base_gene), dtype=bool)
        measured[check] = self.presence[dataset[base_cell[check]], base_gene[check]]
        keys = [(base_cell[measured] << 16) | base_gene[measured]]
        # Programme draws: a row per draw (an identity node, the dataset, donor or state
        # programme), then a gene by its rank in that row.
        for source in range(shares.shape[1]):
            cell = np.repeat(cell_ids, per_source[:, source])
            if not len(cell):
                continue
            bits = rng.integers(0, 1 << 24, len(cell), dtype=np.uint32)
            if source == 0:
                row = self.node_lut[rows[cell, 0], bits >> 16]
            else:
                row = rows[cell, source]
            gene = self.programmes[row * PROGRAMME_GENES + self.rank_lut[bits & 0xFFFF]]
            keys.append((cell << 16) | gene)
        key = np.sort(np.concatenate(keys))
        first = np.empty(len(key), dtype=bool)
        first[:1] = True
        np.not_equal(key[1:], key[:-1], out=first[1:])
        starts = np.flatnonzero(first)
        times = np.diff(np.append(starts, len(key)))
        unique = key[starts]
        cell = (unique >> 16).astype(np.int64)
        gene = (unique & 0xFFFF).astype(np.int64)
        if self.nnz_range is not None:
            keep = self._cap(rng, cell, n)
            cell, gene, times = cell[keep], gene[keep], times[keep]
        row_nnz = np.bincount(cell, minlength=n)
        counts = self._counts(rng, cell, gene, times, row_nnz, lib, draws)
        return row_nnz, gene, counts

    def _cap(self, rng: np.random.Generator, cell: np.ndarray, n: int) -> np.ndarray:
        """Keep at most nnz_range[1] genes per cell (a random subset where there are more)."""
        cap = self.nnz_range[1]
        distinct = np.bincount(cell, minlength=n)
        if distinct.max(initial=0) <= cap:
            return np.ones(len(cell), dtype=bool)
        keep = rng.random(len(cell)) < np.minimum(1.0, cap / np.maximum(distinct, 1))[cell]
        rank = np.cumsum(keep) - 1
        start = np.concatenate([[0], np.cumsum(np.bincount(cell[keep], minlength=n))])
        return keep & (rank - start[cell] < cap)

    def _counts(self, rng: np.random.Generator, cell: np.ndarray, gene: np.ndarray,
                times: np.ndarray, row_nnz: np.ndarray, lib: np.ndarray,
                draws: np.ndarray) -> np.ndarray:
        """1 + a gamma-mixed share of the library beyond one UMI per non-zero, by draw count."""
        rest = np.maximum(lib - row_nnz, 0.0) / draws
        mean = (rest[cell] * times).astype(np.float32)
        # One random word per gene: 10 bits pick a gamma quantile, 22 round stochastically.
        bits = rng.integers(0, 1 << 32, len(gene), dtype=np.uint32)
        noise = self.gamma[self.theta_bin[gene], bits >> 22]
        rounding = (bits & 0x3FFFFF).astype(np.float32) * np.float32(2.0**-22)
        extra = np.floor(mean * noise + rounding)
        return (1.0 + extra).astype(np.float32)
