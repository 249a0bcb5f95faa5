"""Fitted preference heads: a Bradley-Terry head on the judge model's hidden states, fitted on labelled pairs.

A head directory (written by ``rlaif fit-judge``) holds ``heads.json`` (the card: format, the judge model
and its fingerprint, and per head the principle, feature, L2, pairs, CV agreement, ECE, data hash) and one
``<key>.safetensors`` per head (``mean``, ``std``, ``w``). The key is the principle id, or ``_any`` for a
head that serves every principle. ``FittedJudge`` scores each reply alone (feature . w after
standardising); P(first) = sigmoid(score(first) - score(second)). A principle without a head is judged
by the fallback judge (the configured method), so heads can be added one principle at a time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from openrlaif.core.cache import cache_key, cached_compute, model_fingerprint
from openrlaif.core.errors import UserError
from openrlaif.core.store import atomic_directory, sha256_text
from openrlaif.core.text import normalize_candidate
from openrlaif.feedback.fitting import Standardizer
from openrlaif.feedback.scoring import compare_by_scores
from openrlaif.feedback.types import Comparison, Verdict
from openrlaif.models.features import parse_feature_name, reply_features

HEAD_FORMAT = "openrlaif-bt-head-v1"
ANY_PRINCIPLE = "_any"


@dataclass
class Head:
    """One Bradley-Terry head: which feature it reads, how it standardises it, and its weights."""

    principle: str  # a principle id, or ANY_PRINCIPLE
    feature: str  # 'layer{i}:{mean|last}'
    standardizer: Standardizer
    w: torch.Tensor  # (hidden_size,)
    card: dict = field(default_factory=dict)  # l2, pairs, cv_agreement, ece, data_sha256, ...

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """(n, d) raw features -> (n,) scores."""
        return self.standardizer(features) @ self.w

    def digest(self) -> str:
        """Identity of the head's numbers (for cache keys)."""
        parts = [self.feature, self.standardizer.mean.tolist(), self.standardizer.std.tolist(), self.w.tolist()]
        return sha256_text(json.dumps(parts))[:16]


