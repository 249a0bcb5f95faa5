"""The Bradley-Terry head's maths (feedback.fitting) against hand-derived values."""

import math

import pytest
import torch

from openrlaif.feedback.fitting import (
    Standardizer,
    agreement,
    cv_agreement,
    fit_head,
    head_loss,
    kfold,
    oriented,
    select_by_cv,
)


def test_kfold_partitions_every_index_once():
    splits = kfold(10, 3, seed=0)
    tests = [t for _, t in splits]
    assert sorted(i for t in tests for i in t) == list(range(10))
    assert sorted(len(t) for t in tests) == [3, 3, 4]
    for train, test in splits:
        assert not set(train) & set(test) and len(train) + len(test) == 10
    assert kfold(10, 3, seed=0) == splits and kfold(10, 3, seed=1) != splits
    with pytest.raises(ValueError):
        kfold(3, 4, seed=0)


def test_standardizer_uses_population_spread_and_never_divides_by_zero():
    s = Standardizer.fit(torch.tensor([[1.0, 5.0], [3.0, 5.0]]))
    assert s.mean.tolist() == [2.0, 5.0]
    assert s.std[0].item() == 1.0 and s.std[1].item() == pytest.approx(1e-6)
    assert s(torch.tensor([[3.0, 5.0]])).tolist() == [[1.0, 0.0]]


def test_oriented_flips_a_seeded_half_and_labels_it_zero():
    c, r = torch.tensor([[2.0], [2.0], [2.0], [2.0]]), torch.tensor([[1.0], [1.0], [1.0], [1.0]])
    d, y = oriented(c, r, seed=3)
    for di, yi in zip(d[:, 0].tolist(), y.tolist()):
        assert (di, yi) in ((1.0, 1.0), (-1.0, 0.0))
    assert 0 < y.sum() < 4  # some of each for this seed
    assert torch.equal(oriented(c, r, seed=3)[0], d)


def test_fit_head_is_the_stationary_point_of_the_regularised_loss():
    # One feature, pairs d=+1 (label 1) and d=-1 (label 0): the gradient of the mean BCE is sigmoid(w) - 1,
    # so the optimum with L2 strength l satisfies sigmoid(w) - 1 + l * w = 0.
    diffs, labels = torch.tensor([[1.0], [-1.0]]), torch.tensor([1.0, 0.0])
    for l2 in (0.5, 0.1):
        w = fit_head(diffs, labels, l2)[0].item()
        assert 1 / (1 + math.exp(-w)) - 1 + l2 * w == pytest.approx(0.0, abs=1e-5)
    # l2 = 0.5: sigmoid(w) = 1 - w/2 -> w ~= 0.67483 (solved by bisection)
    assert fit_head(diffs, labels, 0.5)[0].item() == pytest.approx(0.67483, abs=1e-4)
    w = torch.tensor([0.3])
    expected = (math.log(1 + math.exp(-0.3)) * 2) / 2 + 0.25 * 0.09
    assert head_loss(diffs, labels, w, 0.5).item() == pytest.approx(expected, rel=1e-6)


def test_agreement_counts_ties_as_half():
    diffs = torch.tensor([[1.0], [-2.0], [0.0], [3.0]])
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0])
    assert agreement(diffs, labels, torch.tensor([1.0])) == pytest.approx((1 + 1 + 0.5 + 0) / 4)


def synthetic(n: int, d: int, seed: int, signal: bool):
    g = torch.Generator().manual_seed(seed)
    chosen, rejected = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    if signal:  # the chosen reply is higher along feature 0
        chosen[:, 0] += 2.5
    return chosen, rejected


def test_cv_finds_the_informative_features_and_ignores_noise():
    informative, noise = synthetic(120, 6, 0, True), synthetic(120, 6, 1, False)
    assert cv_agreement(*informative, l2=0.1, k=5, seed=0) > 0.9
    assert abs(cv_agreement(*noise, l2=0.1, k=5, seed=0) - 0.5) < 0.15
    pick = select_by_cv({"noise": noise, "layer3:mean": informative}, [0.01, 1.0], k=5, seed=0)
    assert pick.features == "layer3:mean" and pick.cv_agreement > 0.9
    assert set(pick.table) == {("noise", 0.01), ("noise", 1.0), ("layer3:mean", 0.01), ("layer3:mean", 1.0)}


def test_a_covariate_is_fitted_with_the_head_and_dropped_when_it_scores():
    """Length as the last column: a head that may only use it is right every time; with the column dropped
    at scoring (the length-debiased head) it is at chance, while a real signal elsewhere survives."""
    g = torch.Generator().manual_seed(0)
    n = 120
    chosen, rejected = torch.randn(n, 4, generator=g), torch.randn(n, 4, generator=g)
    chosen[:, -1] += 3.0  # chosen replies are "longer"; the other columns are noise
    assert cv_agreement(chosen, rejected, 0.1, 5, 0) > 0.95
    assert abs(cv_agreement(chosen, rejected, 0.1, 5, 0, covariates=1) - 0.5) < 0.15
    chosen[:, 0] += 2.0  # now a real signal in column 0 too
    assert cv_agreement(chosen, rejected, 0.1, 5, 0, covariates=1) > 0.85
