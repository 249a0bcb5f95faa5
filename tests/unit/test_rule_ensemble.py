"""Rule judge and ensemble aggregation: hand-computed verdicts, unscored pairs kept unscored."""

import math

import pytest

from openrlaif.core.errors import UserError
from openrlaif.core.plugins import load_callable
from openrlaif.data.constitution import Principle
from openrlaif.feedback.judges import EnsembleJudge, RuleJudge
from openrlaif.feedback.scoring import aggregate_probabilities, position_stats
from openrlaif.feedback.types import Comparison, Verdict

P = Principle("p", "Which is better?")


def test_aggregate_probabilities():
    assert aggregate_probabilities([0.9, 0.7, 0.2], "mean") == (pytest.approx(0.6), pytest.approx(1 / 3))
    assert aggregate_probabilities([0.9, 0.7, 0.2], "majority") == (pytest.approx(2 / 3), pytest.approx(1 / 3))
    assert aggregate_probabilities([0.9, 0.8], "majority") == (1.0, 0.0)  # unanimous
    assert aggregate_probabilities([0.9, 0.1], "majority") == (0.5, 0.5)  # split vote
    assert aggregate_probabilities([0.5, 0.9], "majority") == (0.75, 0.25)  # an exact 0.5 is half a vote
    with pytest.raises(ValueError):
        aggregate_probabilities([], "mean")


def length_rule(prompt, response):
    if response == "boom":
        raise RuntimeError("cannot score")
    if response == "none":
        return None
    return len(response.split())


def test_rule_judge_scores_and_unscored():
    judge = RuleJudge(length_rule, temperature=2.0)
    v_ok, v_err, v_none = judge.compare([
        Comparison("q", "one two three", "one", P),
        Comparison("q", "boom", "one", P),
        Comparison("q", "one", "none", P),
    ])
    assert v_ok.p_first == pytest.approx(1 / (1 + math.exp(-(3 - 1) / 2.0)))
    assert v_ok.raw == {"score_first": 3.0, "score_second": 1.0}
    assert v_err.p_first is None and "RuntimeError: cannot score" in v_err.error
    assert v_none.p_first is None and v_none.error == "rule returned None"
    assert position_stats([v_ok, v_err, v_none])["unscored"] == 2


class Fixed:
    def __init__(self, method, ps):
        self.method, self.ps, self.name = method, ps, method

    def compare(self, items):
        return [Verdict(p, p, p, it.principle.id) if p is not None else Verdict(None, None, None, it.principle.id)
                for p, it in zip(self.ps, items)]


def test_ensemble_records_members_and_disagreement():
    items = [Comparison("q", "a", "b", P), Comparison("q", "c", "d", P)]
    judge = EnsembleJudge([Fixed("x", [0.8, None]), Fixed("y", [0.4, None])], aggregate="mean")
    v, unscored = judge.compare(items)
    assert v.p_first == pytest.approx(0.6) and v.raw["disagreement"] == 0.5
    assert [m["p_first"] for m in v.raw["members"]] == [0.8, 0.4]
    assert unscored.p_first is None and unscored.error == "no member scored this pair"


def test_load_callable_errors():
    assert load_callable("math:sqrt") is math.sqrt
    for bad, msg in [("math", "package.module:function"), ("no_such_mod_xyz:f", "cannot import"),
                     ("math:nope", "no function")]:
        with pytest.raises(UserError, match=msg):
            load_callable(bad)
