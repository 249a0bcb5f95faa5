"""Samplers beyond transformers ``generate``: vLLM's offline engine (GPUs) and any OpenAI-compatible server.

Selected with ``generate.backend``:

- ``hf`` (default): :class:`openrlaif.generate.HFSampler`, in process, CPU or GPU.
- ``vllm``: :class:`VLLMSampler`, vLLM's offline ``LLM`` engine in this process (needs a GPU and
  ``pip install vllm``). From round 2 the previous round's LoRA adapter is passed as a ``LoRARequest``.
- ``openai``: :class:`OpenAICompatibleSampler`, ``POST /v1/chat/completions`` with ``n`` samples per prompt to a
  server that is already running (``vllm serve``, TGI, llama.cpp server, `rlaif serve`). From round 2 the
  previous round's adapter is registered with the server through vLLM's ``/v1/load_lora_adapter`` (vLLM needs
  ``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``; the adapter path must be readable by the
  server) and sampled by its name.

All return, like ``HFSampler``, the texts per prompt and set ``finished`` (ended on its own rather than at
max_new_tokens) and ``stats``.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

from openrlaif.core.errors import UserError
from openrlaif.core.http import Attempts, RetryPolicy, bearer, has_choices, post_json, run_coroutine
from openrlaif.sampling.types import Conversation, SampleStats, SamplingParams


class VLLMSampler:
    """vLLM's offline engine. ``adapter`` (a peft LoRA directory) is applied to every request when given."""

    def __init__(self, model_path: str, *, adapter: Path | None = None, adapter_id: int = 1, dtype: str = "auto",
                 gpu_memory_utilization: float = 0.85, tensor_parallel_size: int = 1, max_lora_rank: int = 64,
                 max_model_len: int | None = None, seed: int = 0):
        try:
            import vllm
        except ImportError:
            raise UserError("generate.backend=vllm needs vLLM: pip install vllm (a CUDA GPU is required)") from None
        self.vllm = vllm
        self.llm = vllm.LLM(model=str(model_path), dtype=dtype, seed=seed, enable_lora=adapter is not None,
                            max_lora_rank=max_lora_rank, gpu_memory_utilization=gpu_memory_utilization,
                            tensor_parallel_size=tensor_parallel_size, max_model_len=max_model_len)
        self.lora = None
        if adapter is not None:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest(f"policy-{adapter_id}", adapter_id, str(adapter))
        self.stats = SampleStats()
        self.finished: list[list[bool]] = []
        self.progress = None

    def sample(self, prompts: list[Conversation], n: int, params: SamplingParams) -> list[list[str]]:
        sp = self.vllm.SamplingParams(n=n, temperature=params.temperature, top_p=params.top_p,
                                      max_tokens=params.max_new_tokens, seed=params.seed)
        start = time.perf_counter()
        results = self.llm.chat(messages=prompts, sampling_params=sp, lora_request=self.lora,
                                use_tqdm=self.progress is None)
        outputs, finished, stats = [], [], SampleStats(sequences=len(prompts) * n)
        for result in results:
            outputs.append([o.text.strip() for o in result.outputs])
            finished.append([o.finish_reason == "stop" for o in result.outputs])
            stats.new_tokens += sum(len(o.token_ids) for o in result.outputs)
            stats.finished += sum(finished[-1])
        stats.seconds = time.perf_counter() - start
        if self.progress is not None:
            from openrlaif.core.progress import advance

            advance(self.progress, stats.sequences, stats.tokens_per_s, "tok")
        self.stats, self.finished = stats, finished
        return outputs


class OpenAICompatibleSampler:
    """n samples per prompt from an OpenAI-compatible chat-completions server, ``concurrency`` requests in
    flight, retried with the judge's policy (``core.http``: 429 / 5xx / timeouts / broken connections /
    unreadable bodies, exponential backoff with full jitter, Retry-After honoured up to ``backoff_cap_s``)."""

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, concurrency: int = 8,
                 timeout_s: float = 120.0, max_retries: int = 4, backoff_base_s: float = 0.5,
                 backoff_cap_s: float = 8.0, seed: int = 0):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.retry = RetryPolicy(max_retries, backoff_base_s, backoff_cap_s, random.Random(seed))
        self.attempts = Attempts()
        self.stats = SampleStats()
        self.finished: list[list[bool]] = []
        self.progress = None

    def headers(self) -> dict:
        return bearer(self.api_key)

    def load_adapter(self, name: str, path: Path) -> None:
        """Register a LoRA adapter with the server under ``name`` (vLLM's runtime LoRA endpoint)."""
        import httpx

        root = self.base_url[: -len("/v1")] if self.base_url.endswith("/v1") else self.base_url
        try:
            r = httpx.post(f"{root}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)},
                           headers=self.headers(), timeout=self.timeout_s)
        except httpx.HTTPError as err:
            raise UserError(f"generate.api.base_url: cannot register the adapter {path} with {root} ({err})") from None
        if r.status_code >= 400 and "already" not in r.text.lower():
            raise UserError(f"generate.api: {root} refused to load the LoRA adapter {path} (HTTP {r.status_code}: "
                            f"{r.text[:200]}); start vLLM with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, "
                            "or set generate.api.load_adapters=false and serve the adapter yourself")
        self.model = name

    def sample(self, prompts: list[Conversation], n: int, params: SamplingParams) -> list[list[str]]:
        start = time.perf_counter()
        results: list[dict | None] = [None] * len(prompts)
        run_coroutine(self._all(prompts, n, params, results))
        outputs, finished, stats = [], [], SampleStats(sequences=len(prompts) * n)
        for i, data in enumerate(results):
            if data is None:
                raise UserError(f"generate.api: {self.base_url} failed prompt {i + 1} of {len(prompts)} after "
                                f"{self.retry.max_retries} retries; check the server (finished chunks are kept: rerun to resume)")
            choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
            if len(choices) != n:
                raise UserError(f"generate.api: {self.base_url} returned {len(choices)} samples for n={n}; the "
                                "server must support the 'n' parameter")
            outputs.append([(c["message"].get("content") or "").strip() for c in choices])
            finished.append([c.get("finish_reason") == "stop" for c in choices])
            stats.new_tokens += int((data.get("usage") or {}).get("completion_tokens") or 0)
            stats.finished += sum(finished[-1])
        stats.seconds = time.perf_counter() - start
        self.stats, self.finished = stats, finished
        return outputs

    async def _all(self, prompts, n, params: SamplingParams, results: list) -> None:
        import httpx

        from openrlaif.core.progress import advance

        semaphore = asyncio.Semaphore(self.concurrency)
        start, done = time.perf_counter(), 0
        async with httpx.AsyncClient(timeout=self.timeout_s) as client:

            async def one(i: int) -> None:
                nonlocal done
                body = {"model": self.model, "messages": prompts[i], "n": n, "temperature": params.temperature,
                        "top_p": params.top_p, "max_tokens": params.max_new_tokens, "seed": params.seed + i}
                async with semaphore:
                    results[i] = await self._post(client, body)
                done += 1
                if self.progress is not None:
                    advance(self.progress, n, done * n / max(time.perf_counter() - start, 1e-9), "tok")

            await asyncio.gather(*(one(i) for i in range(len(prompts))))

    async def _post(self, client, body: dict) -> dict | None:
        return await post_json(
            client, f"{self.base_url}/chat/completions", body, headers=self.headers(), policy=self.retry,
            attempts=self.attempts, accept=has_choices,
            refused=lambda status, text: (f"generate.api: {self.base_url} answered HTTP {status}: {text}; "
                                          "check generate.api.model and the key"))
