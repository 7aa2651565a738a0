"""The ``sctab`` profile: a synthetic census shaped like scTab's build of census 2023-05-15.

At ``FULL_CELLS`` (22.2 million cells) the census has, like the real build:

- 249 datasets of primary 10x cells in 5,052 tech_samples (dataset x donor), dataset sizes
  log-normal (hundreds of cells to millions), each dataset from one tissue system (blood,
  brain, lung, ...);
- cells a scTab-style query must drop: datasets of non-10x assays (5 % of cells) and 10x
  datasets of re-submitted cells, ``is_primary_data == False`` (6 %);
- cell types from the pinned Cell Ontology release (core.ontology): 164 types that pass
  scTab's curation (at least 5,000 cells, in more than 30 tech_samples, more than 7
  ancestors, below native cell) and types that each fail one rule: 10 with too few cells, 8 in
  too few tech_samples, 6 with too few ancestors (coarse labels such as "leukocyte"), and
  ``unknown`` (not an ontology term). Abundances are Zipf-like: a few types hold most cells.
  The failing types also have cells among the dropped datasets, enough that they would pass
  if the query did not drop those cells.

Smaller sizes keep the proportions. Datasets and tech_samples scale with the square root of
the size, so that small censuses still have enough tech_samples for a 70/15/15 split by
tech_sample: ``tech_samples = round(5,052 sqrt(f))``, ``datasets = max(8, round(249 sqrt(f)))``
with ``f = cells / 22.2M``. The curation thresholds the profile is designed for scale with
them: ``min_cells = max(3, round(5,000 f))`` and ``min_tech_samples = max(1, round(30
tech_samples / 5,052))`` (5,000 and 30 at full size); ``min_ancestors`` stays 7. With those
thresholds a shard build keeps exactly :attr:`SctabDesign.intended_cell_types`.

The layout is exact, not sampled: every type's number of cells and of tech_samples is decided
when the profile is built (cells of a type are spread over its chosen tech_samples by a
seeded multinomial), so the curation outcome holds for every seed and size. Inside a
tech_sample, cells take their types in a seeded order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ssl_census.census.synth_expression import CellBlock
from ssl_census.census.synth_layout import CELL_TYPES, SynthDataset, largest_remainder
from ssl_census.core.config import load_toml
from ssl_census.core.errors import UserError
from ssl_census.core.ontology import NATIVE_CELL, CellOntology

FULL_CELLS = 22_200_000
FULL_DATASETS = 249
FULL_TECH_SAMPLES = 5_052
FULL_MIN_CELLS = 5_000
FULL_MIN_TECH_SAMPLES = 30
MIN_ANCESTORS = 7
MIN_PROFILE_CELLS = 20_000  # below this the failing types cannot be placed
NON_10X_SHARE, NON_PRIMARY_SHARE = 0.05, 0.06
FULL_NON_10X_DATASETS, FULL_NON_PRIMARY_DATASETS = 18, 14
DATASET_SIZE_SD = 1.5  # ln dataset size: 249 datasets span hundreds of cells to millions
DONOR_SIZE_SD = 0.5
OUT_OF_SYSTEM = 0.1  # weight of a tech_sample of another tissue system for a type
ZIPF_EXPONENT, ZIPF_OFFSET = 1.3, 2.0

# Tissue systems: Cell Ontology root, kept types drawn from it, its datasets' tissue and share.
SYSTEMS: tuple[tuple[str, str, int, tuple[str, str], float], ...] = (
    ("immune", "CL:0000988", 60, ("blood", "UBERON:0000178"), 0.30),
    ("neural", "CL:0002319", 40, ("brain", "UBERON:0000955"), 0.22),
    ("epithelial", "CL:0000066", 35, ("lung", "UBERON:0002048"), 0.24),
    ("muscle", "CL:0000187", 12, ("skeletal muscle tissue", "UBERON:0001134"), 0.09),
    ("connective", "CL:0002320", 10, ("skin of body", "UBERON:0002097"), 0.08),
    ("endothelial", "CL:0000115", 7, ("heart", "UBERON:0000948"), 0.07),
)
N_KEPT = sum(s[2] for s in SYSTEMS)  # 164
N_TOO_FEW_CELLS, N_TOO_FEW_TECH_SAMPLES = 10, 8
# Coarse labels the census has, with at most 5 ancestors (2 below scTab's limit of 7).
SHALLOW_TERMS = ("CL:0000738", "CL:0000057", "CL:0000066", "CL:0000115", "CL:0000187",
                 "CL:0000763")
SHALLOW_SHARE, UNKNOWN_SHARE = 0.006, 0.015  # of the eligible cells, per type
UNKNOWN = ("unknown", "unknown")
MIN_CANDIDATE_ANCESTORS = MIN_ANCESTORS + 3  # kept types stay clear of the limit

KEPT, TOO_FEW_CELLS, TOO_FEW_TECH_SAMPLES, TOO_FEW_ANCESTORS, NOT_IN_ONTOLOGY = (
    "kept", "too few cells", "too few tech_samples", "too few ancestors", "not in the ontology")
NON_10X_ASSAYS = ("Smart-seq2", "Drop-seq", "CEL-seq2", "ECCITE-seq")
_TENX_WEIGHTS = {"10x 3' v3": 0.4, "10x 3' v2": 0.3, "10x 5' v1": 0.1, "10x 5' v2": 0.1,
                 "10x 3' v1": 0.04, "10x 3' transcription profiling": 0.03,
                 "10x 5' transcription profiling": 0.03}
_PRIMES = (1_000_003, 998_244_353)  # step of the in-tech_sample order (coprime to its size)


@dataclass(frozen=True)
class SctabScale:
    """Counts and curation thresholds of the profile at ``n_cells`` cells."""

    n_cells: int
    n_datasets: int  # of primary 10x cells
    n_tech_samples: int  # of primary 10x cells
    n_non_10x_datasets: int
    n_non_primary_datasets: int
    min_cells: int
    min_tech_samples: int
    min_ancestors: int = MIN_ANCESTORS

    @classmethod
    def at(cls, n_cells: int) -> SctabScale:
        if n_cells < MIN_PROFILE_CELLS:
            raise UserError(f"the sctab profile needs at least {MIN_PROFILE_CELLS:,} cells "
                            f"({n_cells:,} asked)", f"ask for --cells {MIN_PROFILE_CELLS} or more")
        f = n_cells / FULL_CELLS
        root = np.sqrt(f)
        n_tech = int(round(FULL_TECH_SAMPLES * root))
        return cls(
            n_cells=n_cells, n_datasets=max(8, int(round(FULL_DATASETS * root))),
            n_tech_samples=n_tech,
            n_non_10x_datasets=max(1, int(round(FULL_NON_10X_DATASETS * root))),
            n_non_primary_datasets=max(1, int(round(FULL_NON_PRIMARY_DATASETS * root))),
            min_cells=max(3, int(round(FULL_MIN_CELLS * f))),
            min_tech_samples=max(1, int(round(FULL_MIN_TECH_SAMPLES * n_tech
                                              / FULL_TECH_SAMPLES))))

    def curation(self) -> dict[str, int | str]:
        """The [curation] settings of a shards config that this size was designed for."""
        return {"min_cells": self.min_cells, "min_tech_samples": self.min_tech_samples,
                "min_ancestors": self.min_ancestors, "root": NATIVE_CELL}


@dataclass(frozen=True)
class SctabDesign:
    """What the profile intends at one size: thresholds and, per type, its role and counts
    among the eligible (primary 10x) cells."""

    scale: SctabScale
    cell_types: pd.DataFrame  # term, label, system, role, n_ancestors, n_cells, n_tech_samples

    @property
    def intended_cell_types(self) -> tuple[str, ...]:
        """Cell Ontology ids that curation with :meth:`SctabScale.curation` keeps."""
        kept = self.cell_types[self.cell_types["role"] == KEPT]
        return tuple(sorted(kept["cell_type_ontology_term_id"]))


SCTAB_PRESET = "sctab-2023-05-15"


def shards_config(scale: SctabScale) -> dict:
    """scTab's shards preset with the curation thresholds this size was designed for."""
    config = load_toml(SCTAB_PRESET, kind="shards")
    config["name"] = f"sctab-synthetic-{scale.n_cells}"
    config["curation"] = {**config["curation"], **scale.curation()}
    return config


