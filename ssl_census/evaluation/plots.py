"""PNG figures of an evaluation: a 2-D view of an embedding, and F1 against class abundance."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

log = logging.getLogger(__name__)

MAX_POINTS = 20_000
MAX_LEGEND = 20


def two_d(z: np.ndarray, how: str = "umap", seed: int = 0) -> tuple[np.ndarray, str]:
    """UMAP of ``z`` (when asked for and umap-learn is installed), else its first two
    principal components. UMAP's first call in a process compiles numba code (minutes on a
    small CPU), so PCA is there for quick looks."""
    if how == "umap":
        try:
            import umap

            layout = umap.UMAP(n_components=2, random_state=seed, n_jobs=1).fit_transform(z)
            return layout, "UMAP"
        except ImportError:
            log.warning("umap-learn is not installed; the 2-D view uses PCA")
    zc = z - z.mean(0)
    _, _, vt = np.linalg.svd(zc, full_matrices=False)
    return zc @ vt[:2].T, "PCA"


def subsample(n: int, seed: int = 0, limit: int = MAX_POINTS) -> np.ndarray:
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def _scatter(ax: Any, xy: np.ndarray, labels: np.ndarray, title: str) -> None:
    names, codes = np.unique(labels.astype(str), return_inverse=True)
    cmap = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    for i, name in enumerate(names):
        m = codes == i
        ax.scatter(xy[m, 0], xy[m, 1], s=2, color=cmap(i % cmap.N), label=name, rasterized=True)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    if len(names) <= MAX_LEGEND:
        ax.legend(markerscale=4, fontsize=6, loc="center left", bbox_to_anchor=(1, 0.5),
                  frameon=False)


def embedding_plot(xy: np.ndarray, method: str, colourings: dict[str, np.ndarray],
                   title: str, path: Path) -> None:
    """One panel per colouring (cell type, batch) of the same 2-D layout."""
    fig, axes = plt.subplots(1, len(colourings), figsize=(7 * len(colourings), 5.5))
    axes = np.atleast_1d(axes)
    for ax, (name, labels) in zip(axes, colourings.items(), strict=True):
        _scatter(ax, xy, labels, f"{title} ({method}) by {name}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def f1_abundance_plot(per_class: dict[str, list[dict[str, float]]], path: Path) -> None:
    """Per-class F1 (y) against the class's training-cell count (x, log scale), per method."""
    fig, ax = plt.subplots(figsize=(7, 5))
    for method, rows in per_class.items():
        ab = np.array([max(r["abundance"], 1) for r in rows])
        f1 = np.array([r["f1"] for r in rows])
        ax.scatter(ab, f1, s=18, label=method, alpha=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("training cells of the class")
    ax.set_ylabel("F1 on test cells")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
