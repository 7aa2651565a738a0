"""GP to GP (isolated): keep one programme per cell, hide every other gene, reconstruct the
programme. Only the programme's genes are scored (the public code also weighted the rest)."""

from __future__ import annotations

import torch

from ssl_census.models.mlp import Decoder, Encoder
from ssl_census.pretext.base import MaskedAutoencoder
from ssl_census.pretext.gene_programmes import GeneProgrammes
from ssl_census.pretext.programmes import ProgrammeSampler


class GpToGp(MaskedAutoencoder):
    def __init__(self, encoder: Encoder, decoder: Decoder, programmes: GeneProgrammes) -> None:
        super().__init__(encoder, decoder)
        self.sampler = ProgrammeSampler(programmes)
        self.visible_share = self.sampler.mean_share

    def masks(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, kept = self.sampler.one_per_cell(x.shape[0])
        return kept, kept
