"""kNN on embeddings of synthetic census cells (log1p then PCA) against scikit-learn's brute
force."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors

from ssl_census.evaluation.knn import knn_classify, majority_vote, nearest_neighbours


@pytest.fixture(scope="module")
def embedding(synth_cells):
    """8,000 cells in 16 principal components; the cells of a fifth of the tech_samples (donors
    of a dataset) are the queries."""
    a = synth_cells[:8000]
    x = a.X.toarray()
    x = np.log1p(x / x.sum(1, keepdims=True) * 1e4)
    z = PCA(16, random_state=0).fit_transform(x).astype(np.float32)
    labels = pd.Categorical(a.obs["cell_type"]).codes
    samples = a.obs["tech_sample"].to_numpy()
    test = np.isin(samples, np.unique(samples)[::5])
    return z[~test], labels[~test], z[test], labels[test]


def test_neighbours_match_sklearn_brute_force_across_chunks(embedding):
    ref, _, query, _ = embedding
    # chunks far smaller than the data, so the running top-k merge is exercised
    nb = nearest_neighbours(ref, query, k=5, query_chunk=333, reference_chunk=1000,
                            dtype=torch.float64, show_progress=False)
    dist, idx = NearestNeighbors(n_neighbors=5, algorithm="brute").fit(ref).kneighbors(query)
    assert nb.index.shape == (len(query), 5)
    np.testing.assert_allclose(np.sqrt(nb.sq_distance), dist, rtol=1e-5, atol=1e-5)
    # the nearest neighbour is kept (no k+1-and-drop-the-first)
    assert (nb.index[:, 0] == idx[:, 0]).mean() > 0.999
    assert (np.sort(nb.index, 1) == np.sort(idx, 1)).all(1).mean() > 0.999


def test_predictions_match_sklearn_where_the_vote_is_not_tied(embedding):
    ref, ref_y, query, query_y = embedding
    pred = knn_classify(ref, ref_y, query, k=5, query_chunk=512, reference_chunk=2048,
                        show_progress=False)
    sk = KNeighborsClassifier(5, algorithm="brute").fit(ref, ref_y).predict(query)
    _, idx = NearestNeighbors(n_neighbors=5, algorithm="brute").fit(ref).kneighbors(query)
    counts = np.array([np.bincount(row, minlength=ref_y.max() + 1) for row in ref_y[idx]])
    untied = (counts == counts.max(1, keepdims=True)).sum(1) == 1
    assert untied.mean() > 0.8
    assert (pred[untied] == sk[untied]).mean() > 0.999
    # held-out donors are classified by PCA + kNN far above chance (16 types, some related)
    assert (pred == query_y).mean() > 0.5


def test_tied_vote_goes_to_the_nearest_label():
    labels = np.array([[3, 1, 1, 3, 2],   # 1 and 3 tie; 3 is nearest
                       [1, 2, 3, 4, 5],   # all tie -> nearest
                       [2, 4, 4, 2, 4]])  # 4 wins outright
    assert majority_vote(labels).tolist() == [3, 1, 4]


def test_too_few_reference_cells_is_an_error():
    with pytest.raises(ValueError):
        nearest_neighbours(np.zeros((3, 2)), np.zeros((2, 2)), k=5)
