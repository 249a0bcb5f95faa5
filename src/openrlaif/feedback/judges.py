"""Judges: the auxiliary AI that compares two responses under a principle.

A judge reads both orders of every comparison (A/B and B/A), takes the probability that each slot is
better from the log-probs of the answer tokens, and averages the two orders (Lee et al. 2023). The
maths is in pure functions below; ``LocalJudge`` runs it on any local HF causal LM and only computes
the vocabulary projection for the last position.
"""

from __future__ import annotations

import time

from openrlaif.core.cache import model_fingerprint
from openrlaif.core.text import neutralize_special_tokens, normalize_candidate, truncate
from openrlaif.feedback.scoring import aggregate_probabilities, combine_orders, prob_first_slot
from openrlaif.feedback.types import Comparison, Verdict

PAIRWISE_TEMPLATE_VERSION = "pairwise-v2"  # v2: prompt head and the rest tokenised apart (prefix reuse)

JUDGE_SYSTEM = "You are a fair, careful judge of AI assistant responses. You answer with a single letter."
JUDGE_USER = (
    "A user sent this request:\n{prompt}\n\n"
    "Response A:\n{a}\n\n"
    "Response B:\n{b}\n\n"
    "{question}\nAnswer with one letter: A or B."
)
# Written after the assistant header so that the next token is the verdict letter.
JUDGE_PREFILL = "The better response is Response"


# ---------------------------------------------------------------------------------------------
# Pure maths


def both_orders(items: list[Comparison], render) -> list:
    """``render(prompt, a, b, question)`` of every comparison in both orders: [AB_0, BA_0, AB_1, BA_1, ...]."""
    out = []
    for it in items:
        out.append(render(it.prompt, it.first, it.second, it.principle.text))
        out.append(render(it.prompt, it.second, it.first, it.principle.text))
    return out


# ---------------------------------------------------------------------------------------------
# Local HF judge


def answer_token_ids(tokenizer, letter: str) -> list[int]:
    """Token ids that can spell the answer letter right after the prefill (' A' and 'A')."""
    ids = set()
    for variant in (f" {letter}", letter):
        toks = tokenizer(variant, add_special_tokens=False).input_ids
        if toks:
            ids.add(toks[0])
    return sorted(ids)


