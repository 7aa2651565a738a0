"""Gene-programme masking: hide whole programmes (C8 cell-type signatures) up to the rate.

Programmes are drawn in random order per cell until their union holds the rate; a gene set
that covers less of the gene space than the rate cannot do that (it would hide every
programme in every cell: one fixed mask), so it is refused unless the user accepts it.
"""

from __future__ import annotations

import logging

import torch

from ssl_census.core.errors import UserError
from ssl_census.models.mlp import Decoder, Encoder
from ssl_census.pretext.base import MaskedAutoencoder
from ssl_census.pretext.gene_programmes import GeneProgrammes
from ssl_census.pretext.programmes import ProgrammeSampler

log = logging.getLogger(__name__)


class GeneProgrammeMasking(MaskedAutoencoder):
    def __init__(
        self, encoder: Encoder, decoder: Decoder, programmes: GeneProgrammes,
        mask_rate: float, rescale: bool = True, accept_lower_rate: bool = False,
    ) -> None:
        super().__init__(encoder, decoder, rescale)
        if not 0 < mask_rate < 1:
            raise ValueError("mask_rate must lie in (0, 1)")
        self.sampler = ProgrammeSampler(programmes)
        self.mask_rate = mask_rate
        self.visible_share = 1.0 - mask_rate  # at most: the union of programmes may pass it
        check_coverage(self.sampler.coverage, mask_rate, len(programmes), accept_lower_rate)

    def masks(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.sampler.until_rate(x.shape[0], self.mask_rate)
        return ~hidden, hidden


def check_coverage(coverage: float, mask_rate: float, n_programmes: int,
                   accept_lower_rate: bool) -> None:
    """Refuse (or, accepted, warn about) programmes that cannot reach the mask rate."""
    if coverage >= mask_rate:
        return
    what = (f"the {n_programmes} gene programmes cover {coverage:.1%} of the gene space, "
            f"less than mask_rate {mask_rate:.0%}")
    if not accept_lower_rate:
        raise UserError(what, "pass a larger GMT such as MSigDB C8 (--gene-sets msigdb:c8), "
                        f"lower [options] mask_rate below {coverage:.2f}, or set [options] "
                        "accept_lower_rate = true to mask every programme in every cell")
    log.warning("%s: every programme is masked in every cell (accept_lower_rate)", what)
