"""The PCA baseline, fitted out of core: batches stream through an incremental PCA, so memory
is bounded by one batch and the ``n_genes x n_components`` basis, not by the number of cells.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
from sklearn.decomposition import IncrementalPCA


def _at_least(batches: Iterable[np.ndarray], minimum: int) -> Iterator[np.ndarray]:
    """Re-block ``batches`` so that every block has at least ``minimum`` rows (a partial fit
    needs as many rows as components); a short tail is merged into the previous block."""
    pending: list[np.ndarray] = []
    held = 0
    last: np.ndarray | None = None
    for b in batches:
        pending.append(np.asarray(b, dtype=np.float32))
        held += len(b)
        if held >= minimum:
            block = np.concatenate(pending) if len(pending) > 1 else pending[0]
            if last is not None:
                yield last
            last, pending, held = block, [], 0
    if pending:
        tail = np.concatenate(pending)
        last = tail if last is None else np.concatenate([last, tail])
    if last is not None:
        yield last


def fit_pca_streaming(
    batches: Iterable[np.ndarray], n_components: int = 64, max_cells: int | None = None
) -> IncrementalPCA:
    """Fit an incremental PCA on dense row batches (e.g. log1p expression from the loader)."""
    pca = IncrementalPCA(n_components=n_components)
    seen = 0
    for block in _at_least(batches, n_components):
        if max_cells is not None and seen >= max_cells:
            break
        pca.partial_fit(block)
        seen += len(block)
    if seen == 0:
        raise ValueError("no cells to fit the PCA on")
    return pca


def transform_streaming(pca: IncrementalPCA, batches: Iterable[np.ndarray]) -> np.ndarray:
    """Project row batches onto the fitted components (float32, rows in batch order)."""
    parts = [pca.transform(np.asarray(b, dtype=np.float32)).astype(np.float32) for b in batches]
    if not parts:
        return np.zeros((0, pca.n_components_), dtype=np.float32)
    return np.concatenate(parts)
