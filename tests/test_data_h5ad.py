"""Unseen h5ad files mapped into the scTab gene space, with the shards' normalisation."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from ssl_census.core.errors import UserError
from ssl_census.data.h5ad import clean_identifier, load_unseen, match_genes


@pytest.fixture(scope="module")
def sctab_var(shared_data) -> pd.DataFrame:
    f = pd.read_parquet(shared_data / "genes" / "scTab_features.parquet")
    return pd.DataFrame({"feature_id": f.index.astype(str), "feature_name": f["gene_names"]})


def test_identifiers_are_cleaned():
    assert clean_identifier("hg19_CD3E") == "CD3E"
    assert clean_identifier("GRCh38-MS4A1") == "MS4A1"
    assert clean_identifier("ENSG00000198851.9") == "ENSG00000198851"


def test_ensembl_file_maps_by_id_and_is_normalised_like_the_shards(shared_data, sctab_var):
    path = shared_data / "h5ad" / "kang_ctrl_muscat_se.h5ad"
    cells = load_unseen(path, sctab_var, required_obs=("cell_type",))
    raw = ad.read_h5ad(path)
    assert cells.x.shape == (raw.n_obs, len(sctab_var))
    assert cells.match.n_matched == int(raw.var_names.isin(sctab_var["feature_id"]).sum())
    assert cells.match.n_matched > 1000
    # a gene lands at its own position with log1p(count / library size over model genes * 1e4)
    gene = "ENSG00000090382"  # LYZ
    j_file = raw.var_names.get_loc(gene)
    j_model = int(np.flatnonzero(sctab_var.feature_id == gene)[0])
    col = raw.X[:, j_file].toarray().ravel()
    i = int(np.argmax(col))
    in_model = raw.var_names.isin(sctab_var["feature_id"])
    lib = raw.X[i][:, np.flatnonzero(in_model)].sum()
    assert cells.x[i, j_model] == pytest.approx(np.log1p(col[i] / lib * 1e4), rel=1e-6)
    sums = np.expm1(cells.x.astype(np.float64)).sum(1).A1
    np.testing.assert_allclose(sums[cells.x.getnnz(1) > 0], 1e4, rtol=1e-4)
    assert (cells.source, cells.kind) == ("X", "raw counts")


def test_symbol_files_match_with_and_without_reference_prefix(shared_data, sctab_var):
    eccite = load_unseen(shared_data / "h5ad" / "eccite_ctrl500_citefuse.h5ad", sctab_var)
    assert eccite.match.column == "index"
    assert eccite.match.n_matched > 12_000  # hg19_ symbols (older names), whole transcriptome
    sav = load_unseen(shared_data / "h5ad" / "pbmc_3tech_savercat.h5ad", sctab_var)
    assert 5_000 < sav.match.n_matched <= 10_000
    assert "ENSG00000167286" in sav.match.matched_genes  # CD3D


def test_duplicated_symbols_do_not_double_count():
    model = pd.DataFrame({"feature_id": ["ENSG1", "ENSG2"], "feature_name": ["A", "B"]})
    m = match_genes(pd.DataFrame(index=["A", "A", "B", "C"]), model)
    assert m.target.tolist() == [0, -1, 1, -1] and m.n_matched == 2


def _write(tmp_path, adata, name="x.h5ad"):
    p = tmp_path / name
    adata.write_h5ad(p)
    return p


def test_log_normalised_files_are_read_and_scaled_ones_refused(shared_data, sctab_var,
                                                                 tmp_path):
    raw = ad.read_h5ad(shared_data / "h5ad" / "zheng_sorted_mudan.h5ad")[:200]
    from_counts = load_unseen(_write(tmp_path, raw, "c.h5ad"), sctab_var)
    normed = raw.copy()
    x = normed.X.toarray()
    normed.X = sp.csr_matrix(np.log1p(x / x.sum(1, keepdims=True) * 1e4))
    from_log = load_unseen(_write(tmp_path, normed), sctab_var)
    assert from_log.kind == "log1p-normalised values"
    assert abs(from_log.x - from_counts.x).max() < 1e-5
    scaled = normed.copy()
    scaled.X = (x - x.mean(0)) / (x.std(0) + 1e-9)
    with pytest.raises(UserError, match="X holds scaled or centred values"):
        load_unseen(_write(tmp_path, scaled, "s.h5ad"), sctab_var)


def test_bad_files_are_refused(shared_data, sctab_var, tmp_path):
    raw = ad.read_h5ad(shared_data / "h5ad" / "zheng_sorted_mudan.h5ad")[:200]
    renamed = raw.copy()
    renamed.var_names = [f"gene{i}" for i in range(renamed.n_vars)]
    with pytest.raises(UserError, match="none of the"):
        load_unseen(_write(tmp_path, renamed, "r.h5ad"), sctab_var)
    with pytest.raises(UserError, match="no obs column 'celltype'"):
        load_unseen(_write(tmp_path, raw, "z.h5ad"), sctab_var, required_obs=("celltype",))
    with pytest.raises(UserError, match="not found"):
        load_unseen(tmp_path / "missing.h5ad", sctab_var)
