"""Bradley-Terry loss and ensemble aggregation against hand-computed values."""

import math

import pytest
import torch

from openrlaif.reward.loss import aggregate_ensemble, bradley_terry_loss, preference_accuracy


def test_bradley_terry_hard_label():
    # d = 2 - 1 = 1: -log sigmoid(1) = log(1 + e^-1)
    loss = bradley_terry_loss(torch.tensor([2.0]), torch.tensor([1.0]))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)


def test_bradley_terry_soft_label_margin_and_centering():
    rc, rr = torch.tensor([0.5]), torch.tensor([-0.5])
    # d = 1 - 0.25 = 0.75; p = 0.8: -(0.8 log s(0.75) + 0.2 log s(-0.75)); centering 0.1 * (0)^2 = 0
    expected = -(0.8 * math.log(1 / (1 + math.exp(-0.75))) + 0.2 * math.log(1 / (1 + math.exp(0.75))))
    assert bradley_terry_loss(rc, rr, 0.8, margin=0.25, center_coef=0.1).item() == pytest.approx(expected, abs=1e-6)
    # centering adds coef * (r_c + r_r)^2: (3 + 1)^2 * 0.01 = 0.16
    base = bradley_terry_loss(torch.tensor([3.0]), torch.tensor([1.0]))
    assert bradley_terry_loss(torch.tensor([3.0]), torch.tensor([1.0]), center_coef=0.01).item() == pytest.approx(base.item() + 0.16)
    # p = 0.5 is minimised at d = 0 (no preference): the gradient there is zero
    d = torch.tensor([0.0], requires_grad=True)
    bradley_terry_loss(d, torch.tensor([0.0]), 0.5).sum().backward()
    assert d.grad.item() == pytest.approx(0.0, abs=1e-7)


def test_preference_accuracy_counts_ties_half():
    assert preference_accuracy(torch.tensor([1.0, 0.0, 2.0, 1.0]), torch.tensor([0.0, 1.0, 2.0, 0.5])) == 0.625


def test_ensemble_aggregations():
    r = torch.tensor([[1.0, 0.0], [3.0, 0.0]])  # 2 members x 2 examples
    assert aggregate_ensemble(r, "mean").tolist() == [2.0, 0.0]
    assert aggregate_ensemble(r, "min").tolist() == [1.0, 0.0]
    # population std of (1, 3) is 1: 2 - 0.5 * 1
    assert aggregate_ensemble(r, "uwo", lam=0.5).tolist() == [1.5, 0.0]
    assert aggregate_ensemble(torch.tensor([[4.0]]), "uwo").tolist() == [4.0]
    with pytest.raises(ValueError):
        aggregate_ensemble(r, "max")
