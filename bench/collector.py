"""Python's garbage collector in one bench round: how many collections of each generation `rlaif run` makes and
how long they take (``gc.callbacks``), with the interpreter's defaults (``OPENRLAIF_GC=default``) and with the
CLI's policy (``openrlaif.core.collector``), alternating, each run in its own process.

    .venv/bin/python bench/collector.py [--repeat 1]

The round is bench/round_vs_peer.py's (`rlaif run -c configs/quick.yaml` with its overrides), on the user cache
(the judge gate read from it once a first run measured it). Prints per run the collections and seconds per
generation, the whole process's wall time and peak RSS. Results: docs/benchmarks.md (session 38).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from round_vs_peer import our_overrides  # noqa: E402  (the same round, the same sizes)

PROGRAM = """
import atexit, gc, json, resource, sys, time
stats = {0: [0, 0.0], 1: [0, 0.0], 2: [0, 0.0]}
started = [0.0]

def count(phase, info):
    if phase == "start":
        started[0] = time.perf_counter()
    else:
        s = stats[info["generation"]]
        s[0] += 1
        s[1] += time.perf_counter() - started[0]

gc.callbacks.append(count)
atexit.register(lambda: print("GC " + json.dumps({"collections": {g: n for g, (n, _) in stats.items()},
                                                  "seconds": {g: round(t, 3) for g, (_, t) in stats.items()},
                                                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024})))
sys.argv = ["rlaif"] + sys.argv[1:]
from openrlaif.cli import main
main()
"""


def one_run(policy: str, args) -> dict:
    with tempfile.TemporaryDirectory(prefix="rlaif-gc-") as tmp:
        cmd = [sys.executable, "-c", PROGRAM, "run", "-c", str(ROOT / "configs" / "quick.yaml"), "-o",
               str(Path(tmp) / "run"), *our_overrides(args)]
        env = {**os.environ, "OPENRLAIF_GC": policy}
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    lines = [x for x in proc.stdout.splitlines() if x.startswith("GC ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"rlaif run failed:\n{proc.stderr[-3000:]}")
    return {"OPENRLAIF_GC": policy, **json.loads(lines[-1][3:]), "wall_s": round(wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    # round_vs_peer's sizes
    args.prompts, args.n, args.new_tokens, args.eval_prompts, args.threads, args.overrides = 24, 2, 64, 16, 2, []
    for _ in range(args.repeat):
        for policy in ("default", "on"):
            print(json.dumps(one_run(policy, args)), flush=True)


if __name__ == "__main__":
    main()
