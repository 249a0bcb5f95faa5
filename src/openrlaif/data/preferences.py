"""Preference pairs a round trains on: reading a round's pairs, mixing rounds, applying people's verdicts."""

from __future__ import annotations

import random

from openrlaif.config import RunConfig
from openrlaif.core.errors import UserError
from openrlaif.core.store import RunStore
from openrlaif.data.pairs import read_preference_file


def read_preferences(store: RunStore, k: int, minimum: int = 1) -> list[dict]:
    """The label stage's pairs of round ``k``; a clear error when there are none (or too few)."""
    path = store.path("preferences.jsonl", k)
    if not path.is_file():
        raise UserError(f"{path} not found; run `rlaif label -o {store.root}` first")
    prefs = read_preference_file(path)
    if not prefs:
        raise UserError(f"{path} has no pairs (the judge found no usable pairs); lower label.min_margin or raise generate.n")
    if len(prefs) < minimum:
        raise UserError(f"{path} has {len(prefs)} pair(s), fewer than the {minimum} needed; raise data.max_train_prompts")
    return prefs


def training_pairs(store: RunStore, k: int, minimum: int = 1, cfg: RunConfig | None = None) -> tuple[list[dict], dict]:
    """The pairs round ``k`` trains on (round k's, or with ``pipeline.train_data`` all or a mix of earlier
    rounds' too), with the audit desk's human verdicts applied (RUN_DIR/audit.sqlite): 'agree' and 'flip'
    become human labels (p_chosen 1, flipped when the person said so), 'flag' drops the pair; a pair held for
    review (its chosen reply addresses the judge) trains only once a person has settled it.
    Returns (rows, counts of each verdict applied and of pairs held)."""
    from openrlaif.audit.db import apply_human_verdicts
    from openrlaif.core.progress import console
    from openrlaif.data.preferences import select_rounds

    by_round = {k: read_preferences(store, k, minimum)}
    if cfg is not None and cfg.pipeline.train_data != "newest":
        for j in range(1, k):
            if store.path("preferences.jsonl", j).is_file():
                by_round[j] = read_preference_file(store.path("preferences.jsonl", j))
        chosen = select_rounds(by_round, k, cfg.pipeline.train_data, cfg.pipeline.mix_previous, cfg.seed)
    else:
        chosen = by_round[k]
    rows, counts = apply_human_verdicts(chosen, store.root / "audit.sqlite")
    if any(counts.values()):
        console.print(f"human verdicts from audit.sqlite: {counts['agree']} confirmed, {counts['flip']} flipped, "
                      f"{counts['flag']} flagged and {counts['disputed']} disputed (reviewers disagree) pairs dropped")
    # Pairs whose chosen reply addresses the judge wait for a person (label.on_judge_directed=audit).
    def waits(row: dict) -> bool:
        return bool(row.get("held_for_review")) and row.get("source") != "human"

    waiting = [r for r in rows if waits(r)]
    counts["held_for_review"] = len(waiting)
    if waiting:
        rows = [r for r in rows if not waits(r)]
        console.print(f"{len(waiting)} pair(s) whose chosen reply addresses the judge are held out of training until "
                      f"reviewed: `rlaif audit {store.root}`")
    if len(rows) < minimum:
        raise UserError(f"{store.root / 'audit.sqlite'}: after dropping flagged pairs and holding "
                        f"{len(waiting)} unreviewed judge-directed pair(s), {len(rows)} remain, fewer than the "
                        f"{minimum} needed; review the held pairs (`rlaif audit {store.root}`), review fewer pairs "
                        "as 'flag', or label more data")
    return rows, counts


def text_of(side) -> str:
    """TRL conversational side ([{role, content}]) or plain string -> the response text."""
    if isinstance(side, str):
        return side
    return "".join(m["content"] for m in side if m.get("role") == "assistant")


def select_rounds(rows_by_round: dict[int, list[dict]], k: int, mode: str, mix_previous: float,
                  seed: int) -> list[dict]:
    """The pairs round ``k`` trains on: 'newest' = round k's; 'all' = rounds 1..k; 'mix' = round k's plus
    round(mix_previous * len(round k)) pairs drawn (seeded, without replacement) from the earlier rounds."""
    newest = list(rows_by_round.get(k, []))
    earlier = [row for j in sorted(rows_by_round) if j < k for row in rows_by_round[j]]
    if mode == "newest" or not earlier:
        return newest
    if mode == "all":
        return earlier + newest
    if mode == "mix":
        n = min(len(earlier), round(mix_previous * len(newest)))
        return newest + random.Random(f"{seed}:{k}:mix").sample(earlier, n)
    raise ValueError(mode)
