"""The masked MSE (one autograd function) against the composed formula it replaces."""

from __future__ import annotations

import pytest
import torch

from ssl_census.pretext.base import masked_mse


def _reference(pred: torch.Tensor, target: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    err = torch.where(scored, (pred - target).square(), 0.0)
    return err.sum() / scored.sum().clamp_min(1)


@pytest.mark.parametrize("layout", ["dense", "csr"])
def test_value_and_gradient_equal_the_composed_formula(layout):
    g = torch.Generator().manual_seed(0)
    target = torch.rand(37, 211, generator=g) * (torch.rand(37, 211, generator=g) < 0.2)
    scored = torch.rand(37, 211, generator=g) < 0.5
    pred = torch.randn(37, 211, generator=g, requires_grad=True)
    ref_pred = pred.detach().clone().requires_grad_(True)

    given = target.to_sparse_csr() if layout == "csr" else target
    loss = masked_mse(pred, given, scored)
    ref = _reference(ref_pred, target, scored)
    (3 * loss).backward()
    (3 * ref).backward()

    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(pred.grad, ref_pred.grad)
    assert not pred.grad[~scored].any()  # unscored entries get no gradient


def test_nothing_scored_is_a_zero_loss_not_a_division_by_zero():
    pred = torch.randn(4, 5, requires_grad=True)
    loss = masked_mse(pred, torch.zeros(4, 5), torch.zeros(4, 5, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and not pred.grad.any()
