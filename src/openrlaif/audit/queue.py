"""Which AI labels a person should look at first, and how far people agree with the judge.

Pure functions: the queue order from the labels' own evidence of doubt, the human-AI agreement
with a Wilson interval, the human-human agreement on the items two people reviewed (the ceiling a judge's
agreement with people should be read against), which items go to two reviewers, and, for blind review, the
side a reviewer sees first. Agreement is estimated on the uniform random slice only: the prioritised
items are chosen *because* the judge is likely wrong there, so their agreement is biased low.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass, field

LOW_CONFIDENCE = 0.2  # |2p - 1| below this: the judge was close to a coin flip
DIRECTED_PRIORITY = 10.0  # more than every other reason together (at most 3): judge-directed pairs come first


@dataclass
class QueueItem:
    pair_id: str
    row: dict
    priority: float
    reasons: list[str] = field(default_factory=list)
    random_slice: bool = False


def pair_id(row: dict) -> str:
    """A stable id for a preference row: its round, prompt and both responses in the AI's orientation."""
    key = json.dumps([row.get("round"), row.get("prompt"), row.get("chosen"), row.get("rejected")],
                     sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def doubt(row: dict, rm_margin: float | None = None) -> tuple[float, list[str]]:
    """Priority score and reasons for one AI label.

    - low confidence: 1 - |2p - 1| (1 for a coin flip, 0 for certainty), a reason when |2p - 1| < 0.2;
    - position inconsistency: +1 when the two orders picked different responses;
    - reward-model disagreement: +1 when the reward model scores the rejected response higher;
    - a reply that addresses the judge (``judge_directed``): +10, so such pairs are reviewed first."""
    reasons: list[str] = []
    p = row.get("p_chosen")
    score = 0.0
    if isinstance(p, (int, float)):
        confidence = abs(2 * p - 1)
        score += 1 - confidence
        if confidence < LOW_CONFIDENCE:
            reasons.append("low confidence")
    ab, ba = row.get("scores_ab"), row.get("scores_ba")
    if isinstance(ab, (int, float)) and isinstance(ba, (int, float)) and (ab > 0.5) != (ba > 0.5):
        score += 1.0
        reasons.append("position inconsistent")
    if rm_margin is not None and rm_margin < 0:
        score += 1.0
        reasons.append("reward model disagrees")
    if row.get("judge_directed"):  # ahead of every other doubt: someone may be steering the judge
        score += DIRECTED_PRIORITY
        reasons.append("chosen reply addresses the judge (held from training)" if row.get("held_for_review")
                       else "a reply addresses the judge")
    return score, reasons


def build_queue(rows: list[dict], rm_margins: list[float | None] | None = None, random_share: float = 0.2,
                min_random: int = 10, seed: int = 0) -> list[QueueItem]:
    """Order rows for review: a uniform random slice (``random_share`` of the rows, at least ``min_random``)
    spread evenly through the rest, which is sorted by doubt (highest first). Reviewers see both kinds
    the same way, so the random slice's verdicts are not coloured by knowing it is random."""
    margins = rm_margins or [None] * len(rows)
    items = []
    for row, margin in zip(rows, margins):
        score, reasons = doubt(row, margin)
        items.append(QueueItem(pair_id(row), row, round(score, 6), reasons))
    n_random = min(len(items), max(min_random, math.ceil(random_share * len(items))))
    rng = random.Random(seed)
    for i in rng.sample(range(len(items)), n_random):
        items[i].random_slice = True
    ranked = sorted((it for it in items if not it.random_slice), key=lambda it: -it.priority)
    sampled = [it for it in items if it.random_slice]
    rng.shuffle(sampled)
    if not sampled:
        return ranked
    # Interleave: the random items sit at evenly spaced positions, the first one at the top.
    stride = len(items) / len(sampled)
    slots = {int(i * stride) for i in range(len(sampled))}
    return [sampled.pop(0) if pos in slots else ranked.pop(0) for pos in range(len(items))]


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a proportion (well-behaved at small n and at 0 or n successes)."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def agreement(verdicts: list[tuple[str, bool]]) -> dict:
    """Human-AI agreement from (verdict, in_random_slice) pairs: 'agree' counts 1, 'flip' 0, 'flag' (the
    reviewer could not or would not decide) is left out. Only the random slice gives the estimate."""
    decided = [(v, r) for v, r in verdicts if v in ("agree", "flip")]
    rand = [v for v, r in decided if r]
    agree = sum(v == "agree" for v in rand)
    lo, hi = wilson_interval(agree, len(rand))
    return {"random_slice_n": len(rand), "agreement": agree / len(rand) if rand else None,
            "ci95": [lo, hi] if rand else None,
            "all_reviewed_n": len(decided), "all_reviewed_agreement":
                sum(v == "agree" for v, _ in decided) / len(decided) if decided else None,
            "flagged": sum(v == "flag" for v, _ in verdicts)}


def human_agreement(by_pair: dict[str, dict[str, str]]) -> dict:
    """People with people, from each pair's latest verdict per reviewer ({pair_id: {reviewer: verdict}}).

    On every pair two or more people decided ('agree' or 'flip'; 'flag' is no decision), the first two
    reviewers by name are compared: the share of pairs where they gave the same verdict, with its 95% Wilson
    interval. Same verdict = same response judged better, since both verdicts are relative to the AI's pick."""
    same = n = 0
    for verdicts in by_pair.values():
        decided = [verdicts[r] for r in sorted(verdicts) if verdicts[r] in ("agree", "flip")]
        if len(decided) >= 2:
            n += 1
            same += decided[0] == decided[1]
    lo, hi = wilson_interval(same, n)
    return {"n": n, "agreement": same / n if n else None, "ci95": [lo, hi] if n else None}


def unit_draw(*parts) -> float:
    """A deterministic number in [0, 1) from ``parts`` (sha256): the same draw on every machine and every start."""
    digest = hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


def reviews_needed(pair: str, in_random_slice: bool, overlap: float, slice_share: float) -> int:
    """2 for an item shown to two reviewers, else 1. The doubled items are drawn from the uniform random slice
    (so human-human and human-AI agreement are measured on the same unbiased sample), each slice item with
    probability overlap / slice_share: about ``overlap`` of the whole queue; all of the slice when the
    overlap asked for is larger than the slice."""
    if not in_random_slice or overlap <= 0 or slice_share <= 0:
        return 1
    return 2 if unit_draw("overlap", pair) < min(1.0, overlap / slice_share) else 1


def shows_swapped(pair: str, reviewer: str) -> bool:
    """Blind review: whether this reviewer sees the AI's pick on the right (as response B). Half the pairs
    each, fixed per (pair, reviewer) so a reload shows the same page."""
    return unit_draw("sides", pair, reviewer) < 0.5
