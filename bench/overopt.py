"""PPO with the KL penalty off against a round's reward model, watched by the over-optimisation monitor.

    # 1. a round with a reward model (generate -> label -> reward -> PPO -> eval)
    rlaif run -c configs/ppo.yaml -o runs/cmp-ppo-rm rl.reward=reward_model
    #    (the measured run used the file's settings of 2026-11-27: add train.learning_rate=1e-3
    #    rl.temperature=1.0 rl.max_new_tokens=48 rl.steps=8 to reproduce it exactly)
    # 2. copy it, drop its policy, and train PPO again with kl_coef 0 (this script; ~30 min on 2 cores)
    .venv/bin/python bench/overopt.py --from runs/cmp-ppo-rm --out runs/overopt-kl0 --steps 24
    # or only print the table and write the plot of a finished run
    .venv/bin/python bench/overopt.py --out runs/overopt-kl0 --analyse --svg docs/img/overopt-kl0.svg

Prints the monitor's checks as a markdown table (update, proxy, held-out, KL, sqrt KL, streak, alarm)
and writes the proxy/held-out vs sqrt(KL) plot of report.html as an SVG file.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path


def train(source: Path, out: Path, steps: int, every: int, patience: int) -> None:
    if out.exists():
        sys.exit(f"{out} exists; remove it or pass --analyse")
    if not (source / "round_1" / "reward_model" / "ensemble.json").is_file():
        sys.exit(f"{source} has no round_1/reward_model; run `rlaif run -c configs/ppo.yaml -o {source} rl.reward=reward_model` first")
    shutil.copytree(source, out, ignore=shutil.ignore_patterns("policy", "critic", "checkpoint", "best_policy",
                                                                "eval.json", "samples.jsonl", "redteam.jsonl"))
    cli = [sys.executable, "-m", "openrlaif.cli"]
    subprocess.run([*cli, "train", "-o", str(out), "--force", "rl.kl_coef=0", f"rl.steps={steps}",
                    f"monitor.every={every}", f"monitor.patience={patience}"], check=True)
    subprocess.run([*cli, "eval", "-o", str(out)], check=True)


def analyse(out: Path, svg: Path | None) -> None:
    from openrlaif.report_html import plot_overopt
    from openrlaif.core.store import RunStore

    metrics = RunStore(out).read_metrics()
    rows = [m for m in metrics if m.get("stage") == "monitor"]
    if not rows:
        sys.exit(f"{out} has no monitor rows in metrics.jsonl")
    print(f"held-out judge: {rows[0]['heldout_judge']}\n")
    print("| update | proxy (RM) | held-out judge | KL (nats) | sqrt KL | streak | alarm |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['step']} | {r['proxy']:.4f} | {r['heldout']:.4f} | {r['kl']:.2f} | {r['sqrt_kl']:.2f} | "
              f"{r['streak']} | {'**ALARM**' if r['alarm'] else ''} |")
    if svg is not None:
        svg.parent.mkdir(parents=True, exist_ok=True)
        svg.write_text(plot_overopt(metrics), encoding="utf-8")
        print(f"\nplot: {svg}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="source", type=Path, help="a finished run with round_1/reward_model")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--every", type=int, default=2)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--analyse", action="store_true", help="only analyse an existing --out run")
    ap.add_argument("--svg", type=Path, help="write the proxy/held-out vs sqrt(KL) plot here")
    args = ap.parse_args()
    if not args.analyse:
        if args.source is None:
            sys.exit("--from RUN_DIR is needed to train (or pass --analyse)")
        train(args.source, args.out, args.steps, args.every, args.patience)
    analyse(args.out, args.svg)


if __name__ == "__main__":
    main()
