"""Stage `generate`: sample N candidates per train prompt from the policy (best-of-N data).

Reads the train prompts named in the config, writes ``round_K/candidates.jsonl`` with one row per
prompt: ``{prompt_id, prompt, messages, candidates: [str, ...], finished: [bool, ...]}``.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Protocol

from openrlaif.config import RunConfig
from openrlaif.core.faults import kill_point
from openrlaif.core.store import RunStore, atomic_write_jsonl

Conversation = list[dict[str, str]]


@dataclass
class SamplingParams:
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 64
    batch_size: int = 32
    seed: int = 0


@dataclass
class SampleStats:
    sequences: int = 0
    new_tokens: int = 0
    seconds: float = 0.0
    finished: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0


class Sampler(Protocol):
    """Anything that turns conversations into n sampled assistant replies each."""

    def sample(self, prompts: list[Conversation], n: int, params: SamplingParams) -> list[list[str]]: ...


class HFSampler:
    """Batched sampling with transformers ``generate`` (left padding, sorted by length).

    After ``sample`` the attributes ``stats`` (tokens, seconds) and ``finished`` (whether each
    sample ended with the end-of-turn token rather than hitting ``max_new_tokens``) are set.
    """

    def __init__(self, model, tokenizer, description: str = "generate"):
        self.model = model
        self.tokenizer = tokenizer
        self.description = description
        self.stats = SampleStats()
        self.finished: list[list[bool]] = []
        self.progress = None  # an open progress bar to advance instead of opening one per call

    def sample(self, prompts: list[Conversation], n: int, params: SamplingParams) -> list[list[str]]:
        import torch

        from openrlaif.models.loading import chat_prompt, end_of_turn_id
        from openrlaif.core.progress import advance, bar

        tok = self.tokenizer
        stop_ids = sorted({end_of_turn_id(tok), tok.eos_token_id} - {None})
        encoded = [tok(chat_prompt(tok, conv), add_special_tokens=False).input_ids for conv in prompts]
        lengths = [len(ids) for ids in encoded]
        # Sequence j of prompt i sits at flat index i * n + j; decode longest prompts together.
        flat = [(i, j) for i in range(len(prompts)) for j in range(n)]
        order = sorted(range(len(flat)), key=lambda f: -lengths[flat[f][0]])
        outputs: list[list[str]] = [["" for _ in range(n)] for _ in prompts]
        finished: list[list[bool]] = [[False] * n for _ in prompts]
        stats = SampleStats(sequences=len(flat))
        torch.manual_seed(params.seed)
        tok.padding_side = "left"
        start = time.perf_counter()
        own = bar(self.description, len(flat), "tok") if self.progress is None else nullcontext(self.progress)
        with own as progress, torch.inference_mode():
            for b in range(0, len(order), params.batch_size):
                chunk = [flat[f] for f in order[b : b + params.batch_size]]
                enc = tok.pad({"input_ids": [encoded[i] for i, _ in chunk]}, return_tensors="pt")
                out = self.model.generate(
                    **enc,
                    do_sample=True,
                    temperature=params.temperature,
                    top_p=params.top_p,
                    top_k=0,
                    max_new_tokens=params.max_new_tokens,
                    eos_token_id=stop_ids,
                    pad_token_id=tok.pad_token_id,
                )
                new = out[:, enc["input_ids"].shape[1] :]
                for row, (i, j) in zip(new.tolist(), chunk):
                    ended = next((t for t, tid in enumerate(row) if tid in stop_ids), None)
                    kept = row if ended is None else row[:ended]
                    outputs[i][j] = tok.decode(kept, skip_special_tokens=True).strip()
                    finished[i][j] = ended is not None
                    stats.new_tokens += len(kept) + (1 if ended is not None else 0)
                    stats.finished += ended is not None
                stats.seconds = time.perf_counter() - start
                advance(progress, len(chunk), stats.tokens_per_s, "tok")
        self.stats = stats
        self.finished = finished
        return outputs


def continue_texts(model, tokenizer, texts: list[str], max_new_tokens: int, *, batch_size: int = 16,
                   description: str = "generate", cache=None, key_parts: tuple = ()) -> list[str]:
    """Greedy continuation of each raw text (a rendered chat prompt, maybe with a prefilled reply),
    stopping at the end of the turn; batched by length, and cached when ``cache`` is given.

    Used where the judge writes something itself: chain-of-thought rationales, critiques, revisions.
    """
    import torch

    from openrlaif.feedback.cache import cache_key, cached_compute
    from openrlaif.models.loading import end_of_turn_id
    from openrlaif.core.progress import advance, bar

    tok = tokenizer
    stop_ids = sorted({end_of_turn_id(tok), tok.eos_token_id} - {None})
    encoded = [tok(t, add_special_tokens=False).input_ids for t in texts]
    keys = ([cache_key(*key_parts, "greedy", max_new_tokens, ids) for ids in encoded] if cache is not None
            else [""] * len(texts))

    def compute(missing: list[int], on_batch) -> None:
        order = sorted(missing, key=lambda i: -len(encoded[i]))
        tok.padding_side = "left"
        start, tokens = time.perf_counter(), 0
        with bar(description, len(order), "tok") as progress, torch.inference_mode():
            for b in range(0, len(order), batch_size):
                idx = order[b : b + batch_size]
                enc = tok.pad({"input_ids": [encoded[i] for i in idx]}, return_tensors="pt")
                out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=stop_ids,
                                     pad_token_id=tok.pad_token_id)
                done = {}
                for row, i in zip(out[:, enc["input_ids"].shape[1]:].tolist(), idx):
                    ended = next((t for t, tid in enumerate(row) if tid in stop_ids), None)
                    kept = row if ended is None else row[:ended]
                    tokens += len(kept)
                    done[i] = tok.decode(kept, skip_special_tokens=True)
                on_batch(done)
                advance(progress, len(idx), tokens / max(time.perf_counter() - start, 1e-9), "tok")

    return cached_compute(cache, keys, compute, str(key_parts[1]) if len(key_parts) > 1 else "generate")


def run(cfg: RunConfig, store: RunStore, k: int = 1) -> dict:
    """Sample ``generate.n`` candidates for every train prompt and write candidates.jsonl.

    Prompts are sampled in chunks, each with its own seed; every finished chunk is appended (and synced) to
    ``candidates.jsonl.partial``, so a killed run continues after the last finished chunk and samples
    exactly what an uninterrupted run would have."""
    from openrlaif.models.accel import config_fingerprint
    from openrlaif.core.progress import bar
    from openrlaif.data.prompts import load_prompts, select
    from openrlaif.sampling.remote import build_sampler
    from openrlaif.core.store import PartialLog

    # 1. The train prompts, in chunks of about one sampling batch.
    prompts = select(load_prompts(cfg.data.prompts, cfg.data.heldout_fraction), "train", cfg.data.max_train_prompts)
    per_chunk = max(1, cfg.generate.batch_size // cfg.generate.n)
    chunks = [prompts[i : i + per_chunk] for i in range(0, len(prompts), per_chunk)]
    # 2. What an interrupted run already sampled (same config, same round).
    log = PartialLog(store.path("candidates.jsonl.partial", k), f"{config_fingerprint(cfg)}:{k}")
    done = log.records()
    totals = SampleStats()
    for record in done:
        totals = _add(totals, SampleStats(**record["stats"]))
    # 3. The policy that samples this round (round 1: the starting policy; round k: round k-1's policy).
    if len(done) < len(chunks):
        sampler = build_sampler(cfg, store, k)  # generate.backend: hf (in process), vllm, or an OpenAI-compatible server
        # 4. Sample N candidates per prompt, chunk by chunk (RLCD: half under the positive, half under the
        # negative system prompt), appending each finished chunk.
        remaining = sum(len(c) for c in chunks[len(done):]) * cfg.generate.n
        with bar("generate", remaining, "tok") as progress:
            sampler.progress = progress
            for c in range(len(done), len(chunks)):
                params = SamplingParams(cfg.generate.temperature, cfg.generate.top_p, cfg.generate.max_new_tokens,
                                        cfg.generate.batch_size, cfg.seed + 1000 * k + 7919 * c)
                rows, stats = sample_chunk(cfg, sampler, chunks[c], params, k)
                log.append({"chunk": c, "rows": rows, "stats": vars(stats)})
                kill_point("generate.chunk")
                totals = _add(totals, stats)
    # 5. Write one row per prompt, then drop the partial log.
    rows = [row for record in log.records() for row in record["rows"]]
    atomic_write_jsonl(store.path("candidates.jsonl", k), rows)
    log.remove()
    return {
        "prompts": len(prompts),
        "sequences": totals.sequences,
        "new_tokens": totals.new_tokens,
        "tokens_per_s": round(totals.tokens_per_s, 2),
        "finished_rate": round(totals.finished / max(totals.sequences, 1), 3),
        "resumed_chunks": len(done),
    }


def _add(a: SampleStats, b: SampleStats) -> SampleStats:
    return SampleStats(a.sequences + b.sequences, a.new_tokens + b.new_tokens, a.seconds + b.seconds,
                       a.finished + b.finished)


def sample_chunk(cfg: RunConfig, sampler: Sampler, prompts, params: SamplingParams, k: int):
    """Candidate rows for some prompts, and the sampling statistics."""
    if cfg.generate.mode == "rlcd":
        return sample_rlcd(cfg, sampler, prompts, params, k)
    candidates = sampler.sample([p.messages for p in prompts], cfg.generate.n, params)
    rows = [
        {"prompt_id": p.id, "prompt": p.text, "messages": p.messages, "candidates": cands, "finished": fin}
        for p, cands, fin in zip(prompts, candidates, sampler.finished)
    ]
    return rows, sampler.stats


def sample_rlcd(cfg: RunConfig, sampler: Sampler, prompts, params: SamplingParams, k: int):
    """RLCD sampling: per prompt a principle is drawn; n//2 candidates come from the policy under the
    principle's positive system prompt and n - n//2 under its negative one. The rows keep the
    original conversation (no system prompt) and record each candidate's condition."""
    import random

    from openrlaif.data.constitution import load_constitution
    from openrlaif.feedback.methods import with_system

    constitution = load_constitution(cfg.data.constitution)
    principles = [constitution.sample(random.Random(f"{cfg.seed}:{k}:{p.id}:rlcd")) for p in prompts]
    n_pos = cfg.generate.n // 2
    n_neg = cfg.generate.n - n_pos
    pos = sampler.sample([with_system(p.messages, pr.positive_prompt) for p, pr in zip(prompts, principles)], n_pos, params)
    pos_done, pos_stats = sampler.finished, sampler.stats
    neg_params = SamplingParams(params.temperature, params.top_p, params.max_new_tokens, params.batch_size, params.seed + 1)
    neg = sampler.sample([with_system(p.messages, pr.negative_prompt) for p, pr in zip(prompts, principles)], n_neg, neg_params)
    rows = [
        {"prompt_id": p.id, "prompt": p.text, "messages": p.messages, "candidates": a + b, "finished": fa + fb,
         "conditions": ["positive"] * n_pos + ["negative"] * n_neg, "principle": pr.id}
        for p, pr, a, b, fa, fb in zip(prompts, principles, pos, neg, pos_done, sampler.finished)
    ]
    s = sampler.stats
    total = SampleStats(pos_stats.sequences + s.sequences, pos_stats.new_tokens + s.new_tokens,
                        pos_stats.seconds + s.seconds, pos_stats.finished + s.finished)
    return rows, total
