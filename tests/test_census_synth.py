"""The synthetic census: census layout, realistic structure, deterministic for a seed."""

from __future__ import annotations

import hashlib
from pathlib import Path

import anndata as ad
import cellxgene_census
import numpy as np
import pytest
from click.testing import CliRunner

from ssl_census.census.genes import N_GENES_ENSEMBL_104, synthetic_annotation
from ssl_census.census.layout import TENX_ASSAYS
from ssl_census.census.synth import CELL_TYPES, write_synthetic_census
from ssl_census.cli import main

SMALL_BUFFERS = {"soma.init_buffer_bytes": 32 * 1024**2}


def _read(uri: str | Path, **kw) -> ad.AnnData:
    with cellxgene_census.open_soma(uri=str(uri), tiledb_config=SMALL_BUFFERS) as census:
        return cellxgene_census.get_anndata(census, "Homo sapiens", **kw)


def _digest(adata: ad.AnnData) -> str:
    x = adata.X.tocsr()
    h = hashlib.sha256()
    for arr in (x.indptr, x.indices, x.data):
        h.update(np.ascontiguousarray(arr).tobytes())
    for col in adata.obs.columns:
        h.update("\0".join(map(str, adata.obs[col])).encode())
    return h.hexdigest()


@pytest.fixture(scope="module")
def synth(synth_census_uri: str) -> ad.AnnData:
    return _read(synth_census_uri)


def test_nonzeros_per_cell_in_range_and_counts_are_positive_integers(synth: ad.AnnData) -> None:
    x = synth.X.tocsr()
    nnz = np.diff(x.indptr)
    assert synth.n_obs == 3_000
    assert nnz.min() >= 1_000 and nnz.max() <= 3_000
    assert np.all(x.data >= 1) and np.all(x.data == np.round(x.data))
    # Overdispersed: variance of the counts well above their mean, with a long tail.
    assert x.data.var() > 2 * x.data.mean() and x.data.max() >= 50


def test_datasets_assays_donors_and_primary_flags(synth: ad.AnnData) -> None:
    obs = synth.obs
    assert set(TENX_ASSAYS) <= set(obs["assay"])
    assert "Smart-seq2" in set(obs["assay"])
    assert obs["dataset_id"].nunique() == 10
    assert obs.groupby("dataset_id", observed=True)["donor_id"].nunique().min() >= 2
    primary = obs["is_primary_data"].to_numpy()
    assert 0 < (~primary).sum() < len(obs) / 2
    # A whole dataset is a re-submission; datasets are contiguous blocks of cells.
    assert obs.groupby("dataset_id", observed=True)["is_primary_data"].nunique().max() == 1
    first = obs["dataset_id"].astype(str).to_numpy()
    assert (first[1:] != first[:-1]).sum() == 9
    assert set(obs["cell_type_ontology_term_id"]) <= {t[0] for t in CELL_TYPES}
    pairs = set(zip(obs["cell_type_ontology_term_id"], obs["cell_type"], strict=True))
    assert pairs <= {(t[0], t[1]) for t in CELL_TYPES}


def test_cell_types_are_driven_by_gene_programmes(synth: ad.AnnData) -> None:
    """A nearest-centroid classifier on log counts, fit on half the cells, recovers types."""
    x = synth.X.tocsr().astype(np.float64)
    scale = 1e4 / np.asarray(x.sum(axis=1)).ravel()
    x = x.multiply(scale[:, None]).tocsr()
    x.data = np.log1p(x.data)
    types = synth.obs["cell_type_ontology_term_id"].astype(str).to_numpy()
    rng = np.random.default_rng(0)
    train = rng.random(len(types)) < 0.5
    labels = np.unique(types[train])
    centroids = np.vstack([np.asarray(x[train & (types == t)].mean(axis=0)).ravel()
                           for t in labels])
    test = np.flatnonzero(~train)
    xt = x[test]
    dist = (np.asarray(xt.multiply(xt).sum(axis=1))
            - 2 * (xt @ centroids.T) + (centroids**2).sum(axis=1)[None, :])
    accuracy = (labels[np.argmin(dist, axis=1)] == types[test]).mean()
    assert accuracy > 0.9


def test_presence_matrix_covers_every_measured_gene(synth_census_uri: str,
                                                    synth: ad.AnnData) -> None:
    with cellxgene_census.open_soma(uri=synth_census_uri, tiledb_config=SMALL_BUFFERS) as c:
        presence = (c["census_data"]["homo_sapiens"].ms["RNA"]["feature_dataset_presence_matrix"]
                    .read().coos().concat().to_scipy().tocsr().toarray().astype(bool))
        datasets = c["census_info"]["datasets"].read().concat().to_pandas()
    assert presence.shape == (10, synth.n_vars)
    x = synth.X.tocsr()
    assert not presence.all(), "10x datasets should miss part of the genes"
    for row, dataset_id in zip(datasets["soma_joinid"], datasets["dataset_id"], strict=True):
        cells = (synth.obs["dataset_id"] == dataset_id).to_numpy()
        used = np.unique(x[cells].indices)
        assert presence[row, used].all()


def test_same_seed_same_store_other_seed_other_store(tmp_path: Path) -> None:
    kw = {"n_datasets": 4, "nnz_range": (200, 400), "block_cells": 150}
    write_synthetic_census(tmp_path / "a", 400, seed=7, **kw)
    write_synthetic_census(tmp_path / "b", 400, seed=7, **kw)
    write_synthetic_census(tmp_path / "c", 400, seed=8, **kw)
    a, b, c = (_read(tmp_path / n) for n in "abc")
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)
    assert (np.diff(a.X.tocsr().indptr) >= 200).all()


def test_synthetic_annotation_is_deterministic_with_sctab_genes(shared_data: Path) -> None:
    features = shared_data / "genes" / "scTab_features.parquet"
    a, b = synthetic_annotation(features), synthetic_annotation(features)
    assert len(a) == N_GENES_ENSEMBL_104
    assert a.equals(b)
    assert a["feature_id"].is_unique and a["feature_id"].is_monotonic_increasing
    assert {"TSPAN6", "DPM1"} <= set(a["feature_name"])
    assert (a["gene_biotype"] == "protein_coding").sum() == 19_357


def test_cli_synth_later_schema(tmp_path: Path) -> None:
    out = tmp_path / "later"
    result = CliRunner().invoke(main, ["census", "synth", "--cells", "60", "--out", str(out),
                                       "--schema", "later", "--datasets", "3",
                                       "--min-nnz", "100", "--max-nnz", "300"])
    assert result.exit_code == 0, result.output
    adata = _read(out)
    x = adata.X.tocsr()
    np.testing.assert_allclose(adata.obs["raw_sum"], np.asarray(x.sum(axis=1)).ravel())
    np.testing.assert_array_equal(adata.obs["nnz"], np.diff(x.indptr))
    assert adata.n_vars == N_GENES_ENSEMBL_104


def test_cell_types_are_real_deep_cell_ontology_terms() -> None:
    """Labels match the ontology; each type survives a scTab-style filter (native cell, > 7
    ancestors)."""
    from cellxgene_ontology_guide.ontology_parser import OntologyParser

    from ssl_census.core import ontology

    parser = OntologyParser()
    for term, label, _ in CELL_TYPES:
        assert parser.get_term_label(term) == label
        assert ontology.is_descendant(term, ontology.NATIVE_CELL)
        assert len(ontology.ancestors(term)) > 7, term
