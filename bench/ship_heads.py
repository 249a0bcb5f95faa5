"""Regenerate the preference heads shipped with OpenRLAIF (``feedback.heads: builtin``) and record their figures.

    .venv/bin/python bench/ship_heads.py [--hh-fit 700] [--alpaca-fit 280] [--folds 5] [--dry-run]

Fits, on the embedded judge (SmolLM2-135M-Instruct, float32), one head directory with three heads:
``harmless`` on the people's labels of ``../shared/data/hh_harmless_dev.jsonl`` (Anthropic HH-RLHF,
MIT), ``helpful`` on the GPT-4 labels of ``../shared/data/alpacaeval_gpt4_pairs_dev.jsonl`` (AlpacaEval,
Apache-2.0), and ``_any`` on both (it serves the principles without their own head). Only the first
``--hh-fit`` / ``--alpaca-fit`` pairs of each file are fitted on (``rlaif fit-judge`` picks layer, pooling
and L2 by 5-fold CV); the rest of each file is held out, judged by the shipped heads through the same
``FittedJudge`` that labels runs, and the figures (agreement, ECE, bias profile) are written into the
heads' card, ``src/openrlaif/data/heads/heads.json``. The data is not part of the repository; without it
the script says so and exits 2. ``--dry-run`` writes to ``runs/ship_heads/heads`` instead of the package.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SHIPPED = REPO / "src" / "openrlaif" / "data" / "heads"
SETS = {  # principle -> (file, label source)
    "harmless": ("hh_harmless_dev.jsonl", "people (Anthropic HH-RLHF harmless-base)"),
    "helpful": ("alpacaeval_gpt4_pairs_dev.jsonl", "GPT-4 (AlpacaEval annotations)"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hh-fit", type=int, default=700, help="pairs of hh_harmless_dev fitted on (the rest held out)")
    ap.add_argument("--alpaca-fit", type=int, default=280, help="pairs of the AlpacaEval file fitted on")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--heldout-limit", type=int, default=None, help="judge only this many held-out pairs (a quick try)")
    ap.add_argument("--dry-run", action="store_true", help="write runs/ship_heads/heads, not the package's heads")
    args = ap.parse_args()
    missing = [name for name, _ in SETS.values() if not (SHARED / name).is_file()]
    if missing:
        print(f"error: {', '.join(missing)} not found in {SHARED}; this script fits the shipped heads on the public "
              "pairs in ../shared/data (beside the checkout) and cannot run without them", file=sys.stderr)
        sys.exit(2)

    from openrlaif.config import load_config
    from openrlaif.data.constitution import load_constitution
    from openrlaif.data.pairs import load_labelled_pairs
    from openrlaif.evaluate.judge_eval import evaluate_judge
    from openrlaif.feedback.fit_heads import fit_judge
    from openrlaif.feedback.fitted import ANY_PRINCIPLE, FittedJudge, load_heads, save_heads
    from openrlaif.models.loading import judge_batch_size, load_causal_lm

    cfg = load_config(None, ["model.dtype=float32"])
    work = REPO / "runs" / "ship_heads"
    work.mkdir(parents=True, exist_ok=True)
    # 1. Split each file: the first part is fitted on, the rest is held out (never seen by the fit).
    fit_n = {"harmless": args.hh_fit, "helpful": args.alpaca_fit}
    fit_rows, heldout = [], {}
    for principle, (name, _) in SETS.items():
        rows = [json.loads(line) for line in (SHARED / name).read_text(encoding="utf-8").splitlines() if line.strip()]
        fit_rows += [{**row, "principle": principle} for row in rows[: fit_n[principle]]]
        path = work / f"heldout_{principle}.jsonl"
        kept = rows[fit_n[principle]:][: args.heldout_limit]
        path.write_text("".join(json.dumps(row) + "\n" for row in kept), encoding="utf-8")
        heldout[principle] = (path, len(kept))
    fit_file = work / "fit.jsonl"
    fit_file.write_text("".join(json.dumps(row) + "\n" for row in fit_rows), encoding="utf-8")
    # 2. Fit: one head per principle of the column, and _any on every pair.
    out = work / "heads"
    start = time.perf_counter()
    results = fit_judge(cfg, str(fit_file), out, folds=args.folds, seed=cfg.seed, force=True)
    fit_seconds = time.perf_counter() - start
    # 3. Judge every held-out set with each head, through the judge that labels runs.
    card, heads = load_heads(out)
    lm = load_causal_lm("embedded", "float32")
    constitution = load_constitution("builtin")
    figures: dict[str, dict] = {key: {} for key in heads}
    for key, head in heads.items():
        judge = FittedJudge(lm.model, lm.tokenizer, {ANY_PRINCIPLE: head}, name="embedded",
                            batch_size=judge_batch_size(cfg), max_length=cfg.feedback.max_length,
                            expected_fingerprint=card["judge_fingerprint"], description=f"held out: {key}")
        for principle, (path, n) in heldout.items():
            if key not in (principle, ANY_PRINCIPLE):
                continue
            m = evaluate_judge(judge, load_labelled_pairs(str(path)), constitution, principle, cfg.seed).metrics
            figures[key][SETS[principle][0]] = {
                "pairs": f"{fit_n[principle]}..{fit_n[principle] + n - 1} (0-based lines, never fitted on)",
                "n": m["n"], "agreement": round(m["agreement"], 4), "ece": round(m["ece"], 4),
                "labels": SETS[principle][1],
                "bias": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in m["bias"].items()}}
            print(json.dumps({"head": key, "set": SETS[principle][0], **figures[key][SETS[principle][0]]}), flush=True)
    # 4. The card records the held-out figures and how they were made; written where runs find it.
    for key, head in heads.items():
        head.card["heldout"] = figures[key]
        head.card["data"] = {p: f"../shared/data/{SETS[p][0]} lines 0..{fit_n[p] - 1}" for p in SETS
                             if key in (p, ANY_PRINCIPLE)}
    target = out if args.dry_run else SHIPPED
    save_heads(target, list(heads.values()), "embedded", card["judge_fingerprint"])
    written = json.loads((target / "heads.json").read_text(encoding="utf-8"))
    written["made_by"] = {"command": "python bench/ship_heads.py " + " ".join(sys.argv[1:]),
                          "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                          "fit_seconds": round(fit_seconds, 1)}
    (target / "heads.json").write_text(json.dumps(written, indent=2) + "\n", encoding="utf-8")
    for r in results:
        print(f"{r.principle}: {r.feature} l2={r.l2}, CV {r.cv_agreement:.3f} on {r.pairs} pairs, ECE {r.ece:.3f}")
    print(f"written: {target}")


if __name__ == "__main__":
    main()