def save_heads(directory: str | Path, heads: list[Head], judge_name: str, judge_fingerprint: str) -> Path:
    """Write ``heads`` as a head directory (atomically: a crash leaves the old directory or none)."""
    from safetensors.torch import save_file

    card = {"format": HEAD_FORMAT, "judge": judge_name, "judge_fingerprint": judge_fingerprint,
            "heads": {h.principle: {"feature": h.feature, **h.card} for h in heads}}
    with atomic_directory(directory) as tmp:
        for h in heads:
            save_file({"mean": h.standardizer.mean.contiguous(), "std": h.standardizer.std.contiguous(),
                       "w": h.w.contiguous()}, str(tmp / f"{h.principle}.safetensors"))
        (tmp / "heads.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return Path(directory)


def load_heads(directory: str | Path, field_name: str = "feedback.heads") -> tuple[dict, dict[str, Head]]:
    """(card, {principle: Head}) from a head directory; one clear line for anything missing or foreign."""
    from safetensors.torch import load_file

    root = Path(directory).expanduser()
    card_path = root / "heads.json"
    if not card_path.is_file():
        raise UserError(f"{field_name}: {root} is not a head directory (no heads.json); write one with "
                        "`rlaif fit-judge --pairs FILE -o DIR`")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise UserError(f"{card_path}: not valid JSON ({err}); refit the heads with `rlaif fit-judge`") from None
    if card.get("format") != HEAD_FORMAT:
        raise UserError(f"{card_path}: format {card.get('format')!r} is not {HEAD_FORMAT!r}; refit the heads "
                        "with this version's `rlaif fit-judge`")
    heads = {}
    for principle, meta in (card.get("heads") or {}).items():
        path = root / f"{principle}.safetensors"
        if not path.is_file():
            raise UserError(f"{field_name}: {path} is missing (listed in heads.json); refit the heads")
        tensors = load_file(str(path))
        parse_feature_name(meta["feature"])
        heads[principle] = Head(principle, meta["feature"], Standardizer(tensors["mean"], tensors["std"]),
                                tensors["w"], {k: v for k, v in meta.items() if k != "feature"})
    if not heads:
        raise UserError(f"{card_path}: lists no heads; refit with `rlaif fit-judge`")
    return card, heads


class FittedJudge:
    """Judge with fitted Bradley-Terry heads, per principle; other principles go to ``fallback``."""

    method = "fitted"
    template = HEAD_FORMAT

    def __init__(self, model, tokenizer, heads: dict[str, Head], *, fallback=None, name: str = "local",
                 batch_size: int = 8, max_length: int = 384, cache=None, description: str = "judge",
                 expected_fingerprint: str | None = None, source: str = "feedback.heads"):
        self.model = model
        self.tokenizer = tokenizer
        self.heads = heads
        self.fallback = fallback
        self.name = name
        self.batch_size = batch_size
        self.max_length = max_length
        self.cache = cache
        self.description = description
        if expected_fingerprint is not None:
            actual = model_fingerprint(model)
            if actual != expected_fingerprint:
                raise UserError(f"{source}: the heads were fitted on a different judge model (fingerprint "
                                f"{expected_fingerprint}, this judge {actual}); refit them with `rlaif fit-judge` "
                                "for this model.judge")

    def head_for(self, principle_id: str) -> Head | None:
        return self.heads.get(principle_id) or self.heads.get(ANY_PRINCIPLE)

    def scores(self, units: list[tuple[str, list[dict], str]]) -> list[float]:
        """Score of each (head key, conversation, reply), cached by head and token ids."""
        from openrlaif.models.logprobs import encode_response

        fingerprint = model_fingerprint(self.model, self.name) if self.cache is not None else ""
        keys = ([cache_key(fingerprint, self.method, self.heads[k].digest(),
                           encode_response(self.tokenizer, conv, normalize_candidate(reply), self.max_length).input_ids)
                 for k, conv, reply in units] if self.cache is not None else [""] * len(units))

        def compute(missing: list[int], on_batch) -> None:
            by_feature: dict[str, list[int]] = {}
            for i in missing:
                by_feature.setdefault(self.heads[units[i][0]].feature, []).append(i)
            for feature, idx in by_feature.items():
                layer, pooling = parse_feature_name(feature)
                feats = reply_features(self.model, self.tokenizer, [units[i][1] for i in idx],
                                       [normalize_candidate(units[i][2]) for i in idx], layers=[layer], poolings=(pooling,),
                                       batch_size=self.batch_size, max_length=self.max_length,
                                       description=self.description)[feature]
                done = {}
                for row, i in enumerate(idx):
                    done[i] = float(self.heads[units[i][0]].score(feats[row : row + 1])[0])
                on_batch(done)

        return cached_compute(self.cache, keys, compute, self.method)

    def compare(self, items: list[Comparison]) -> list[Verdict]:
        with_head = [i for i, it in enumerate(items) if self.head_for(it.principle.id) is not None]
        without = sorted(set(range(len(items))) - set(with_head))
        if without and self.fallback is None:
            missing = sorted({items[i].principle.id for i in without})
            raise UserError(f"feedback.heads: no head for principle(s) {', '.join(missing)} and no fallback judge; "
                            "fit heads for them or set feedback.fallback")
        verdicts: list[Verdict | None] = [None] * len(items)
        if with_head:
            conversations = {}

            def unit_of(it: Comparison, response: str):
                key = it.principle.id if it.principle.id in self.heads else ANY_PRINCIPLE
                conv = json.dumps(it.conversation)
                conversations[conv] = it.conversation
                return (key, conv, response)

            picked = [items[i] for i in with_head]
            scored = compare_by_scores(picked, unit_of,
                                       lambda units: self.scores([(k, conversations[c], r) for k, c, r in units]),
                                       1.0)
            for i, v in zip(with_head, scored):
                verdicts[i] = v
        if without:
            for i, v in zip(without, self.fallback.compare([items[i] for i in without])):
                verdicts[i] = v
        return verdicts
