"""Benchmark one RLAIF round: each stage's wall time, throughput, peak memory and the result.

    .venv/bin/python bench/round.py -c configs/default.yaml -o runs/bench-default

Runs (or resumes) the round, then prints a markdown table for docs/benchmarks.md. Peak memory is the
resident set of the process when the stage finished (a running maximum over the round).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import openrlaif
from openrlaif.core.store import RunStore


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--config", default="configs/default.yaml")
    ap.add_argument("-o", "--out", default="runs/bench-default")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    t0 = time.perf_counter()
    openrlaif.run(args.config, out=args.out, overrides=args.overrides)
    total = time.perf_counter() - t0
    store = RunStore(args.out)
    st = {s: store.stage_status(s) for s in ("generate", "label", "train", "eval")}
    js = json.loads(store.path("judge_stats.json").read_text())
    ev = json.loads(store.path("eval.json").read_text())
    g, t = st["generate"]["summary"], st["train"]["summary"]
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}; "
          f"command: python bench/round.py -c {args.config} -o {args.out} {' '.join(args.overrides)}\n")
    print("| stage | wall (s) | throughput | peak RSS (MB) |\n|---|---|---|---|")
    print(f"| generate | {st['generate']['wall_s']} | {g['tokens_per_s']} tok/s ({g['new_tokens']} tokens, "
          f"{g['sequences']} sequences) | {st['generate']['peak_rss_mb']} |")
    print(f"| label | {st['label']['wall_s']} | {js['comparisons_per_s']} pairs/s judged in both orders "
          f"({js['comparisons']} pairs) | {st['label']['peak_rss_mb']} |")
    print(f"| train (DPO+LoRA) | {st['train']['wall_s']} | {t['pairs_per_s']} pairs/s ({t['pairs']} pairs x epochs) "
          f"| {st['train']['peak_rss_mb']} |")
    print(f"| eval | {st['eval']['wall_s']} | {ev['generation_tokens_per_s']} tok/s sampling | {st['eval']['peak_rss_mb']} |")
    print(f"| **total** (this call) | {total:.1f} | | |")
    lo, hi = ev["ci95"]
    print(f"\nwin rate {ev['win_rate']:.3f} (95% CI {lo:.3f}-{hi:.3f}, n={ev['n']}; {ev['wins']} W / {ev['ties']} T / "
          f"{ev['losses']} L); mean P(trained better) {ev['mean_p_trained_better']}; mean length tokens "
          f"trained {ev['mean_length_tokens']['trained']} vs start {ev['mean_length_tokens']['start']}")
    print(f"label judge: position consistency {js['position_consistency']:.3f}, first-position rate "
          f"{js['first_position_rate']:.3f}, mean confidence {js['mean_confidence']:.3f}")
    pe = ev["judge_position_stats"]
    print(f"eval judge: position consistency {pe['position_consistency']:.3f}, first-position rate {pe['first_position_rate']:.3f}")
    print(f"DPO: loss {t['first_loss']} -> {t['final_loss']}, implicit reward accuracy {t['final_reward_accuracy']}")


if __name__ == "__main__":
    main()
