"""Summed reply log-probs of replies that share a prompt: forked rows vs the prompt's KV cache vs every sequence whole.

    .venv/bin/python bench/prefix_logprobs.py [--repeats 3] [--pairs 40] [--hh 30]

Two workloads, each read by ``models.logprobs.shared_prefix_logprobs`` with forks (a prompt's replies in one row
where ``fork_batches`` finds it pays: what it does now), with forks off (every prefix on its KV cache: what it did
before), and by ``batched_response_logprobs`` (no sharing), interleaved, batch 8:
- the contrastive judge's sequences: ``--pairs`` built-in calibration pairs, each reply under its principle's
  positive and negative system prompt (2 replies a prefix), on the embedded judge as label runs it (float32
  weights, bf16 autocast where the processor has it natively);
- eval's human_prefs yardstick: ``--hh`` of people's HH-RLHF pairs (``../shared/data/hh_harmless_dev.jsonl`` from
  line 701; skipped, and said so, when absent) in float32, as eval scores them.
Prints the median seconds of each way and the largest difference from the forked sums. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from importlib import resources
from pathlib import Path

import torch

HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh_harmless_dev.jsonl"


def compare(name: str, model, seqs: list, pad: int, repeats: int) -> None:
    import openrlaif.models.logprobs as lp

    forks = lp.forks_supported
    ways = {
        "forked rows where they pay": lambda: lp.shared_prefix_logprobs(model, seqs, pad, 8, "forked"),
        "every prefix on its KV cache": lambda: lp.shared_prefix_logprobs(model, seqs, pad, 8, "cache"),
        "every sequence whole": lambda: lp.batched_response_logprobs(model, seqs, pad, 8, "whole")[0],
    }
    times: dict[str, list[float]] = {k: [] for k in ways}
    sums = {}
    for _ in range(repeats):
        for way, run in ways.items():
            lp.forks_supported = forks if way.startswith("forked") else (lambda m: False)
            t0 = time.perf_counter()
            with torch.inference_mode():
                sums[way] = run()
            times[way].append(time.perf_counter() - t0)
    lp.forks_supported = forks
    lengths = [len(s.input_ids) for s in seqs]
    print(f"\n{name}: {len(seqs)} sequences, mean {statistics.mean(lengths):.0f} tokens (max {max(lengths)}), "
          f"mean reply {statistics.mean(sum(s.response_mask) for s in seqs):.0f}")
    first = sums["forked rows where they pay"]
    for way, values in times.items():
        diff = max(abs(a - b) for a, b in zip(first, sums[way]))
        print(f"  {way}: median {statistics.median(values):.2f} s ({', '.join(f'{v:.2f}' for v in values)}); "
              f"largest difference from forked {diff:.2e} nats")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=40, help="calibration pairs for the contrastive workload")
    ap.add_argument("--hh", type=int, default=30, help="people's HH pairs for the human_prefs workload (0: skip)")
    args = ap.parse_args()

    from openrlaif.core.text import normalize_candidate, with_system
    from openrlaif.data.constitution import load_constitution
    from openrlaif.models.loading import autocast_matmuls, load_causal_lm, native_bf16, set_threads
    from openrlaif.models.logprobs import encode_response

    set_threads(2)
    print(f"torch {torch.__version__}, 2 threads, judge {'bf16 autocast' if native_bf16() else 'float32'}")
    judge = load_causal_lm("embedded", "float32")
    for p in judge.model.parameters():
        p.requires_grad_(False)
    if native_bf16():
        autocast_matmuls(judge.model)
    constitution = load_constitution("builtin")
    rows = [json.loads(line) for line in
            resources.files("openrlaif.data").joinpath("calibration_pairs.jsonl").read_text().splitlines() if line]
    seqs = []
    for i, row in enumerate(rows[: args.pairs]):
        principle = constitution.sample(random.Random(i))
        for system in (principle.positive_prompt, principle.negative_prompt):
            conv = with_system([{"role": "user", "content": row["prompt"]}], system)
            seqs += [encode_response(judge.tokenizer, conv, normalize_candidate(r), 384)
                     for r in (row["chosen"], row["rejected"])]
    compare("contrastive judge on calibration pairs", judge.model.eval(), seqs, judge.tokenizer.pad_token_id,
            args.repeats)
    del judge
    if args.hh:
        if not HH.is_file():
            print(f"\n{HH} is absent: the human_prefs workload is skipped")
            return
        from openrlaif.data.pairs import load_labelled_pairs

        policy = load_causal_lm("embedded", "float32")
        pairs = load_labelled_pairs(str(HH), field="--hh")[700 : 700 + args.hh]
        seqs = [encode_response(policy.tokenizer, p.messages, r, 1024) for p in pairs for r in (p.chosen, p.rejected)]
        compare("human_prefs: people's HH pairs, float32", policy.model.eval(), seqs, policy.tokenizer.pad_token_id,
                args.repeats)


if __name__ == "__main__":
    main()
