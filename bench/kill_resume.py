"""Kill -9 and resume on the embedded model: a 2-round configs/quick.yaml run, killed at the same six points as
tests/integration/test_kill_resume.py (which does this on a tiny random model in CI), against an
uninterrupted run of the same config.

    .venv/bin/python bench/kill_resume.py --out runs/kill-resume      # ~25 min on 2 cores

Prints, per kill point, how long the attempt ran and what the run directory held afterwards, then the
comparison: candidates and preferences identical, adapters' largest difference, eval figures of both
rounds, and the wall time of the straight run vs the killed chain. Writes RESULT.json in --out.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

KILLS = ["generate.chunk@2", "judge.batch@3", "train.step@3", "eval.sampled@1", "stage.done@2", "train.step@2"]
REPO = Path(__file__).resolve().parents[1]


def command(out: Path) -> list[str]:
    return [sys.executable, "-m", "openrlaif.cli", "run", "-c", str(REPO / "configs" / "quick.yaml"), "-o", str(out),
            "--rounds", "2", "train.checkpoint_every=2", "generate.batch_size=6"]


def attempt(out: Path, kill_at: str | None) -> tuple[int, float]:
    env = dict(os.environ)
    env.pop("OPENRLAIF_KILL_AT", None)
    if kill_at:
        env["OPENRLAIF_KILL_AT"] = kill_at
    t0 = time.perf_counter()
    proc = subprocess.run(command(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode not in (0, -signal.SIGKILL):
        sys.exit(f"attempt {kill_at} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.returncode, time.perf_counter() - t0


def compare(straight: Path, killed: Path) -> dict:
    from safetensors.torch import load_file

    from openrlaif.core.store import read_jsonl

    out: dict = {}
    for k in (1, 2):
        for name in ("candidates.jsonl", "preferences.jsonl"):
            out[f"round_{k}/{name} identical"] = read_jsonl(straight / f"round_{k}" / name) == read_jsonl(killed / f"round_{k}" / name)
        a = load_file(str(straight / f"round_{k}" / "policy" / "adapter_model.safetensors"))
        b = load_file(str(killed / f"round_{k}" / "policy" / "adapter_model.safetensors"))
        out[f"round_{k} adapter max |diff|"] = max(float((a[n] - b[n]).abs().max()) for n in a)
        es = json.loads((straight / f"round_{k}" / "eval.json").read_text())
        ek = json.loads((killed / f"round_{k}" / "eval.json").read_text())
        for key in ("win_rate", "kl_to_start"):
            out[f"round_{k} {key} straight / killed"] = [es[key], ek[key]]
        out[f"round_{k}/samples.jsonl identical"] = read_jsonl(straight / f"round_{k}" / "samples.jsonl") == \
            read_jsonl(killed / f"round_{k}" / "samples.jsonl")
    m = json.loads((killed / "manifest.json").read_text())["stages"]
    out["resumed"] = {"round_1 generate chunks": m["round_1/generate"]["summary"]["resumed_chunks"],
                      "round_1 train from step": m["round_1/train"]["summary"]["resumed_from_step"],
                      "round_2 train from step": m["round_2/train"]["summary"]["resumed_from_step"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/kill-resume"))
    args = ap.parse_args()
    straight, killed = args.out / "straight", args.out / "killed"
    if args.out.exists():
        sys.exit(f"{args.out} exists; remove it first")
    rc, wall_straight = attempt(straight, None)
    print(f"straight run: {wall_straight:.0f} s", flush=True)
    chain = []
    for kill_at in KILLS + [None]:
        rc, wall = attempt(killed, kill_at)
        stages = json.loads((killed / "manifest.json").read_text()).get("stages", {})
        done = [key for key, v in stages.items() if v.get("status") == "done"]
        chain.append({"kill_at": kill_at, "returncode": rc, "wall_s": round(wall, 1), "stages_done": len(done)})
        print(f"  {kill_at or 'final':18s} rc {rc:4d}  {wall:6.0f} s  stages done: {len(done)}", flush=True)
        if kill_at and rc != -signal.SIGKILL:
            sys.exit(f"the attempt meant to die at {kill_at} finished instead")
    result = {"straight_wall_s": round(wall_straight, 1), "chain": chain,
              "chain_wall_s": round(sum(c["wall_s"] for c in chain), 1), "comparison": compare(straight, killed)}
    (args.out / "RESULT.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
