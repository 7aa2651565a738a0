"""Each method's settings (the ``[options]`` table of a pre-training config), with the
paper's values as defaults: the one place they are written down.

Richter et al. 2024: masking rate 0.5; BYOL projector and predictor 4096 -> 256, target EMA
0.99; Barlow twins projector to 512, lambda 0.0051; views with negative-binomial noise 0.2
(total_count 10) and 10 % of entries zeroed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ssl_census.core.config import section
from ssl_census.core.errors import UserError


@dataclass(frozen=True)
class GeneSetOptions:
    """Gene-set tolerance: a set is kept when at least ``min_genes`` genes and ``min_fraction``
    of its genes are in the gene space; fewer than ``min_sets`` kept sets is an error."""

    min_genes: int = 3
    min_fraction: float = 0.5
    min_sets: int = 2

    def tolerance(self) -> dict[str, Any]:
        return {"min_genes": self.min_genes, "min_fraction": self.min_fraction,
                "min_sets": self.min_sets}


@dataclass(frozen=True)
class RandomMaskOptions:
    """``rescale``: the visible genes are multiplied by 1 / (visible fraction of the cell), as
    the paper's code does (1 / (1 - rate)), so the encoder sees the same input mass in
    pre-training as afterwards, when nothing is masked; false feeds them unscaled."""

    mask_rate: float = 0.5
    rescale: bool = True


@dataclass(frozen=True)
class GpMaskOptions(GeneSetOptions):
    """``accept_lower_rate``: when all programmes together cover less of the gene space than
    ``mask_rate``, mask them all (a fixed mask, below the rate) instead of stopping."""

    mask_rate: float = 0.5
    rescale: bool = True
    accept_lower_rate: bool = False


@dataclass(frozen=True)
class ViewOptions:
    """The two views of the contrastive methods: negative-binomial noise of intensity
    ``noise`` (``total_count``), then ``view_dropout`` of the entries set to 0. Named apart
    from the encoder's ``[model] dropout``, which is another thing."""

    noise: float = 0.2
    total_count: float = 10.0
    view_dropout: float = 0.1


@dataclass(frozen=True)
class ByolOptions(ViewOptions):
    projector_hidden: int = 4096
    projection_dim: int = 256
    predictor_hidden: int = 4096
    decay: float = 0.99  # target EMA, updated after every optimiser step


@dataclass(frozen=True)
class BarlowOptions(ViewOptions):
    projection_dim: int = 512
    lambd: float = 0.0051


OPTIONS: dict[str, type] = {
    "random_mask": RandomMaskOptions,
    "gp_mask": GpMaskOptions,
    "gp_to_gp": GeneSetOptions,
    "gp_to_tf": GeneSetOptions,
    "byol": ByolOptions,
    "barlow": BarlowOptions,
}


def method_options(method: str, raw: Mapping[str, Any] | Any | None) -> Any:
    """``raw`` (a table, or already the method's options) as the method's options; an
    unknown key is a UserError naming the keys the method takes."""
    cls = OPTIONS[method]
    if isinstance(raw, cls):
        return raw
    raw = dict(raw or {})
    if "dropout" in raw and issubclass(cls, ViewOptions):
        raise UserError(f"[options] dropout is ambiguous for {method}",
                        "write view_dropout for the views' masking; the encoder's dropout "
                        "is [model] dropout")
    return section(cls, raw, f"[options] of {method}")
