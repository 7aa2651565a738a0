"""The six pre-training methods of the paper, built by name on one shared encoder.

``build_method(name, gene_names, model=..., options=..., gene_sets=...)`` returns an
:class:`~ssl_census.pretext.base.Objective` for the trainer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ssl_census.core.errors import UserError
from ssl_census.models.mlp import PAPER_HIDDEN, Decoder, Encoder
from ssl_census.pretext.augment import Augment
from ssl_census.pretext.barlow import BarlowTwins
from ssl_census.pretext.base import MaskedAutoencoder, Objective
from ssl_census.pretext.byol import BYOL
from ssl_census.pretext.gene_programmes import GeneProgrammes, load_gene_programmes
from ssl_census.pretext.gp_mask import GeneProgrammeMasking
from ssl_census.pretext.gp_to_gp import GpToGp
from ssl_census.pretext.gp_to_tf import GpToTf
from ssl_census.pretext.random_mask import RandomMasking

# Method -> the gene sets it uses by default (None: it uses none).
DEFAULT_GENE_SETS: dict[str, str | None] = {
    "random_mask": None,
    "gp_mask": "msigdb:c8",
    "gp_to_gp": "msigdb:c8",
    "gp_to_tf": "msigdb:c3_tft",
    "byol": None,
    "barlow": None,
}
METHODS = tuple(DEFAULT_GENE_SETS)

_TOLERANCE_KEYS = ("min_genes", "min_fraction", "min_sets")


def _augment(options: Mapping[str, Any]) -> Augment:
    return Augment(
        noise=options.get("noise", 0.2), dropout=options.get("dropout", 0.1),
        total_count=options.get("total_count", 10.0),
    )


def _builders() -> dict[str, Callable[..., Objective]]:
    return {
        "random_mask": lambda enc, dec, gp, o: RandomMasking(enc, dec, o.get("mask_rate", 0.5)),
        "gp_mask": lambda enc, dec, gp, o: GeneProgrammeMasking(
            enc, dec, gp, o.get("mask_rate", 0.5)
        ),
        "gp_to_gp": lambda enc, dec, gp, o: GpToGp(enc, dec, gp),
        "gp_to_tf": lambda enc, dec, gp, o: GpToTf(enc, dec, gp),
        "byol": lambda enc, dec, gp, o: BYOL(
            enc, _augment(o), o.get("projector_hidden", 4096), o.get("projection_dim", 256),
            o.get("predictor_hidden", 4096), o.get("decay", 0.99),
        ),
        "barlow": lambda enc, dec, gp, o: BarlowTwins(
            enc, _augment(o), o.get("projection_dim", 512), o.get("lambd", 0.0051)
        ),
    }


def build_method(
    name: str,
    gene_names: Sequence[str],
    model: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    gene_sets: str | None = None,
) -> Objective:
    """A fresh objective for method ``name`` over the gene space ``gene_names``.

    ``model``: ``hidden`` and ``dropout`` of the encoder; ``options``: method settings
    (mask_rate, decay, lambd, noise, ...) and gene-set tolerance (min_genes, min_fraction,
    min_sets); ``gene_sets``: a GMT path or ``msigdb:<collection>``, else the method's default.
    """
    if name not in DEFAULT_GENE_SETS:
        raise UserError(f"unknown method {name!r}", f"choose one of {', '.join(METHODS)}")
    model, options = dict(model or {}), dict(options or {})
    hidden = tuple(model.get("hidden", PAPER_HIDDEN))
    dropout = float(model.get("dropout", 0.1))
    encoder = Encoder(len(gene_names), hidden, dropout)
    decoder = Decoder(len(gene_names), hidden, dropout)
    programmes: GeneProgrammes | None = None
    spec = gene_sets or DEFAULT_GENE_SETS[name]
    if DEFAULT_GENE_SETS[name] is not None and spec is not None:
        tolerance = {k: options[k] for k in _TOLERANCE_KEYS if k in options}
        programmes = load_gene_programmes(
            spec, gene_names, with_regulators=name == "gp_to_tf", **tolerance
        )
    return _builders()[name](encoder, decoder, programmes, options)


__all__ = [
    "BYOL", "METHODS", "Augment", "BarlowTwins", "GeneProgrammeMasking", "GpToGp", "GpToTf",
    "MaskedAutoencoder", "Objective", "RandomMasking", "build_method",
]
