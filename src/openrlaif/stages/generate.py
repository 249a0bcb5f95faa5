"""Stage `generate`: sample N candidates per train prompt from the policy (best-of-N data).

Reads the train prompts named in the config, writes ``round_K/candidates.jsonl`` with one row per
prompt: ``{prompt_id, prompt, messages, candidates: [str, ...], finished: [bool, ...]}``.
"""

from __future__ import annotations

from openrlaif.config import RunConfig
from openrlaif.core.faults import kill_point
from openrlaif.core.store import RunStore, atomic_write_jsonl
from openrlaif.sampling.types import Sampler, SampleStats, SamplingParams


def run(cfg: RunConfig, store: RunStore, k: int = 1) -> dict:
    """Sample ``generate.n`` candidates for every train prompt and write candidates.jsonl.

    Prompts are sampled in chunks, each with its own seed; every finished chunk is appended (and synced) to
    ``candidates.jsonl.partial``, so a killed run continues after the last finished chunk and samples
    exactly what an uninterrupted run would have."""
    from openrlaif.core.preempt import stop_here
    from openrlaif.core.progress import bar
    from openrlaif.core.store import PartialLog
    from openrlaif.data.prompts import run_prompts
    from openrlaif.models.accel import config_fingerprint
    from openrlaif.sampling.factory import build_sampler

    # 1. The train prompts, in chunks of about one sampling batch.
    prompts = run_prompts(cfg.data, "train", cfg.data.max_train_prompts)
    per_chunk = max(1, cfg.generate.batch_size // cfg.generate.n)
    chunks = [prompts[i : i + per_chunk] for i in range(0, len(prompts), per_chunk)]
    # 2. What an interrupted run already sampled (same config, same round).
    log = PartialLog(store.path("candidates.jsonl.partial", k), f"{config_fingerprint(cfg)}:{k}")
    done = log.records()
    totals = SampleStats()
    for record in done:
        totals = _add(totals, SampleStats(**record["stats"]))
    # 3. The policy that samples this round (round 1: the starting policy; round k: round k-1's policy).
    lanes = None  # decoding loops of an in-process sampler (generate.lanes resolved), for the summary
    if len(done) < len(chunks):
        sampler = build_sampler(cfg, store, k)  # generate.backend: hf (in process), vllm, or an OpenAI-compatible server
        lanes = getattr(sampler, "lanes", None)
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
                if c + 1 < len(chunks):  # SIGTERM/SIGINT: stop here, the finished chunks are kept
                    stop_here(c + 1, "chunk", f"{c + 1} of {len(chunks)} chunks are kept in {log.path.name}")
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
        "decoding_lanes": lanes,
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

    from openrlaif.core.text import with_system
    from openrlaif.data.constitution import load_constitution

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
