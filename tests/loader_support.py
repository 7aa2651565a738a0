"""A small real shard store for the loader tests: Kang et al. PBMCs (12,261 cells, 8 donors).

Built once per session through the shard build's own test writer, with the donors as
datasets so that obs has several string columns, and the cells ordered by donor (unshuffled)
so that a loader that forgot to shuffle would show it.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ssl_census.core.store import open_csr
from ssl_census.shards.store import write_store_from_arrays

KANG_CL = {
    "CD4 T cells": "CL:0000624", "CD8 T cells": "CL:0000625", "CD14+ Monocytes": "CL:0001054",
    "FCGR3A+ Monocytes": "CL:0002396", "B cells": "CL:0000236", "NK cells": "CL:0000623",
    "Dendritic cells": "CL:0000451", "Megakaryocytes": "CL:0000556",
}
N_VAL = 2_000


def build_kang_store(shared_data: Path, out: Path) -> Path:
    if (out / "manifest.json").is_file():
        return out
    a = ad.read_h5ad(shared_data / "h5ad" / "kang_ctrl_muscat_se.h5ad")
    order = np.argsort(a.obs["donor"].astype(str).to_numpy(), kind="stable")
    a = a[order]
    m = sp.csr_matrix(a.X).astype(np.float32)
    keep = np.asarray(m.sum(axis=1)).ravel() > 0
    a, m = a[keep], m[keep]
    labels = a.obs["cell_type"].astype(str)
    obs = pd.DataFrame({
        "cell_type": labels.to_numpy(),
        "cell_type_ontology_term_id": labels.map(KANG_CL).to_numpy(),
        "dataset_id": ("kang-" + a.obs["donor"].astype(str)).to_numpy(),
        "donor_id": a.obs["donor"].astype(str).to_numpy(),
    })
    var = pd.DataFrame({"feature_id": a.var_names.astype(str),
                        "feature_name": a.var["gene_symbol"].astype(str).to_numpy()})
    n_train = m.shape[0] - N_VAL
    write_store_from_arrays(out, var, {
        "train": (m[:n_train], obs.iloc[:n_train]),
        "val": (m[n_train:], obs.iloc[n_train:]),
    })
    return out


def stored_matrix(store: Path, split: str, layer: str) -> sp.csr_matrix:
    """The split's stored values as a scipy matrix, read through zarr-python (the reference)."""
    x = open_csr(store / split / "X.zarr")
    values = x.data[:] if layer == "x" else x.counts[:].astype(np.float32)
    return sp.csr_matrix((values, x.indices[:], x.indptr[:]), shape=(x.n_cells, x.n_genes))
