"""Feedback methods beyond pairwise A/B (which lives in ``judges.LocalJudge``).

Contrastive likelihood (``ContrastiveJudge``): how much more likely is a response from an assistant
told to follow the principle than from one told to violate it?

    score(r) = log p(r | positive system prompt, conversation) - log p(r | negative system prompt, conversation)

A pair's soft label is sigmoid((score(first) - score(second)) / temperature). The response is
scored on its own, so the verdict cannot depend on the order the pair is shown in, and each
candidate costs two forward passes however many pairs it takes part in.
"""

from __future__ import annotations

import json

from openrlaif.core.cache import JudgeCache, cache_key, cached_compute, model_fingerprint
from openrlaif.core.text import normalize_candidate, with_system
from openrlaif.data.constitution import Principle
from openrlaif.feedback.scoring import compare_by_scores, contrastive_score, expected_rating
from openrlaif.feedback.types import Comparison, Verdict

CONTRASTIVE_TEMPLATE_VERSION = "contrastive-v1"


class ContrastiveJudge:
    """Constitution-conditioned likelihood ratio on a local causal LM (order-free soft labels)."""

    method = "contrastive"
    template = CONTRASTIVE_TEMPLATE_VERSION

    def __init__(self, model, tokenizer, *, name: str = "local", batch_size: int = 8, max_length: int = 384,
                 normalize: str = "mean", temperature: float = 1.0, description: str = "judge",
                 cache: JudgeCache | None = None, reuse_prefix: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.batch_size = batch_size
        self.max_length = max_length
        self.normalize = normalize
        self.temperature = temperature
        self.description = description
        self.cache = cache
        self.reuse_prefix = reuse_prefix  # score a prompt's shared system prompt + conversation once

    def scores(self, units: list[tuple[list[dict], str, Principle]]) -> list[float]:
        """Contrastive score of each (conversation, response, principle)."""
        from openrlaif.models.logprobs import encode_response, shared_prefix_logprobs

        seqs = []
        for messages, response, principle in units:
            for system in (principle.positive_prompt, principle.negative_prompt):
                seqs.append(encode_response(self.tokenizer, with_system(messages, system), normalize_candidate(response),
                                            self.max_length))
        keys = ([cache_key(model_fingerprint(self.model, self.name), "response-logprob", s.input_ids, s.response_mask) for s in seqs]
                if self.cache is not None else [""] * len(seqs))

        def compute(missing: list[int], on_batch) -> None:
            # the system prompt + conversation is shared by every candidate of a prompt: run once
            shared_prefix_logprobs(self.model, [seqs[i] for i in missing], self.tokenizer.pad_token_id, self.batch_size,
                                   self.description, on_batch=lambda done: on_batch({missing[j]: v for j, v in done.items()}),
                                   reuse_prefix=self.reuse_prefix)

        logps = cached_compute(self.cache, keys, compute, self.method)
        counts = [sum(s.response_mask) for s in seqs]
        return [contrastive_score(logps[2 * i], logps[2 * i + 1], counts[2 * i], self.normalize)
                for i in range(len(units))]

    def compare(self, items: list[Comparison]) -> list[Verdict]:
        return compare_by_scores(
            items, lambda it, response: (json.dumps(it.conversation), response, it.principle),
            lambda units: self.scores([(json.loads(c), r, p) for c, r, p in units]), self.temperature)


# ---------------------------------------------------------------------------------------------
# Pointwise expected score (d-RLAIF): the judge rates one response; the rating's expectation is the score.

POINTWISE_TEMPLATE_VERSION = "pointwise-0to9-v2"
POINTWISE_SYSTEM = "You are a fair, careful judge of AI assistant replies. You answer with a single digit."
POINTWISE_USER = (
    "A user sent this request:\n{prompt}\n\n"
    "An assistant replied:\n{response}\n\n"
    "Judge the reply by this question: {question}\n"
    "Rate the reply from 0 (worst) to 9 (best). Answer with one digit."
)
POINTWISE_PREFILL = "Rating: "


def digit_token_groups(tokenizer) -> list[list[int]]:
    """Token ids that can spell each rating 0..9 next (' 7' and '7'); ids shared by digits are dropped."""
    groups = []
    for d in range(10):
        ids = set()
        for variant in (f" {d}", str(d)):
            toks = tokenizer(variant, add_special_tokens=False).input_ids
            if toks:
                ids.add(toks[0])
        groups.append(ids)
    shared = {t for i, g in enumerate(groups) for t in g if any(t in h for j, h in enumerate(groups) if j != i)}
    out = [sorted(g - shared) for g in groups]
    if any(not g for g in out):
        raise ValueError("the tokenizer has no distinct token for every digit 0-9; cannot read ratings")
    return out


class PointwiseJudge:
    """Rates each response alone on 0..9 from the digit log-probs; pairs compare expected ratings."""

    method = "pointwise"
    template = POINTWISE_TEMPLATE_VERSION

    def __init__(self, model, tokenizer, *, name: str = "local", batch_size: int = 8, max_response_chars: int = 600,
                 temperature: float = 1.0, description: str = "judge", cache: JudgeCache | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.batch_size = batch_size
        self.max_response_chars = max_response_chars
        self.temperature = temperature
        self.description = description
        self.cache = cache
        self.groups = digit_token_groups(tokenizer)

    def render(self, prompt: str, response: str, principle: Principle) -> str:
        from openrlaif.core.text import neutralize_special_tokens, truncate
        from openrlaif.models.loading import chat_prompt

        user = POINTWISE_USER.format(prompt=neutralize_special_tokens(prompt, self.tokenizer),
                                     response=neutralize_special_tokens(truncate(normalize_candidate(response), self.max_response_chars),
                                                                        self.tokenizer),
                                     question=principle.text)
        messages = [{"role": "system", "content": POINTWISE_SYSTEM}, {"role": "user", "content": user}]
        return chat_prompt(self.tokenizer, messages) + POINTWISE_PREFILL

    def score(self, items: list[tuple[str, str, Principle]]) -> list[float | None]:
        """Expected 0..9 rating of each (prompt, response, principle)."""
        from openrlaif.core.text import neutralize_special_tokens
        from openrlaif.feedback.judges import read_next_token, shared_prefix_chars

        texts = [self.render(*it) for it in items]
        heads = [POINTWISE_USER.split("{response}")[0].format(prompt=neutralize_special_tokens(it[0], self.tokenizer))
                 for it in items]
        values = read_next_token(self.model, self.tokenizer, texts, self.groups,
                                 batch_size=self.batch_size, cache=self.cache, description=self.description,
                                 key_parts=(model_fingerprint(self.model, self.name) if self.cache is not None else "", self.method, self.template),
                                 prefix_chars=[shared_prefix_chars(t, h) for t, h in zip(texts, heads)])
        return [expected_rating(v) for v in values]

    def compare(self, items: list[Comparison]) -> list[Verdict]:
        return compare_by_scores(items, lambda it, response: (it.prompt, response, it.principle),
                                 self.score, self.temperature)


# ---------------------------------------------------------------------------------------------
# Chain of thought: the judge writes a short comparison first, then the verdict is read from the
# log-probs of the answer letter that follows it (Lee et al. 2023). Both orders; rationale kept.

COT_TEMPLATE_VERSION = "cot-v2"
COT_SYSTEM = "You are a fair, careful judge of AI assistant responses. You explain briefly, then decide."
COT_USER = (
    "A user sent this request:\n{prompt}\n\n"
    "Response A:\n{a}\n\n"
    "Response B:\n{b}\n\n"
    "{question}\n"
    "Compare the two responses on this question in two or three sentences, then say which is better."
)
COT_PREFILL = "Comparison:"
COT_VERDICT = "\nTherefore, the better response is Response"
_VERDICT_START = ("therefore", "the better response is", "so the better", "response a is better", "response b is better")


def clean_rationale(text: str) -> str:
    """The rationale up to (not including) any verdict the judge wrote itself: the verdict is read from
    log-probs after our own 'Therefore, ...' line, never from the judge's free text."""
    low = text.lower()
    cut = min((i for i in (low.find(m) for m in _VERDICT_START) if i >= 0), default=len(text))
    return text[:cut].strip()


class ChainOfThoughtJudge:
    """Pairwise judge that reasons before its verdict; the rationale of each comparison is stored."""

    method = "cot"

    def __init__(self, model, tokenizer, *, name: str = "local", batch_size: int = 8, max_response_chars: int = 600,
                 max_new_tokens: int = 64, description: str = "judge", cache: JudgeCache | None = None):
        from openrlaif.feedback.judges import answer_token_ids

        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.batch_size = batch_size
        self.max_response_chars = max_response_chars
        self.max_new_tokens = max_new_tokens
        self.description = description
        self.cache = cache
        self.template = f"{COT_TEMPLATE_VERSION}:{max_new_tokens}"
        self.ids_a = answer_token_ids(tokenizer, "A")
        self.ids_b = answer_token_ids(tokenizer, "B")

    def render(self, prompt: str, a: str, b: str, question: str) -> str:
        from openrlaif.core.text import neutralize_special_tokens, truncate
        from openrlaif.models.loading import chat_prompt

        a, b = (neutralize_special_tokens(truncate(normalize_candidate(x), self.max_response_chars), self.tokenizer)
                for x in (a, b))
        user = COT_USER.format(prompt=neutralize_special_tokens(prompt, self.tokenizer), a=a, b=b, question=question)
        messages = [{"role": "system", "content": COT_SYSTEM}, {"role": "user", "content": user}]
        return chat_prompt(self.tokenizer, messages) + COT_PREFILL

    def compare(self, items: list[Comparison]) -> list[Verdict]:
        from openrlaif.core.text import neutralize_special_tokens
        from openrlaif.feedback.judges import both_orders, read_next_token, shared_prefix_chars
        from openrlaif.feedback.scoring import combine_orders, prob_first_slot
        from openrlaif.sampling.hf import continue_texts

        fingerprint = model_fingerprint(self.model, self.name) if self.cache is not None else ""
        prompts = both_orders(items, self.render)
        # 1. The judge writes its comparison (greedy, cached).
        rationales = [clean_rationale(t) for t in continue_texts(
            self.model, self.tokenizer, prompts, self.max_new_tokens, batch_size=self.batch_size,
            description=f"{self.description} (reasoning)", cache=self.cache, key_parts=(fingerprint, self.method, self.template))]
        # 2. The verdict letter after 'Therefore, the better response is Response', from log-probs.
        texts = [p + " " + r + COT_VERDICT for p, r in zip(prompts, rationales)]
        heads = [COT_USER.split("{a}")[0].format(prompt=neutralize_special_tokens(it.prompt, self.tokenizer))
                 for it in items for _ in (0, 1)]
        logps = read_next_token(self.model, self.tokenizer, texts, [self.ids_a, self.ids_b], batch_size=self.batch_size,
                                cache=self.cache, description=f"{self.description} (verdicts)",
                                key_parts=(fingerprint, self.method, self.template),
                                prefix_chars=[shared_prefix_chars(t, h) for t, h in zip(texts, heads)])
        verdicts = []
        for n, it in enumerate(items):
            (a1, b1), (a2, b2) = logps[2 * n], logps[2 * n + 1]
            p_first, s_ab, s_ba = combine_orders(prob_first_slot(a1, b1), prob_first_slot(a2, b2))
            verdicts.append(Verdict(p_first, s_ab, s_ba, it.principle.id, rationale=rationales[2 * n],
                                    raw={"logp_ab": [a1, b1], "logp_ba": [a2, b2], "rationale_ba": rationales[2 * n + 1]}))
        return verdicts
