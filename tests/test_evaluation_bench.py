"""``bench embed``'s synthetic h5ad and untrained run: readable by anndata, embedded whole."""

from __future__ import annotations

import anndata as ad
import numpy as np

from ssl_census.evaluation.bench import random_run, synthetic_var, write_synthetic_h5ad
from ssl_census.evaluation.model import OBSM_KEY, load_model


def test_synthetic_h5ad_is_an_anndata_file_the_model_embeds(tmp_path):
    var = synthetic_var(300)
    path = write_synthetic_h5ad(tmp_path / "s.h5ad", 2_500, var, nnz=40, seed=1)
    a = ad.read_h5ad(path)
    assert a.shape == (2_500, 300) and list(a.var_names) == list(var["feature_id"])
    nnz = a.X.getnnz(1)
    assert 30 < nnz.mean() <= 40 and nnz.min() > 0  # duplicates drawn are dropped
    assert np.all(a.X.data >= 1) and np.all(a.X.data == np.rint(a.X.data))
    model = load_model(random_run(tmp_path / "run", var, (32, 8)))
    card = model.embed_h5ad(path, tmp_path / "out.h5ad", batch_size=1000)
    assert card["genes_matched"] == 300 and card["values_found"] == "raw counts"
    out = ad.read_h5ad(tmp_path / "out.h5ad")
    np.testing.assert_array_equal(out.obsm[OBSM_KEY], model.embed(a).obsm[OBSM_KEY])
