"""The paper's encoder/decoder shapes."""

from __future__ import annotations

import torch
from torch import nn

from ssl_census.models import Decoder, Encoder, mlp_head


def test_encoder_is_the_papers_mlp():
    enc = Encoder(1000)
    linears = [m for m in enc.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (1000, 512), (512, 512), (512, 256), (256, 256), (256, 64)]
    assert sum(isinstance(m, nn.SELU) for m in enc.modules()) == 4
    assert all(m.p == 0.1 for m in enc.modules() if isinstance(m, nn.Dropout))
    assert isinstance(enc.net[-1], nn.Linear)  # linear latent
    assert not any(isinstance(m, nn.modules.batchnorm._NormBase | nn.LayerNorm)
                   for m in enc.modules())
    assert enc(torch.randn(3, 1000)).shape == (3, 64)


def test_decoder_mirrors_the_encoder():
    dec = Decoder(1000, (32, 16, 8), dropout=0.2)
    linears = [m for m in dec.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(8, 16), (16, 32), (32, 1000)]
    assert isinstance(dec.net[-1], nn.Linear)
    assert dec(torch.randn(2, 8)).shape == (2, 1000)


def test_eval_mode_is_deterministic_and_heads_have_their_shape():
    enc = Encoder(50, (16, 4)).eval()
    x = torch.randn(5, 50)
    assert torch.equal(enc(x), enc(x))
    assert mlp_head(4, 32, 7)(torch.randn(5, 4)).shape == (5, 7)


def test_ssl_heads_normalise_with_batch_statistics_in_eval_too():
    head = mlp_head(8, 32, 4)
    x = torch.randn(64, 8) * 5 + 3
    train_out = head.train()(x)
    assert torch.allclose(head.eval()(x), train_out)
    assert not list(head.buffers())  # no running statistics to drift from the batch
