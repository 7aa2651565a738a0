"""The contrastive views' negative-binomial counts: drawn without a gamma and a Poisson draw
per entry, yet distributed as the paper's construction (p uniform, clamped at 0.999)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import chi2_contingency

from ssl_census.pretext.augment import P_MAX, uniform_p_negative_binomial

N = 200_000
EDGES = [0, 1, 2, 3, 5, 10, 20, 50, 100, 300, 1_000, 3_000, 6_000, 10_000, 20_000, np.inf]


def _paper_construction(n: int, total_count: float) -> np.ndarray:
    probs = torch.rand(n, dtype=torch.float64).clamp_max(P_MAX)
    rate = torch._standard_gamma(torch.full_like(probs, total_count)) * probs / (1 - probs)
    return torch.poisson(rate).numpy()


def _same_distribution_p(a: np.ndarray, b: np.ndarray) -> float:
    table = np.stack([np.histogram(a, EDGES)[0], np.histogram(b, EDGES)[0]])
    return chi2_contingency(table[:, table.sum(axis=0) > 0]).pvalue  # bins neither reaches out


def test_counts_follow_the_gamma_poisson_construction():
    torch.manual_seed(0)
    reference = _paper_construction(N, 10.0)
    counts = uniform_p_negative_binomial((N // 400, 400), 10.0).numpy()
    assert counts.shape == (N // 400, 400) and counts.min() >= 0
    assert np.array_equal(counts, np.floor(counts))
    assert _same_distribution_p(counts.ravel(), reference) > 1e-3


def test_the_check_sees_a_missing_clamp_or_truncation():
    """Without the clamp's point mass and the truncation of p the tail is different: the
    distribution check above must reject it (so it can fail)."""
    torch.manual_seed(1)
    reference = _paper_construction(N, 10.0)
    u = 1.0 - torch.rand(N, dtype=torch.float64)
    untruncated = torch.floor(10.0 / u - 10.0).numpy()  # p uniform on [0, 1), no clamp
    assert _same_distribution_p(untruncated, reference) < 1e-3


def test_other_total_counts_and_a_lower_clamp():
    torch.manual_seed(2)
    for total_count, p_max in ((3.0, 0.99), (25.5, 0.9)):
        probs = torch.rand(N, dtype=torch.float64).clamp_max(p_max)
        rate = torch._standard_gamma(torch.full_like(probs, total_count)) * probs / (1 - probs)
        reference = torch.poisson(rate).numpy()
        counts = uniform_p_negative_binomial((N,), total_count, p_max=p_max).numpy()
        assert _same_distribution_p(counts, reference) > 1e-3
