"""The real local census: every cell's counts and labels equal its h5ad's, read back through
cellxgene_census with census-style value filters; census_info and both schemas."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import anndata as ad
import cellxgene_census
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import scipy.sparse as sp
import tiledbsoma as soma

from ssl_census.census.build_local import build_local_census, stable_id
from ssl_census.census.layout import TENX_ASSAYS

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "census" / "pbmc-real.toml"
SMALL_BUFFERS = {"soma.init_buffer_bytes": 32 * 1024**2}
N_CELLS = 34_169
N_DUPLICATES = 750  # kang_ctrlstim ctrl cells


def _config() -> dict:
    with open(CONFIG, "rb") as f:
        return tomllib.load(f)


def _open(uri: str):
    return cellxgene_census.open_soma(uri=uri, tiledb_config=SMALL_BUFFERS)


def _expected_columns(identifiers: list[str], kind: str, var: pd.DataFrame) -> dict[int, int]:
    """File column -> var position, computed here independently of the package."""
    key = "feature_id" if kind == "ensembl" else "feature_name"
    first = {}
    for pos, name in enumerate(var[key]):
        first.setdefault(name, pos)
    out: dict[int, int] = {}
    taken: set[int] = set()
    for col, name in enumerate(identifiers):
        name = re.sub(r"^hg19_", "", name)
        if kind == "ensembl":
            name = name.split(".")[0]
        pos = first.get(name)
        if pos is not None and pos not in taken:
            out[col] = pos
            taken.add(pos)
    return out


def _file_datasets(entry: dict, adata: ad.AnnData) -> dict[str, np.ndarray]:
    """dataset_id -> the file rows it holds (batches become datasets, in file order)."""
    name = Path(entry["file"]).name
    if "batch_column" not in entry:
        return {stable_id("dataset", name): np.arange(adata.n_obs)}
    batch = adata.obs[entry["batch_column"]].astype(str)
    return {stable_id("dataset", f"{name}/{b}"): np.flatnonzero((batch == b).to_numpy())
            for b in sorted(batch.unique())}


@pytest.fixture(scope="module")
def census_primary_10x(real_census_uri: str) -> ad.AnnData:
    assays = ", ".join(repr(a) for a in TENX_ASSAYS)
    with _open(real_census_uri) as census:
        return cellxgene_census.get_anndata(
            census, "Homo sapiens",
            obs_value_filter=f"is_primary_data == True and assay in [{assays}]")


@pytest.fixture(scope="module")
def census_all(real_census_uri: str) -> ad.AnnData:
    with _open(real_census_uri) as census:
        return cellxgene_census.get_anndata(census, "Homo sapiens")


def test_every_cell_has_its_h5ad_counts_labels_and_donor(census_all: ad.AnnData,
                                                          shared_data: Path) -> None:
    config = _config()
    var = census_all.var
    x = census_all.X.tocsr()
    obs = census_all.obs
    seen = 0
    for entry in config["datasets"]:
        adata = ad.read_h5ad(shared_data / entry["file"])
        ids = (adata.var[entry["gene_column"]] if "gene_column" in entry
               else adata.var_names).astype(str).tolist()
        columns = _expected_columns(ids, entry["gene_id"], var)
        src, dst = np.array(list(columns)), np.array(list(columns.values()))
        labels = {**config["labels"], **entry.get("labels", {})}
        for dataset_id, rows in _file_datasets(entry, adata).items():
            in_census = np.flatnonzero((obs["dataset_id"] == dataset_id).to_numpy())
            assert len(in_census) == len(rows), entry["file"]
            got = x[in_census][:, dst].toarray()
            want = sp.csr_matrix(adata.X)[rows][:, src].toarray()
            np.testing.assert_array_equal(got, want, err_msg=entry["file"])
            # Nothing outside the mapped genes.
            assert x[in_census].nnz == sp.csr_matrix(got).nnz
            file_obs = adata.obs.iloc[rows]
            if "label_column" in entry:
                want_terms = file_obs[entry["label_column"]].astype(str).map(labels).to_numpy()
            else:
                want_terms = np.full(len(rows), "unknown")
            np.testing.assert_array_equal(
                obs["cell_type_ontology_term_id"].to_numpy()[in_census].astype(str), want_terms)
            if "donor_column" in entry:
                np.testing.assert_array_equal(
                    obs["donor_id"].to_numpy()[in_census].astype(str),
                    file_obs[entry["donor_column"]].astype(str).to_numpy())
            seen += len(rows)
    assert seen == census_all.n_obs == N_CELLS


def test_value_filter_keeps_primary_10x_cells_only(census_primary_10x: ad.AnnData,
                                                   census_all: ad.AnnData) -> None:
    obs = census_all.obs
    keep = obs["is_primary_data"].to_numpy() & obs["assay"].isin(list(TENX_ASSAYS)).to_numpy()
    assert census_primary_10x.n_obs == int(keep.sum())
    np.testing.assert_array_equal(census_primary_10x.obs["soma_joinid"].to_numpy(),
                                  obs["soma_joinid"].to_numpy()[keep])
    diff = census_primary_10x.X.tocsr() - census_all.X.tocsr()[keep]
    assert diff.nnz == 0
    # The kang ctrl duplicates, ECCITE-seq, CEL-seq2, Drop-seq and the generic assay are gone.
    assert set(census_primary_10x.obs["assay"]) <= set(TENX_ASSAYS)
    assert census_all.n_obs - census_primary_10x.n_obs == N_DUPLICATES + 500 + 559 + 1408


def test_duplicates_are_the_kang_ctrl_cells(census_all: ad.AnnData, shared_data: Path) -> None:
    obs = census_all.obs
    stim = ad.read_h5ad(shared_data / "h5ad" / "kang_ctrlstim_muscat_example.h5ad", backed="r")
    ds = stable_id("dataset", "kang_ctrlstim_muscat_example.h5ad")
    primary = obs.loc[obs["dataset_id"] == ds, "is_primary_data"].to_numpy()
    np.testing.assert_array_equal(primary, (stim.obs["condition"] != "ctrl").to_numpy())
    assert int((~obs["is_primary_data"]).sum()) == N_DUPLICATES


def test_category_columns_read_back_with_labels(real_census_uri: str) -> None:
    with _open(real_census_uri) as census:
        obs = census["census_data"]["homo_sapiens"].obs
        table = obs.read(column_names=["cell_type", "cell_type_ontology_term_id", "assay",
                                       "donor_id"]).concat()
    for name in ("cell_type", "assay", "donor_id"):
        assert pa.types.is_dictionary(table.schema.field(name).type)
    frame = table.to_pandas()
    assert isinstance(frame["cell_type"].dtype, pd.CategoricalDtype)
    assert "B cell" in set(frame["cell_type"])
    assert "natural killer cell" in set(frame["cell_type"])
    assert "10x 3' v2" in set(frame["assay"])
    pairs = set(zip(frame["cell_type_ontology_term_id"], frame["cell_type"], strict=True))
    assert ("CL:0000236", "B cell") in pairs
    assert ("CL:0001064", "malignant cell") in pairs
    assert ("unknown", "unknown") in pairs


def test_var_is_the_whole_annotation_and_presence_matrix_marks_mapped_genes(
        real_census_uri: str, shared_data: Path) -> None:
    annotation = pd.read_csv(shared_data / "genes" / "ensembl104_GRCh38_genes_biotype.tsv.gz",
                             sep="\t")
    with _open(real_census_uri) as census:
        rna = census["census_data"]["homo_sapiens"].ms["RNA"]
        var = rna.var.read().concat().to_pandas()
        presence = rna["feature_dataset_presence_matrix"].read().coos().concat().to_scipy()
        datasets = census["census_info"]["datasets"].read().concat().to_pandas()
    assert len(var) == 60_664
    np.testing.assert_array_equal(var["feature_id"], annotation["gene_id"])
    np.testing.assert_array_equal(var["feature_name"], annotation["gene_name"])
    presence = presence.tocsr().toarray().astype(bool)
    config = _config()
    for entry in config["datasets"]:
        adata = ad.read_h5ad(shared_data / entry["file"], backed="r")
        ids = (adata.var[entry["gene_column"]] if "gene_column" in entry
               else adata.var_names).astype(str).tolist()
        want = np.zeros(len(var), dtype=bool)
        want[list(_expected_columns(ids, entry["gene_id"], var).values())] = True
        for dataset_id in _file_datasets(entry, adata):
            row = datasets.index[datasets["dataset_id"] == dataset_id][0]
            np.testing.assert_array_equal(presence[datasets.loc[row, "soma_joinid"]], want)


def test_census_info_has_schema_1_0_0(real_census_uri: str, shared_data: Path) -> None:
    with _open(real_census_uri) as census:
        summary = census["census_info"]["summary"].read().concat().to_pandas()
        datasets = census["census_info"]["datasets"].read().concat().to_pandas()
        counts = census["census_info"]["summary_cell_counts"].read().concat().to_pandas()
        obs_names = census["census_data"]["homo_sapiens"].obs.schema.names
        layers = list(census["census_data"]["homo_sapiens"].ms["RNA"].X.keys())
    values = dict(zip(summary["label"], summary["value"], strict=True))
    assert values["census_schema_version"] == "1.0.0"
    assert values["census_build_date"] == "2023-05-15"
    assert values["total_cell_count"] == str(N_CELLS)
    assert values["unique_cell_count"] == str(N_CELLS - N_DUPLICATES)
    assert list(datasets.columns) == [
        "soma_joinid", "collection_id", "collection_name", "collection_doi", "dataset_id",
        "dataset_title", "dataset_h5ad_path", "dataset_total_cell_count"]
    assert datasets["dataset_total_cell_count"].sum() == N_CELLS
    assert len(datasets) == 16  # 10 files, savercat in 3 and cellbench in 5 batches
    assert not {"raw_sum", "nnz", "n_measured_vars", "dataset_version_id"} & set(obs_names)
    assert layers == ["raw"]
    everything = counts[counts["category"] == "all"].iloc[0]
    assert everything["total_cell_count"] == N_CELLS
    assert everything["unique_cell_count"] == N_CELLS - N_DUPLICATES
    b_cells = counts[(counts["category"] == "cell_type")
                     & (counts["ontology_term_id"] == "CL:0000236")].iloc[0]
    stim = ad.read_h5ad(shared_data / "h5ad" / "kang_ctrlstim_muscat_example.h5ad",
                        backed="r").obs
    stim_b = stim["cell_type"] == "B cells"
    # kang_ctrl, zheng "bcells", savercat "B cells", and kang_ctrlstim's (ctrl not unique).
    assert b_cells["total_cell_count"] == 1306 + 330 + 280 + int(stim_b.sum())
    assert b_cells["unique_cell_count"] == 1306 + 330 + 280 + int(
        (stim_b & (stim["condition"] != "ctrl")).sum())


@pytest.fixture(scope="module")
def later_census(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> tuple[str, dict]:
    """Two files in the later schema, one with its dataset_version overridden."""
    config = tmp_path_factory.mktemp("cfg") / "later.toml"
    text = CONFIG.read_text()
    head, *entries = text.split("[[datasets]]")
    keep = [e for e in entries if "kang_ctrlstim" in e or "pbmc_3tech" in e]
    keep = [e.replace('name = "pbmc_3tech"', 'name = "pbmc_3tech"\ndataset_version = "v2"')
            for e in keep]
    head = head.replace('census_build_date = "2023-05-15"', 'census_build_date = "2023-07-25"')
    config.write_text(head + "".join("[[datasets]]" + e for e in keep))
    uri = tmp_path_factory.mktemp("census") / "later"
    report = build_local_census(config, uri, shared_data, schema="later")
    return str(uri), report


def test_later_schema_adds_per_cell_and_per_dataset_columns(later_census, real_census_uri) -> None:
    uri, report = later_census
    assert report["schema"] == "1.2.0"
    with _open(uri) as census:
        adata = cellxgene_census.get_anndata(census, "Homo sapiens")
        datasets = census["census_info"]["datasets"].read().concat().to_pandas()
        summary = census["census_info"]["summary"].read().concat().to_pandas()
        layers = set(census["census_data"]["homo_sapiens"].ms["RNA"].X.keys())
        normalized = cellxgene_census.get_anndata(census, "Homo sapiens", X_name="normalized")
    x = adata.X.tocsr()
    np.testing.assert_allclose(adata.obs["raw_sum"], np.asarray(x.sum(axis=1)).ravel())
    np.testing.assert_array_equal(adata.obs["nnz"], np.diff(x.indptr))
    assert layers == {"raw", "normalized"}
    np.testing.assert_allclose(np.asarray(normalized.X.sum(axis=1)).ravel(), 1.0, rtol=1e-4)
    np.testing.assert_array_equal(adata.var["nnz"], np.bincount(x.indices, minlength=x.shape[1]))
    values = dict(zip(summary["label"], summary["value"], strict=True))
    assert values["census_schema_version"] == "1.2.0"
    assert values["census_build_date"] == "2023-07-25"
    versions = dict(zip(datasets["dataset_title"], datasets["dataset_version_id"], strict=True))
    assert {v for t, v in versions.items() if t.startswith("10x PBMC from three")} == {"v2"}
    stim_version = [v for t, v in versions.items() if t.startswith("Kang")][0]
    assert re.fullmatch(r"[0-9a-f-]{36}", stim_version)
    # Same file, same dataset_id, whichever build and schema.
    with _open(real_census_uri) as census:
        real_ids = set(census["census_info"]["datasets"].read().concat()["dataset_id"].to_pylist())
    assert set(datasets["dataset_id"]) <= real_ids


def test_gene_report_counts_matched_and_dropped(later_census) -> None:
    _, report = later_census
    by_file = {f["file"]: f for f in report["files"]}
    stim = by_file["h5ad/kang_ctrlstim_muscat_example.h5ad"]
    assert stim["genes_matched"] + stim["genes_dropped"] == stim["genes"] == 1_267
    assert stim["genes_matched"] > 1_200


def test_tiledbsoma_reads_the_store_directly(real_census_uri: str) -> None:
    with soma.open(real_census_uri) as root:
        assert root["census_data"]["homo_sapiens"].obs.count == N_CELLS
