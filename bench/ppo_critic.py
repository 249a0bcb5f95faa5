"""PPO critic choice on the tiny test model: shared value head vs a separate LoRA critic.

    .venv/bin/python bench/ppo_critic.py

Two tasks on the tiny random Llama the tests build (seconds each, no cache, no network):
- 'predictable': the reward depends on the prompt only (tests/integration/test_ppo.py:prompt_reward),
  `kl_coef` 0, 12 updates: how much of the return the value head explains (mean of the last 4 updates);
- 'e-count': the reward counts the letter 'e' (count_target), `kl_coef` 0.01, 20 updates: mean reward of
  the first and last 5 updates, and the final KL.
Speed and memory on the embedded model are in bench/train_throughput.py.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "integration")]

from conftest import build_tiny_model  # noqa: E402
from openrlaif.pipeline import open_run, run_stage  # noqa: E402
from test_ppo import ppo_config, steps  # noqa: E402


def train(model_dir: Path, *extra: str) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = ppo_config(model_dir, *extra)
        store = open_run(cfg, Path(tmp) / "run")
        run_stage("train", cfg, store)
        return steps(store)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(Path(tmp) / "tiny")
        for critic in ("shared", "separate"):
            rows = train(model_dir, "rl.kl_coef=0.0", "rl.reward=test_ppo:prompt_reward", "rl.steps=12",
                         f"ppo.critic={critic}")
            ev = sum(r["explained_variance"] for r in rows[-4:]) / 4
            rows = train(model_dir, "rl.kl_coef=0.01", f"ppo.critic={critic}")
            first = sum(r["reward_mean"] for r in rows[:5]) / 5
            last = sum(r["reward_mean"] for r in rows[-5:]) / 5
            print(f"{critic}: explained variance (predictable return) {ev:.2f}; e-count reward {first:.2f} -> "
                  f"{last:.2f}, final KL {rows[-1]['kl']:.0f} nats", flush=True)


if __name__ == "__main__":
    main()
