"""Prompt sets: the built-in prompts or a user JSONL file, split into train and held-out."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from openrlaif.core.errors import UserError
from openrlaif.core.store import iter_jsonl
from openrlaif.data.chat import checked_messages

BUILTIN = "builtin"


@dataclass
class Prompt:
    id: str
    messages: list[dict[str, str]]
    split: str = "train"
    category: str = ""
    extra: dict = field(default_factory=dict)
    line: int = 0  # line number in the prompt file (for error messages)

    @property
    def text(self) -> str:
        """The last user message, for display and judge prompts."""
        return next((m["content"] for m in reversed(self.messages) if m.get("role") == "user"), "")


def builtin_path(name: str) -> Path:
    return Path(str(resources.files("openrlaif") / "data" / name))


def _stable_fraction(text: str) -> float:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF


# data.prompts names for the prompt sets shipped in the package
BUILTIN_PROMPTS = {BUILTIN: "prompts.jsonl",
                   "builtin:verifiable": "verifiable_prompts.jsonl"}  # instructions IFEval's checkers verify


def prompts_path(spec: str) -> Path:
    """The file a data.prompts value names ('builtin', 'builtin:verifiable' or a path)."""
    return builtin_path(BUILTIN_PROMPTS[spec]) if spec in BUILTIN_PROMPTS else Path(spec).expanduser()


def load_prompts(spec: str, heldout_fraction: float = 0.25, instruction: str | None = None,
                 field: str = "data.prompts") -> list[Prompt]:
    """Read prompts from a built-in set ('builtin', 'builtin:verifiable') or a JSONL path; every row needs
    'prompt' or 'messages'. ``instruction`` (data.instruction) is appended to each prompt's last user turn;
    the train/held-out split is decided on the prompt as written, so adding one never moves a prompt."""
    import json

    path = prompts_path(spec)
    if path.is_dir():
        raise UserError(f"{field}: '{spec}' is a directory; give a JSONL file with a 'prompt' per line, "
                        f"or one of {', '.join(BUILTIN_PROMPTS)}")
    if not path.is_file():
        raise UserError(f"{field}: prompt file '{spec}' not found; give a JSONL file with a 'prompt' per line, "
                        f"or one of {', '.join(BUILTIN_PROMPTS)}")
    prompts: list[Prompt] = []
    for lineno, row in iter_jsonl(path):
        if isinstance(row.get("messages"), list) and row["messages"]:
            messages = checked_messages(row["messages"], "messages", f"{path}:{lineno}")
            if not messages[-1]["content"].strip() or messages[-1]["role"] != "user":
                raise UserError(f"{path}:{lineno}: the last message must be a non-empty user turn, got "
                                f"{'an empty one' if messages[-1]['role'] == 'user' else repr(messages[-1]['role'])}")
        elif isinstance(row.get("prompt"), str) and row["prompt"].strip():
            messages = [{"role": "user", "content": row["prompt"].strip()}]
        elif "prompt" in row and not isinstance(row["prompt"], str):
            raise UserError(f"{path}:{lineno}: 'prompt' must be a string, got {type(row['prompt']).__name__}")
        elif "messages" in row and not isinstance(row["messages"], list):
            raise UserError(f"{path}:{lineno}: 'messages' must be a list of {{role, content}} objects, "
                            f"got {type(row['messages']).__name__}")
        else:
            raise UserError(f"{path}:{lineno}: needs a non-empty 'prompt' string or a 'messages' list")
        first = messages[-1]["content"]
        split = row.get("split")
        if split is None:
            split = "heldout" if _stable_fraction(json.dumps(messages)) < heldout_fraction else "train"
        if split not in ("train", "heldout"):
            raise UserError(f"{path}:{lineno}: split must be 'train' or 'heldout', got {split!r}")
        pid = str(row.get("id", f"L{lineno}-{hashlib.sha256(first.encode()).hexdigest()[:8]}"))
        if instruction:
            messages = [*messages[:-1], {**messages[-1], "content": f"{first} {instruction.strip()}"}]
        prompts.append(Prompt(pid, messages, split, str(row.get("category", "")),
                              {k: v for k, v in row.items() if k not in ("id", "prompt", "messages", "split", "category")},
                              lineno))
    if not prompts:
        raise UserError(f"{field}: '{path}' holds no prompts; add JSONL lines with a 'prompt' field")
    return prompts


def run_prompts(data, split: str | None = None, limit: int | None = None) -> list[Prompt]:
    """The prompts a run's ``data`` config names (prompts, heldout_fraction, instruction); with ``split``,
    the first ``limit`` of that split."""
    prompts = load_prompts(data.prompts, data.heldout_fraction, data.instruction)
    return prompts if split is None else select(prompts, split, limit)


def select(prompts: list[Prompt], split: str, limit: int | None) -> list[Prompt]:
    chosen = [p for p in prompts if p.split == split]
    return chosen[:limit] if limit else chosen
