"""The paper's scores: classification F1 (plain and hierarchy-aware), reconstruction error and
explained variance (streamed), and correlations for cross-modality prediction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats
from sklearn.metrics import f1_score


def classification_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Macro and micro F1 (micro F1 equals accuracy for single-label predictions).

    The macro mean runs over every class that is true *or predicted*, as scikit-learn's
    ``classification_report`` (the paper's figure) averages: a model that predicts a class
    no cell has gets an F1 of 0 for it, so stray predictions (a random or zero-shot model's)
    lower the mean instead of vanishing from it.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = np.union1d(y_true, y_pred)
    return {
        "macro_f1": float(
            f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)
        ),
        "micro_f1": float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
        "n_cells": int(len(y_true)),
        "n_classes": int(len(labels)),  # the classes the macro mean runs over
        "n_true_classes": int(len(np.unique(y_true))),
    }


def per_class_f1(
    y_true: np.ndarray, y_pred: np.ndarray, abundance: dict[int, int] | None = None
) -> list[dict[str, float]]:
    """F1 of each class present in the truth, with its abundance (training cells if given)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels, n_true = np.unique(y_true, return_counts=True)
    f1 = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    return [
        {
            "class": int(c),
            "f1": float(f),
            "n_eval": int(n),
            "abundance": int(abundance.get(int(c), 0)) if abundance is not None else int(n),
        }
        for c, f, n in zip(labels, f1, n_true, strict=True)
    ]


def descendant_matrix(
    terms: Sequence[str], is_descendant: Callable[[str, str], bool]
) -> np.ndarray:
    """``m[i, j]`` is True when class ``j``'s term is a strict descendant of class ``i``'s."""
    n = len(terms)
    m = np.zeros((n, n), dtype=bool)
    for i, parent in enumerate(terms):
        for j, child in enumerate(terms):
            m[i, j] = i != j and parent != child and bool(is_descendant(child, parent))
    return m


def hierarchy_corrected(
    y_true: np.ndarray, y_pred: np.ndarray, descendants: np.ndarray
) -> np.ndarray:
    """Predictions where a descendant of the true type is replaced by the true type.

    This is how scTab (and the paper's code after it) scores predictions: a model that says
    "CD8-positive T cell" for a cell annotated "T cell" is more specific than the annotation,
    not wrong. Predictions are class codes indexing ``descendants`` (see descendant_matrix).
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    out = y_pred.copy()
    valid = (y_true >= 0) & (y_pred >= 0)
    hit = np.zeros(len(y_true), dtype=bool)
    hit[valid] = descendants[y_true[valid], y_pred[valid]]
    out[hit] = y_true[hit]
    return out


class RegressionAccumulator:
    """Streams (truth, prediction) batches and gives MSE and explained variance per feature.

    Explained variance of a feature is ``1 - Var(y - yhat) / Var(y)`` (sklearn's
    ``explained_variance_score``); ``uniform`` averages it over features, ``variance_weighted``
    weights each feature by Var(y). Sums are kept in float64 per feature, so memory is
    O(n_features) however many cells stream through.
    """

    def __init__(self, n_features: int) -> None:
        self.n = 0
        self.sum_y = np.zeros(n_features)
        self.sum_y2 = np.zeros(n_features)
        self.sum_r = np.zeros(n_features)
        self.sum_r2 = np.zeros(n_features)

    def update(self, y: np.ndarray, y_hat: np.ndarray) -> None:
        y = np.asarray(y, dtype=np.float64)
        r = y - np.asarray(y_hat, dtype=np.float64)
        self.n += len(y)
        self.sum_y += y.sum(0)
        self.sum_y2 += (y * y).sum(0)
        self.sum_r += r.sum(0)
        self.sum_r2 += (r * r).sum(0)

    def result(self) -> dict[str, float]:
        n = max(self.n, 1)
        var_y = self.sum_y2 / n - (self.sum_y / n) ** 2
        var_r = self.sum_r2 / n - (self.sum_r / n) ** 2
        var_y = np.maximum(var_y, 0.0)
        var_r = np.maximum(var_r, 0.0)
        # sklearn's convention for constant features: 1 when predicted exactly, else 0
        with np.errstate(divide="ignore", invalid="ignore"):
            ev = np.where(var_y > 0, 1.0 - var_r / var_y, np.where(var_r == 0, 1.0, 0.0))
        weighted = float(np.sum(var_y * ev) / np.sum(var_y)) if np.sum(var_y) > 0 else float("nan")
        return {
            "mse": float(self.sum_r2.sum() / (n * len(self.sum_r2))),
            "explained_variance_uniform": float(ev.mean()),
            "explained_variance_weighted": weighted,
            "n_cells": int(self.n),
        }


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    denom = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, (a * b).sum(1) / denom, np.nan)


def _rank_rows(a: np.ndarray) -> np.ndarray:
    return stats.rankdata(a, axis=1)


def _nanmean(v: np.ndarray) -> float:
    """Mean over defined values; NaN (no warning) when none is defined."""
    v = v[~np.isnan(v)]
    return float(v.mean()) if len(v) else float("nan")


def correlation_scores(y: np.ndarray, y_hat: np.ndarray) -> dict[str, float | list[float]]:
    """Pearson and Spearman between measured and predicted values: over all entries, per
    feature (across cells) and per cell (across features). Constant rows or columns have no
    defined correlation and are left out of the means (nanmean)."""
    y = np.asarray(y, dtype=np.float64)
    y_hat = np.asarray(y_hat, dtype=np.float64)
    per_feature_p = _pearson_rows(y.T, y_hat.T)
    per_feature_s = _pearson_rows(_rank_rows(y.T), _rank_rows(y_hat.T))
    per_cell_p = _pearson_rows(y, y_hat)
    per_cell_s = _pearson_rows(_rank_rows(y), _rank_rows(y_hat))
    flat_y, flat_h = y.ravel()[None], y_hat.ravel()[None]
    return {
        "pearson": float(_pearson_rows(flat_y, flat_h)[0]),
        "spearman": float(_pearson_rows(_rank_rows(flat_y), _rank_rows(flat_h))[0]),
        "pearson_per_feature_mean": _nanmean(per_feature_p),
        "spearman_per_feature_mean": _nanmean(per_feature_s),
        "pearson_per_cell_mean": _nanmean(per_cell_p),
        "spearman_per_cell_mean": _nanmean(per_cell_s),
        "pearson_per_feature": [float(v) for v in per_feature_p],
        "spearman_per_feature": [float(v) for v in per_feature_s],
    }
