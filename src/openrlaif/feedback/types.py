"""What a judge is asked and what it answers: the types every feedback method and consumer shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from openrlaif.data.constitution import Principle


@dataclass
class Comparison:
    """Is ``first`` better than ``second`` as an answer to ``prompt`` under ``principle``?

    ``prompt`` is the request as text (what a pairwise judge reads); ``messages`` is the full
    conversation when there is one (likelihood judges condition on it), else the prompt as one user turn.
    """

    prompt: str
    first: str
    second: str
    principle: Principle
    messages: list[dict] | None = None

    @property
    def conversation(self) -> list[dict]:
        return self.messages or [{"role": "user", "content": self.prompt}]


@dataclass
class Verdict:
    p_first: float | None  # P(first is better), the two orders averaged; None = unscored
    score_ab: float | None  # P(first is better) read with first shown as A
    score_ba: float | None  # P(first is better) read with first shown as B
    principle: str
    rationale: str | None = None
    raw: dict = field(default_factory=dict)
    error: str | None = None


class Judge(Protocol):
    """Anything that returns one Verdict per Comparison (batched). ``name`` and ``method`` are recorded
    with every label."""

    name: str
    method: str

    def compare(self, items: list[Comparison]) -> list[Verdict]: ...
