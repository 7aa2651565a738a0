"""GP to TF (isolated): keep one transcription factor's target programme, hide every other gene
(the factor included), and predict the factor's expression; only the factor is scored."""

from __future__ import annotations

import torch

from ssl_census.models.mlp import Decoder, Encoder
from ssl_census.pretext.base import MaskedAutoencoder
from ssl_census.pretext.gene_programmes import GeneProgrammes
from ssl_census.pretext.programmes import ProgrammeSampler


class GpToTf(MaskedAutoencoder):
    def __init__(self, encoder: Encoder, decoder: Decoder, programmes: GeneProgrammes) -> None:
        super().__init__(encoder, decoder)
        if programmes.regulators is None:
            raise ValueError("GP to TF needs programmes mapped with their regulators")
        self.sampler = ProgrammeSampler(programmes)
        self.visible_share = self.sampler.mean_share

    def masks(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, kept = self.sampler.one_per_cell(x.shape[0])
        factor = torch.zeros_like(kept).scatter_(1, self.sampler.regulators[k][:, None], True)
        return kept & ~factor, factor
