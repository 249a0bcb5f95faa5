"""Training speed: our DPO vs TRL's DPOTrainer on the same model, data and settings; PPO and RLOO
episodes/s; peak memory of each.

    .venv/bin/python bench/train_throughput.py [--pairs 32] [--model embedded] [--threads 2]
    .venv/bin/python bench/train_throughput.py --only dpo-ours     # one measurement (used internally)

Every measurement runs in its own process (peak RSS is that process's). DPO, both sides: the built-in
calibration pairs (answers of 20-60 tokens), LoRA r=16/alpha=32 on every linear layer of the policy,
batch 2, lr 2e-4, 1 epoch, fp32, max length 256, sigmoid loss, no gradient checkpointing (TRL's default
turns it on; it only saves memory), reference = the adapter switched off. Timed end to end from the
model on disk: load, tokenise, reference log-probs, training. TRL runs twice: reference log-probs per
step (its default) and precomputed (ours is precomputed). PPO/RLOO: `rl.steps` updates of 4 prompts x 4
samples x 48 new tokens on built-in prompts, with a cheap function reward (response length) so the
figure is the trainer's, not the judge's. Needs `pip install trl==1.16.0` (the `test` extra).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def length_reward(conversations, responses):
    """Cheap reward for timing the RL trainers: longer answers (in words, capped) score higher."""
    return [min(len(r.split()), 40) / 10.0 for r in responses]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def calibration_rows(n: int) -> list[dict]:
    from openrlaif.data.pairs import load_labelled_pairs

    pairs = load_labelled_pairs("builtin", n)
    return [{"prompt": p.messages,
             "chosen": [{"role": "assistant", "content": p.chosen}],
             "rejected": [{"role": "assistant", "content": p.rejected}]} for p in pairs]


def overrides(args) -> list[str]:
    return [f"model.policy={args.model}", f"model.threads={args.threads}", "train.batch_size=2", "train.epochs=1",
            "train.learning_rate=2e-4", "train.max_length=256", "train.lora_r=16", "train.lora_alpha=32",
            "train.warmup_ratio=0", "train.soft_labels=false"]


def preimport() -> None:
    """Both sides import the heavy libraries before the clock starts (TRL's import pulls them all in)."""
    import accelerate  # noqa: F401
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import transformers  # noqa: F401
    from transformers import LlamaForCausalLM, get_linear_schedule_with_warmup  # noqa: F401


def dpo_ours(args) -> dict:
    preimport()
    from openrlaif.config import load_config
    from openrlaif.stages.dpo import run
    from openrlaif.pipeline import open_run
    from openrlaif.core.store import atomic_write_jsonl

    rows = calibration_rows(args.pairs)
    cfg = load_config(None, overrides(args))
    with tempfile.TemporaryDirectory() as tmp:
        store = open_run(cfg, Path(tmp) / "run")
        atomic_write_jsonl(store.path("preferences.jsonl"), rows)
        t0 = time.perf_counter()
        summary = run(cfg, store)
        wall = time.perf_counter() - t0
    return {"what": "dpo-ours", "pairs": len(rows), "wall_s": round(wall, 1), "pairs_per_s": round(len(rows) / wall, 3),
            "train_only_pairs_per_s": summary["pairs_per_s"], "final_loss": summary["final_loss"]}


def dpo_trl(args, precompute: bool) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from openrlaif.models.loading import load_causal_lm, set_threads

    preimport()
    rows = calibration_rows(args.pairs)
    set_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        loaded = load_causal_lm(args.model)
        config = DPOConfig(output_dir=tmp, per_device_train_batch_size=2, gradient_accumulation_steps=1,
                           learning_rate=2e-4, num_train_epochs=1, max_length=256, beta=0.1, loss_type=["sigmoid"],
                           bf16=False, fp16=False, use_cpu=True, gradient_checkpointing=False,
                           precompute_ref_log_probs=precompute, report_to=[], save_strategy="no", logging_steps=1,
                           lr_scheduler_type="linear", warmup_steps=0, dataloader_num_workers=0,
                           disable_tqdm=True)
        peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGETS,
                                 task_type="CAUSAL_LM")
        trainer = DPOTrainer(model=loaded.model, args=config, train_dataset=Dataset.from_list(rows),
                             processing_class=loaded.tokenizer, peft_config=peft_config)
        result = trainer.train()
        wall = time.perf_counter() - t0
    name = "dpo-trl-precomputed-ref" if precompute else "dpo-trl"
    return {"what": name, "pairs": len(rows), "wall_s": round(wall, 1), "pairs_per_s": round(len(rows) / wall, 3),
            "train_only_pairs_per_s": round(result.metrics.get("train_samples_per_second", 0.0), 3),
            "final_loss": round(result.training_loss, 4)}


