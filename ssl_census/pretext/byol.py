"""BYOL: an online network predicts a slowly moving target network's projection of another view.

The target is an exponential moving average of the online encoder and projector, updated in
``after_step`` after every optimiser step (the public code never updated it). Loss: 2 - 2 cos
between the online prediction of one view and the target projection of the other, both ways.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

from ssl_census.models.mlp import Encoder, mlp_head
from ssl_census.pretext.augment import Augment, TwoViews
from ssl_census.pretext.options import ByolOptions


def byol_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    cos = F.cosine_similarity(prediction.float(), target.float(), dim=-1)
    return 2 - 2 * cos


class BYOL(TwoViews):
    def __init__(self, encoder: Encoder, augment: Augment, options: ByolOptions) -> None:
        super().__init__()
        self.encoder, self.augment, self.decay = encoder, augment, options.decay
        dim = options.projection_dim
        self.projector = mlp_head(encoder.latent_dim, options.projector_hidden, dim)
        self.predictor = mlp_head(dim, options.predictor_hidden, dim)
        self.target_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)

    def _online(self, view: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.projector(self.encoder(view)))

    @torch.no_grad()
    def _target(self, view: torch.Tensor) -> torch.Tensor:
        return self.target_projector(self.target_encoder(view))

    def loss(self, batch: Any) -> dict[str, torch.Tensor]:
        v1, v2 = self.augment(batch.x), self.augment(batch.x)
        loss = byol_loss(self._online(v1), self._target(v2)) + byol_loss(
            self._online(v2), self._target(v1)
        )
        return {"loss": loss.mean()}

    def online_target_pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        online = [*self.encoder.parameters(), *self.projector.parameters()]
        target = [*self.target_encoder.parameters(), *self.target_projector.parameters()]
        return list(zip(online, target, strict=True))

    @torch.no_grad()
    def after_step(self) -> None:
        for online, target in self.online_target_pairs():
            target.lerp_(online, 1 - self.decay)
