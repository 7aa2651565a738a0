"""The encoder's first layer on CSR batches: the product and its gradients of the dense layer,
independent of the thread count, and nn.Linear's parameters stored transposed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ssl_census.models import Encoder
from ssl_census.models.sparse_linear import (
    BLOCK_ROWS,
    SparseInputLinear,
    sparse_linear,
    torch_sparse_linear,
)


def sparse_batch(n_rows: int, n_cols: int, density: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n_rows, n_cols, generator=g) < density) * torch.rand(n_rows, n_cols,
                                                                            generator=g)


def forward_backward(layer: SparseInputLinear, x: torch.Tensor, grad: torch.Tensor):
    layer.zero_grad(set_to_none=True)
    out = layer(x)
    out.backward(grad)
    return out.detach(), layer.weight_t.grad, None if layer.bias is None else layer.bias.grad


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_csr_input_gives_the_dense_product_and_gradients(bias, index_dtype):
    torch.manual_seed(0)
    layer = SparseInputLinear(300, 24, bias=bias)
    x = sparse_batch(2 * BLOCK_ROWS + 37, 300, 0.1)  # three row blocks, the last one short
    x[5] = 0  # a cell without counts
    grad = torch.randn(x.shape[0], 24)
    csr = x.to_sparse_csr()
    csr = torch.sparse_csr_tensor(csr.crow_indices().to(index_dtype),
                                  csr.col_indices().to(index_dtype), csr.values(), csr.shape)
    dense = forward_backward(layer, x, grad)
    sparse = forward_backward(layer, csr, grad)
    for d, s in zip(dense, sparse, strict=True):
        if d is not None:
            torch.testing.assert_close(s, d, rtol=1e-5, atol=1e-5)
    assert dense[1].is_contiguous() and sparse[1].is_contiguous()  # no copy for the optimiser


def test_result_does_not_depend_on_the_thread_count():
    torch.manual_seed(0)
    weight_t, bias = torch.randn(500, 40), torch.randn(40)
    x = sparse_batch(300, 500, 0.2).to_sparse_csr()
    grad = torch.randn(300, 40)
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            w = weight_t.clone().requires_grad_()
            out = sparse_linear(x, w, bias)
            out.backward(grad)
            results.append((out.detach(), w.grad))
    finally:
        torch.set_num_threads(threads)
    for out, grad_w in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(grad_w, results[0][1])


def test_torchs_sparse_product_agrees():
    torch.manual_seed(0)
    layer = SparseInputLinear(200, 16)
    x = sparse_batch(50, 200, 0.1)
    grad = torch.randn(50, 16)
    dense = forward_backward(layer, x, grad)
    layer.zero_grad(set_to_none=True)
    out = torch_sparse_linear(x.to_sparse_csr(), layer.weight_t, layer.bias)
    out.backward(grad)
    torch.testing.assert_close(out.detach(), dense[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.weight_t.grad, dense[1], rtol=1e-5, atol=1e-5)


def test_frozen_weight_gets_no_gradient_and_sparse_input_none():
    layer = SparseInputLinear(30, 4)
    layer.weight_t.requires_grad_(False)
    out = layer(sparse_batch(8, 30, 0.3).to_sparse_csr())
    out.sum().backward()
    assert layer.weight_t.grad is None and layer.bias.grad is not None
    x = sparse_batch(8, 30, 0.3).to_sparse_csr().requires_grad_()
    with pytest.raises(ValueError, match="gradient"):
        layer(x)


def test_parameters_are_nn_linears_stored_transposed():
    torch.manual_seed(3)
    plain = nn.Linear(100, 8)
    torch.manual_seed(3)
    layer = SparseInputLinear(100, 8)
    assert torch.equal(layer.weight, plain.weight)  # same initial values for a seed
    assert layer.weight.shape == (8, 100) and layer.weight_t.is_contiguous()
    assert [n for n, _ in layer.named_parameters()] == ["bias", "weight_t"]
    state = layer.state_dict()
    assert list(state) == ["weight", "bias"] and state["weight"].shape == (8, 100)
    other = nn.Linear(100, 8)
    layer.load_state_dict(other.state_dict())  # checkpoints of nn.Linear load, and back
    assert torch.equal(layer.weight, other.weight) and layer.weight_t.is_contiguous()
    nn.Linear(100, 8).load_state_dict(layer.state_dict())
    encoder = Encoder(100, (8, 4))
    assert isinstance(encoder.net[0], SparseInputLinear)
    assert list(encoder.state_dict()) == ["net.0.weight", "net.0.bias", "net.3.weight",
                                          "net.3.bias"]
    x = sparse_batch(6, 100, 0.2)
    encoder.eval()
    torch.testing.assert_close(encoder(x.to_sparse_csr()), encoder(x), rtol=1e-5, atol=1e-6)
