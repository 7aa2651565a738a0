"""The synthetic census: census layout, realistic structure, deterministic for a seed."""

from __future__ import annotations

import hashlib
from pathlib import Path

import anndata as ad
import cellxgene_census
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from ssl_census.census.genes import N_GENES_ENSEMBL_104, load_annotation, synthetic_annotation
from ssl_census.census.layout import TENX_ASSAYS, CensusWriter
from ssl_census.census.synth import (
    CELL_TYPES,
    SyntheticCensusModel,
    make_layout,
    write_synthetic_census,
)
from ssl_census.census.synth_expression import (
    LIB_LOG_INTERCEPT,
    LIB_LOG_SLOPE,
    NNZ_LOG_MEAN,
    NNZ_LOG_SD,
)
from ssl_census.census.synth_sctab import FULL_CELLS, SctabLayout, SctabScale, shards_config
from ssl_census.cli import main
from ssl_census.core.config import toml_dumps
from ssl_census.core.ontology import load_cell_ontology

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


def test_nonzeros_and_library_sizes_follow_the_fitted_distributions(synth: ad.AnnData) -> None:
    x = synth.X.tocsr()
    nnz = np.diff(x.indptr)
    lib = np.asarray(x.sum(axis=1)).ravel()
    assert synth.n_obs == 3_000
    assert np.all(x.data >= 1) and np.all(x.data == np.round(x.data))
    # Non-zeros per cell log-normal around the fitted median (858), library sizes on the
    # fitted log-log line through them.
    assert 0.8 * np.exp(NNZ_LOG_MEAN) < np.median(nnz) < 1.25 * np.exp(NNZ_LOG_MEAN)
    assert 0.7 * NNZ_LOG_SD < np.log(nnz).std() < 1.5 * NNZ_LOG_SD
    residual = np.log(lib) - (LIB_LOG_INTERCEPT + LIB_LOG_SLOPE * np.log(nnz))
    assert abs(np.median(residual)) < 0.1
    # Overdispersed: variance of the counts well above their mean, with a long tail.
    assert x.data.var() > 2 * x.data.mean() and x.data.max() >= 50


def test_nnz_per_cell_sets_the_mean_and_max_nnz_caps_it() -> None:
    layout = make_layout("pbmc", 6_000, 1, load_cell_ontology())
    var = synthetic_annotation()
    for kw, check in [({"nnz_per_cell": 200}, lambda n: abs(n.mean() / 200 - 1) < 0.05),
                      ({"nnz_range": (1, 150)}, lambda n: n.max() <= 150)]:
        model = SyntheticCensusModel(var, layout, 1, load_cell_ontology(), **kw)
        nnz = np.concatenate([np.diff(model.block(a, a + 2_000)[1]) for a in (0, 2_000, 4_000)])
        assert check(nnz), (kw, nnz.mean(), nnz.max())


def test_datasets_assays_donors_and_primary_flags(synth: ad.AnnData) -> None:
    obs = synth.obs
    assert set(TENX_ASSAYS) <= set(obs["assay"])
    assert "Smart-seq2" in set(obs["assay"])
    assert obs["dataset_id"].nunique() == 10
    # Enough donors that a split by tech_sample comes out close to 70/15/15.
    assert obs.groupby("dataset_id", observed=True)["donor_id"].nunique().min() >= 20
    primary = obs["is_primary_data"].to_numpy()
    assert 0 < (~primary).sum() < len(obs) / 2
    # A whole dataset is a re-submission; datasets are contiguous blocks of cells.
    assert obs.groupby("dataset_id", observed=True)["is_primary_data"].nunique().max() == 1
    first = obs["dataset_id"].astype(str).to_numpy()
    assert (first[1:] != first[:-1]).sum() == 9
    assert set(obs["cell_type_ontology_term_id"]) <= {t[0] for t in CELL_TYPES}
    pairs = set(zip(obs["cell_type_ontology_term_id"], obs["cell_type"], strict=True))
    assert pairs <= {(t[0], t[1]) for t in CELL_TYPES}


def _nearest_centroid_accuracy(x, labels: np.ndarray) -> float:
    """Fit class centroids of log-normalised counts on half the cells, classify the rest."""
    rng = np.random.default_rng(0)
    train = rng.random(len(labels)) < 0.5
    names = np.unique(labels[train])
    centroids = np.vstack([np.asarray(x[train & (labels == t)].mean(axis=0)).ravel()
                           for t in names])
    xt = x[np.flatnonzero(~train)]
    dist = (np.asarray(xt.multiply(xt).sum(axis=1))
            - 2 * (xt @ centroids.T) + (centroids**2).sum(axis=1)[None, :])
    return float((names[np.argmin(dist, axis=1)] == labels[~train]).mean())


