"""The fine-tuning tasks as objectives for the generic Trainer: an encoder plus a task head.

Each is an :class:`~ssl_census.pretext.base.Objective` (``loss(batch)`` -> dict with ``"loss"``),
so fine-tuning runs through the same loop, checkpoints and early stopping as pre-training.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ssl_census.core.sparse import add_to, to_dense
from ssl_census.models.mlp import Decoder, Encoder
from ssl_census.pretext.base import Objective

TARGET_SUM = 1e4


class CellTypeClassifier(Objective):
    """Encoder -> linear layer over the cell types; class-weighted cross-entropy.

    Cells without a label (code -1) are left out of the loss; class weights (labels.parquet,
    balanced over the training counts) keep rare types from being ignored.
    """

    def __init__(self, encoder: Encoder, n_classes: int,
                 class_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.latent_dim, n_classes)
        weight = class_weight if class_weight is not None else torch.ones(n_classes)
        self.register_buffer("class_weight", torch.as_tensor(weight, dtype=torch.float32))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))

    def loss(self, batch: Any) -> dict[str, torch.Tensor]:
        y = batch.obs["cell_type_code"].long()
        logits = self.logits(batch.x)
        labelled = y >= 0
        if not bool(labelled.any()):
            zero = logits.sum() * 0.0  # keeps the graph (DDP needs every parameter used)
            return {"loss": zero, "accuracy": zero.detach()}
        loss = F.cross_entropy(logits.float(), y, weight=self.class_weight, ignore_index=-1)
        acc = (logits.argmax(1) == y)[labelled].float().mean()
        return {"loss": loss, "accuracy": acc.detach()}


def negative_binomial_nll(counts: torch.Tensor, mu: torch.Tensor,
                          theta: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Negative log-likelihood of ``counts`` under NB(mean ``mu``, inverse dispersion
    ``theta``), per entry (the parameterisation scVI uses)."""
    log_theta_mu = torch.log(theta + mu + eps)
    ll = (
        theta * (torch.log(theta + eps) - log_theta_mu)
        + counts * (torch.log(mu + eps) - log_theta_mu)
        + torch.lgamma(counts + theta) - torch.lgamma(theta) - torch.lgamma(counts + 1.0)
    )
    return -ll


class NegativeBinomialReconstruction(Objective):
    """Normalised log1p input -> latent (+ batch one-hot) -> gene proportions; the raw counts
    are scored under a negative binomial with mean ``proportion * library size`` and one
    dispersion per gene. With ``n_batches > 0`` the decoder sees the cell's batch, so the
    latent need not encode it (the integration task)."""

    def __init__(self, encoder: Encoder, n_batches: int = 0, batch_key: str | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.n_batches = int(n_batches)
        self.batch_key = batch_key
        hidden = (*encoder.hidden[:-1], encoder.latent_dim + self.n_batches)
        self.decoder = Decoder(encoder.n_genes, hidden, encoder.dropout)
        self.log_theta = nn.Parameter(torch.zeros(encoder.n_genes))

    def start_decoder_from(self, pretrained: dict[str, torch.Tensor]) -> list[str]:
        """Copy a pre-trained decoder's hidden layers into this one (as the paper's code
        does); returns the names of the tensors copied.

        The layers mirror the encoder, so they match by name and shape, except the first one
        when the decoder also reads the batch one-hot: its latent columns come from the
        pre-trained layer and the batch columns keep their fresh initialisation. The output
        layer starts fresh: pre-training predicts log1p values, this one the logits of gene
        proportions.
        """
        linears = [name for name, m in self.decoder.named_modules() if isinstance(m, nn.Linear)]
        copied = []
        with torch.no_grad():
            for layer in linears[:-1]:
                for kind in ("weight", "bias"):
                    key = f"{layer}.{kind}"
                    source = pretrained.get(key)
                    target = self.decoder.get_parameter(key)
                    if source is None or source.shape[0] != target.shape[0]:
                        continue
                    if source.shape == target.shape:
                        target.copy_(source)
                    elif kind == "weight" and source.shape[1] < target.shape[1]:
                        target[:, : source.shape[1]].copy_(source)  # latent columns only
                    else:
                        continue
                    copied.append(key)
        return copied

    def _decoder_input(self, z: torch.Tensor, batch: Any) -> torch.Tensor:
        if not self.n_batches:
            return z
        codes = batch.obs[self.batch_key].long()
        # an unknown batch (-1) gets an all-zero covariate
        onehot = F.one_hot(codes.clamp_min(0), self.n_batches).to(z.dtype) * (codes >= 0)[:, None]
        return torch.cat([z, onehot], dim=1)

    def proportions(self, batch: Any) -> torch.Tensor:
        z = self.encoder(batch.x)
        return torch.softmax(self.decoder(self._decoder_input(z, batch)).float(), dim=1)

    def predict_log1p(self, batch: Any) -> torch.Tensor:
        """The reconstruction on the input's scale: log1p(proportion * 10,000)."""
        return torch.log1p(self.proportions(batch) * TARGET_SUM)

    def loss(self, batch: Any) -> dict[str, torch.Tensor]:
        # the likelihood scores every gene, zeros included: the counts are needed dense
        counts = to_dense(batch.counts).float()
        library = counts.sum(1, keepdim=True)
        mu = self.proportions(batch) * library
        nll = negative_binomial_nll(counts, mu, torch.exp(self.log_theta)).sum(1).mean()
        with torch.no_grad():
            predicted = torch.log1p(mu / library.clamp_min(1) * TARGET_SUM)
            mse = add_to(predicted, batch.x, alpha=-1.0).square().mean()
        # per gene, so the figure does not scale with the size of the gene space
        return {"loss": nll / counts.shape[1], "mse_log1p": mse}


class CrossModalityRegressor(Objective):
    """Encoder -> two-layer head predicting another modality (e.g. log1p protein counts)
    from RNA, trained with mean squared error."""

    def __init__(self, encoder: Encoder, n_targets: int, hidden: int = 256) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Sequential(
            nn.Linear(encoder.latent_dim, hidden), nn.SELU(), nn.Linear(hidden, n_targets)
        )

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))

    def loss(self, batch: Any) -> dict[str, torch.Tensor]:
        return {"loss": F.mse_loss(self.predict(batch.x).float(), batch.target.float())}


def freeze_all_but_last_layer(encoder: Encoder) -> None:
    """The paper's SSL-shallow: only the encoder's last linear layer keeps learning."""
    linears = [m for m in encoder.modules() if isinstance(m, nn.Linear)]
    encoder.requires_grad_(False)
    linears[-1].requires_grad_(True)
