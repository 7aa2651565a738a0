"""The out-of-core PCA baseline spans the same subspace as an in-memory PCA on real cells."""

from __future__ import annotations

import anndata as ad
import numpy as np
from sklearn.decomposition import PCA

from ssl_census.evaluation.pca import fit_pca_streaming, transform_streaming


def test_streaming_pca_recovers_the_leading_subspace(shared_data):
    a = ad.read_h5ad(shared_data / "h5ad" / "zheng_sorted_mudan.h5ad")
    x = a.X.toarray()
    x = np.log1p(x / x.sum(1, keepdims=True) * 1e4).astype(np.float32)
    # batches of 100 rows with a 40-row tail: smaller than n_components, so re-blocking is needed
    batches = [x[i : i + 100] for i in range(0, len(x), 100)]
    pca = fit_pca_streaming(iter(batches), n_components=64)
    z = transform_streaming(pca, iter(batches))
    assert z.shape == (len(x), 64) and z.dtype == np.float32
    ref = PCA(64, random_state=0).fit(x)
    # each leading streamed component lies in the span of the leading exact ones (components
    # with near-equal variance may rotate among themselves, so compare spans, not vectors)
    in_span = np.linalg.norm(pca.components_[:8] @ ref.components_[:16].T, axis=1)
    assert in_span.min() > 0.99
    captured = pca.explained_variance_[:10].sum() / ref.explained_variance_[:10].sum()
    assert 0.98 < captured <= 1.0001
