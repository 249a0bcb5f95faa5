"""Judge agreement with labelled pairs, for every feedback method, on the reference data sets.

    .venv/bin/python bench/judge_agreement.py --limit 200 [--methods pairwise,contrastive] [-- overrides...]

Reads ../shared/data/hh_harmless_dev.jsonl (human labels, judged under the 'harmless' principle) and
../shared/data/alpacaeval_gpt4_pairs_dev.jsonl (GPT-4 labels, 'helpful' principle) when present, plus the
built-in calibration set, and prints a markdown table for docs/feedback.md. The shared data is not part
of the repository; without it only the built-in set is measured (and the script says so).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from openrlaif.config import load_config
from openrlaif.data.constitution import load_constitution
from openrlaif.evaluate.judge_eval import evaluate_judge, load_labelled_pairs
from openrlaif.feedback.factory import build_judge

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SETS = [
    ("builtin calibration", "builtin", None),
    ("builtin injection", "builtin:injection", None),
    ("hh_harmless_dev (human)", str(SHARED / "hh_harmless_dev.jsonl"), "harmless"),
    ("alpacaeval_gpt4_pairs_dev (GPT-4)", str(SHARED / "alpacaeval_gpt4_pairs_dev.jsonl"), "helpful"),
]
METHODS = {
    "pairwise": ["feedback.method=pairwise"],
    "contrastive": ["feedback.method=contrastive", "feedback.normalize=mean"],
    "contrastive-sum": ["feedback.method=contrastive", "feedback.normalize=sum"],
    "pointwise": ["feedback.method=pointwise"],
    "ensemble": ["feedback.method=ensemble", "feedback.members=[contrastive,pointwise]"],
    "ensemble-pc": ["feedback.method=ensemble", "feedback.members=[pairwise,contrastive]"],
    "cot": ["feedback.method=cot"],
    "contrastive-int8": ["feedback.method=contrastive", "model.judge_quantize=int8"],
    "pairwise-int8": ["feedback.method=pairwise", "model.judge_quantize=int8"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=200, help="pairs per external set (the first N)")
    ap.add_argument("--methods", default="pairwise,contrastive,contrastive-sum")
    ap.add_argument("--sets", default="all", help="comma list of: builtin,injection,hh,alpaca")
    ap.add_argument("--json", type=Path, help="write all rows to this JSON file")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    wanted = None if args.sets == "all" else set(args.sets.split(","))
    keys = {"builtin calibration": "builtin", "builtin injection": "injection", "hh_harmless_dev (human)": "hh",
            "alpacaeval_gpt4_pairs_dev (GPT-4)": "alpaca"}
    if not SHARED.is_dir():
        print(f"note: {SHARED} is absent; measuring the built-in calibration set only")
    rows = []
    for method in args.methods.split(","):
        cfg = load_config(None, METHODS[method] + args.overrides)
        judge, _ = build_judge(cfg, f"{method}")
        constitution = load_constitution(cfg.data.constitution)
        for title, spec, principle in SETS:
            if wanted and keys[title] not in wanted:
                continue
            if not spec.startswith("builtin") and not Path(spec).is_file():
                continue
            pairs = load_labelled_pairs(spec, None if spec.startswith("builtin") else args.limit)
            m = evaluate_judge(judge, pairs, constitution, principle, cfg.seed).metrics
            rows.append({**m, "set": title, "method": method, "judge_cache_hits": judge.cache.hits if judge.cache else None})
            print(json.dumps(rows[-1]), flush=True)
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}; "
          f"command: python bench/judge_agreement.py --limit {args.limit} --methods {args.methods} "
          f"--sets {args.sets} {' '.join(args.overrides)}\n")
    print("| set | method | n | agreement | position consistency | first-position rate | ECE | Brier | fitted T | pairs/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        fitted = f"{r['fitted_temperature']:.3f}" if "fitted_temperature" in r else "-"
        speed = f"{r['pairs_per_s']:.2f}" if not r["judge_cache_hits"] else "cached"
        print(f"| {r['set']} | {r['method']} | {r['n']} | {r['agreement']:.3f} | {r['position_consistency']:.3f} | "
              f"{r['first_position_rate']:.3f} | {r['ece']:.3f} | {r['brier']:.3f} | {fitted} | {speed} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