def _stable_order(terms: list[str]) -> list[str]:
    """Terms in an order fixed by their ids alone (independent of seed and release order)."""
    return sorted(terms, key=lambda t: hashlib.sha256(t.encode()).hexdigest())


def _system_of(term: str, ontology: CellOntology) -> int:
    for i, (_, root, _, _, _) in enumerate(SYSTEMS):
        if ontology.is_descendant(term, root):
            return i
    return 0


def choose_cell_types(ontology: CellOntology) -> pd.DataFrame:
    """The profile's types: id, label, system index and role (independent of size and seed)."""
    pbmc = [t for t, _, _ in CELL_TYPES]
    candidates = [t for t, rec in ontology.terms.items()
                  if t.startswith("CL:") and not rec.get("deprecated") and t not in pbmc
                  and ontology.n_ancestors(t) >= MIN_CANDIDATE_ANCESTORS
                  and ontology.is_descendant(t, NATIVE_CELL)]
    by_system: dict[int, list[str]] = {i: [] for i in range(len(SYSTEMS))}
    for t in _stable_order(candidates):
        by_system[_system_of(t, ontology)].append(t)
    rows = [(t, 0, KEPT) for t in pbmc]
    spare: list[str] = []
    for i, (_, _, quota, _, _) in enumerate(SYSTEMS):
        n = quota - sum(1 for _, s, _ in rows if s == i)
        rows += [(t, i, KEPT) for t in by_system[i][:n]]
        spare += by_system[i][n:]
    spare = _stable_order(spare)
    n_cells_fail = N_TOO_FEW_CELLS + N_TOO_FEW_TECH_SAMPLES
    rows += [(t, _system_of(t, ontology), TOO_FEW_CELLS) for t in spare[:N_TOO_FEW_CELLS]]
    rows += [(t, _system_of(t, ontology), TOO_FEW_TECH_SAMPLES)
             for t in spare[N_TOO_FEW_CELLS:n_cells_fail]]
    rows += [(t, _system_of(t, ontology), TOO_FEW_ANCESTORS) for t in SHALLOW_TERMS
             if t in ontology and ontology.n_ancestors(t) <= MIN_ANCESTORS - 2]
    rows.append((UNKNOWN[0], 0, NOT_IN_ONTOLOGY))
    if sum(1 for r in rows if r[2] == KEPT) != N_KEPT:
        raise UserError(f"the shipped Cell Ontology ({ontology.release}) has too few deep terms "
                        "for the sctab profile", "install a full cellxgene-ontology-guide")
    return pd.DataFrame({
        "cell_type_ontology_term_id": [r[0] for r in rows],
        "cell_type": [ontology.label(r[0]) if r[0] in ontology else UNKNOWN[1] for r in rows],
        "system": [r[1] for r in rows],
        "role": [r[2] for r in rows],
        "n_ancestors": [ontology.n_ancestors(r[0]) for r in rows],
    })


