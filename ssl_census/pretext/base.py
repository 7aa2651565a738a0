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

from ssl_census.models.mlp import Decoder, Encoder


class Objective(nn.Module):
    """Base of trainable objectives: pre-training methods here, fine-tuning tasks later."""

    encoder: Encoder

    def loss(self, batch: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def after_step(self) -> None:
        """Hook after every optimiser step; nothing by default."""

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        return self.loss(batch)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the entries where ``scored`` is True, and only those."""
    err = (pred.float() - target.float()).square() * scored
    return err.sum() / scored.sum().clamp_min(1)


class MaskedAutoencoder(Objective):
    """Hide genes, reconstruct from the rest; subclasses say which genes are seen and scored.

    ``masks(x)`` returns two boolean ``[cells, genes]`` tensors: ``visible`` (the input keeps
    these values, the rest are set to 0, as the paper masks; see :meth:`masked_input`) and
    ``scored`` (the genes the loss is computed on). For masking they are complements; the
    isolated methods keep one programme visible and score that programme (GP to GP) or its
    factor (GP to TF).
    """

    def __init__(self, encoder: Encoder, decoder: Decoder, rescale: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.rescale = rescale

    def masks(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def masked_input(self, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """``x`` with the hidden genes set to 0; with ``rescale`` the visible ones are divided
        by the cell's visible fraction (the paper's code: 1 / (1 - masked fraction)), so the
        input keeps the mass the encoder sees unmasked after pre-training."""
        kept = x * visible
        if not self.rescale:
            return kept
        fraction = visible.float().mean(dim=1, keepdim=True).clamp_min(1.0 / x.shape[1])
        return kept / fraction.to(kept.dtype)

    def reconstruct(self, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(self.masked_input(x, visible)))

    def loss(self, batch: Any) -> dict[str, torch.Tensor]:
        x = batch.x
        visible, scored = self.masks(x)
        pred = self.reconstruct(x, visible)
        return {
            "loss": masked_mse(pred, x, scored),
            "scored_fraction": scored.float().mean().detach(),
            # the realised share of hidden input genes (for GP masking: the union of the
            # programmes drawn, which may lie above the rate, never silently below it)
            "masked_fraction": 1.0 - visible.float().mean().detach(),
        }
