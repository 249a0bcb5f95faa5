"""Judge agreement with labelled pairs, for every feedback method, on the reference data sets.

    .venv/bin/python bench/judge_agreement.py --limit 200 [--methods pairwise,contrastive] [--skip-hh 700
                                              --skip-alpaca 280] [-- overrides...]

``--skip-hh`` / ``--skip-alpaca`` start each external set after that many pairs: the shipped fitted heads
were fitted on the first 700 HH and 280 AlpacaEval pairs (bench/ship_heads.py), so every method is
compared on the part those heads never saw. For an injection set, per-attack-kind flip rates follow.

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
from openrlaif.data.pairs import load_labelled_pairs
from openrlaif.evaluate.judge_eval import evaluate_judge
from openrlaif.feedback.factory import build_detector, build_judge

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
    # the shipped heads (harmless, helpful) with the contrastive judge for other principles: the default
    "fitted": ["feedback.method=fitted", "feedback.heads=builtin", "feedback.any_head=false"],
    # the same heads, and the _any head (fitted on both sets) for every other principle
    "fitted-any": ["feedback.method=fitted", "feedback.heads=builtin", "feedback.any_head=true"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=200, help="pairs per external set (the first N)")
    ap.add_argument("--methods", default="pairwise,contrastive,contrastive-sum")
    ap.add_argument("--sets", default="all", help="comma list of: builtin,injection,hh,alpaca")
    ap.add_argument("--json", type=Path, help="write all rows to this JSON file")
    ap.add_argument("--skip-hh", type=int, default=0, help="start the HH set after this many pairs")
    ap.add_argument("--skip-alpaca", type=int, default=0, help="start the AlpacaEval set after this many pairs")
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
            skip = {"hh": args.skip_hh, "alpaca": args.skip_alpaca}.get(keys[title], 0)
            pairs = load_labelled_pairs(spec)
            if not spec.startswith("builtin"):
                pairs = pairs[skip : skip + args.limit]
            detector = build_detector(cfg, judge) if any(p.kind for p in pairs) else None
            m = evaluate_judge(judge, pairs, constitution, principle, cfg.seed, detector).metrics
            rows.append({**m, "set": title, "method": method, "judge_cache_hits": judge.cache.hits if judge.cache else None})
            print(json.dumps(rows[-1]), flush=True)
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}; "
          f"command: python bench/judge_agreement.py --limit {args.limit} --methods {args.methods} "
          f"--sets {args.sets} --skip-hh {args.skip_hh} --skip-alpaca {args.skip_alpaca} "
          f"{' '.join(args.overrides)}\n")
    print("| set | method | n | agreement | position consistency | first-position rate | ECE | Brier | fitted T | pairs/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        fitted = f"{r['fitted_temperature']:.3f}" if "fitted_temperature" in r else "-"
        speed = f"{r['pairs_per_s']:.2f}" if not r["judge_cache_hits"] else "cached"
        print(f"| {r['set']} | {r['method']} | {r['n']} | {r['agreement']:.3f} | {r['position_consistency']:.3f} | "
              f"{r['first_position_rate']:.3f} | {r['ece']:.3f} | {r['brier']:.3f} | {fitted} | {speed} |")
    print("\nBias profile (the same pairs): trivial baselines and what the judge leans on\n")
    print("| set | method | agreement | longer wins | shorter wins | P(prefer longer) | P(prefer first) | "
          "agreement when winner shorter / longer |")
    print("|---|---|---|---|---|---|---|---|")

    def f(x):
        return "–" if x is None else f"{x:.3f}"

    for r in rows:
        b = r["bias"]
        print(f"| {r['set']} | {r['method']} | {r['agreement']:.3f} | {f(b['longer_wins_agreement'])} | "
              f"{f(b['shorter_wins_agreement'])} | {f(b['p_prefer_longer'])} | {f(b['p_prefer_first'])} | "
              f"{f(b['agreement_when_winner_shorter'])} / {f(b['agreement_when_winner_longer'])} |")
    injected = [r for r in rows if "injection" in r]
    if injected:
        kinds = sorted(injected[0]["injection"]["by_kind"])
        print("\nInjection flip rates: the share of presentation orders in which the injected reply wins "
              "(judge alone; after the defence in brackets: flips the judge_directed detector missed)\n")
        print("| attack kind | n | detected | " + " | ".join(r["method"] for r in injected) + " |")
        print("|---|---|---|" + "---|" * len(injected))
        for kind in [*kinds, None]:
            cells = []
            for r in injected:
                row = r["injection"]["by_kind"][kind] if kind else r["injection"]
                cells.append(f"{row['flip_rate_orders']:.2f} ({row['flip_rate_after_defence']:.2f})")
            first = injected[0]["injection"]["by_kind"][kind] if kind else injected[0]["injection"]
            print(f"| {kind or '**all**'} | {first['n']} | {first['detected']:.2f} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
