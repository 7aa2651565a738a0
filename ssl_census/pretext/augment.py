"""Views for the contrastive methods: negative-binomial noise plus dropout masking.

Noise as in the paper's code: negative-binomial counts (``total_count`` 10, success
probabilities uniform per entry) normalised to 10,000 per cell, log1p, scaled by
``intensity`` and added to the log-normalised input, clamped at 0. Dropout masking sets a
fraction (``view_dropout``) of entries to 0 without rescaling the rest (a rescale has no
meaning in log space).

On a CSR batch the noise makes the view dense (it adds to every entry); dropout alone keeps
it sparse (the zeroed entries leave its structure).

The counts are drawn from their exact distribution without a gamma and a Poisson draw per
entry (two slow samplers over every gene of every cell, which held BYOL and Barlow twins to a
tenth of the machine on CPUs). With the success probability p uniform on [0, 1), a
negative-binomial count K of ``total_count`` r has P(K >= k) = r / (k + r) (the integral over
p telescopes), so K = floor(r / U - r) for one uniform U in (0, 1]. The paper's p is uniform
clamped at 0.999: with probability 0.999 it is uniform below 0.999, which is the draw above
kept with the probability that p lies below 0.999 given K (p | K is Beta(K + 1, r + 1)), the
rest redrawn; with probability 0.001 it is 0.999 itself, a plain negative-binomial draw.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from scipy.special import betainc
from torch import nn

from ssl_census.core.sparse import add_to, keep_where
from ssl_census.pretext.base import Objective
from ssl_census.pretext.options import ViewOptions

P_MAX = 0.999  # the clamp of the uniform success probability (the paper's code)
_ACCEPT_TABLE = 1 << 16  # counts whose acceptance is tabulated; above it, computed per draw


@functools.lru_cache(maxsize=8)
def _acceptance(total_count: float, p_max: float, device: torch.device) -> torch.Tensor:
    """P(p < p_max | K = k) for k below the table size: the regularised incomplete beta, made
    once per device (every view of every step looks it up)."""
    k = np.arange(_ACCEPT_TABLE, dtype=np.float64)
    return torch.from_numpy(betainc(k + 1, total_count + 1, p_max)).to(device)


def _accept(k: torch.Tensor, total_count: float, p_max: float) -> torch.Tensor:
    prob = _acceptance(total_count, p_max, k.device)[k.clamp_max(_ACCEPT_TABLE - 1)]
    large = k >= _ACCEPT_TABLE  # rare: P(K >= 65,536) is r / 65,546
    if large.any():
        ks = k[large].double().cpu().numpy()
        prob[large] = torch.from_numpy(betainc(ks + 1, total_count + 1, p_max)).to(k.device)
    return torch.rand(k.shape, dtype=torch.float64, device=k.device) < prob


def _uniform_p_draw(n: int, total_count: float, device: torch.device | str) -> torch.Tensor:
    """n counts of NegativeBinomial(total_count, p) with p uniform on [0, 1), int64."""
    u = 1.0 - torch.rand(n, dtype=torch.float64, device=device)  # (0, 1]
    # beyond 2**62 the cast would overflow; such draws are rejected anyway
    return torch.floor(total_count / u - total_count).clamp_max(2.0**62).long()


def uniform_p_negative_binomial(shape: torch.Size | tuple[int, ...], total_count: float,
                                device: torch.device | str = "cpu",
                                p_max: float = P_MAX) -> torch.Tensor:
    """Counts distributed as NegativeBinomial(total_count, p) with p = min(U, p_max) drawn
    per entry (U uniform on [0, 1)), as float32; exact in distribution (module docstring)."""
    n = math.prod(shape)
    k = _uniform_p_draw(n, total_count, device)
    redo = (~_accept(k, total_count, p_max)).nonzero().squeeze(1)
    while len(redo):  # about 1 - p_max of the draws, a few rounds in all
        draw = _uniform_p_draw(len(redo), total_count, device)
        ok = _accept(draw, total_count, p_max)
        k[redo[ok]] = draw[ok]
        redo = redo[~ok]
    at_clamp = (torch.rand(n, device=device) >= p_max).nonzero().squeeze(1)
    if len(at_clamp):
        rate = torch._standard_gamma(torch.full((len(at_clamp),), total_count, device=device,
                                                dtype=torch.float64)) * p_max / (1 - p_max)
        k[at_clamp] = torch.poisson(rate).long()
    return k.view(shape).float()


def negative_binomial_noise(
    x: torch.Tensor, intensity: float, total_count: float = 10.0
) -> torch.Tensor:
    with torch.autocast(device_type=x.device.type, enabled=False):
        counts = uniform_p_negative_binomial(x.shape, total_count, x.device)
        noise = torch.log1p(counts / counts.sum(dim=1, keepdim=True).clamp_min(1) * 1e4)
        return add_to(intensity * noise, x.float()).clamp_min(0)


def dropout_mask(x: torch.Tensor, rate: float) -> torch.Tensor:
    return keep_where(x, torch.rand(x.shape, device=x.device) >= rate)


class Augment(nn.Module):
    def __init__(self, options: ViewOptions) -> None:
        super().__init__()
        self.noise, self.total_count = options.noise, options.total_count
        self.dropout = options.view_dropout

    @property
    def densifies(self) -> bool:
        """Whether a view is dense whatever the batch (noise adds to every entry)."""
        return self.noise > 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.noise > 0:
            x = negative_binomial_noise(x, self.noise, self.total_count)
        if self.dropout > 0:
            x = dropout_mask(x, self.dropout)
        return x


class TwoViews(Objective):
    """A method trained on two augmented views of each batch (BYOL, Barlow twins)."""

    augment: Augment

    def encoder_density(self, density: float) -> float:
        return 1.0 if self.augment.densifies else density