def test_types_differ_by_ontology_programmes_subtypes_close_to_parents(synth: ad.AnnData) -> None:
    """Lineages (T, B, NK, dendritic cells, monocytes) are far apart; types inside a lineage
    share their ancestors' programmes and are told apart only in part."""
    from ssl_census.core import ontology

    x = synth.X.tocsr().astype(np.float64)
    scale = 1e4 / np.asarray(x.sum(axis=1)).ravel()
    x = x.multiply(scale[:, None]).tocsr()
    x.data = np.log1p(x.data)
    types = synth.obs["cell_type_ontology_term_id"].astype(str).to_numpy()
    roots = {"CL:0000084": "T", "CL:0000236": "B", "CL:0000623": "NK",
             "CL:0000451": "dendritic", "CL:0000576": "monocyte"}
    lineage = np.array([next(name for root, name in roots.items()
                             if ontology.is_descendant(t, root)) for t in types])
    assert _nearest_centroid_accuracy(x, lineage) > 0.9
    within = _nearest_centroid_accuracy(x, types)
    assert 1.0 / len(CELL_TYPES) * 3 < within < 0.95


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
    kw = {"n_datasets": 4, "nnz_per_cell": 300, "block_cells": 150}
    write_synthetic_census(tmp_path / "a", 400, seed=7, **kw)
    write_synthetic_census(tmp_path / "b", 400, seed=7, **kw)
    write_synthetic_census(tmp_path / "c", 400, seed=8, **kw)
    a, b, c = (_read(tmp_path / n) for n in "abc")
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_obs_written_in_several_flushes_keeps_its_labels(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # obs is buffered and written a batch of blocks at a time; later batches bring datasets
    # and donors the first did not have, whose labels must survive the separate writes
    kw = {"n_datasets": 4, "nnz_per_cell": 300, "block_cells": 50}
    write_synthetic_census(tmp_path / "once", 400, seed=7, **kw)
    monkeypatch.setattr(CensusWriter, "OBS_WRITE_CELLS", 100)
    write_synthetic_census(tmp_path / "flushed", 400, seed=7, **kw)
    once, flushed = _read(tmp_path / "once"), _read(tmp_path / "flushed")
    assert flushed.obs["dataset_id"].nunique() == 4
    assert _digest(once) == _digest(flushed)


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
    assert np.diff(x.indptr).max() <= 300
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


# -- the sctab profile ------------------------------------------------------------------------

SCTAB_CELLS = 24_000  # the smallest sizes keep every role of the profile; a few seconds


def _census_obs(uri: Path) -> pd.DataFrame:
    with cellxgene_census.open_soma(uri=str(uri), tiledb_config=SMALL_BUFFERS) as census:
        obs = census["census_data"]["homo_sapiens"].obs
        return obs.read(column_names=["soma_joinid", "dataset_id", "donor_id", "assay",
                                      "is_primary_data", "cell_type_ontology_term_id"]
                        ).concat().to_pandas()


@pytest.fixture(scope="module")
def sctab_census(tmp_path_factory: pytest.TempPathFactory, annotation_dir: Path | None
                 ) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sctab") / "census"
    summary = write_synthetic_census(out, SCTAB_CELLS, seed=3, profile="sctab",
                                     nnz_per_cell=30, data_dir=annotation_dir)
    return out, summary


@pytest.fixture(scope="module")
def sctab_shards(sctab_census: tuple[Path, dict], annotation_dir: Path | None) -> Path:
    """A real shard build of the sctab census with the thresholds it was designed for."""
    from ssl_census.shards.build import build_shards
    from ssl_census.shards.config import load_shards_config

    uri, summary = sctab_census
    config_path = uri.parent / "shards.toml"
    config_path.write_text(toml_dumps(shards_config(SctabScale.at(SCTAB_CELLS))))
    genes = uri.parent / "genes.txt"
    var = load_annotation(None, annotation_dir)
    coding = var.loc[var["gene_biotype"] == "protein_coding", "feature_name"]
    genes.write_text("\n".join(coding if len(coding) >= 15_000 else var["feature_name"]))
    out = uri.parent / "shards"
    build_shards(out, load_shards_config(config_path), census_uri=str(uri), gene_list=str(genes))
    return out


def test_sctab_profile_shape(sctab_census: tuple[Path, dict]) -> None:
    uri, summary = sctab_census
    obs = _census_obs(uri)
    assert summary["n_cells"] == len(obs) == SCTAB_CELLS
    eligible = obs["is_primary_data"] & obs["assay"].astype(str).isin(TENX_ASSAYS)
    # Cells the query must drop: non-10x assays and re-submitted 10x cells, a modest share each.
    non_10x = ~obs["assay"].astype(str).isin(TENX_ASSAYS)
    non_primary = ~obs["is_primary_data"] & ~non_10x
    assert 0.03 < non_10x.mean() < 0.08 and 0.03 < non_primary.mean() < 0.09
    assert eligible.sum() == summary["n_eligible"]
    tech = obs.loc[eligible, ["dataset_id", "donor_id"]].drop_duplicates()
    assert len(tech) == summary["n_tech_samples_eligible"]
    assert len(tech) == SctabScale.at(SCTAB_CELLS).n_tech_samples
    # Dataset sizes differ by orders of magnitude; a few types hold most cells.
    sizes = obs.groupby("dataset_id", observed=True).size()
    assert sizes.max() > 20 * sizes.min()
    shares = obs.loc[eligible, "cell_type_ontology_term_id"].value_counts(normalize=True)
    assert shares.iloc[:10].sum() > 0.5
    roles = summary["cell_types_by_role"]
    assert roles == {"kept": 164, "too few cells": 10, "too few tech_samples": 8,
                     "too few ancestors": 6, "not in the ontology": 1}
    assert len(summary["intended_cell_types"]) == 164


def test_sctab_full_size_matches_the_scTab_build() -> None:
    """At 22.2M cells: 249 datasets and 5,052 tech_samples of primary 10x cells, scTab's
    thresholds (5,000 cells, 30 tech_samples); built without writing a cell."""
    layout = SctabLayout(FULL_CELLS, 0, load_cell_ontology())
    assert layout.scale.curation()["min_cells"] == 5_000
    assert layout.scale.curation()["min_tech_samples"] == 30
    eligible = [d for d in layout.datasets if d.eligible]
    assert len(eligible) == 249 and sum(len(d.donors) for d in eligible) == 5_052
    sizes = np.array([d.n_cells for d in eligible])
    assert sizes.min() < 1_000 and sizes.max() > 1_000_000
    assert sum(d.n_cells for d in layout.datasets) == FULL_CELLS
    assert len(layout.design.intended_cell_types) == 164


def test_sctab_curation_filter_and_split_in_a_real_shard_build(sctab_census, sctab_shards
                                                                ) -> None:
    from ssl_census.shards.store import open_shards

    uri, summary = sctab_census
    store = open_shards(sctab_shards)
    # Curation keeps exactly the intended types.
    assert sorted(store.labels["cell_type_ontology_term_id"]) == summary["intended_cell_types"]
    obs = pd.concat([store.split(s)[1].assign(split=s) for s in store.splits],
                    ignore_index=True)
    census = _census_obs(uri).set_index("soma_joinid")
    source = census.loc[obs["soma_joinid"]]
    # The query drops every non-10x and every re-submitted cell, and keeps all the others of
    # the intended types.
    assert source["is_primary_data"].all()
    assert set(source["assay"].astype(str)) <= set(TENX_ASSAYS)
    eligible = census[census["is_primary_data"] & census["assay"].astype(str).isin(TENX_ASSAYS)]
    intended = eligible["cell_type_ontology_term_id"].astype(str).isin(
        summary["intended_cell_types"])
    assert len(obs) + store.manifest["dropped"]["empty_cells"] == intended.sum()
    # The split is by tech_sample, and tech_samples fall about 70/15/15.
    per_tech = obs.groupby(["dataset_id", "donor_id"], observed=True)["split"].nunique()
    assert per_tech.max() == 1
    tech_split = obs.drop_duplicates(["dataset_id", "donor_id"])["split"].value_counts(
        normalize=True)
    assert abs(tech_split["train"] - 0.70) < 0.08
    assert abs(tech_split["val"] - 0.15) < 0.06 and abs(tech_split["test"] - 0.15) < 0.06


def test_sctab_same_seed_same_store(sctab_census, tmp_path: Path,
                                    annotation_dir: Path | None) -> None:
    uri, _ = sctab_census
    again = tmp_path / "again"
    write_synthetic_census(again, SCTAB_CELLS, seed=3, profile="sctab", nnz_per_cell=30,
                           data_dir=annotation_dir)
    assert _digest(_read(uri)) == _digest(_read(again))


def test_cli_sctab_writes_its_shards_config(tmp_path: Path) -> None:
    from ssl_census.shards.config import load_shards_config

    config = tmp_path / "shards.toml"
    result = CliRunner().invoke(main, ["census", "synth", "--profile", "sctab", "--cells",
                                       "20000", "--nnz-per-cell", "5", "--out",
                                       str(tmp_path / "c"), "--shards-config", str(config)])
    assert result.exit_code == 0, result.output
    curation = load_shards_config(config).curation
    scale = SctabScale.at(20_000)
    assert (curation.min_cells, curation.min_tech_samples) == (scale.min_cells,
                                                               scale.min_tech_samples)
    too_small = CliRunner().invoke(main, ["census", "synth", "--profile", "sctab", "--cells",
                                          "5000", "--out", str(tmp_path / "d")])
    assert too_small.exit_code == 2 and "at least 20,000 cells" in too_small.output
