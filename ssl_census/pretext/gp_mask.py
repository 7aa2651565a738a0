"""Gene-programme masking: hide whole programmes (C8 cell-type signatures) up to the rate."""

from __future__ import annotations

import torch

from ssl_census.models.mlp import Decoder, Encoder
from ssl_census.pretext.base import MaskedAutoencoder
from ssl_census.pretext.gene_programmes import GeneProgrammes
from ssl_census.pretext.programmes import ProgrammeSampler


class GeneProgrammeMasking(MaskedAutoencoder):
    def __init__(
        self, encoder: Encoder, decoder: Decoder, programmes: GeneProgrammes,
        mask_rate: float,
    ) -> None:
        super().__init__(encoder, decoder)
        self.sampler = ProgrammeSampler(programmes)
        self.mask_rate = mask_rate

    def masks(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.sampler.until_rate(x.shape[0], self.mask_rate)
        return ~hidden, hidden
