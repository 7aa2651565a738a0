"""A small shard store for the loader tests, from the synthetic census (no outside data),
written through the shard build's own test writer with the cells ordered by donor
(unshuffled), so that a loader that forgot to shuffle would show it.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp
from synth_support import store_var

from ssl_census.core.store import open_csr
from ssl_census.shards.store import write_store_from_arrays

N_VAL = 2_000
RARE_KEEP = 0.08


def build_synth_store(cells: ad.AnnData, out: Path) -> Path:
    """``cells`` as a store: train, then the last N_VAL cells as val, each ordered by donor.
    The rarer half of the cell types keeps one cell in RARE_KEEP, so classes are as unequal
    as in real PBMCs (the balanced sampler has something to even out)."""
    if (out / "manifest.json").is_file():
        return out
    types = cells.obs["cell_type"]
    rare = types.isin(types.value_counts().index[types.nunique() // 2:]).to_numpy()
    kept = ~rare | (np.random.default_rng(0).random(len(types)) < RARE_KEEP)
    order = np.argsort(cells.obs["donor_id"].to_numpy(), kind="stable")
    keep = order[kept[order]]
    m, obs = sp.csr_matrix(cells.X[keep]), cells.obs.iloc[keep]
    n_train = m.shape[0] - N_VAL
    write_store_from_arrays(out, store_var(cells), {
        "train": (m[:n_train], obs.iloc[:n_train]),
        "val": (m[n_train:], obs.iloc[n_train:]),
    })
    return out


def stored_matrix(store: Path, split: str, layer: str) -> sp.csr_matrix:
    """The split's stored values as a scipy matrix, read through zarr-python (the reference)."""
    x = open_csr(store / split / "X.zarr")
    values = x.data[:] if layer == "x" else x.counts[:].astype(np.float32)
    return sp.csr_matrix((values, x.indices[:], x.indptr[:]), shape=(x.n_cells, x.n_genes))
