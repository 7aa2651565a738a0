"""Scores against scikit-learn / scipy on synthetic census cells, and the hierarchy rule on real
CL terms."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.decomposition import PCA
from sklearn.metrics import (
    classification_report,
    explained_variance_score,
    f1_score,
    mean_squared_error,
)
from synth_support import with_proteins

from ssl_census.core.metrics import (
    RegressionAccumulator,
    classification_scores,
    correlation_scores,
    descendant_matrix,
    hierarchy_corrected,
    per_class_f1,
)
from ssl_census.core.ontology import is_descendant


@pytest.fixture(scope="module")
def cells_log1p(synth_cells):
    x = synth_cells.X[:3000].toarray().astype(np.float64)
    return np.log1p(x / x.sum(1, keepdims=True) * 1e4)


def test_macro_f1_is_classification_reports_over_true_and_predicted_classes():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 6, 500)
    pred = np.where(rng.random(500) < 0.7, y, rng.integers(0, 8, 500))  # 6, 7 never true
    s = classification_scores(y, pred)
    report = classification_report(y, pred, output_dict=True, zero_division=0)
    assert s["macro_f1"] == pytest.approx(report["macro avg"]["f1-score"])
    # the stray classes 6 and 7 count, with F1 0: below the mean over the true classes
    assert s["macro_f1"] < f1_score(y, pred, labels=np.arange(6), average="macro")
    assert s["n_classes"] == 8 and s["n_true_classes"] == 6
    assert s["micro_f1"] == pytest.approx((y == pred).mean())
    rows = per_class_f1(y, pred, abundance={0: 10, 1: 20})
    assert [r["class"] for r in rows] == list(range(6))
    assert rows[1]["abundance"] == 20 and rows[3]["abundance"] == 0
    assert rows[2]["f1"] == pytest.approx(f1_score(y == 2, pred == 2))


def test_prediction_of_a_descendant_counts_as_correct_but_not_the_reverse():
    # lymphocyte, CD4 alpha-beta T cell, B cell, monocyte, CD14 monocyte (savercat/kang terms)
    terms = ["CL:0000542", "CL:0000624", "CL:0000236", "CL:0000576", "CL:0001054"]
    m = descendant_matrix(terms, is_descendant)  # the real CL shipped offline
    assert m[0, 1] and m[0, 2] and m[3, 4]
    assert not m[1, 0] and not m[4, 3] and not m[0, 3] and not m.diagonal().any()
    y_true = np.array([0, 1, 3, 3, 2])
    y_pred = np.array([1, 0, 4, 2, 2])
    fixed = hierarchy_corrected(y_true, y_pred, m)
    assert fixed.tolist() == [0, 0, 3, 2, 2]  # finer prediction accepted, coarser one not
    assert classification_scores(y_true, fixed)["micro_f1"] == pytest.approx(0.6)


def test_streamed_reconstruction_scores_match_sklearn(cells_log1p):
    x = cells_log1p
    pca = PCA(10, random_state=0).fit(x)
    recon = pca.inverse_transform(pca.transform(x))
    acc = RegressionAccumulator(x.shape[1])
    for i in range(0, len(x), 701):  # uneven batches
        acc.update(x[i : i + 701], recon[i : i + 701])
    r = acc.result()
    assert r["mse"] == pytest.approx(mean_squared_error(x, recon), rel=1e-6)
    assert r["explained_variance_uniform"] == pytest.approx(
        explained_variance_score(x, recon, multioutput="uniform_average"), rel=1e-5)
    assert r["explained_variance_weighted"] == pytest.approx(
        explained_variance_score(x, recon, multioutput="variance_weighted"), rel=1e-5)
    assert 0 < r["explained_variance_weighted"] < 1


def test_correlations_match_scipy_on_protein_counts(synth_cells):
    a = with_proteins(synth_cells[:800])
    p = np.log1p(np.asarray(a.obsm["protein_counts"], dtype=np.float64))
    rng = np.random.default_rng(1)
    pred = p + rng.normal(0, 0.7, p.shape)
    s = correlation_scores(p, pred)
    assert s["pearson"] == pytest.approx(stats.pearsonr(p.ravel(), pred.ravel())[0], rel=1e-9)
    assert s["spearman"] == pytest.approx(stats.spearmanr(p.ravel(), pred.ravel())[0], rel=1e-9)
    j = 3
    assert s["pearson_per_feature"][j] == pytest.approx(stats.pearsonr(p[:, j], pred[:, j])[0])
    assert s["spearman_per_feature"][j] == pytest.approx(stats.spearmanr(p[:, j], pred[:, j])[0])
    per_cell = np.mean([stats.pearsonr(p[i], pred[i])[0] for i in range(len(p))])
    assert s["pearson_per_cell_mean"] == pytest.approx(per_cell)
    assert correlation_scores(p, p)["pearson"] == pytest.approx(1.0)
