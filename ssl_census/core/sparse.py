"""Batches of cells as torch CSR tensors, and the few operations the models apply to them.

The loaders can hand a batch over as a CSR tensor (``dense=False``); the encoder's first layer
multiplies it as it is (:mod:`ssl_census.models.sparse_linear`). What the methods do to their
input before that (mask genes, zero entries of a view, rescale a cell) keeps it sparse here:
each operation takes a dense or a CSR tensor and returns the same layout, and on a dense tensor
it is exactly the operation the methods used before, so both layouts give the same values.
"""

from __future__ import annotations

import warnings

import torch

# torch flags every CSR tensor as beta; what is used here (construct, index, to_dense, .to) is
# stable. Silenced where one is made, not for the whole process.
_CSR_BETA = "Sparse CSR tensor support is in beta state"


def csr_tensor(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor,
               shape: tuple[int, int]) -> torch.Tensor:
    """A CSR tensor from its parts (trusted: the invariants are not checked)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_CSR_BETA)
        return torch.sparse_csr_tensor(crow, col, values, size=shape, check_invariants=False)


def is_csr(x: torch.Tensor) -> bool:
    return x.layout == torch.sparse_csr


def entry_rows(x: torch.Tensor) -> torch.Tensor:
    """The row of every stored entry of the CSR tensor ``x`` (int64, in storage order)."""
    crow = x.crow_indices()
    counts = crow[1:] - crow[:-1]
    rows = torch.arange(x.shape[0], device=x.device)
    return torch.repeat_interleave(rows, counts, output_size=x.values().numel())


def keep_where(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``x`` with the entries where ``keep`` (a dense bool tensor of x's shape) is False set
    to 0; a CSR ``x`` drops them from its structure, so the product after it does less work."""
    if not is_csr(x):
        return x * keep
    crow, col = x.crow_indices(), x.col_indices()
    kept = keep[entry_rows(x), col]
    # the new row pointer: how many kept entries precede each old row start
    before = torch.cat([kept.new_zeros(1, dtype=torch.int64), kept.cumsum(0)])
    return csr_tensor(before[crow].to(crow.dtype), col[kept], x.values()[kept], x.shape)


def divide_rows(x: torch.Tensor, by: torch.Tensor) -> torch.Tensor:
    """``x / by`` for a ``[rows, 1]`` divisor, in either layout."""
    if not is_csr(x):
        return x / by
    values = x.values() / by[entry_rows(x), 0]
    return csr_tensor(x.crow_indices(), x.col_indices(), values, x.shape)


def add_to(dense: torch.Tensor, x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """``dense + alpha * x`` as a new dense tensor: a CSR ``x`` is added at its entries only
    (no dense copy of it). Differentiable in ``dense``."""
    if not is_csr(x):
        return dense.add(x, alpha=alpha)
    values = x.values().to(dense.dtype)
    index = (entry_rows(x), x.col_indices().long())
    return dense.index_put(index, values * alpha if alpha != 1 else values, accumulate=True)


def to_dense(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a dense tensor (itself when it is one): for what needs every entry, such as
    count likelihoods over all genes."""
    return x.to_dense() if is_csr(x) else x