def _type_targets(types: pd.DataFrame, scale: SctabScale, n_eligible: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Eligible cells and tech_samples of each type, as the roles require."""
    k = len(types)
    cells = np.zeros(k, dtype=np.int64)
    spread = np.zeros(k, dtype=np.int64)
    n_tech, min_cells, min_tech = scale.n_tech_samples, scale.min_cells, scale.min_tech_samples
    role = types["role"].to_numpy()
    for j, i in enumerate(np.flatnonzero(role == TOO_FEW_CELLS)):
        spread[i] = np.clip(round(n_tech * 0.02 * (1 + j / 5)), min_tech + 1, min_cells - 1)
        cells[i] = np.clip(round(min_cells * (0.2 + 0.04 * j)), spread[i], min_cells - 1)
    for j, i in enumerate(np.flatnonzero(role == TOO_FEW_TECH_SAMPLES)):
        spread[i] = np.clip(round(min_tech * (0.3 + 0.1 * j)), 1, min_tech)
        cells[i] = round(min_cells * (2 + j / 2))
    for i in np.flatnonzero((role == TOO_FEW_ANCESTORS) | (role == NOT_IN_ONTOLOGY)):
        share = UNKNOWN_SHARE if role[i] == NOT_IN_ONTOLOGY else SHALLOW_SHARE
        cells[i] = round(n_eligible * share)
        spread[i] = round(n_tech * 0.3)
    kept = np.flatnonzero(role == KEPT)
    zipf = (np.arange(len(kept)) + ZIPF_OFFSET) ** -ZIPF_EXPONENT
    floor = int(np.ceil(1.3 * min_cells))
    rest = n_eligible - cells.sum() - floor * len(kept)
    if rest < 0:
        raise UserError(f"{scale.n_cells:,} cells are too few for the sctab profile",
                        f"ask for --cells {MIN_PROFILE_CELLS} or more")
    order = kept[np.argsort([hashlib.sha256(t.encode()).hexdigest()
                             for t in types["cell_type_ontology_term_id"].to_numpy()[kept]])]
    cells[order] = floor + largest_remainder(zipf, rest)
    # Abundant types are in many tech_samples (the most abundant in all), rare ones in few.
    relative = np.sqrt(zipf / zipf[0])
    spread[order] = np.clip(np.round(n_tech * relative), max(min_tech + 2,
                                                           int(np.ceil(1.5 * (min_tech + 1)))),
                            n_tech)
    spread[order] = np.minimum(spread[order], cells[order])
    return cells, spread


def _allocate(rng: np.random.Generator, weights: np.ndarray, cells: int, spread: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """``cells`` cells over ``spread`` tech_samples picked by weight, at least one in each."""
    keys = np.log(rng.random(len(weights))) / weights  # Efraimidis-Spirakis: top keys win
    chosen = np.argsort(-keys)[:spread]
    extra = rng.multinomial(cells - spread, weights[chosen] / weights[chosen].sum())
    return chosen, 1 + extra


@dataclass(frozen=True)
class _Group:
    """Datasets of one kind (eligible, non-10x or non-primary) and their tech_samples."""

    assays: list[str]
    primary: bool
    systems: np.ndarray
    donors: np.ndarray  # per dataset
    weight: np.ndarray  # per tech_sample
    dataset_of: np.ndarray  # per tech_sample, index into this group's datasets


def _group(rng: np.random.Generator, n_datasets: int, n_tech: int, assays: list[str],
           primary: bool) -> _Group:
    size = np.exp(DATASET_SIZE_SD * rng.standard_normal(n_datasets))
    shares = np.array([s[4] for s in SYSTEMS])
    systems = rng.choice(len(SYSTEMS), n_datasets, p=shares / shares.sum())
    donors = 1 + largest_remainder(np.sqrt(size), max(n_tech - n_datasets, 0))
    dataset_of = np.repeat(np.arange(n_datasets), donors)
    weight = (size / donors)[dataset_of] * np.exp(DONOR_SIZE_SD
                                                  * rng.standard_normal(len(dataset_of)))
    return _Group(assays, primary, systems, donors, weight, dataset_of)


class SctabLayout:
    """Datasets, tech_samples and the exact cell-type counts of the sctab profile."""

    def __init__(self, n_cells: int, seed: int, ontology: CellOntology) -> None:
        self.n_cells = n_cells
        self.scale = SctabScale.at(n_cells)
        rng = np.random.default_rng([seed, 3])
        types = choose_cell_types(ontology)
        self.cell_types = tuple(zip(types["cell_type_ontology_term_id"], types["cell_type"],
                                    strict=True))
        s = self.scale
        n_non_10x = int(round(NON_10X_SHARE * n_cells))
        n_non_primary = int(round(NON_PRIMARY_SHARE * n_cells))
        n_eligible = n_cells - n_non_10x - n_non_primary
        per_dataset = s.n_tech_samples / s.n_datasets
        tenx = list(_TENX_WEIGHTS)
        tenx_p = np.array(list(_TENX_WEIGHTS.values()))
        eligible = _group(rng, s.n_datasets, s.n_tech_samples,
                          list(rng.choice(tenx, s.n_datasets, p=tenx_p)), True)
        non_10x = _group(rng, s.n_non_10x_datasets,
                         max(1, round(per_dataset * s.n_non_10x_datasets)),
                         [NON_10X_ASSAYS[i % len(NON_10X_ASSAYS)]
                          for i in range(s.n_non_10x_datasets)], True)
        non_primary = _group(rng, s.n_non_primary_datasets,
                             max(1, round(per_dataset * s.n_non_primary_datasets)),
                             list(rng.choice(tenx, s.n_non_primary_datasets, p=tenx_p)), False)
        cells, spread = _type_targets(types, s, n_eligible)
        system = types["system"].to_numpy()
        counts_eligible = self._fill(rng, eligible.weight, eligible.systems[eligible.dataset_of],
                                     system, cells, spread)
        dropped_weight = np.concatenate([
            non_10x.weight / non_10x.weight.sum() * n_non_10x,
            non_primary.weight / non_primary.weight.sum() * n_non_primary])
        dropped_system = np.concatenate([non_10x.systems[non_10x.dataset_of],
                                         non_primary.systems[non_primary.dataset_of]])
        d_cells, d_spread = self._dropped_targets(types, s, cells, n_eligible,
                                                  n_non_10x + n_non_primary, len(dropped_weight))
        counts_dropped = self._fill(rng, dropped_weight, dropped_system, system, d_cells,
                                    d_spread)
        self.design = self._design(types, counts_eligible)
        self._check(ontology)
        self._build_datasets(rng, [eligible, non_10x, non_primary],
                             [counts_eligible, counts_dropped[: len(non_10x.weight)],
                              counts_dropped[len(non_10x.weight):]])

    # -- allocation ------------------------------------------------------------------------

    @staticmethod
    def _fill(rng: np.random.Generator, weight: np.ndarray, tech_system: np.ndarray,
                      type_system: np.ndarray, cells: np.ndarray, spread: np.ndarray
                      ) -> np.ndarray:
        """[tech_samples, types] cell counts: each type's cells over its spread of
        tech_samples, preferring tech_samples of its own tissue system."""
        counts = np.zeros((len(weight), len(cells)), dtype=np.int64)
        for k in np.flatnonzero(cells > 0):
            w = weight * np.where(tech_system == type_system[k], 1.0, OUT_OF_SYSTEM)
            chosen, n = _allocate(rng, w, int(cells[k]), int(min(spread[k], len(w))))
            counts[chosen, k] = n
        return counts

    @staticmethod
    def _dropped_targets(types: pd.DataFrame, scale: SctabScale, cells: np.ndarray,
                         n_eligible: int, n_dropped: int, n_tech: int
                         ) -> tuple[np.ndarray, np.ndarray]:
        """Cells and tech_samples of each type among the dropped datasets: the eligible mix,
        plus enough cells of each failing type that it would pass without the query."""
        role = types["role"].to_numpy()
        d_cells = np.floor(cells / n_eligible * n_dropped).astype(np.int64)
        d_spread = np.minimum(np.maximum(np.round(n_tech * 0.3), 1), n_tech) * np.ones(
            len(cells), dtype=np.int64)
        few_cells = role == TOO_FEW_CELLS
        few_tech = role == TOO_FEW_TECH_SAMPLES
        d_spread[few_tech] = min(n_tech, scale.min_tech_samples + 1)
        d_cells[few_cells] = np.maximum(d_cells[few_cells], scale.min_cells)
        d_cells[few_tech] = np.maximum(d_cells[few_tech], d_spread[few_tech])
        fill = int(np.argmax(cells))  # the most abundant type fills up, in every tech_sample
        d_cells[fill] += n_dropped - d_cells.sum()
        d_spread[fill] = n_tech
        if d_cells[fill] < n_tech:
            raise UserError(f"{scale.n_cells:,} cells are too few for the sctab profile",
                            f"ask for --cells {MIN_PROFILE_CELLS} or more")
        return d_cells, np.minimum(d_spread, np.maximum(d_cells, 1))

    def _design(self, types: pd.DataFrame, counts: np.ndarray) -> SctabDesign:
        table = types.copy()
        table["n_cells"] = counts.sum(axis=0)
        table["n_tech_samples"] = (counts > 0).sum(axis=0)
        return SctabDesign(self.scale, table)

    def _check(self, ontology: CellOntology) -> None:
        """The allocation gives each type the role it was designed for (or the design is
        wrong): the scTab rule on the eligible counts keeps exactly the intended types."""
        t, s = self.design.cell_types, self.scale
        passes = ((t["n_cells"] >= s.min_cells) & (t["n_tech_samples"] > s.min_tech_samples)
                  & np.array([ontology.check_term(term, NATIVE_CELL, s.min_ancestors).passes
                              for term in t["cell_type_ontology_term_id"]]))
        if not np.array_equal(passes.to_numpy(), (t["role"] == KEPT).to_numpy()):
            wrong = t.loc[passes != (t["role"] == KEPT), "cell_type_ontology_term_id"].tolist()
            raise RuntimeError(f"sctab profile at {s.n_cells} cells misplaces {wrong}")

    # -- datasets and cells ------------------------------------------------------------------

    def _build_datasets(self, rng: np.random.Generator, groups: list[_Group],
                        counts: list[np.ndarray]) -> None:
        """Datasets in a seeded order, each with its tech_samples' rows of type counts."""
        entries = [(g, i, c[g.dataset_of == i]) for g, c in zip(groups, counts, strict=True)
                   for i in range(len(g.donors))]
        order = rng.permutation(len(entries))
        datasets, rows, start = [], [], 0
        for number, e in enumerate(order):
            group, i, dataset_counts = entries[e]
            system = SYSTEMS[int(group.systems[i])]
            dataset_id = f"sctab-synth-{number:04d}"
            n = int(dataset_counts.sum())
            datasets.append(SynthDataset(
                dataset_id=dataset_id,
                title=f"Synthetic {system[3][0]} dataset {number} ({group.assays[i]})",
                assay=str(group.assays[i]), primary=group.primary,
                donors=tuple(f"{dataset_id}-donor{j}" for j in range(len(dataset_counts))),
                n_cells=n, start=start, tissue=system[3]))
            rows.append(dataset_counts)
            start += n
        self.datasets = tuple(datasets)
        tech_counts = np.concatenate(rows)
        sizes = tech_counts.sum(axis=1)
        self._tech_start = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        self._tech_size = sizes
        self._cum = np.cumsum(tech_counts, axis=1).astype(np.int64)
        self._tech_dataset = np.repeat(np.arange(len(datasets)),
                                       [len(d.donors) for d in datasets])
        self._step = np.where(sizes % _PRIMES[0] == 0, _PRIMES[1], _PRIMES[0])
        self._offset = rng.integers(0, 1 << 40, len(sizes))

    def cells(self, start: int, stop: int, rng: np.random.Generator) -> CellBlock:
        idx = np.arange(start, stop, dtype=np.int64)
        tech = np.searchsorted(self._tech_start, idx, side="right") - 1
        size = self._tech_size[tech]
        # A fixed permutation of positions inside each tech_sample: types interleaved.
        position = (self._step[tech] * (idx - self._tech_start[tech])
                    + self._offset[tech] % size) % size
        cell_type = (self._cum[tech] <= position[:, None]).sum(axis=1)
        return CellBlock(self._tech_dataset[tech], tech, cell_type)
