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
    (``target`` dense or CSR). Differentiable in ``pred``."""
    return _MaskedMSE.apply(pred, target, scored)


def true_per_row(mask: torch.Tensor) -> torch.Tensor:
    """The True entries of each row of a 2-d bool tensor, as a ``[rows, 1]`` int32 column.

    Summed as bytes into int32: torch's bool sums and ``count_nonzero(dim=...)`` cast every
    entry to int64 first, 15 ms at 256 x 19,331 on a CPU core against under 1 ms."""
    return mask.view(torch.uint8).sum(dim=1, keepdim=True, dtype=torch.int32)


class _MaskedMSE(torch.autograd.Function):
    """The masked MSE in four passes over the ``[cells, genes]`` matrix, forward and backward
    together, where the composed operations take about eight (a residual, its square, the
    mask applied, the sum; and as many for the gradient): at batch 256 over 19,331 genes each
    pass is 20 MB, a share of a CPU step that shows. The residual, zeroed outside the scored
    entries in place, is the gradient up to the factor 2 / n."""

    @staticmethod
    def forward(ctx: Any, pred: torch.Tensor, target: torch.Tensor,
                scored: torch.Tensor) -> torch.Tensor:
        residual = add_to(pred.detach().float(), target, alpha=-1.0).mul_(scored)
        n = scored.count_nonzero().clamp_min(1)
        ctx.save_for_backward(residual, n)
        ctx.pred_dtype = pred.dtype
        flat = residual.view(-1)
        return torch.dot(flat, flat) / n

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        residual, n = ctx.saved_tensors
        return (residual * (2 * grad / n)).to(ctx.pred_dtype), None, None


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
        visible_genes = true_per_row(visible)
        fraction = (visible_genes / n_genes).clamp_min(1.0 / n_genes)
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
