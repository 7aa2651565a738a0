"""The PCA baseline, fitted out of core by randomized subspace iteration on the covariance.

The covariance ``C = X'X / n - mu mu'`` is never formed (19,331 genes would make it 3 GB);
each pass over the cells computes ``C Q`` for a thin ``genes x (k + oversampling)`` matrix
``Q`` as ``sum_b X_b' (X_b Q) / n - mu (mu' Q)``, straight from the sparse batches. A few
passes of subspace iteration and a final Rayleigh-Ritz step give the leading components
(Halko, Martinsson & Tropp 2011, algorithm 4.4). Memory: a few ``genes x 74`` matrices and
one batch; work per pass: 4 flops per stored non-zero and column of Q.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import scipy.sparse as sp

Batches = Callable[[], Iterable[np.ndarray | sp.spmatrix]]
PCA_COMPONENTS = 64  # the paper's PCA baseline


def _pass(batches: Batches, q: np.ndarray, max_cells: int | None
          ) -> tuple[np.ndarray, np.ndarray, int]:
    """One pass: ``sum X_b' (X_b q)``, the column sums and the number of cells."""
    xtxq = np.zeros_like(q)
    col_sum = np.zeros(q.shape[0])
    n = 0
    for b in batches():
        if max_cells is not None and n >= max_cells:
            break
        if max_cells is not None and n + b.shape[0] > max_cells:
            b = b[: max_cells - n]
        b = sp.csr_matrix(b, dtype=np.float64) if sp.issparse(b) else np.asarray(b, np.float64)
        xtxq += b.T @ (b @ q)
        col_sum += np.asarray(b.sum(0)).ravel()
        n += b.shape[0]
    return xtxq, col_sum, n


class StreamingPCA:
    """PCA whose fit reads the cells in a few streamed passes (``n_iter + 1``)."""

    def __init__(self, n_components: int = 64, oversampling: int = 10, n_iter: int = 5,
                 seed: int = 0, max_cells: int | None = None) -> None:
        self.n_components, self.oversampling, self.n_iter = n_components, oversampling, n_iter
        self.seed, self.max_cells = seed, max_cells

    def _cov_times(self, batches: Batches, q: np.ndarray) -> np.ndarray:
        xtxq, col_sum, n = _pass(batches, q, self.max_cells)
        if n < 2:
            raise ValueError("no cells to fit the PCA on")
        self.mean_, self.n_samples_seen_ = col_sum / n, n
        return xtxq / n - np.outer(self.mean_, self.mean_ @ q)

    def fit(self, batches: Batches, n_features: int) -> StreamingPCA:
        """``batches()`` must yield the same cells (dense or sparse rows) on every call."""
        width = min(self.n_components + self.oversampling, n_features)
        rng = np.random.default_rng(self.seed)
        q, _ = np.linalg.qr(rng.standard_normal((n_features, width)))
        for _ in range(self.n_iter):
            q, _ = np.linalg.qr(self._cov_times(batches, q))
        cq = self._cov_times(batches, q)
        values, vectors = np.linalg.eigh(q.T @ cq)
        order = np.argsort(values)[::-1][: self.n_components]
        self.components_ = (q @ vectors[:, order]).T.astype(np.float32)
        self.explained_variance_ = np.maximum(values[order], 0.0)
        self.n_components_ = len(order)
        return self

    def transform(self, x: np.ndarray | sp.spmatrix) -> np.ndarray:
        proj = x @ self.components_.T
        return np.asarray(proj - self.mean_.astype(np.float32) @ self.components_.T,
                          dtype=np.float32)


def pca_of_cells(x: sp.spmatrix, seed: int = 0, batch: int = 8192) -> np.ndarray:
    """The PCA baseline of cells held in memory (an h5ad's): fitted on them and applied to
    them, with ``PCA_COMPONENTS`` components (fewer when there are fewer cells)."""
    n = x.shape[0]
    pca = StreamingPCA(min(PCA_COMPONENTS, n - 1), seed=seed).fit(
        lambda: (x[i : i + batch] for i in range(0, n, batch)), x.shape[1])
    return pca.transform(x)