def rl(args, algo: str, critic: str = "shared") -> dict:
    preimport()
    from openrlaif.config import load_config
    from openrlaif.pipeline import open_run
    from openrlaif.pipeline import stage_function

    cfg = load_config(None, [f"model.policy={args.model}", f"model.threads={args.threads}", f"train.algo={algo}",
                             "rl.reward=train_throughput:length_reward", f"rl.steps={args.rl_steps}",
                             "rl.prompts_per_step=4", "rl.k=4", "rl.max_new_tokens=48", "train.learning_rate=1e-4",
                             f"ppo.critic={critic}", "ppo.minibatch_size=8", "ppo.epochs=2"])
    with tempfile.TemporaryDirectory() as tmp:
        store = open_run(cfg, Path(tmp) / "run")
        t0 = time.perf_counter()
        summary = stage_function("train")(cfg, store)
        wall = time.perf_counter() - t0
    name = f"{algo}-{critic}-critic" if algo == "ppo" else algo
    return {"what": name, "episodes": summary["episodes"], "wall_s": round(wall, 1),
            "episodes_per_s": round(summary["episodes"] / wall, 3), "train_loop_episodes_per_s": summary["episodes_per_s"],
            "reward_first": summary["reward_first"], "reward_last": summary["reward_last"]}


MEASUREMENTS = {
    "dpo-ours": dpo_ours,
    "dpo-trl": lambda a: dpo_trl(a, precompute=False),
    "dpo-trl-precomputed-ref": lambda a: dpo_trl(a, precompute=True),
    "ppo": lambda a: rl(a, "ppo"),
    "ppo-separate": lambda a: rl(a, "ppo", "separate"),
    "rloo": lambda a: rl(a, "rloo"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--rl-steps", type=int, default=3)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--only", choices=sorted(MEASUREMENTS))
    parser.add_argument("--skip", nargs="*", default=[], choices=sorted(MEASUREMENTS))
    args = parser.parse_args()
    if args.only:
        row = MEASUREMENTS[args.only](args)
        row["peak_rss_mb"] = round(peak_rss_mb())
        print("RESULT " + json.dumps(row), flush=True)
        return
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    print(json.dumps({"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                      "threads": args.threads, "date": time.strftime("%Y-%m-%d"), "pairs": args.pairs,
                      "rl_steps": args.rl_steps}))
    results = {}
    for name in MEASUREMENTS:
        if name in args.skip:
            continue
        cmd = [sys.executable, __file__, "--only", name, "--pairs", str(args.pairs), "--rl-steps", str(args.rl_steps),
               "--model", args.model, "--threads", str(args.threads)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if out.returncode != 0 or not lines:
            print(json.dumps({"what": name, "error": (out.stderr or out.stdout)[-600:]}), flush=True)
            continue
        results[name] = json.loads(lines[-1][len("RESULT "):])
        print(json.dumps(results[name]), flush=True)
    if "dpo-ours" in results:
        for ref in ("dpo-trl", "dpo-trl-precomputed-ref"):
            if ref in results:
                print(f"DPO ours vs {ref}: {results['dpo-ours']['pairs_per_s'] / results[ref]['pairs_per_s']:.2f}x")


if __name__ == "__main__":
    main()
