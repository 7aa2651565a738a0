"""Barlow twins: make the cross-correlation of two views' projections the identity matrix.

Loss: sum over the diagonal of (1 - C_ii)^2 plus ``lambd`` times the sum of squared
off-diagonal entries, with C computed from batch-standardised projections. The optimiser is
the trainer's, made once (AdamW, or LARS as in the Barlow twins paper); the public code
re-created its LARS optimiser every step and so lost its momentum.
"""

from __future__ import annotations

from typing import Any

import torch

from ssl_census.models.mlp import Encoder, mlp_head
from ssl_census.pretext.augment import Augment, TwoViews
from ssl_census.pretext.options import BarlowOptions


def _standardise(z: torch.Tensor) -> torch.Tensor:
    z = z.float()
    return (z - z.mean(0)) / (z.std(0, unbiased=False) + 1e-5)


def barlow_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float) -> torch.Tensor:
    c = _standardise(z1).T @ _standardise(z2) / z1.shape[0]
    on_diag = (torch.diagonal(c) - 1).square().sum()
    off_diag = c.square().sum() - torch.diagonal(c).square().sum()
    return on_diag + lambd * off_diag


class BarlowTwins(TwoViews):
    def __init__(self, encoder: Encoder, augment: Augment, options: BarlowOptions) -> None:
        super().__init__()
        self.encoder, self.augment, self.lambd = encoder, augment, options.lambd
        dim = options.projection_dim
        self.projector = mlp_head(encoder.latent_dim, dim, dim)

    def loss(self, batch: Any) -> dict[str, torch.Tensor]:
        x = batch.x
        z1 = self.projector(self.encoder(self.augment(x)))
        z2 = self.projector(self.encoder(self.augment(x)))
        return {"loss": barlow_loss(z1, z2, self.lambd)}
