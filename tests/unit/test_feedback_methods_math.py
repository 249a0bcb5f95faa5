"""Pure maths of the contrastive method and the judge-eval metrics, against hand-computed values."""

import math

import pytest

from openrlaif.core.text import with_system
from openrlaif.data.pairs import transcript_to_messages
from openrlaif.evaluate.judge_eval import agreement, brier, expected_calibration_error
from openrlaif.feedback.scoring import contrastive_score, pair_probability, sigmoid


def test_contrastive_score_sum_and_mean():
    assert contrastive_score(-10.0, -14.0, 8, "sum") == pytest.approx(4.0)
    assert contrastive_score(-10.0, -14.0, 8, "mean") == pytest.approx(0.5)
    assert contrastive_score(-3.0, -1.0, 4, "mean") == pytest.approx(-0.5)
    with pytest.raises(ValueError):
        contrastive_score(0.0, 0.0, 1, "max")


def test_pair_probability_and_sigmoid():
    assert pair_probability(1.0, 1.0, 1.0) == 0.5
    assert pair_probability(2.0, 1.0, 1.0) == pytest.approx(1 / (1 + math.exp(-1)))
    assert pair_probability(2.0, 1.0, 0.5) == pytest.approx(1 / (1 + math.exp(-2)))
    assert pair_probability(1.0, 2.0, 1.0) == pytest.approx(1 - pair_probability(2.0, 1.0, 1.0))
    assert sigmoid(-800.0) == 0.0 and sigmoid(800.0) == 1.0  # no overflow


def test_with_system_replaces_the_system_turn():
    msgs = [{"role": "system", "content": "old"}, {"role": "user", "content": "hi"}]
    assert with_system(msgs, "new") == [{"role": "system", "content": "new"}, {"role": "user", "content": "hi"}]
    assert msgs[0]["content"] == "old"  # input untouched


def test_agreement_brier_ece_by_hand():
    q, y = [0.9, 0.8, 0.3, 0.5], [1, 0, 0, 1]
    # hits: 1, 0, 1, 0.5 -> 2.5 / 4
    assert agreement(q, y) == pytest.approx(0.625)
    # (0.1^2 + 0.8^2 + 0.3^2 + 0.5^2) / 4 = (0.01 + 0.64 + 0.09 + 0.25) / 4
    assert brier(q, y) == pytest.approx(0.2475)
    # bins: 0.9 -> 9 {y=1}, 0.8 -> 8 {y=0}, 0.3 -> 3 {y=0}, 0.5 -> 5 {y=1}
    # ECE = 1/4 * (|1-0.9| + |0-0.8| + |0-0.3| + |1-0.5|) = 1/4 * 1.7
    assert expected_calibration_error(q, y) == pytest.approx(0.425)
    # two predictions sharing a bin are averaged first: bin 7 holds 0.7 (y=1) and 0.75 (y=0)
    assert expected_calibration_error([0.7, 0.75], [1, 0]) == pytest.approx(abs(0.5 - 0.725))
    assert expected_calibration_error([1.0], [1]) == pytest.approx(0.0)  # q = 1 lands in the top bin


def test_transcript_to_messages():
    text = "Human: How do I bake bread?\n\nAssistant: Use flour.\n\nHuman: And then?"
    assert transcript_to_messages(text) == [
        {"role": "user", "content": "How do I bake bread?"},
        {"role": "assistant", "content": "Use flour."},
        {"role": "user", "content": "And then?"},
    ]
    # a trailing assistant turn (the judged reply's slot) is dropped; plain text is one user turn
    assert transcript_to_messages("\n\nHuman: hi\n\nAssistant:") == [{"role": "user", "content": "hi"}]
    assert transcript_to_messages("just a question") == [{"role": "user", "content": "just a question"}]


def test_fit_temperature_recovers_the_generating_temperature():
    import random

    from openrlaif.evaluate.judge_eval import fit_temperature

    rng = random.Random(0)
    true_t = 0.2
    diffs = [rng.uniform(-1, 1) for _ in range(4000)]
    labels = [int(rng.random() < sigmoid(d / true_t)) for d in diffs]
    assert fit_temperature(diffs, labels) == pytest.approx(true_t, rel=0.15)
    # labels that ignore the score: the best temperature is huge (predictions near 0.5)
    noise = [int(rng.random() < 0.5) for _ in diffs]
    assert fit_temperature(diffs, noise) > 2.0


def test_expected_rating_by_hand():
    from openrlaif.feedback.scoring import expected_rating

    lp = [[math.log(1e-12)] for _ in range(10)]
    lp[7] = [math.log(0.5)]
    lp[3] = [math.log(0.25), math.log(0.25)]  # two token variants of '3' sum to 0.5
    assert expected_rating(lp) == pytest.approx(5.0)  # 0.5 * 7 + 0.5 * 3
    uniform = [[0.0] for _ in range(10)]
    assert expected_rating(uniform) == pytest.approx(4.5)
