"""The paper's fully connected encoder and decoder (Richter et al. 2024, Methods).

Hidden layers are Linear -> SELU -> Dropout; the last layer is linear so the latent space
(and the reconstruction) is not squashed. No normalisation layers: SELU is self-normalising,
and a model without batch statistics embeds a cell the same way whatever batch it is in. The
encoder's first layer also takes a sparse (CSR) batch (:mod:`ssl_census.models.sparse_linear`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ssl_census.core.config import section
from ssl_census.models.sparse_linear import SparseInputLinear

PAPER_HIDDEN = (512, 512, 256, 256, 64)
PAPER_DROPOUT = 0.1


@dataclass(frozen=True)
class ModelConfig:
    """The encoder's shape (the ``[model]`` table): layer sizes after the genes, the last one
    the latent size, and the dropout after each hidden layer."""

    hidden: tuple[int, ...] = PAPER_HIDDEN
    dropout: float = PAPER_DROPOUT

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        object.__setattr__(self, "dropout", float(self.dropout))


def model_config(raw: ModelConfig | Mapping[str, Any] | None) -> ModelConfig:
    """``raw`` (a ``[model]`` table, or None for the paper's encoder) as a ModelConfig."""
    if isinstance(raw, ModelConfig):
        return raw
    return section(ModelConfig, raw or {}, "[model]")


def _stack(sizes: Sequence[int], dropout: float, first: type[nn.Linear] = nn.Linear
           ) -> nn.Sequential:
    """Linear layers between consecutive ``sizes`` (the first of class ``first``): SELU +
    dropout after all but the last."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append((first if i == 0 else nn.Linear)(n_in, n_out))
        if i < len(sizes) - 2:
            layers += [nn.SELU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """Genes -> latent: ``n_genes -> hidden[0] -> ... -> hidden[-1]`` (the latent size).
    The input is a dense or a CSR ``[cells, genes]`` tensor."""

    def __init__(
        self, n_genes: int, hidden: Sequence[int] = PAPER_HIDDEN, dropout: float = PAPER_DROPOUT
    ) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("hidden needs at least the latent size")
        self.n_genes = int(n_genes)
        self.hidden = tuple(int(h) for h in hidden)
        self.dropout = float(dropout)
        self.net = _stack((self.n_genes, *self.hidden), self.dropout, SparseInputLinear)

    @property
    def latent_dim(self) -> int:
        return self.hidden[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """Latent -> genes, the encoder's layer sizes in reverse."""

    def __init__(
        self, n_genes: int, hidden: Sequence[int] = PAPER_HIDDEN, dropout: float = PAPER_DROPOUT
    ) -> None:
        super().__init__()
        self.net = _stack((*reversed(tuple(hidden)), int(n_genes)), float(dropout))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def mlp_head(
    in_dim: int, hidden: int, out_dim: int, batch_norm: bool = True
) -> nn.Sequential:
    """A two-layer head (projector, predictor): Linear [-> BatchNorm] -> ReLU -> Linear.

    The BatchNorm always normalises with the statistics of the batch at hand, in evaluation
    too: running averages gathered under training-time dropout misplace the ReLU in eval mode
    (Barlow twins' validation loss rose while its training loss fell), and these heads only
    ever see large pre-training batches and are dropped afterwards.
    """
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(hidden, track_running_stats=False))
    layers += [nn.ReLU(inplace=True), nn.Linear(hidden, out_dim)]
    return nn.Sequential(*layers)
