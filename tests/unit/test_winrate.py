"""Win-rate statistics: outcomes with ties, mean, percentile bootstrap CI."""

import math

import pytest

from openrlaif.evaluate.winrate import bootstrap_ci, outcomes, win_rate


def test_outcomes_with_tie_margin():
    assert outcomes([0.9, 0.1, 0.52, 0.47, 0.5, 0.6], 0.05) == [1.0, 0.0, 0.5, 0.5, 0.5, 1.0]
    assert outcomes([0.52, 0.47], 0.0) == [1.0, 0.0]
    assert outcomes([0.5], 0.0) == [0.5]
    assert outcomes([0.9, 0.1], 0.45) == [0.5, 0.5]
    assert outcomes([], 0.05) == []


def test_win_rate():
    assert win_rate([1.0, 0.0, 0.5, 1.0]) == pytest.approx(2.5 / 4)
    assert win_rate([0.0]) == 0.0
    assert math.isnan(win_rate([]))


def test_bootstrap_ci_contains_mean_and_is_bounded():
    scores = [1.0, 0.0, 1.0, 1.0, 0.5, 0.0, 1.0, 0.5]
    lo, hi = bootstrap_ci(scores, n_boot=500, seed=3)
    mean = win_rate(scores)
    assert 0.0 <= lo <= mean <= hi <= 1.0
    assert lo < hi
    # deterministic for a seed
    assert bootstrap_ci(scores, n_boot=500, seed=3) == (lo, hi)
    # a narrower level gives a narrower (nested) interval
    lo80, hi80 = bootstrap_ci(scores, n_boot=500, seed=3, level=0.8)
    assert lo <= lo80 <= hi80 <= hi


def test_bootstrap_ci_percentile_indices():
    # With scores {0, 1}, n = 2: resampled means are 0, 0.5 or 1 with prob 1/4, 1/2, 1/4, so the
    # 2.5% and 97.5% percentiles of 100 resamples are 0 and 1 (needs < 3 zeros / ones to fail).
    assert bootstrap_ci([0.0, 1.0], n_boot=100, seed=0) == (0.0, 1.0)


def test_bootstrap_ci_constant_scores_are_degenerate():
    assert bootstrap_ci([1.0, 1.0, 1.0], n_boot=200) == (1.0, 1.0)
    assert bootstrap_ci([0.5] * 5, n_boot=200) == (0.5, 0.5)
    assert bootstrap_ci([0.3], n_boot=100) == (0.3, 0.3)


def test_bootstrap_ci_empty():
    lo, hi = bootstrap_ci([], n_boot=100)
    assert math.isnan(lo) and math.isnan(hi)
