"""Operations on CSR batches give exactly what the same operations give on dense batches."""

from __future__ import annotations

import torch

from ssl_census.core.sparse import add_to, divide_rows, entry_rows, keep_where, to_dense


def batch(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(7, 40, generator=g) < 0.3) * torch.rand(7, 40, generator=g)
    x[2] = 0  # a row without entries
    return x


def test_keep_where_drops_the_hidden_entries_from_the_structure():
    x = batch()
    keep = torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) < 0.5
    kept = keep_where(x.to_sparse_csr(), keep)
    assert kept.layout == torch.sparse_csr
    assert torch.equal(kept.to_dense(), x * keep)
    assert kept.values().numel() == int((x * keep != 0).sum())  # hidden ones left, not zeroed
    assert torch.equal(keep_where(x, keep), x * keep)


def test_row_division_and_additions_match_the_dense_operations_exactly():
    x = batch()
    csr = x.to_sparse_csr()
    by = torch.rand(7, 1) + 0.5
    assert torch.equal(divide_rows(csr, by).to_dense(), x / by)
    dense = torch.randn(7, 40, requires_grad=True)
    for alpha in (1.0, -1.0):
        expected = dense + x if alpha == 1 else dense - x
        assert torch.equal(add_to(dense, csr, alpha), expected)
        assert torch.equal(add_to(dense, x, alpha), expected)
    add_to(dense, csr, -1.0).square().sum().backward()
    torch.testing.assert_close(dense.grad, 2 * (dense - x).detach())


def test_entry_rows_and_densifying():
    x = batch()
    csr = x.to_sparse_csr()
    assert torch.equal(entry_rows(csr), x.nonzero()[:, 0])
    assert torch.equal(to_dense(csr), x) and to_dense(x) is x
