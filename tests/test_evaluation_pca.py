"""The out-of-core PCA baseline spans the same subspace as an exact in-memory PCA of synthetic
census cells."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.decomposition import PCA

from ssl_census.evaluation.pca import StreamingPCA


def test_streaming_pca_recovers_the_leading_subspace(synth_cells):
    x = sp.csr_matrix(synth_cells.X[:2000])
    x = sp.diags(1e4 / np.asarray(x.sum(1)).ravel()) @ x
    x.data = np.log1p(x.data)
    x = sp.csr_matrix(x, dtype=np.float32)
    # the 1,500 most expressed genes keep the exact reference SVD cheap
    x = x[:, np.sort(np.argsort(-np.asarray(x.mean(0)).ravel())[:1500])]
    passes = []

    def batches():  # sparse batches of 300 rows; counts the passes over the data
        passes.append(1)
        return (x[i : i + 300] for i in range(0, x.shape[0], 300))

    pca = StreamingPCA(64, n_iter=5).fit(batches, x.shape[1])
    assert len(passes) == 6 and pca.n_samples_seen_ == x.shape[0]
    dense = x.toarray()
    ref = PCA(64, svd_solver="full").fit(dense)
    np.testing.assert_allclose(pca.mean_, ref.mean_, rtol=1e-4, atol=1e-6)
    # each leading component lies in the span of the exact ones (components of near-equal
    # variance may rotate among themselves, so spans are compared, not vectors); the eight
    # leading ones, as the census's spectrum flattens after about ten components
    in_span = np.linalg.norm(pca.components_[:8] @ ref.components_[:16].T, axis=1)
    assert in_span.min() > 0.99
    np.testing.assert_allclose(pca.explained_variance_[:8], ref.explained_variance_[:8],
                               rtol=0.01)
    z = pca.transform(x)
    assert z.shape == (x.shape[0], 64) and z.dtype == np.float32
    np.testing.assert_allclose(np.abs(z[:, 0]), np.abs(ref.transform(dense)[:, 0]), rtol=0.01,
                               atol=0.05)
    # a capped fit reads only the first cells
    capped = StreamingPCA(8, n_iter=2, max_cells=500).fit(batches, x.shape[1])
    assert capped.n_samples_seen_ == 500
