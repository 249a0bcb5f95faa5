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


def test_cluster_bootstrap_resamples_prompts():
    from openrlaif.evaluate.winrate import cluster_bootstrap_ci

    one_each = [[1.0], [0.0], [1.0], [0.5]]
    assert cluster_bootstrap_ci(one_each, 300, 1) == bootstrap_ci([1.0, 0.0, 1.0, 0.5], 300, 1)
    # Two prompts that always win and two that always lose: 4 answers each do not shrink the interval
    # below what 4 independent prompts give.
    lo, hi = cluster_bootstrap_ci([[1.0] * 4, [1.0] * 4, [0.0] * 4, [0.0] * 4], 1000, 0)
    flat_lo, flat_hi = bootstrap_ci([1.0] * 8 + [0.0] * 8, 1000, 0)
    assert hi - lo > flat_hi - flat_lo
    assert math.isnan(cluster_bootstrap_ci([], 10, 0)[0])


def test_length_controlled_win_rate_removes_a_pure_length_effect():
    from openrlaif.evaluate.winrate import length_controlled_win_rate

    # Longer answers (+1) win 4 of 6, shorter ones (-1) win 1 of 3: sigmoid(a + b) = 2/3, sigmoid(a - b) = 1/3
    # => a = 0, b = ln 2. Raw win rate 5/9; at equal length 0.5.
    scores = [1, 1, 1, 1, 0, 0] + [1, 0, 0]
    diffs = [1] * 6 + [-1] * 3
    lc = length_controlled_win_rate(scores, diffs)
    assert win_rate(scores) == pytest.approx(5 / 9)
    assert lc["win_rate"] == pytest.approx(0.5, abs=1e-4)
    assert lc["slope_per_100"] == pytest.approx(math.log(2) * 100, rel=1e-3)


def test_length_controlled_win_rate_keeps_a_length_free_win_rate():
    from openrlaif.evaluate.winrate import length_controlled_win_rate

    # Both length groups win 2 of 3: no length effect (b = 0), a = ln 2 => 2/3.
    lc = length_controlled_win_rate([1, 1, 0, 1, 1, 0], [40, 40, 40, -40, -40, -40])
    assert lc["win_rate"] == pytest.approx(2 / 3, abs=1e-4) and lc["slope_per_100"] == pytest.approx(0, abs=1e-4)
    assert length_controlled_win_rate([1, 0.5, 0], [3, 3, 3])["win_rate"] == pytest.approx(0.5)


def test_length_summary():
    from openrlaif.evaluate.winrate import length_summary

    s = length_summary(list(range(1, 11)), bins=5, top=10)
    assert s["mean"] == 5.5 and (s["p10"], s["p50"], s["p90"]) == (2, 6, 10)
    assert s["hist"] == [1, 2, 2, 2, 3] and s["hist_edges"] == [0, 2, 4, 6, 8, 10]
