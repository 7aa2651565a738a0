"""Random masking: hide 50 % of the genes of every cell, a fresh choice each step."""

from __future__ import annotations

import torch

from ssl_census.models.mlp import Decoder, Encoder
from ssl_census.pretext.base import MaskedAutoencoder


class RandomMasking(MaskedAutoencoder):
    def __init__(self, encoder: Encoder, decoder: Decoder, mask_rate: float,
                 rescale: bool = True) -> None:
        super().__init__(encoder, decoder, rescale)
        if not 0 < mask_rate < 1:
            raise ValueError("mask_rate must lie in (0, 1)")
        self.mask_rate = mask_rate
        self.visible_share = 1.0 - mask_rate

    def masks(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = torch.rand(x.shape, device=x.device) < self.mask_rate
        return ~hidden, hidden
