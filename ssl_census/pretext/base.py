"""What every pre-training method is to the trainer, and the masked-autoencoder machinery.

A method is an ``nn.Module`` whose ``loss(batch)`` returns a dict of scalars with key
``"loss"`` (the rest are logged) and whose ``after_step()`` runs after each optimiser step
(BYOL moves its target network there). ``forward`` is ``loss`` so DistributedDataParallel,
which only hooks ``forward``, synchronises the gradients of any method.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ssl_census.core.sparse import add_to, divide_rows, keep_where
from ssl_census.models.mlp import Decoder, Encoder


class Objective(nn.Module):
    """Base of trainable objectives: pre-training methods here, fine-tuning tasks later."""

    encoder: Encoder

    def loss(self, batch: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def after_step(self) -> None:
        """Hook after every optimiser step; nothing by default."""

    def encoder_density(self, density: float) -> float:
        """The share of non-zero entries in what the encoder reads, about, for batches of that
        ``density`` (what ``input_layout = "auto"`` decides by): the same by default; masking
        methods scale it by the share of genes they leave visible, and views that add noise
        to every entry are dense whatever the batch."""
        return density

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        return self.loss(batch)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the entries where ``scored`` is True, and only those
    (``target`` dense or CSR)."""
    # where(), not a product with the mask: no float copy of the mask, forward or backward
    err = torch.where(scored, add_to(pred.float(), target, alpha=-1.0).square(), 0.0)
    return err.sum() / scored.sum().clamp_min(1)


class MaskedAutoencoder(Objective):
    """Hide genes, reconstruct from the rest; subclasses say which genes are seen and scored.

    ``masks(x)`` returns two boolean ``[cells, genes]`` tensors: ``visible`` (the input keeps
    these values, the rest are set to 0, as the paper masks; see :meth:`masked_input`) and
    ``scored`` (the genes the loss is computed on). For masking they are complements; the
    isolated methods keep one programme visible and score that programme (GP to GP) or its
    factor (GP to TF). A CSR batch stays CSR: hidden genes leave its structure.
    """

    # the share of a cell's genes the encoder sees, about (subclasses set it)
    visible_share: float = 1.0

    def __init__(self, encoder: Encoder, decoder: Decoder, rescale: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.rescale = rescale

    def encoder_density(self, density: float) -> float:
        return density * self.visible_share

    def masks(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def masked_input(self, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """``x`` with the hidden genes set to 0; with ``rescale`` the visible ones are divided
        by the cell's visible fraction (the paper's code: 1 / (1 - masked fraction)), so the
        input keeps the mass the encoder sees unmasked after pre-training."""
        kept = keep_where(x, visible)
        if not self.rescale:
            return kept
        n_genes = x.shape[1]
        fraction = (visible.sum(dim=1, keepdim=True) / n_genes).clamp_min(1.0 / n_genes)
        return divide_rows(kept, fraction.to(kept.dtype))

    def reconstruct(self, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(self.masked_input(x, visible)))

    def loss(self, batch: Any) -> dict[str, torch.Tensor]:
        x = batch.x
        visible, scored = self.masks(x)
        pred = self.reconstruct(x, visible)
        return {
            "loss": masked_mse(pred, x, scored),
            "scored_fraction": scored.count_nonzero() / scored.numel(),
            # the realised share of hidden input genes (for GP masking: the union of the
            # programmes drawn, which may lie above the rate, never silently below it)
            "masked_fraction": 1.0 - visible.count_nonzero() / visible.numel(),
        }
