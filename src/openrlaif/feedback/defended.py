"""A judge whose verdicts never favour a reply that addresses the judge.

Labelling applies ``label.on_judge_directed`` itself (audit, penalize, drop, keep). Every other place a
judge's verdict or score is used — eval win rates, the red team's harmless rate, RL rewards scored by the
judge, the over-optimisation monitor, ``rlaif judge-eval`` — gets this wrapper when ``feedback.defend``
is on: a reply flagged by the patterns (``core.text.judge_directed``) or the learned probe
(``feedback.injection.ProbeDetector``) loses every comparison with a reply that is not flagged, and scores
below every unflagged reply of its batch. The judge's own verdict is kept in ``Verdict.raw['defence']`` so
a user can see what the defence changed.
"""

from __future__ import annotations

from dataclasses import dataclass

from openrlaif.core.text import judge_directed
from openrlaif.feedback.types import Comparison, Verdict

SCORE_PENALTY = 1.0  # a flagged reply scores this far below the worst unflagged score of its batch


def defended_p_first(p_first: float, first_flagged: bool, second_flagged: bool) -> float:
    """P(first better) once flagged replies lose: 0 or 1 when exactly one side is flagged, else unchanged."""
    if first_flagged == second_flagged:
        return p_first
    return 0.0 if first_flagged else 1.0


def penalized_scores(scores: list[float | None], flagged: list[bool], penalty: float = SCORE_PENALTY) -> list[float | None]:
    """Scores with each flagged reply set ``penalty`` below the lowest score of the batch (flagged or not), so
    it ranks under every unflagged reply whatever its own score was; unscored (None) stay None."""
    present = [s for s in scores if s is not None]
    if not present or not any(flagged):
        return list(scores)
    floor = min(present) - penalty
    return [None if s is None else (floor if f else s) for s, f in zip(scores, flagged)]


@dataclass
class DefenceStats:
    replies: int = 0
    flagged: int = 0
    changed: int = 0  # verdicts or scores the defence changed

    def as_json(self, detector: str) -> dict:
        return {"detector": detector, "replies_checked": self.replies, "replies_flagged": self.flagged,
                "changed": self.changed}


class DefendedJudge:
    """Wraps any judge (``compare``; ``scores``/``score`` when the judge has them) with the injection defence.

    ``detector`` is a ``ProbeDetector`` (or anything with ``flags(conversations, replies)``), or None for the
    patterns alone. Attributes the wrapper does not define (name, method, template, cache, take_usage, ...)
    are the judge's."""

    def __init__(self, judge, detector=None):
        self.judge, self.detector = judge, detector
        self.stats = DefenceStats()

    def __getattr__(self, name):  # only called for attributes not found on the wrapper
        if name in ("judge", "detector", "stats"):
            raise AttributeError(name)
        return getattr(self.judge, name)

    @property
    def detector_name(self) -> str:
        return "patterns + probe" if self.detector is not None else "patterns"

    def flags(self, conversations: list[list[dict]], replies: list[str]) -> list[bool]:
        """Which replies address the judge (each distinct reply is read once)."""
        keys = [(repr(conv), reply) for conv, reply in zip(conversations, replies)]
        first: dict[tuple[str, str], int] = {}
        for i, key in enumerate(keys):
            first.setdefault(key, i)
        found = {key: judge_directed(key[1]) for key in first}
        todo = [key for key in first if not found[key] and key[1].strip()]
        if self.detector is not None and todo:  # the probe reads only what the patterns did not catch
            probed = self.detector.flags([conversations[first[key]] for key in todo], [key[1] for key in todo])
            found.update(zip(todo, probed))
        out = [found[key] for key in keys]
        self.stats.replies += len(first)
        self.stats.flagged += sum(found.values())
        return out

    def compare(self, items: list[Comparison]) -> list[Verdict]:
        verdicts = self.judge.compare(items)
        flagged = self.flags([it.conversation for it in items] * 2,
                             [it.first for it in items] + [it.second for it in items])
        out = []
        for it, v, f1, f2 in zip(items, verdicts, flagged[: len(items)], flagged[len(items):]):
            if v.p_first is None or f1 == f2:
                out.append(v)
                continue
            p = defended_p_first(v.p_first, f1, f2)
            self.stats.changed += p != v.p_first
            defence = {"flagged": "first" if f1 else "second", "detector": self.detector_name,
                       "judge_p_first": v.p_first, "judge_score_ab": v.score_ab, "judge_score_ba": v.score_ba}
            out.append(Verdict(p, p, p, v.principle, v.rationale, {**v.raw, "defence": defence}, v.error))
        return out

    def defend_scores(self, conversations: list[list[dict]], replies: list[str],
                      scores: list[float | None]) -> list[float | None]:
        """Scores of replies (RL rewards, harmless scores) with flagged replies put below every unflagged one."""
        out = penalized_scores(scores, self.flags(conversations, replies))
        self.stats.changed += sum(a != b for a, b in zip(out, scores))
        return out

    def take_defence(self) -> dict:
        """What the defence did since the last call (replies read, flagged, verdicts/scores changed)."""
        out = self.stats.as_json(self.detector_name)
        self.stats = DefenceStats()
        return out
