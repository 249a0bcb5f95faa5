"""Five trainers on the same prompts and the same judge budget: offline DPO, online DPO, RLOO, PPO, GRPO.

    .venv/bin/python bench/trainers.py -o runs/trainers            # all five, one after the other
    .venv/bin/python bench/trainers.py -o runs/trainers --only grpo online_dpo

Every run is `rlaif run` on the embedded model with the contrastive judge (the one RL scores answers with), so
the judge reads the same number of answers in each (``--budget``, default 128: offline DPO labels budget/2
prompts x 2 candidates; online DPO samples 2 answers for 4 prompts per update; RL samples 4 answers for 4
prompts per update). Each run is graded three ways: the win rate by the run's own judge (the judge it trained
on), and two yardsticks that judge never produced — IFEval's checkers on the built-in held-out verifiable
prompts, and people's HH choices (``../shared/data/hh_harmless_dev.jsonl`` lines 701-800, skipped with a note
when ../shared is absent). Also: KL(trained || start), the train stage's wall time, the whole run's wall time
and the run process's peak RSS (from wait4). Prints a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS_PER_UPDATE = 4

COMMON = [
    "model.policy=embedded", "seed=0", "data.instruction=Answer in one sentence.", "data.max_eval_prompts=40",
    "feedback.method=contrastive", "feedback.gate_action=warn", "eval.temperature=0.7", "eval.max_new_tokens=64",
    "eval.red_team=null", "eval.anchors=null", "monitor.every=0", "train.max_length=224",
    "rl.max_new_tokens=64", "rl.temperature=0.7", "rl.reward=judge",
    'eval.benchmarks=[{name: ifeval, file: builtin, max_new_tokens: 128}, {name: human_prefs, '
    'file: ../shared/data/hh_harmless_dev.jsonl, skip: 700, limit: 100, if_missing: skip}]',
]


def trainer_overrides(budget: int) -> dict[str, list[str]]:
    """train.algo -> its overrides, each spending ``budget`` judge readings of an answer."""
    rl_steps = budget // (PROMPTS_PER_UPDATE * 4)
    online_steps = budget // (PROMPTS_PER_UPDATE * 2)
    rl = [f"rl.steps={rl_steps}", f"rl.prompts_per_step={PROMPTS_PER_UPDATE}", "rl.k=4", "rl.kl_coef=0.05",
          "data.max_train_prompts=" + str(rl_steps * PROMPTS_PER_UPDATE)]
    return {
        "dpo": ["train.algo=dpo", f"data.max_train_prompts={budget // 2}", "generate.n=2", "generate.temperature=0.8",
                "generate.top_p=0.95", "generate.max_new_tokens=64", "train.epochs=2", "train.batch_size=4",
                "train.learning_rate=2e-4"],
        "online_dpo": ["train.algo=online_dpo", f"rl.steps={online_steps}", f"rl.prompts_per_step={PROMPTS_PER_UPDATE}",
                       "rl.k=2", f"data.max_train_prompts={online_steps * PROMPTS_PER_UPDATE}",
                       "train.learning_rate=2e-4"],
        "rloo": ["train.algo=rloo", *rl, "rl.whiten_scores=true", "train.learning_rate=5e-4"],
        "ppo": ["train.algo=ppo", *rl, "ppo.whiten_rewards=true", "ppo.minibatch_size=8", "train.learning_rate=2e-4"],
        "grpo": ["train.algo=grpo", *rl, "train.learning_rate=5e-4"],
    }


def run_one(algo: str, overrides: list[str], out: Path) -> dict:
    """`rlaif run` in a child process; its wall time and peak RSS (ru_maxrss of that child alone)."""
    cmd = [str(Path(sys.executable).with_name("rlaif")), "run", "-o", str(out), *COMMON, *overrides]
    log = open(out.with_suffix(".log"), "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{algo}: `rlaif run` failed (exit {os.waitstatus_to_exitcode(status)}); see {log.name}")
    return {"wall_s": round(wall, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024)}


def measures(out: Path) -> dict:
    from openrlaif.core.store import RunStore

    store = RunStore(out)
    ev = json.loads(store.path("eval.json").read_text())
    train = store.stage_status("train")
    row = {"win_rate": ev["win_rate"], "ci95": ev["ci95"], "kl": ev["kl_to_start"], "train_s": train["wall_s"],
           "judge": ev.get("judge")}
    for name, bench in (ev.get("benchmarks") or {}).items():
        if "difference" in bench:  # IFEval: trained - start per accuracy, paired bootstrap CI
            row[name] = {metric: (d["difference"], d["ci95"]) for metric, d in bench["difference"].items()}
        else:  # people's pairs: agreement of the implicit reward (the start scores 0.5 by construction)
            row[name] = {"accuracy": (bench["accuracy"], bench["ci95"])}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--out", default="runs/trainers")
    ap.add_argument("--budget", type=int, default=128, help="answers the judge reads in each run (a multiple of 16)")
    ap.add_argument("--only", nargs="*", default=None, help="some of: dpo online_dpo rloo ppo grpo")
    args = ap.parse_args()
    if args.budget % 16:
        raise SystemExit("--budget: use a multiple of 16 (4 prompts x 4 answers per RL update)")
    root = (ROOT / args.out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    rows = {}
    for algo, overrides in trainer_overrides(args.budget).items():
        if args.only and algo not in args.only:
            continue
        out = root / algo
        done = root / f"{algo}.json"
        if done.is_file():  # a finished run is not redone
            rows[algo] = json.loads(done.read_text())
            continue
        print(f"{algo}: rlaif run ... ({out})", flush=True)
        row = run_one(algo, overrides, out) | measures(out)
        done.write_text(json.dumps(row))
        rows[algo] = row
        print(f"{algo}: {row}", flush=True)
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}; command: "
          f"python bench/trainers.py -o {args.out} --budget {args.budget}\n")
    print("| trainer | win rate vs start (the run's judge) | IFEval instruction strict, trained − start | "
          "people's HH pairs, agreement (start 0.500) | KL | train (s) | run (s) | peak RSS (MB) |\n|---|---|---|---|---|---|---|---|")

    def cell(row, prefix, metric, signed=True):
        name = next((n for n in row if n.startswith(prefix)), None)
        if name is None or metric not in row[name]:
            return "— (absent)"
        d, (lo, hi) = row[name][metric]
        return f"{d:+.3f} ({lo:+.3f}, {hi:+.3f})" if signed else f"{d:.3f} ({lo:.3f}–{hi:.3f})"

    for algo, row in rows.items():
        print(f"| {algo} | {row['win_rate']:.3f} ({row['ci95'][0]:.3f}–{row['ci95'][1]:.3f}) | "
              f"{cell(row, 'ifeval', 'instruction_strict')} | {cell(row, 'human_prefs', 'accuracy', False)} | "
              f"{row['kl']:.2f} | {row['train_s']:.0f} | {row['wall_s']:.0f} | {row['peak_rss_mb']} |")


if __name__ == "__main__":
    main()
