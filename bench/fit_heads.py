"""Fit a preference head on people's labels and measure it on pairs it never saw.

    .venv/bin/python bench/fit_heads.py [--fit 600] [--heldout 300] [--folds 5] [--layers 12,18,24,30]
                                        [--data ../shared/data/hh_harmless_dev.jsonl] [--out runs/bench_heads]

The first ``--fit`` pairs of the data file are the training set (``rlaif fit-judge`` picks layer, pooling
and L2 by k-fold CV on them); the next ``--heldout`` pairs are scored by the fitted judge alone and
compared with the people's labels (agreement, ECE, bias profile). The data lives beside the checkout in
``../shared/data`` (public, not part of the repository); without it the script says so and exits 2.
Results: ``OUT/summary.json`` and one line on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "hh_harmless_dev.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--fit", type=int, default=600)
    ap.add_argument("--heldout", type=int, default=300)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--layers", default=None, help="comma-separated; default: fit-judge's choice of ~8 layers")
    ap.add_argument("--debias-length", action="store_true", help="length as a covariate, dropped when scoring")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench_heads")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. model.judge=PATH")
    args = ap.parse_args()
    if not args.data.is_file():
        print(f"error: {args.data} not found; this benchmark reads the public pairs in ../shared/data "
              "(beside the checkout) and cannot run without them", file=sys.stderr)
        sys.exit(2)

    from openrlaif.config import load_config
    from openrlaif.data.constitution import load_constitution
    from openrlaif.data.pairs import load_labelled_pairs
    from openrlaif.evaluate.judge_eval import evaluate_judge
    from openrlaif.feedback.fit_heads import fit_judge
    from openrlaif.feedback.fitted import FittedJudge, load_heads
    from openrlaif.models.loading import judge_batch_size, load_causal_lm

    cfg = load_config(None, args.overrides)
    lines = args.data.read_text(encoding="utf-8").splitlines()
    if len(lines) < args.fit + args.heldout:
        print(f"error: {args.data} has {len(lines)} pairs, fewer than --fit + --heldout", file=sys.stderr)
        sys.exit(2)
    args.out.mkdir(parents=True, exist_ok=True)
    fit_file, heldout_file = args.out / "fit.jsonl", args.out / "heldout.jsonl"
    fit_file.write_text("\n".join(lines[: args.fit]) + "\n", encoding="utf-8")
    heldout_file.write_text("\n".join(lines[args.fit : args.fit + args.heldout]) + "\n", encoding="utf-8")

    start = time.perf_counter()
    layers = [int(x) for x in args.layers.split(",")] if args.layers else None
    [result] = fit_judge(cfg, str(fit_file), args.out / "heads", folds=args.folds, layers=layers, seed=cfg.seed,
                         force=True, debias_length=args.debias_length)
    fit_seconds = time.perf_counter() - start

    card, heads = load_heads(args.out / "heads")
    spec = cfg.model.judge or cfg.model.policy
    lm = load_causal_lm(spec, cfg.model.dtype)
    judge = FittedJudge(lm.model, lm.tokenizer, heads, name=spec, batch_size=judge_batch_size(cfg),
                        max_length=cfg.feedback.max_length, expected_fingerprint=card["judge_fingerprint"])
    start = time.perf_counter()
    metrics = evaluate_judge(judge, load_labelled_pairs(str(heldout_file)), load_constitution("builtin"),
                             seed=cfg.seed).metrics
    summary = {
        "data": str(args.data), "fit_pairs": result.pairs, "heldout_pairs": metrics["n"], "folds": args.folds,
        "feature": result.feature, "l2": result.l2, "cv_agreement": round(result.cv_agreement, 4),
        "cv_ece": round(result.ece, 4), "heldout_agreement": round(metrics["agreement"], 4),
        "heldout_ece": round(metrics["ece"], 4), "heldout_bias": metrics["bias"],
        "cv_table": {f"{f} l2={l2}": round(a, 4) for (f, l2), a in sorted(result.table.items())},
        "fit_seconds": round(fit_seconds, 1), "heldout_seconds": round(time.perf_counter() - start, 1),
        "judge": spec, "debias_length": args.debias_length,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in summary.items() if k != "cv_table"}))


if __name__ == "__main__":
    main()
