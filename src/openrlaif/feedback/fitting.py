"""Fitting a Bradley-Terry preference head on labelled pairs, as pure functions on feature matrices.

A pair (chosen, rejected) with features f_c, f_r (one row each, already standardised) is one example of
a logistic regression without intercept on the difference d = f_c - f_r:

    P(chosen preferred) = sigmoid(d . w),   loss = mean BCE + (l2 / 2) * |w|^2

Half of the pairs (seeded) are shown the other way round (d = f_r - f_c, label 0), so the head cannot
lean on the side a pair was written in. The loss is convex; L-BFGS finds its minimum. Layer, pooling and
the L2 strength are chosen by k-fold cross-validated agreement (see ``select_by_cv``).

Shapes: ``diffs`` (n, d) float, ``labels`` (n,) float in [0, 1] (soft labels allowed), ``w`` (d,).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch


@dataclass
class Standardizer:
    """Per-feature mean and spread fitted on the training replies; applied before the head."""

    mean: torch.Tensor  # (d,)
    std: torch.Tensor  # (d,), never 0

    @classmethod
    def fit(cls, features: torch.Tensor) -> Standardizer:
        """``features`` (m, d): one row per reply the head will see in training."""
        mean = features.mean(0)
        std = features.std(0, unbiased=False).clamp_min(1e-6)
        return cls(mean, std)

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean) / self.std


def oriented(chosen: torch.Tensor, rejected: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(diffs, labels): chosen - rejected with label 1, or for a seeded half of the pairs rejected - chosen
    with label 0. ``chosen``/``rejected`` (n, d) -> diffs (n, d), labels (n,)."""
    rng = random.Random(seed)
    flip = torch.tensor([rng.random() < 0.5 for _ in range(chosen.shape[0])])
    diffs = torch.where(flip[:, None], rejected - chosen, chosen - rejected)
    return diffs, (~flip).float()


def fit_head(diffs: torch.Tensor, labels: torch.Tensor, l2: float, max_iter: int = 200) -> torch.Tensor:
    """The weights w (d,) minimising mean BCE(sigmoid(diffs @ w), labels) + l2/2 |w|^2 (L-BFGS, float64)."""
    x, y = diffs.double(), labels.double()
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = head_loss(x, y, w, l2)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().float()


def head_loss(diffs: torch.Tensor, labels: torch.Tensor, w: torch.Tensor, l2: float) -> torch.Tensor:
    """Mean binary cross-entropy of sigmoid(diffs @ w) against ``labels``, plus l2/2 |w|^2."""
    logits = diffs @ w
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
    return bce + 0.5 * l2 * (w * w).sum()


def agreement(diffs: torch.Tensor, labels: torch.Tensor, w: torch.Tensor) -> float:
    """Share of pairs where the head's preferred side is the labelled one (ties, logit 0, count half)."""
    logits = diffs.float() @ w.float()
    right = ((logits > 0) & (labels > 0.5)) | ((logits < 0) & (labels < 0.5))
    ties = logits == 0
    return float((right.float() + 0.5 * ties.float()).mean())


def kfold(n: int, k: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """k (train, test) index splits of range(n): a seeded shuffle cut into k nearly equal test folds."""
    if not 2 <= k <= n:
        raise ValueError(f"k-fold needs 2 <= k <= n (k={k}, n={n})")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    folds = [order[i::k] for i in range(k)]
    return [([j for f in folds[:i] + folds[i + 1:] for j in f], sorted(folds[i])) for i in range(k)]


def cv_predictions(chosen: torch.Tensor, rejected: torch.Tensor, l2: float, k: int,
                   seed: int, covariates: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Out-of-fold (logits, labels) of every pair, each predicted by a head fitted on the other k-1 folds
    (the standardiser too is fitted on the training folds only). Pairs are oriented as in ``oriented``.

    The last ``covariates`` columns (e.g. reply length) take part in the fit and are then dropped from the
    prediction: the head learns what the features say beyond them (a length-debiased head)."""
    logits, labels = torch.zeros(chosen.shape[0]), torch.zeros(chosen.shape[0])
    for train, test in kfold(chosen.shape[0], k, seed):
        std = Standardizer.fit(torch.cat([chosen[train], rejected[train]]))
        d_train, y_train = oriented(std(chosen[train]), std(rejected[train]), seed)
        d_test, y_test = oriented(std(chosen[test]), std(rejected[test]), seed + 1)
        w = fit_head(d_train, y_train, l2)
        if covariates:
            w[-covariates:] = 0.0
        logits[test] = d_test @ w
        labels[test] = y_test
    return logits, labels


def cv_agreement(chosen: torch.Tensor, rejected: torch.Tensor, l2: float, k: int, seed: int,
                 covariates: int = 0) -> float:
    """Share of pairs whose out-of-fold prediction (``cv_predictions``) agrees with the label."""
    logits, labels = cv_predictions(chosen, rejected, l2, k, seed, covariates)
    return agreement(logits[:, None], labels, torch.ones(1))


@dataclass
class Selection:
    """The CV winner and the whole table (feature set name, l2) -> CV agreement."""

    features: str
    l2: float
    cv_agreement: float
    table: dict[tuple[str, float], float]


def select_by_cv(candidates: dict[str, tuple[torch.Tensor, torch.Tensor]], l2_grid: list[float], k: int,
                 seed: int, covariates: int = 0) -> Selection:
    """Pick the feature set (e.g. 'layer18:mean') and L2 strength with the best k-fold CV agreement.
    ``candidates`` maps a name to (chosen (n, d), rejected (n, d)); ties go to the first listed."""
    table = {(name, l2): cv_agreement(c, r, l2, k, seed, covariates) for name, (c, r) in candidates.items()
             for l2 in l2_grid}
    (name, l2), best = max(table.items(), key=lambda item: item[1])
    return Selection(name, l2, best, table)
