"""Synthetic cells for the tests that need cells but not real ones: the primary cells of a
synthetic census (ssl_census/census/synth.py) as an AnnData of raw counts, shard stores written
from them, gene programmes that follow their cell types, and CITE-seq-like protein counts."""

from __future__ import annotations

import hashlib
from pathlib import Path

import anndata as ad
import cellxgene_census
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ssl_census.shards.config import load_shards_config
from ssl_census.shards.split import SPLITS, assign_splits, tech_sample
from ssl_census.shards.store import write_store_from_arrays
from ssl_census.shards.values import normalise

N_GENES = 2_000  # the genes measured in the most cells
OBS_COLUMNS = ("dataset_id", "donor_id", "assay", "cell_type", "cell_type_ontology_term_id")
SMALL_BUFFERS = {"soma.init_buffer_bytes": 32 * 1024**2}
PROGRAMME_SIZE = 20
TF_SUFFIX = "_TARGET_GENES"


def census_cells(census_uri: str | Path, n_genes: int = N_GENES) -> ad.AnnData:
    """The primary cells of a census over its ``n_genes`` most often measured genes, in census
    order: X raw counts (CSR float32), obs as the census has it plus tech_sample, var indexed
    by feature_id with feature_name. Cells left without counts are dropped."""
    with cellxgene_census.open_soma(uri=str(census_uri), tiledb_config=SMALL_BUFFERS) as c:
        a = cellxgene_census.get_anndata(c, "Homo sapiens",
                                         obs_value_filter="is_primary_data == True")
    m = sp.csr_matrix(a.X, dtype=np.float32)
    genes = np.sort(np.argsort(np.diff(m.tocsc().indptr), kind="stable")[::-1][:n_genes])
    m = m[:, genes]
    keep = np.asarray(m.sum(axis=1)).ravel() > 0
    obs = a.obs.loc[keep, list(OBS_COLUMNS)].astype(str).reset_index(drop=True)
    obs["tech_sample"] = tech_sample(obs["dataset_id"], obs["donor_id"])
    obs.index = obs.index.astype(str)
    var = pd.DataFrame({"feature_name": a.var["feature_name"].iloc[genes].astype(str).to_numpy()},
                       index=a.var["feature_id"].iloc[genes].astype(str).to_numpy())
    return ad.AnnData(m[keep], obs=obs, var=var)


def store_var(cells: ad.AnnData) -> pd.DataFrame:
    return pd.DataFrame({"feature_id": cells.var_names.astype(str),
                         "feature_name": cells.var["feature_name"].to_numpy()})


def write_cells(out: Path, cells: ad.AnnData, split_of_cell: np.ndarray) -> Path:
    """``cells`` as a store, split ``SPLITS[i]`` holding the cells whose entry is i; the
    manifest records the digest of a gene-list file naming its genes, as a build does."""
    splits = {name: (cells.X[split_of_cell == i], cells.obs[split_of_cell == i])
              for i, name in enumerate(SPLITS) if (split_of_cell == i).any()}
    gene_list = "".join(f"{g}\n" for g in cells.var_names)
    write_store_from_arrays(out, store_var(cells), splits, manifest={
        "gene_list": {"sha256": hashlib.sha256(gene_list.encode()).hexdigest()}})
    return out


def write_split_by_tech_sample(out: Path, cells: ad.AnnData) -> Path:
    """``cells`` as a train / val / test store split by tech_sample as the synthetic shards
    preset splits a build (configs/shards/synthetic.toml), so no donor is in two splits."""
    split = assign_splits(cells.obs["tech_sample"], load_shards_config("synthetic").split)
    return write_cells(out, cells, split)


def log1p_normalised(counts: sp.csr_matrix) -> sp.csr_matrix:
    """The shard build's values (10,000 per cell, log1p) of raw counts."""
    m = sp.csr_matrix(counts)
    data, _ = normalise(m.indptr, m.data.astype(np.int64))
    return sp.csr_matrix((data, m.indices, m.indptr), shape=m.shape)


def type_programmes(cells: ad.AnnData, size: int = PROGRAMME_SIZE) -> dict[str, list[str]]:
    """Every gene in one programme: genes grouped by the cell type with the highest mean
    expression of them, most type-specific first, in runs of ``size``; so a programme's genes
    rise and fall together, as the census's identity programmes make them."""
    x = log1p_normalised(cells.X)
    types = pd.Categorical(cells.obs["cell_type"])
    member = sp.csr_matrix((np.ones(len(types)), (types.codes, np.arange(len(types)))),
                           shape=(len(types.categories), len(types)))
    means = np.asarray((member @ x).todense()) / np.asarray(member.sum(1))
    owner = means.argmax(0)
    specificity = means.max(0) - means.mean(0)
    names = cells.var["feature_name"].to_numpy()
    programmes: dict[str, list[str]] = {}
    for t, label in enumerate(types.categories):
        genes = np.flatnonzero(owner == t)
        genes = genes[np.argsort(-specificity[genes], kind="stable")]
        for k, start in enumerate(range(0, len(genes), size)):
            programmes[f"{label.replace(' ', '_')}_{k}"] = [str(g) for g in
                                                            names[genes[start:start + size]]]
    return programmes


def _write_gmt(path: Path, sets: dict[str, list[str]]) -> Path:
    path.write_text("".join(f"{name}\tsynthetic\t" + "\t".join(genes) + "\n"
                            for name, genes in sets.items()))
    return path


def write_gene_sets(cells: ad.AnnData, folder: Path) -> dict[str, Path]:
    """GMT files for the programme methods: ``programmes`` (type_programmes) and
    ``tf_targets``, in which each programme of four or more genes names its most
    type-specific gene as the factor (``<GENE>_TARGET_GENES``) of the others."""
    folder.mkdir(parents=True, exist_ok=True)
    programmes = type_programmes(cells)
    targets = {genes[0] + TF_SUFFIX: genes[1:] for genes in programmes.values()
               if len(genes) >= 4}
    return {"programmes": _write_gmt(folder / "programmes.gmt", programmes),
            "tf_targets": _write_gmt(folder / "tf_targets.gmt", targets)}


def with_proteins(cells: ad.AnnData, n_proteins: int = 14, seed: int = 0) -> ad.AnnData:
    """A CITE-seq-like copy: obsm['protein_counts'] holds ``n_proteins`` antibody counts, each
    following the share of the cell's counts in one cell-type programme (as a surface protein
    follows its transcripts), over a background, with Poisson noise."""
    rng = np.random.default_rng(seed)
    programmes = list(type_programmes(cells).values())
    chosen = rng.choice(len(programmes), n_proteins, replace=False)
    position = {g: i for i, g in enumerate(cells.var["feature_name"])}
    counts = sp.csr_matrix(cells.X)
    library = np.asarray(counts.sum(1)).ravel()
    proteins = {}
    for j in chosen:
        genes = [position[g] for g in programmes[j]]
        share = np.asarray(counts[:, genes].sum(1)).ravel() / library
        proteins[f"protein_{j}"] = rng.poisson(20 + 20_000 * share)
    out = cells.copy()
    out.obsm["protein_counts"] = pd.DataFrame(proteins, index=out.obs_names)
    return out
