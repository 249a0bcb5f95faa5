"""Eval's KL(trained || start) on one finished run, four ways: which tokens are scored and who computes the
trained policy's log-probs.

    .venv/bin/python bench/kl_estimate.py RUN_DIR [--round 1]

RUN_DIR is a run whose eval finished (e.g. one left by ``bench/round_vs_peer.py``, or ``rlaif run -c
configs/quick.yaml -o runs/x ...``). Its held-out prompts are answered again by the trained policy's merged bf16
copy with the eval's seed and sampling settings (the same answers eval wrote), then:
- bf16, decoding steps: the trained log-probs recorded while sampling, the start's from one pass over the drawn
  tokens (what eval does since 2026-12-06);
- bf16, forward pass: both from a pass over the drawn tokens;
- float32, drawn tokens: both policies' float32 copies over the drawn tokens (the reference);
- float32, re-encoded text + end-of-turn: the answers re-encoded from their text with an end-of-turn token appended,
  also to answers cut at eval.max_new_tokens (what eval did before).
Also prints how many answers were cut and the largest per-answer gap between the bf16 decoding-step and forward
sums. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--round", type=int, default=1)
    args = ap.parse_args()

    from openrlaif.config import load_config
    from openrlaif.core.store import RunStore
    from openrlaif.data.prompts import run_prompts
    from openrlaif.models.loading import set_threads
    from openrlaif.models.policy import load_merged
    from openrlaif.sampling.hf import HFSampler
    from openrlaif.sampling.types import SamplingParams
    from openrlaif.stages.evaluate import answer_logprobs, drawn_sequences, kl_sequences, mean_difference

    cfg = load_config(args.run_dir / "config.resolved.yaml", [])
    store, ec, k = RunStore(args.run_dir), cfg.eval, args.round
    set_threads(cfg.model.threads)
    convs = [p.messages for p in run_prompts(cfg.data, "heldout", cfg.data.max_eval_prompts)
             for _ in range(ec.samples_per_prompt)]
    params = SamplingParams(ec.temperature, ec.top_p, ec.max_new_tokens, ec.batch_size, cfg.seed + 7 + 1000 * k)
    models = {(who, dtype): load_merged(cfg, store.path("policy", k) if who == "trained" else None, dtype, frozen=True)
              for who in ("trained", "start") for dtype in ("bfloat16", "float32")}
    tok = models["trained", "bfloat16"].tokenizer
    sampler = HFSampler(models["trained", "bfloat16"].model, tok, row_seeds=True, record_logprobs=True)
    answers = [a[0] for a in sampler.sample(convs, 1, params)]
    recorded = [lp[0] for lp in sampler.logprobs]
    drawn = drawn_sequences(tok, convs, [t[0] for t in sampler.tokens])
    text = kl_sequences(tok, convs, answers)

    def scores(who: str, dtype: str, seqs) -> list[float]:
        return answer_logprobs(models[who, dtype].model, tok, seqs, ec.batch_size, f"{who} {dtype}")

    forward = scores("trained", "bfloat16", drawn)
    start_bf16 = scores("start", "bfloat16", drawn)
    print(f"{len(convs)} held-out answers, {sum(not f[0] for f in sampler.finished)} cut at {ec.max_new_tokens} tokens")
    print(f"KL bf16, decoding steps:            {mean_difference(recorded, start_bf16):.4f}")
    print(f"KL bf16, forward pass:              {mean_difference(forward, start_bf16):.4f}")
    print(f"KL float32, drawn tokens:           "
          f"{mean_difference(scores('trained', 'float32', drawn), scores('start', 'float32', drawn)):.4f}")
    print(f"KL float32, text + end-of-turn:     "
          f"{mean_difference(scores('trained', 'float32', text), scores('start', 'float32', text)):.4f}")
    print(f"largest |decoding steps - forward| per answer (bf16): "
          f"{max(abs(a - b) for a, b in zip(recorded, forward)):.3f} nats")


if __name__ == "__main__":
    main()
