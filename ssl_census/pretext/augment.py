"""Views for the contrastive methods: negative-binomial noise plus dropout masking.

Noise as in the paper's code: negative-binomial counts (``total_count`` 10, success
probabilities uniform per entry) normalised to 10,000 per cell, log1p, scaled by
``intensity`` and added to the log-normalised input, clamped at 0. Dropout masking sets a
fraction (``view_dropout``) of entries to 0 without rescaling the rest (a rescale has no
meaning in log space).

On a CSR batch the noise makes the view dense (it adds to every entry); dropout alone keeps
it sparse (the zeroed entries leave its structure).
"""

from __future__ import annotations

import torch
from torch import nn

from ssl_census.core.sparse import add_to, keep_where
from ssl_census.pretext.base import Objective
from ssl_census.pretext.options import ViewOptions


def negative_binomial_noise(
    x: torch.Tensor, intensity: float, total_count: float = 10.0
) -> torch.Tensor:
    with torch.autocast(device_type=x.device.type, enabled=False):
        probs = torch.rand(x.shape, device=x.device).clamp_max(0.999)
        rate = torch._standard_gamma(torch.full_like(probs, total_count)) * probs / (1 - probs)
        counts = torch.poisson(rate)
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
