"""A judge behind any OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp server, TGI, OpenAI...).

Requests run concurrently (``concurrency``) under an optional request-rate limit; 429, 5xx, timeouts,
dropped connections and unreadable bodies are retried with exponential backoff and full jitter
(honouring ``Retry-After``). The verdict comes from ``top_logprobs`` when the server returns them (a
soft label), otherwise from the answer text (a hard label); an answer that cannot be read is kept as
unscored with its raw text, never guessed. Token usage and cost are counted per judge.

Servers that can continue an assistant turn (vLLM, ``rlaif serve``) accept ``prefill``: the judge then
writes "The better response is Response" itself and the very next token is the verdict, exactly as
the local judge reads it.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
from dataclasses import dataclass

from openrlaif.core.errors import UserError
from openrlaif.core.http import Attempts, RateLimiter, RetryPolicy, bearer, has_choices, post_json, run_coroutine
from openrlaif.core.text import normalize_candidate, truncate
from openrlaif.feedback.judges import JUDGE_PREFILL, JUDGE_SYSTEM, JUDGE_USER, both_orders
from openrlaif.feedback.scoring import combine_orders, compare_by_scores, expected_rating, logsumexp
from openrlaif.feedback.types import Comparison, Verdict

API_PAIRWISE_TEMPLATE_VERSION = "api-pairwise-v1"
API_POINTWISE_TEMPLATE_VERSION = "api-pointwise-v1"

# ---------------------------------------------------------------------------------------------
# Pure parts: reading a verdict from an answer, backoff, cost


def letter_probability(top: list[dict], letters: tuple[str, str] = ("A", "B")) -> float | None:
    """P(first letter) from one position's ``top_logprobs`` ([{token, logprob}, ...]).

    Tokens that spell a letter after stripping spaces (' A', 'A') are summed. When only one letter is
    listed, the other's mass is bounded by the smallest listed probability, which keeps the label
    conservative; when neither is listed the position says nothing (None).
    """
    mass: dict[str, list[float]] = {letter: [] for letter in letters}
    for entry in top:
        text = str(entry.get("token", "")).strip()
        if text in mass:
            mass[text].append(float(entry["logprob"]))
    a, b = mass[letters[0]], mass[letters[1]]
    if not a and not b:
        return None
    floor = min(float(e["logprob"]) for e in top)
    la = logsumexp(a) if a else floor
    lb = logsumexp(b) if b else floor
    return 1.0 / (1.0 + math.exp(lb - la))


_LETTER = re.compile(r"^[\s*\"'(\[]*(?i:(?:the\s+)?(?:better\s+)?(?:response|answer)\s*(?:is\s*)?(?:response\s*)?[:\-]?\s*)?"
                     r"\(?([AB])(?![\w])")


def parse_letter(text: str) -> str | None:
    """'A' or 'B' when an answer text opens with a verdict ('B', ' A.', 'Response B', 'The better response
    is A'); None for anything else."""
    m = _LETTER.match(text or "")
    return m.group(1) if m else None


def expected_digit(top: list[dict]) -> float | None:
    """E[rating] over 0..9 from one position's ``top_logprobs``; None when no digit is listed."""
    mass: dict[int, list[float]] = {}
    for entry in top:
        text = str(entry.get("token", "")).strip()
        if len(text) == 1 and text.isdigit():
            mass.setdefault(int(text), []).append(float(entry["logprob"]))
    return expected_rating(mass)


def cost_usd(prompt_tokens: int, completion_tokens: int, price_input_per_mtok: float, price_output_per_mtok: float) -> float:
    return prompt_tokens * price_input_per_mtok / 1e6 + completion_tokens * price_output_per_mtok / 1e6


def defuse_markers(text: str) -> str:
    """Break chat-template markers ('<|im_end|>', '<|eot_id|>', '[INST]') inside candidate text so a
    server's tokenizer reads them as plain characters, not as the end of the judge's turn."""
    return text.replace("<|", "<\u200b|").replace("[INST]", "[\u200bINST]").replace("[/INST]", "[/\u200bINST]")


def verdict_position(content: list[dict], accept, prefilled: bool) -> list[dict] | None:
    """The ``top_logprobs`` where the verdict is read: the first generated token when the answer was
    prefilled (the verdict is due right there), else the first generated token whose text ``accept``
    takes (e.g. 'B' in 'Response B'), else the first token."""
    if not content:
        return None
    chosen = content[0]
    if not prefilled:
        chosen = next((t for t in content if accept(str(t.get("token", "")).strip())), content[0])
    top = chosen.get("top_logprobs") or []
    return top or [{"token": chosen.get("token", ""), "logprob": chosen.get("logprob", 0.0)}]


# ---------------------------------------------------------------------------------------------
# Transport


@dataclass
class Usage(Attempts):
    """What a judge spent: the endpoint's attempts (requests, retries, failures by kind), tokens and cost."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def as_dict(self) -> dict:
        return {"requests": self.requests, "retries": self.retries, "failed": self.failed,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "cost_usd": round(self.cost_usd, 6), "errors": dict(self.errors)}


# ---------------------------------------------------------------------------------------------
# The judge


class OpenAICompatibleJudge:
    """Pairwise (both orders) or pointwise judge over HTTP, with soft labels from ``top_logprobs``."""

    def __init__(self, base_url: str, model: str, *, method: str = "pairwise", api_key: str | None = None,
                 concurrency: int = 8, requests_per_s: float | None = None, timeout_s: float = 60.0,
                 max_retries: int = 6, backoff_base_s: float = 0.5, backoff_cap_s: float = 30.0,
                 top_logprobs: int = 20, prefill: bool = False, price_input_per_mtok: float = 0.0,
                 price_output_per_mtok: float = 0.0, max_response_chars: int = 1200, temperature: float = 1.0,
                 cache=None, seed: int = 0, description: str = "judge"):
        if method not in ("pairwise", "pointwise"):
            raise ValueError(f"the API judge supports 'pairwise' and 'pointwise', not {method!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = model
        self.method = method
        self.template = (API_PAIRWISE_TEMPLATE_VERSION if method == "pairwise" else API_POINTWISE_TEMPLATE_VERSION) + (
            "+prefill" if prefill else "")
        self.api_key = api_key
        self.concurrency = concurrency
        self.requests_per_s = requests_per_s
        self.timeout_s = timeout_s
        self.top_logprobs = top_logprobs
        self.prefill = prefill
        self.price_input_per_mtok = price_input_per_mtok
        self.price_output_per_mtok = price_output_per_mtok
        self.max_response_chars = max_response_chars
        self.temperature = temperature
        self.cache = cache
        self.retry = RetryPolicy(max_retries, backoff_base_s, backoff_cap_s, random.Random(seed))
        self.description = description
        self.usage = Usage()
        self._checked = False

    # -- request bodies -------------------------------------------------------------------------

    def pairwise_messages(self, prompt: str, a: str, b: str, question: str) -> list[dict]:
        a, b = (defuse_markers(truncate(normalize_candidate(x), self.max_response_chars)) for x in (a, b))
        user = JUDGE_USER.format(prompt=defuse_markers(prompt), a=a, b=b, question=question)
        messages = [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]
        if self.prefill:
            messages.append({"role": "assistant", "content": JUDGE_PREFILL})
        return messages

    def pointwise_messages(self, prompt: str, response: str, question: str) -> list[dict]:
        from openrlaif.feedback.methods import POINTWISE_PREFILL, POINTWISE_SYSTEM, POINTWISE_USER

        user = POINTWISE_USER.format(prompt=defuse_markers(prompt),
                                     response=defuse_markers(truncate(normalize_candidate(response), self.max_response_chars)), question=question)
        messages = [{"role": "system", "content": POINTWISE_SYSTEM}, {"role": "user", "content": user}]
        if self.prefill:
            messages.append({"role": "assistant", "content": POINTWISE_PREFILL})
        return messages

    def body(self, messages: list[dict]) -> dict:
        body = {"model": self.model, "messages": messages, "temperature": 0.0,
                "max_tokens": 1 if self.prefill else 8}
        if self.top_logprobs:
            body.update(logprobs=True, top_logprobs=self.top_logprobs)
        if self.prefill:  # vLLM's (and `rlaif serve`'s) way to continue the assistant turn
            body.update(continue_final_message=True, add_generation_prompt=False)
        return body

    # -- reading answers ------------------------------------------------------------------------

    def read(self, response: dict) -> dict:
        """One completion -> {'value': P(slot A) or rating, 'source': 'logprobs'|'text'} or {'error', 'raw'}."""
        choice = response["choices"][0]
        content = (choice.get("message") or {}).get("content") or ""
        tokens = ((choice.get("logprobs") or {}).get("content")) or []
        if self.method == "pairwise":
            top = verdict_position(tokens, lambda t: t in ("A", "B"), self.prefill)
            if top is not None and (p := letter_probability(top)) is not None:
                return {"value": p, "source": "logprobs", "raw": content}
            letter = parse_letter(content)
            if letter is not None:
                return {"value": 1.0 if letter == "A" else 0.0, "source": "text", "raw": content}
        else:
            top = verdict_position(tokens, lambda t: len(t) == 1 and t.isdigit(), self.prefill)
            if top is not None and (r := expected_digit(top)) is not None:
                return {"value": r, "source": "logprobs", "raw": content}
            m = re.match(r"^\D{0,12}?(\d)\b", content)
            if m:
                return {"value": float(m.group(1)), "source": "text", "raw": content}
        return {"error": "unparsed answer", "raw": content[:500]}

    # -- transport ------------------------------------------------------------------------------

    def headers(self) -> dict:
        return bearer(self.api_key)

    def check(self) -> None:
        """Fail fast, in one line, when the endpoint cannot be reached or refuses us."""
        import httpx

        if self._checked:
            return
        url = f"{self.base_url}/models"
        try:
            r = httpx.get(url, headers=self.headers(), timeout=min(self.timeout_s, 15.0))
        except httpx.HTTPError as err:
            raise UserError(f"judge API {self.base_url} is unreachable ({type(err).__name__}: {err}); start the "
                            "server or fix feedback.api.base_url") from None
        if r.status_code in (401, 403):
            raise UserError(f"judge API {self.base_url} refused the key (HTTP {r.status_code}); set the variable "
                            "named by feedback.api.api_key_env")
        self._checked = True

    async def post(self, client, body: dict) -> dict | None:
        """POST one chat completion with the shared retry policy (``core.http``); the parsed JSON, or None
        when every attempt failed. Token usage and cost are added up from the answers."""
        data = await post_json(
            client, f"{self.base_url}/chat/completions", body, headers=self.headers(), policy=self.retry,
            attempts=self.usage, accept=has_choices, limiter=self.limiter,
            refused=lambda status, text: (f"judge API {self.base_url} answered HTTP {status}: {text}; "
                                          "check feedback.api.model and the key"))
        if data is not None:
            usage = data.get("usage") or {}
            self.usage.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            self.usage.completion_tokens += int(usage.get("completion_tokens") or 0)
            self.usage.cost_usd = cost_usd(self.usage.prompt_tokens, self.usage.completion_tokens,
                                           self.price_input_per_mtok, self.price_output_per_mtok)
        return data

    async def _readings(self, bodies: list[dict], on_done) -> None:
        import httpx

        from openrlaif.core.progress import advance, bar

        self.limiter = RateLimiter(self.requests_per_s)
        semaphore = asyncio.Semaphore(self.concurrency)
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        start = time.perf_counter()
        done = 0
        with bar(self.description, len(bodies), "requests") as progress:
            async with httpx.AsyncClient(timeout=self.timeout_s, limits=limits) as client:

                async def one(i: int) -> None:
                    nonlocal done
                    async with semaphore:
                        data = await self.post(client, bodies[i])
                    reading = self.read(data) if data is not None else None
                    on_done(i, reading)
                    done += 1
                    advance(progress, 1, done / max(time.perf_counter() - start, 1e-9), "requests")

                await asyncio.gather(*(one(i) for i in range(len(bodies))))

    def readings(self, message_lists: list[list[dict]]) -> list[dict]:
        """One reading per message list (cached); transport failures come back as {'error': ...} and are
        not cached, so a later run asks again."""
        from openrlaif.core.cache import cache_key
        from openrlaif.core.preempt import batch_done

        self.check()
        bodies = [self.body(m) for m in message_lists]
        keys = [cache_key(self.model, self.method, self.template, b["messages"], b.get("top_logprobs")) for b in bodies]
        found = self.cache.get_many(keys) if self.cache is not None else {}
        out: list[dict | None] = [found.get(k) for k in keys]
        missing = [i for i, v in enumerate(out) if v is None]

        def on_done(j: int, reading: dict | None) -> None:
            i = missing[j]
            if reading is None:
                out[i] = {"error": "request failed after retries", "raw": None}
                return
            out[i] = reading
            if self.cache is not None:
                self.cache.put_many({keys[i]: reading}, self.method)
                batch_done(j + 1, f"the replies read so far are kept in {self.cache.path}")  # SIGTERM while labelling

        if missing:
            run_coroutine(self._readings([bodies[i] for i in missing], on_done))
        return out  # type: ignore[return-value]

    # -- Judge protocol -------------------------------------------------------------------------

    def compare(self, items: list[Comparison]) -> list[Verdict]:
        if self.method == "pointwise":
            return self._compare_pointwise(items)
        readings = self.readings(both_orders(items, self.pairwise_messages))
        verdicts = []
        for n, it in enumerate(items):
            ab, ba = readings[2 * n], readings[2 * n + 1]
            raw = {"ab": ab, "ba": ba}
            if "error" in ab or "error" in ba:
                failed = [name for name, r in (("AB", ab), ("BA", ba)) if "error" in r]
                verdicts.append(Verdict(None, None, None, it.principle.id, raw=raw,
                                        error=f"order {'+'.join(failed)}: {(ab if 'error' in ab else ba)['error']}"))
                continue
            p, s_ab, s_ba = combine_orders(ab["value"], ba["value"])
            verdicts.append(Verdict(p, s_ab, s_ba, it.principle.id, raw=raw))
        return verdicts

    def score(self, items: list[tuple[str, str, object]]) -> list[float | None]:
        """Expected 0..9 rating of each (prompt, response, principle); None when unreadable."""
        readings = self.readings([self.pointwise_messages(p, r, pr.text) for p, r, pr in items])
        return [r.get("value") if "error" not in r else None for r in readings]

    def _compare_pointwise(self, items: list[Comparison]) -> list[Verdict]:
        principles = {it.principle.id: it.principle for it in items}
        return compare_by_scores(items, lambda it, response: (it.prompt, response, it.principle.id),
                                 lambda units: self.score([(p, r, principles[pid]) for p, r, pid in units]),
                                 self.temperature)


def usage_json(judge) -> dict | None:
    """The API usage of a judge (or of an ensemble's API members), else None."""
    members = getattr(judge, "members", [judge])
    found = [m.usage.as_dict() for m in members if isinstance(getattr(m, "usage", None), Usage)]
    if not found:
        return None
    total = found[0]
    for other in found[1:]:
        for key in ("requests", "retries", "failed", "prompt_tokens", "completion_tokens", "cost_usd"):
            total[key] += other[key]
        for kind, count in other["errors"].items():
            total["errors"][kind] = total["errors"].get(kind, 0) + count
    return total
