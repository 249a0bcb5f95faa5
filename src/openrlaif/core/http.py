"""One retry policy for every OpenAI-compatible endpoint we call (the API judge and the API sampler).

A POST is retried on 408/409/425/429/5xx, timeouts, dropped connections and bodies that are not the JSON
the caller expects, with exponential backoff and full jitter, honouring the server's ``Retry-After``
(capped). Any other 4xx is a mistake on our side (a wrong model name, a bad key) and becomes one
``UserError`` line at once. Every attempt is counted in an :class:`Attempts`, so a run can report what
the endpoint cost it in requests, retries and failures by kind.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from openrlaif.core.errors import UserError

RETRY_STATUSES = {408, 409, 425, 429, 500, 502, 503, 504}


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random, retry_after: float | None = None) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): the server's Retry-After when given (capped),
    else 'full jitter' — uniform in [0, min(cap, base * 2**attempt)]."""
    if retry_after is not None:
        return max(0.0, min(cap, retry_after))
    return rng.uniform(0.0, min(cap, base * (2 ** attempt)))


def retry_after_seconds(headers) -> float | None:
    """The ``Retry-After`` header in seconds, or None when absent or not a number."""
    value = headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


@dataclass
class RetryPolicy:
    """How often and how patiently to retry: ``max_retries`` after the first attempt, waits drawn by
    :func:`backoff_delay` from ``backoff_base_s`` up to ``backoff_cap_s``."""

    max_retries: int = 6
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    rng: random.Random = field(default_factory=lambda: random.Random(0))


@dataclass
class Attempts:
    """What an endpoint cost: requests sent, retries, requests that failed every attempt, errors by kind."""

    requests: int = 0
    retries: int = 0
    failed: int = 0
    errors: Counter = field(default_factory=Counter)


class RateLimiter:
    """At most ``rate`` request starts per second (evenly spaced); None = unlimited."""

    def __init__(self, rate: float | None):
        self.interval = 1.0 / rate if rate else 0.0
        self.next_start = 0.0
        self.lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self.lock:
            now = time.monotonic()
            start = max(now, self.next_start)
            self.next_start = start + self.interval
        if start > now:
            await asyncio.sleep(start - now)


class RetryableResponse(Exception):
    """An answer worth asking again for (``kind`` names it in :attr:`Attempts.errors`)."""

    def __init__(self, kind: str, retry_after: float | None = None):
        super().__init__(kind)
        self.kind = kind
        self.retry_after = retry_after


async def post_json(client, url: str, body: dict, *, headers: dict, policy: RetryPolicy, attempts: Attempts,
                    accept: Callable[[object], bool], refused: Callable[[int, str], str],
                    limiter: RateLimiter | None = None) -> dict | None:
    """POST ``body`` to ``url`` with ``policy``'s retries; the parsed JSON, or None when every attempt failed.

    ``accept(data)`` says whether a parsed body is usable (else it is retried as 'malformed_body');
    ``refused(status, text)`` words the one-line error for a non-retryable 4xx/5xx answer."""
    import httpx

    for attempt in range(policy.max_retries + 1):
        if limiter is not None:
            await limiter.wait()
        attempts.requests += 1
        try:
            r = await client.post(url, json=body, headers=headers)
            if r.status_code in RETRY_STATUSES:
                raise RetryableResponse(f"http_{r.status_code}", retry_after_seconds(r.headers))
            if r.status_code >= 400:
                raise UserError(refused(r.status_code, r.text[:200]))
            try:
                data = r.json()
            except ValueError:
                raise RetryableResponse("malformed_body") from None
            if not accept(data):
                raise RetryableResponse("malformed_body")
            return data
        except httpx.TimeoutException:
            kind, retry_after = "timeout", None
        except httpx.TransportError:
            kind, retry_after = "connection", None
        except RetryableResponse as err:
            kind, retry_after = err.kind, err.retry_after
        attempts.errors[kind] += 1
        if attempt == policy.max_retries:
            break
        attempts.retries += 1
        await asyncio.sleep(backoff_delay(attempt, policy.backoff_base_s, policy.backoff_cap_s, policy.rng, retry_after))
    attempts.failed += 1
    return None


def has_choices(data) -> bool:
    """A chat-completions body: a dict whose ``choices`` is a non-empty list."""
    return isinstance(data, dict) and isinstance(data.get("choices"), list) and len(data["choices"]) > 0


def bearer(api_key: str | None) -> dict:
    """The Authorization header for ``api_key`` (none without a key)."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def run_coroutine(coro):
    """Run ``coro`` to completion, also from code that is already inside an event loop (notebooks)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    result: dict = {}

    def target() -> None:
        try:
            result["value"] = asyncio.run(coro)
        except BaseException as err:  # re-raised in the caller's thread
            result["error"] = err

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps a server on this machine: 'localhost' or a loopback address (127.0.0.0/8,
    ::1). Anything else — 0.0.0.0, ::, a LAN address, another host name — is reachable from the network."""
    import ipaddress

    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def require_secret_off_loopback(host: str, secret: str | None, option: str) -> None:
    """A server bound beyond loopback must check a secret the operator chose (from the environment); else a
    one-line error naming ``option`` (the flag that supplies it) before anything loads."""
    from openrlaif.core.errors import UserError

    if not is_loopback(host) and not secret:
        raise UserError(f"--host {host}: reachable from the network, so it needs a secret from the environment: "
                        f"give {option} VAR (export VAR first), or bind --host 127.0.0.1")
