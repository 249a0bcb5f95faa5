"""Constitutions: principles the judge compares responses by (built-in YAML or a user file)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import yaml

from openrlaif.errors import UserError
from openrlaif.prompts import BUILTIN, builtin_path


@dataclass(frozen=True)
class Principle:
    id: str
    text: str
    weight: float = 1.0


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
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({getattr(err, 'problem', err)}); fix the syntax") from None
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
        principles.append(Principle(pid, item["text"].strip(), float(weight)))
    return Constitution(str(data.get("name", path.stem)), tuple(principles))
