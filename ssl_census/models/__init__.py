"""Networks: the paper's fully connected encoder, its mirrored decoder and small heads."""

from ssl_census.models.mlp import Decoder, Encoder, mlp_head

__all__ = ["Decoder", "Encoder", "mlp_head"]
