"""Preference pairs from files: the one validated loader for every place pairs are read.

Two kinds of file hold pairs:

- **Labelled pairs** (judge-eval, the judge gate, fit-judge, label.refit_pairs, the human_prefs yardstick):
  the built-in calibration set ('builtin'), the built-in prompt-injection set ('builtin:injection'), or a
  JSONL file in either of these shapes:

  - ``{"prompt" | "context", "chosen", "rejected"}`` (HH-RLHF style: a "Human: ... Assistant: ..."
    transcript in ``context`` becomes a chat conversation), optional ``principle`` (a constitution id) and
    ``attack`` (an injection kind); ``chosen``/``rejected`` are strings or chat lists (TRL's conversational
    format, whose assistant turns are the reply);
  - ``{"instruction", "output_1", "output_2", "preference" | "gpt4_preference"}`` (AlpacaEval style: 1 or 2;
    a tie, 1.5, or a null preference carries no label and is skipped).

- **A round's preference file** (``round_K/preferences.jsonl``, written by the label stage and read by
  training, the reward model, the audit desk and export): rows with ``prompt``, ``chosen``, ``rejected``
  and ``p_chosen``.

Every row is checked before any work, and each fault gets its own line naming file:line and the field: a
missing field, a null, a wrong type, an empty reply, a chat list without an assistant turn, chosen equal to
rejected, a preference that is not 1 or 2, a p_chosen outside [0, 1]. Nothing is coerced to a string.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from openrlaif.core.errors import UserError
from openrlaif.core.store import iter_jsonl
from openrlaif.data.chat import checked_messages

BUILTIN_CALIBRATION = "builtin"
BUILTIN_PAIRS = {BUILTIN_CALIBRATION: "calibration_pairs.jsonl", "builtin:injection": "injection_pairs.jsonl"}


@dataclass
class LabelledPair:
    id: str
    messages: list[dict]
    chosen: str
    rejected: str
    principle: str | None = None
    kind: str | None = None  # the attack kind of an injection pair (the 'attack' column): its rejected reply is injected

    @property
    def prompt(self) -> str:
        return next((m["content"] for m in reversed(self.messages) if m["role"] == "user"), "")


_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):\s?")


def transcript_to_messages(text: str) -> list[dict]:
    """'Human: a\\n\\nAssistant: b\\n\\nHuman: c' -> chat messages (text without markers = one user turn)."""
    parts = _TURN.split(text)
    if len(parts) < 3:
        return [{"role": "user", "content": text.strip()}]
    messages = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        content = content.strip()
        if content:
            messages.append({"role": "user" if speaker == "Human" else "assistant", "content": content})
    while messages and messages[-1]["role"] == "assistant":  # the judged reply comes after the last user turn
        messages.pop()
    return messages or [{"role": "user", "content": text.strip()}]


def _type_name(value) -> str:
    return "null" if value is None else type(value).__name__


def reply_text(row: dict, field: str, where: str) -> str:
    """A reply column, checked: a non-empty string, or a chat list whose assistant turns are the reply."""
    if field not in row:
        raise UserError(f"{where}: missing '{field}'; every pair needs 'chosen' and 'rejected' replies")
    value = row[field]
    if value is None:
        raise UserError(f"{where}: '{field}' is null; give the reply's text (a string or a chat list)")
    if isinstance(value, list):
        messages = checked_messages(value, field, where)
        text = "".join(m["content"] for m in messages if m["role"] == "assistant")
        if not any(m["role"] == "assistant" for m in messages):
            raise UserError(f"{where}: '{field}' is a chat list without an assistant turn; the reply is the "
                            "assistant's message")
    elif isinstance(value, str):
        text = value
    else:
        raise UserError(f"{where}: '{field}' must be a string or a chat list, got {_type_name(value)}")
    if not text.strip():
        raise UserError(f"{where}: '{field}' is empty; give the reply's text or remove the pair")
    return text


def checked_replies(row: dict, where: str, first: str = "chosen", second: str = "rejected") -> tuple[str, str]:
    """The two replies of a pair, checked, and different from each other."""
    a, b = reply_text(row, first, where), reply_text(row, second, where)
    if a.strip() == b.strip():
        raise UserError(f"{where}: '{first}' and '{second}' are the same text; a pair needs two different replies "
                        "(remove the row)")
    return a, b


def _context(row: dict, where: str) -> list[dict]:
    key = "prompt" if "prompt" in row else "context" if "context" in row else None
    if key is None:
        raise UserError(f"{where}: missing 'prompt' (or 'context'): the question both replies answer, a string or a "
                        "chat list")
    value = row[key]
    if isinstance(value, list):
        return checked_messages(value, key, where)
    if isinstance(value, str):
        if not value.strip():
            raise UserError(f"{where}: '{key}' is empty; give the question both replies answer")
        return transcript_to_messages(value)
    raise UserError(f"{where}: '{key}' must be a string or a chat list, got {_type_name(value)}")


def _alpaca_pair(row: dict, where: str, rid: str) -> LabelledPair | None:
    key = "preference" if "preference" in row else "gpt4_preference" if "gpt4_preference" in row else None
    if key is None:
        raise UserError(f"{where}: missing 'preference' (or 'gpt4_preference'): 1 if output_1 is better, 2 if output_2")
    pref = row[key]
    if pref is None or pref == 1.5 or pref == 0:
        return None  # a tie, or no preference: no label
    if isinstance(pref, bool) or not isinstance(pref, (int, float)) or pref not in (1, 2):
        raise UserError(f"{where}: '{key}' is {pref!r}; use 1 (output_1 is better), 2 (output_2), or 1.5 for a tie")
    a, b = checked_replies(row, where, "output_1", "output_2")
    instruction = row.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        raise UserError(f"{where}: 'instruction' must be a non-empty string, got "
                        f"{_type_name(instruction) if not isinstance(instruction, str) else 'an empty one'}")
    chosen, rejected = (a, b) if pref == 1 else (b, a)
    return LabelledPair(rid, [{"role": "user", "content": instruction}], chosen, rejected)


def _optional_str(row: dict, field: str, where: str) -> str | None:
    value = row.get(field)
    if value is not None and not isinstance(value, str):
        raise UserError(f"{where}: '{field}' must be a string, got {_type_name(value)}")
    return value


def labelled_pairs_path(spec: str, field: str = "--pairs") -> Path:
    """The file a pairs spec names ('builtin', 'builtin:injection' or a path), checked to be a file."""
    from openrlaif.data.prompts import builtin_path

    path = builtin_path(BUILTIN_PAIRS[spec]) if spec in BUILTIN_PAIRS else Path(spec).expanduser()
    if path.is_dir():
        raise UserError(f"{field}: '{spec}' is a directory; give a JSONL file of labelled pairs or 'builtin'")
    if not path.is_file():
        raise UserError(f"{field}: file '{spec}' not found; give a JSONL file of labelled pairs or 'builtin'")
    return path


def load_labelled_pairs(spec: str, limit: int | None = None, field: str = "--pairs") -> list[LabelledPair]:
    """Labelled pairs from 'builtin', 'builtin:injection' or a JSONL file in either shape (module docstring),
    every row checked; the first ``limit`` labelled pairs when given (rows past it are still checked)."""
    path = labelled_pairs_path(spec, field)
    pairs: list[LabelledPair] = []
    for lineno, row in iter_jsonl(path):
        where = f"{field}: {path}:{lineno}"
        rid = str(row.get("id", f"L{lineno}"))
        if "output_1" in row or "output_2" in row:
            pair = _alpaca_pair(row, where, rid)
            if pair is None:
                continue
        elif "chosen" in row or "rejected" in row:
            messages = _context(row, where)
            chosen, rejected = checked_replies(row, where)
            pair = LabelledPair(rid, messages, chosen.strip(), rejected.strip(), _optional_str(row, "principle", where),
                                _optional_str(row, "attack", where))
        else:
            raise UserError(f"{where}: needs 'chosen' and 'rejected' (+ 'prompt' or 'context'), or 'instruction', "
                            f"'output_1', 'output_2' and 'preference'; found {', '.join(sorted(row)) or 'no fields'}")
        if not limit or len(pairs) < limit:
            pairs.append(pair)
    if not pairs:
        raise UserError(f"{field}: {path} holds no labelled pairs (empty, or only ties); add rows with 'chosen' and "
                        "'rejected'")
    return pairs


def check_preference_row(row: dict, where: str) -> dict:
    """One row of a round's preference file, checked (prompt, two different replies, p_chosen in [0, 1])."""
    _context(row, where)
    checked_replies(row, where)
    p = row.get("p_chosen")
    if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1 or math.isnan(p)):
        raise UserError(f"{where}: 'p_chosen' is {p!r}; it is the probability that 'chosen' is better, a number in [0, 1]")
    return row


def read_preference_file(path: str | Path) -> list[dict]:
    """A round's ``preferences.jsonl`` (or any file in its shape), every row checked."""
    path = Path(path)
    return [check_preference_row(row, f"{path}:{lineno}") for lineno, row in iter_jsonl(path)]
