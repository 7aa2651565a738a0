"""Optimisers, made once per run: AdamW (the paper's default) or LARS (Barlow twins' choice).

Weight decay applies to matrices only, not to biases and normalisation parameters. AdamW runs
fused (one pass over each parameter and its state instead of a pass per operation): on a CPU
its step over the full-size model's ~20M first- and last-layer weights takes a fraction of
the time of the multi-tensor version.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from ssl_census.core.errors import UserError


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0, "lars_exclude": True},
    ]


class LARS(torch.optim.Optimizer):
    """SGD with momentum whose step per weight matrix is scaled by ||w|| / ||grad||
    (You et al. 2017), as Barlow twins trains; groups with ``lars_exclude`` take plain steps."""

    def __init__(
        self, params: Iterable, lr: float, weight_decay: float = 0.0, momentum: float = 0.9,
        eta: float = 0.001,
    ) -> None:
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      eta=eta, lars_exclude=False))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                dp = p.grad.add(p, alpha=g["weight_decay"])
                if not g["lars_exclude"]:
                    w_norm, g_norm = torch.norm(p), torch.norm(dp)
                    ratio = torch.where((w_norm > 0) & (g_norm > 0),
                                        g["eta"] * w_norm / g_norm, torch.ones_like(w_norm))
                    dp = dp.mul(ratio)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"].mul_(g["momentum"]).add_(dp)
                p.add_(mu, alpha=-g["lr"])


def make_optimizer(
    model: nn.Module, name: str, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    groups = _param_groups(model, weight_decay)
    if name == "adamw":
        for g in groups:
            g.pop("lars_exclude", None)
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    if name == "lars":
        return LARS(groups, lr=lr)
    raise UserError(f"unknown optimizer {name!r}", "use adamw or lars")


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float = 0.0):
    """LR multiplier: linear warm-up over ``warmup_steps``, then cosine down to ``min_ratio``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
