"""Constitutions: principles the judge compares responses by (built-in YAML or a user file)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path


from openrlaif.core.errors import UserError
from openrlaif.data.prompts import BUILTIN, builtin_path


@dataclass(frozen=True)
class Principle:
    """One principle: a comparison question, system prompts of an assistant that follows it
    (``positive``) or violates it (``negative``) for the contrastive likelihood method and RLCD, and
    the critique and revision requests of Constitutional AI (each with a fallback built from the text)."""

    id: str
    text: str
    weight: float = 1.0
    positive: str = ""
    negative: str = ""
    critique: str = ""
    revision: str = ""

    @property
    def positive_prompt(self) -> str:
        return self.positive or f"You are an excellent assistant. Your replies always win on this question: {self.text}"

    @property
    def negative_prompt(self) -> str:
        return self.negative or f"You are a poor assistant. Your replies always lose on this question: {self.text}"

    @property
    def critique_request(self) -> str:
        """Constitutional AI: what the critic is asked about the assistant's last reply."""
        return self.critique or (f"Point out, briefly and concretely, how your last reply falls short on this "
                                 f"question: {self.text}")

    @property
    def revision_request(self) -> str:
        """Constitutional AI: how the reply is to be rewritten after the critique."""
        return self.revision or (f"Rewrite your last reply so that it does as well as possible on this question: "
                                 f"{self.text} Write only the new reply.")


@dataclass(frozen=True)
class Constitution:
    name: str
    principles: tuple[Principle, ...]

    def sample(self, rng: random.Random) -> Principle:
        """One principle, drawn with probability proportional to its weight."""
        return rng.choices(self.principles, weights=[p.weight for p in self.principles], k=1)[0]


def load_constitution(spec: str) -> Constitution:
    path = builtin_path("constitution.yaml") if spec == BUILTIN else Path(spec).expanduser()
    if not path.is_file():
        raise UserError(f"data.constitution: file '{spec}' not found; give a YAML file with 'principles:' or 'builtin'")
    from openrlaif.core.yamlio import load_yaml

    data = load_yaml(path)
    items = data.get("principles") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise UserError(f"{path}: needs a non-empty 'principles:' list of {{id, text, weight}}")
    principles = []
    seen = set()
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("text"), str) or not item["text"].strip():
            raise UserError(f"{path}: principles[{i}] needs a 'text' string (a one-line comparison question)")
        pid = str(item.get("id", f"p{i}"))
        if pid in seen:
            raise UserError(f"{path}: principles[{i}]: duplicate id '{pid}'; ids must be unique")
        seen.add(pid)
        weight = item.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (0 < weight < float("inf")):
            raise UserError(f"{path}: principles[{i}] ('{pid}'): weight must be a positive number")
        prompts = {}
        for key in ("positive", "negative", "critique", "revision"):
            value = item.get(key, "")
            if not isinstance(value, str):
                raise UserError(f"{path}: principles[{i}] ('{pid}'): '{key}' must be a string (a system prompt or request)")
            prompts[key] = value.strip()
        principles.append(Principle(pid, item["text"].strip(), float(weight), **prompts))
    return Constitution(str(data.get("name", path.stem)), tuple(principles))
