"""Text helpers every layer shares: cleaning candidate text before a judge reads it, truncation, and
the detection of text aimed at the judge."""

from __future__ import annotations

import re

_ROLE = r"(judge|judges|evaluator|evaluators|grader|graders|rater|raters|evaluation|grading|AI judge)"


_ASK = r"(pick|choose|select|prefer|rate|score|reward|win|must|required|instructed|forget|disregard|ignore)"


_JUDGE_DIRECTED = re.compile(
    rf"\b{_ROLE}\b[^\n]{{0,80}}\b{_ASK}|\b{_ASK}\b[^\n]{{0,80}}\b{_ROLE}\b|"
    r"ignore (all |the )?(previous|above|prior|earlier) (instructions|text)|new instruction|\bverdict\b|"
    r"response [ab] is (better|the winner)|\banswer:\s*[ab]\b|\bwinner\b\s*[:\"]|\"(choice|winner)\"\s*:|"
    r"<\|im_(start|end)\|>|\[/?inst\]|</?(system|evaluation|response_[ab])>|end of responses|"
    r"^\s*system\s*:|\b(choose|pick|select) (me|this (one|reply|response|answer))\b",
    re.IGNORECASE | re.MULTILINE,
)


def judge_directed(text: str) -> bool:
    """True when a response contains text aimed at the judge (instructions, fake verdicts, chat markers)."""
    return bool(_JUDGE_DIRECTED.search(text))


def neutralize_special_tokens(text: str, tokenizer) -> str:
    """Break special-token strings (e.g. '<|im_end|>') inside candidate text so they are read as plain
    characters and cannot end the judge's turn or forge a new one."""
    for special in getattr(tokenizer, "all_special_tokens", []) + list(getattr(tokenizer, "additional_special_tokens", []) or []):
        if special and len(special) > 1 and special in text:
            text = text.replace(special, special[0] + "\u200b" + special[1:])
    return text


def truncate(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[: max_chars - 3].rstrip() + "..."


def with_system(messages: list[dict], system: str) -> list[dict]:
    """The conversation with its system turn replaced by ``system``."""
    return [{"role": "system", "content": system}] + [m for m in messages if m.get("role") != "system"]
