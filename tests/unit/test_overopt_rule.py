"""The over-optimisation alarm's rule on hand-made series."""

import pytest

from openrlaif.evaluate.overopt import divergence_streaks, first_alarm


def test_streak_counts_consecutive_checks_where_proxy_rises_and_heldout_falls():
    proxy = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    heldout = [0.5, 0.6, 0.5, 0.4, 0.45, 0.3]
    # check 1: both rose (0); 2, 3: diverging (1, 2); 4: held-out rose (0); 5: diverging again (1)
    assert divergence_streaks(proxy, heldout) == [0, 0, 1, 2, 0, 1]
    assert first_alarm(proxy, heldout, patience=2) == 3
    assert first_alarm(proxy, heldout, patience=3) is None


def test_a_falling_proxy_or_a_flat_heldout_breaks_the_streak():
    assert divergence_streaks([1, 2, 1, 2], [5, 4, 3, 2]) == [0, 1, 0, 1]  # proxy fell at check 2
    assert divergence_streaks([1, 2, 3], [5, 5, 5]) == [0, 0, 0]  # held-out equal: not a fall
    assert divergence_streaks([], []) == []
    assert first_alarm([1.0], [1.0], patience=1) is None


def test_series_of_different_lengths_are_refused():
    with pytest.raises(ValueError):
        divergence_streaks([1, 2], [1])