class LocalJudge:
    """Pairwise constitutional judge on a local causal LM, read from answer-token log-probs."""

    method = "pairwise"
    template = PAIRWISE_TEMPLATE_VERSION

    def __init__(self, model, tokenizer, *, name: str = "local", batch_size: int = 8,
                 max_response_chars: int = 1200, description: str = "judge", cache=None, reuse_prefix: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.reuse_prefix = reuse_prefix  # run the shared start of a request's judge prompts once
        self.batch_size = batch_size
        self.max_response_chars = max_response_chars
        self.description = description
        self.ids_a = answer_token_ids(tokenizer, "A")
        self.ids_b = answer_token_ids(tokenizer, "B")
        if set(self.ids_a) & set(self.ids_b):
            raise ValueError("the tokenizer spells 'A' and 'B' with a shared token; cannot read verdicts")
        self.cache = cache  # a feedback.cache.JudgeCache, or None

    def render(self, prompt: str, a: str, b: str, question: str) -> str:
        from openrlaif.models.loading import chat_prompt

        a, b = (neutralize_special_tokens(truncate(normalize_candidate(x), self.max_response_chars), self.tokenizer)
                for x in (a, b))
        user = JUDGE_USER.format(prompt=neutralize_special_tokens(prompt, self.tokenizer), a=a, b=b, question=question)
        messages = [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]
        return chat_prompt(self.tokenizer, messages) + JUDGE_PREFILL

    def last_logprobs(self, texts: list[str], prefix_chars: list[int] | None = None) -> list[tuple[list[float], list[float]]]:
        """For each text: log-probs of the A tokens and the B tokens at the next position (cached)."""
        values = read_next_token(self.model, self.tokenizer, texts, [self.ids_a, self.ids_b],
                                 batch_size=self.batch_size, cache=self.cache, description=self.description,
                                 key_parts=(model_fingerprint(self.model, self.name) if self.cache is not None else "", self.method, self.template),
                                 prefix_chars=prefix_chars)
        return [(v[0], v[1]) for v in values]

    def request_head(self, prompt: str) -> str:
        """The start of the user turn shared by every judge prompt about ``prompt`` (up to Response A)."""
        return JUDGE_USER.split("{a}")[0].format(prompt=neutralize_special_tokens(prompt, self.tokenizer))

    def compare(self, items: list[Comparison]) -> list[Verdict]:
        texts = both_orders(items, self.render)
        heads = [self.request_head(it.prompt) for it in items for _ in (0, 1)]
        logps = self.last_logprobs(texts, [shared_prefix_chars(t, h) if self.reuse_prefix else 0
                                           for t, h in zip(texts, heads)])
        verdicts = []
        for n, it in enumerate(items):
            (a1, b1), (a2, b2) = logps[2 * n], logps[2 * n + 1]
            p_first, s_ab, s_ba = combine_orders(prob_first_slot(a1, b1), prob_first_slot(a2, b2))
            verdicts.append(Verdict(p_first, s_ab, s_ba, it.principle.id,
                                    raw={"logp_ab": [a1, b1], "logp_ba": [a2, b2]}))
        return verdicts


def read_next_token(model, tokenizer, texts: list[str], groups: list[list[int]], *, batch_size: int,
                    cache=None, key_parts: tuple = (), description: str = "judge",
                    prefix_chars: list[int] | None = None) -> list[list[list[float]]]:
    """For each text, the next-token log-probs of every token id in each group (cached, batched by length).

    Only the last position is projected onto the vocabulary. With ``prefix_chars`` each text is
    tokenised as its first ``prefix_chars[i]`` characters + the rest, and texts that share that prefix
    (one judge request's two orders, all pairs of a prompt's candidates) run it once and reuse its
    key/value cache. With a cache, the key is ``key_parts`` + the groups + the exact token ids, and
    each batch is stored as soon as it is done.
    """
    import torch

    from openrlaif.core.cache import cache_key, cached_compute
    from openrlaif.core.progress import advance, bar
    from openrlaif.models.logprobs import Split, split_next_token_logprobs, supports_prefix_reuse

    tokenizer.padding_side = "left"
    if prefix_chars is not None and min(prefix_chars, default=0) > 0 and supports_prefix_reuse(model):
        prefix_ids: dict[str, tuple[int, ...]] = {}
        splits = []
        for text, n in zip(texts, prefix_chars):
            head = text[:n]
            if head not in prefix_ids:
                prefix_ids[head] = tuple(tokenizer(head, add_special_tokens=False).input_ids)
            splits.append(Split(prefix_ids[head], tokenizer(text[n:], add_special_tokens=False).input_ids))
        encoded = [list(sp.prefix) + sp.suffix for sp in splits]
        if any(not sp.prefix or not sp.suffix for sp in splits):
            splits = None  # nothing to share: the plain path reads the same token ids
    else:
        splits = None
        encoded = [tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    keys = ([cache_key(*key_parts, groups, ids) for ids in encoded] if cache is not None else [""] * len(texts))

    def compute(missing: list[int], on_batch) -> None:
        start = time.perf_counter()
        with bar(description, len(missing), "prompts") as progress, torch.inference_mode():
            if splits is not None:
                done = 0

                def store(batch: dict) -> None:
                    nonlocal done
                    on_batch({missing[j]: [row[g].tolist() for g in groups] for j, row in batch.items()})
                    done += len(batch)
                    advance(progress, len(batch), done / max(time.perf_counter() - start, 1e-9), "prompts")

                split_next_token_logprobs(model, [splits[i] for i in missing], batch_size, tokenizer.pad_token_id,
                                          on_batch=store)
                return
            order = sorted(missing, key=lambda i: len(encoded[i]))
            for b in range(0, len(order), batch_size):
                idx = order[b : b + batch_size]
                batch = tokenizer.pad({"input_ids": [encoded[i] for i in idx]}, return_tensors="pt")
                logits = last_position_logits(model, batch["input_ids"], batch["attention_mask"])
                logp = torch.log_softmax(logits.float(), dim=-1)
                on_batch({i: [row[g].tolist() for g in groups] for row, i in zip(logp, idx)})
                advance(progress, len(idx), (b + len(idx)) / max(time.perf_counter() - start, 1e-9), "prompts")

    return cached_compute(cache, keys, compute, str(key_parts[1]) if len(key_parts) > 1 else "")


def shared_prefix_chars(text: str, head: str) -> int:
    """Characters of ``text`` up to the end of ``head`` (the part of the user turn that every judge
    prompt of one request shares), or 0 when ``head`` is not found."""
    at = text.find(head)
    return at + len(head) if at >= 0 else 0


def last_position_logits(model, input_ids, attention_mask):
    """Logits of the final position only (left padding), without projecting every position."""
    # Positions count real tokens only, so left padding does not shift absolute-position models.
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    try:
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, logits_to_keep=1)
    except TypeError:  # older transformers / custom models
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
    return out.logits[:, -1, :]


# ---------------------------------------------------------------------------------------------
# Rule judge and ensembles


class RuleJudge:
    """Verifiable preferences: a Python function ``score(prompt, response) -> float`` ranks responses.

    A pair's label is sigmoid((score(first) - score(second)) / temperature); a score of None or an
    exception leaves the pair unscored (with the error kept), never silently labelled.
    """

    method = "rule"

    def __init__(self, fn, *, name: str = "rule", temperature: float = 1.0):
        self.fn = fn
        self.name = name
        self.template = f"rule:{name}"
        self.temperature = temperature
        self.cache = None

    def _score(self, prompt: str, response: str) -> tuple[float | None, str | None]:
        try:
            value = self.fn(prompt, response)
        except Exception as err:  # a user's rule may fail on odd input: record it, do not guess
            return None, f"{type(err).__name__}: {err}"
        if value is None:
            return None, "rule returned None"
        return float(value), None

    def compare(self, items: list[Comparison]) -> list[Verdict]:
        from openrlaif.feedback.scoring import pair_probability

        verdicts = []
        for it in items:
            (s1, e1), (s2, e2) = self._score(it.prompt, it.first), self._score(it.prompt, it.second)
            if s1 is None or s2 is None:
                verdicts.append(Verdict(None, None, None, it.principle.id, error=e1 or e2))
                continue
            p = pair_probability(s1, s2, self.temperature)
            verdicts.append(Verdict(p, p, p, it.principle.id, raw={"score_first": s1, "score_second": s2}))
        return verdicts


class EnsembleJudge:
    """Several judges on the same comparisons; mean or majority, with member disagreement recorded."""

    method = "ensemble"

    def __init__(self, members: list, *, aggregate: str = "mean", name: str = "ensemble"):
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = members
        self.aggregate = aggregate
        self.name = name
        self.template = "ensemble[" + ",".join(getattr(m, "template", m.method) for m in members) + f"]:{aggregate}"
        self.cache = getattr(members[0], "cache", None)

    @property
    def description(self) -> str:
        return getattr(self.members[0], "description", "judge")

    @description.setter
    def description(self, value: str) -> None:
        for m in self.members:
            if hasattr(m, "description"):
                m.description = value

    def compare(self, items: list[Comparison]) -> list[Verdict]:
        per_member = [m.compare(items) for m in self.members]
        verdicts = []
        for n, it in enumerate(items):
            vs = [pm[n] for pm in per_member]
            scored = [v for v in vs if v.p_first is not None]
            raw = {"members": [{"method": m.method, "p_first": v.p_first} for m, v in zip(self.members, vs)]}
            if not scored:
                verdicts.append(Verdict(None, None, None, it.principle.id, raw=raw, error="no member scored this pair"))
                continue
            p, disagreement = aggregate_probabilities([v.p_first for v in scored], self.aggregate)
            s_ab, _ = aggregate_probabilities([v.score_ab for v in scored], self.aggregate)
            s_ba, _ = aggregate_probabilities([v.score_ba for v in scored], self.aggregate)
            raw["disagreement"] = disagreement
            verdicts.append(Verdict(p, s_ab, s_ba, it.principle.id, raw=raw))
        return verdicts


class RewardModelJudge:
    """A trained preference (reward) model as the labeler: P(first) = sigmoid((r_first - r_second) / T).

    ``reward_model`` is anything with ``rewards(prompts, responses) -> list[float]`` (see
    ``openrlaif.reward.model``); each distinct response is scored once, so the label is order-free.
    """

    method = "reward_model"

    def __init__(self, reward_model, *, name: str = "reward_model", temperature: float = 1.0):
        self.reward_model = reward_model
        self.name = name
        self.template = f"reward_model:{name}"
        self.temperature = temperature
        self.cache = None
        self.description = "judge"

    def compare(self, items: list[Comparison]) -> list[Verdict]:
        import json

        from openrlaif.feedback.scoring import compare_by_scores

        def score_units(units):
            return self.reward_model.rewards([json.loads(c) for c, _ in units], [r for _, r in units])

        return compare_by_scores(items, lambda it, response: (json.dumps(it.conversation), response),
                                 score_units, self.temperature)
