"""The six pre-training methods of the paper, built by name on one shared encoder.

``build_method(name, gene_names, model=..., options=..., gene_sets=...)`` returns an
:class:`~ssl_census.pretext.base.Objective` for the trainer; each method's settings and their
defaults are in :mod:`ssl_census.pretext.options`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ssl_census.core.errors import UserError
from ssl_census.models.mlp import Decoder, Encoder, ModelConfig, model_config
from ssl_census.pretext.augment import Augment
from ssl_census.pretext.barlow import BarlowTwins
from ssl_census.pretext.base import MaskedAutoencoder, Objective
from ssl_census.pretext.byol import BYOL
from ssl_census.pretext.gene_programmes import GeneProgrammes, load_gene_programmes
from ssl_census.pretext.gp_mask import GeneProgrammeMasking
from ssl_census.pretext.gp_to_gp import GpToGp
from ssl_census.pretext.gp_to_tf import GpToTf
from ssl_census.pretext.options import OPTIONS, GeneSetOptions, method_options
from ssl_census.pretext.random_mask import RandomMasking


@dataclass(frozen=True)
class Method:
    """A method: the gene sets it reads by default (None: it reads none) and how it is built
    from an encoder, a decoder, its programmes and its options."""

    gene_sets: str | None
    build: Callable[[Encoder, Decoder, GeneProgrammes | None, Any], Objective]


REGISTRY: dict[str, Method] = {
    "random_mask": Method(None, lambda enc, dec, gp, o: RandomMasking(enc, dec, o.mask_rate,
                                                                      o.rescale)),
    "gp_mask": Method("msigdb:c8", lambda enc, dec, gp, o: GeneProgrammeMasking(
        enc, dec, gp, o.mask_rate, o.rescale, o.accept_lower_rate)),
    "gp_to_gp": Method("msigdb:c8", lambda enc, dec, gp, o: GpToGp(enc, dec, gp)),
    "gp_to_tf": Method("msigdb:c3_tft", lambda enc, dec, gp, o: GpToTf(enc, dec, gp)),
    "byol": Method(None, lambda enc, dec, gp, o: BYOL(enc, Augment(o), o)),
    "barlow": Method(None, lambda enc, dec, gp, o: BarlowTwins(enc, Augment(o), o)),
}
METHODS = tuple(REGISTRY)
assert set(METHODS) == set(OPTIONS)


def check_method(name: str | None) -> str:
    """``name`` when it is a method, else a UserError listing the methods."""
    if name not in REGISTRY:
        raise UserError(f"unknown or missing method {name!r}",
                        f"choose one of {', '.join(METHODS)}")
    return name


def build_method(
    name: str,
    gene_names: Sequence[str],
    model: ModelConfig | Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | Any | None = None,
    gene_sets: str | None = None,
) -> Objective:
    """A fresh objective for method ``name`` over the gene space ``gene_names``.

    ``model``: the encoder's ``hidden`` and ``dropout`` (default the paper's); ``options``:
    the method's settings (a table or its options dataclass); ``gene_sets``: a GMT path or
    ``msigdb:<collection>``, else the method's default.
    """
    method = REGISTRY[check_method(name)]
    shape = model_config(model)
    opts = method_options(name, options)
    encoder = Encoder(len(gene_names), shape.hidden, shape.dropout)
    decoder = Decoder(len(gene_names), shape.hidden, shape.dropout)
    programmes: GeneProgrammes | None = None
    spec = gene_sets or method.gene_sets
    if method.gene_sets is not None and spec is not None:
        assert isinstance(opts, GeneSetOptions)
        programmes = load_gene_programmes(
            spec, gene_names, with_regulators=name == "gp_to_tf", **opts.tolerance()
        )
    return method.build(encoder, decoder, programmes, opts)


__all__ = [
    "BYOL", "METHODS", "Augment", "BarlowTwins", "GeneProgrammeMasking", "GpToGp", "GpToTf",
    "MaskedAutoencoder", "Objective", "RandomMasking", "build_method",
]
