"""Text helpers every layer shares: cleaning candidate text before a judge reads it, truncation, and
the detection of text aimed at the judge."""

from __future__ import annotations

import re

_ROLE = (r"(judge|judges|judging model|evaluator|evaluators|evaluating model|grader|graders|grading model|"
         r"rater|raters|reviewer|reviewers|assessor|scorer|evaluation|grading|AI judge)")


_ASK = (r"(pick|choose|select|prefer|rate|score|reward|win|must|required|instructed|forget|disregard|ignore|"
        r"mark|return|output|assign|award|give|treat|consider)")

_SIDE = r"(response|reply|answer|candidate|output)"

_JUDGE_DIRECTED = re.compile(
    rf"\b{_ROLE}\b[^\n]{{0,80}}\b{_ASK}|\b{_ASK}\b[^\n]{{0,80}}\b{_ROLE}\b|\b{_ROLE}\s*:|"
    r"ignore (all |the )?(previous|above|prior|earlier) (instructions|text)|new instruction|\bverdict\b|"
    r"response [ab] is (better|the winner)|\banswer:\s*[ab]\b|\bwinner\b\s*[:\"]|"
    r"\"(choice|winner|preferred|preference|better|ranking)\"\s*:|"
    r"<\|im_(start|end)\|>|\[/?inst\]|</?(system|evaluation|response_[ab]|conversation|responses|transcript|"
    r"judgment|assistant|user)>|end of (the )?(responses|conversation|transcript|dialogue|evaluation)|"
    r"^\s*system\s*:|^\s*(rating|judgment|judgement|assessment|evaluation|ranking)\s*:|"
    r"\b(choose|pick|select) (me|this (one|reply|response|answer))\b|"
    # talk about the comparison itself: a real reply cannot know there is another one, or what won
    rf"\b(the|this) (other|alternative|competing|second|first) {_SIDE}\b|(?-i:\b(?i:{_SIDE}) [AB]\b)|"
    rf"\bbetter {_SIDE} is\b|"
    rf"\bthis {_SIDE} (is|was) (the )?(better|best|winner|preferred|more \w+|most \w+|\w+est|\w+ one)\b|"
    rf"\bthis {_SIDE} (should|must) be (selected|chosen|preferred|picked)\b",
    re.IGNORECASE | re.MULTILINE,
)
# Self-praise repeated as a chant: a short phrase with a praise word, three times or more.
_PRAISE = re.compile(r"\b(best|correct|accurate|verified|safe|responsible|clear|honest|helpful|perfect|excellent|"
                     r"right|true|great)\b", re.IGNORECASE)
_CLAUSE = re.compile(r"[^.,;!?\n]+")
# Unicode tag characters (U+E0020-E007E) are invisible copies of ASCII; revealed, they may hold instructions.
_TAGS = re.compile("[\U000e0020-\U000e007e]+")


def chanted_praise(text: str) -> bool:
    """True when a clause of 1-8 words that praises the reply appears three or more times."""
    counts: dict[str, int] = {}
    for clause in _CLAUSE.findall(text.lower()):
        clause = " ".join(clause.split())
        if clause and len(clause.split()) <= 8 and _PRAISE.search(clause):
            counts[clause] = counts.get(clause, 0) + 1
    return any(n >= 3 for n in counts.values())


def judge_directed(text: str) -> bool:
    """True when a response contains text aimed at the judge: instructions to it, fake verdicts or judge
    output, chat or role markers, talk about the other reply, chanted self-praise, or any of these hidden in
    Unicode tag characters (revealed), read after ``normalize_candidate`` so look-alikes and invisible
    characters cannot hide them."""
    revealed = normalize_candidate(_TAGS.sub(lambda m: " " + "".join(chr(ord(c) - 0xE0000) for c in m.group(0)) + " ",
                                             text))
    return bool(_JUDGE_DIRECTED.search(revealed)) or chanted_praise(revealed)


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


# Characters that render as nothing (or reorder text) and let an attacker hide words from people, or split
# words so a filter cannot see them: zero-width spaces and joiners, word joiner and invisible operators,
# the byte-order mark, bidirectional controls, soft hyphen, and the Unicode tag block (U+E0000-E007F).
_INVISIBLE = re.compile("[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\U000e0000-\U000e007f]")
# Cyrillic and Greek letters that look like Latin ones; mapped only inside words that also hold Latin letters,
# so real Cyrillic or Greek words are left alone.
_CONFUSABLES = str.maketrans({
    "а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "у": "y", "х": "x", "і": "i", "ј": "j", "ѕ": "s",
    "ԁ": "d", "һ": "h", "ӏ": "l", "ԛ": "q", "ԝ": "w", "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M",
    "Н": "H", "О": "O", "Р": "P", "С": "C", "Т": "T", "Х": "X", "І": "I", "Ј": "J", "Ѕ": "S",
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O",
    "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X", "ο": "o", "ν": "v", "ρ": "p", "ι": "i", "κ": "k",
})
_WORD = re.compile(r"\w+")
_LATIN = re.compile(r"[A-Za-z]")


def normalize_candidate(text: str) -> str:
    """Candidate text as a judge should read it: Unicode NFKC (full-width and styled letters become plain),
    invisible and tag characters removed, and look-alike Cyrillic/Greek letters inside otherwise Latin words
    mapped to the Latin letters they imitate. Obfuscated instructions to the judge become plain text, which
    the judge's delimiting and ``judge_directed`` then see as they are."""
    import unicodedata

    text = _INVISIBLE.sub("", unicodedata.normalize("NFKC", text))

    def unmask(match: re.Match) -> str:
        word = match.group(0)
        return word.translate(_CONFUSABLES) if _LATIN.search(word) else word

    return _WORD.sub(unmask, text)
