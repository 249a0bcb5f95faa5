"""GRPO (and Dr.GRPO) on the tiny model with a synthetic reward: the reward rises; a large KL coefficient keeps
the policy near the start; a SIGKILLed run resumes to the same adapter; 2 DDP processes take the same updates
as one process (rollout rows are drawn from per-row seeds, so both sample the same answers)."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_overrides
from openrlaif.config import load_config
from openrlaif.core.store import RunStore
from openrlaif.pipeline import open_run, run_stage

HERE = Path(__file__).resolve().parent


def count_target(prompts, responses):
    """Synthetic, dense reward: how many times the reply contains the letter 'e'."""
    return [r.count("e") for r in responses]


def grpo_args(*extra):
    return ["train.algo=grpo", "rl.reward=test_grpo:count_target", "rl.steps=20", "rl.prompts_per_step=4", "rl.k=4",
            "rl.max_new_tokens=8", "train.learning_rate=2e-2", "train.lora_r=8", "train.lora_alpha=16",
            "train.lora_target_modules=[q_proj,v_proj,o_proj,down_proj,lm_head]", *extra]


def curve(store):
    return [m for m in store.read_metrics() if m.get("algo") == "grpo" and "step" in m]


@pytest.mark.parametrize("variant", ["grpo", "dr_grpo"])
def test_grpo_raises_the_reward(tmp_path, tiny_model_dir, variant):
    # learning rate 1e-2 over 30 steps: at 2e-2 over 20, plain GRPO's reward rose to ~6 and fell back to ~2 by the
    # last steps in 1 of 5 seeds on an AMX CPU (its float32 products round differently from the AMD machine's of earlier sessions); at 1e-2
    # all 5 seeds of both variants ended at 11-16 'e's against 1.0-1.6 at the start (session 43)
    cfg = load_config(None, tiny_overrides(tiny_model_dir) + grpo_args("rl.kl_coef=0.01", f"grpo.variant={variant}",
                                                                       "grpo.minibatch_size=8", "rl.steps=30",
                                                                       "train.learning_rate=1e-2"))
    store = open_run(cfg, tmp_path / "run")
    summary = run_stage("train", cfg, store)
    steps = curve(store)
    assert len(steps) == 30 and summary["episodes"] == 30 * 16 and summary["variant"] == variant
    assert summary["reward_last"] > 2 * summary["reward_first"] + 1.0, summary
    assert all(0.0 <= m["clipfrac"] <= 1.0 for m in steps) and any(m["clipfrac"] > 0 for m in steps)
    assert (store.path("policy") / "adapter_config.json").is_file()


def test_large_kl_coef_keeps_the_policy_near_the_start(tmp_path, tiny_model_dir):
    runs = {}
    for name, coef in (("free", 0.0), ("tight", 5.0)):
        cfg = load_config(None, tiny_overrides(tiny_model_dir) + grpo_args(f"rl.kl_coef={coef}", "rl.steps=12"))
        store = open_run(cfg, tmp_path / name)
        runs[name] = (run_stage("train", cfg, store), curve(store))
    kl_free = sum(m["kl"] for m in runs["free"][1][-4:]) / 4
    kl_tight = sum(m["kl"] for m in runs["tight"][1][-4:]) / 4
    assert kl_tight < kl_free / 3 and kl_tight < 1.0, (kl_tight, kl_free)  # nats per 8-token response
    assert runs["tight"][0]["reward_last"] < runs["free"][0]["reward_last"]


def rlaif_env(kill_at=None):
    from openrlaif.core.faults import ENV

    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    env.pop(ENV, None)
    if kill_at:
        env[ENV] = kill_at
    return env


def train(run_dir, env, *launcher):
    cmd = [*launcher, "train", "-o", str(run_dir)] if launcher else [
        str(Path(sys.executable).with_name("rlaif")), "train", "-o", str(run_dir)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=run_dir.parent)


def single_and_ddp(single, ddp):
    """Train ``single`` in one process and ``ddp`` under torchrun with 2 CPU processes (gloo)."""
    env = rlaif_env() | {"ACCELERATE_USE_CPU": "1"}
    done = train(single, env)
    assert done.returncode == 0, done.stderr[-3000:]
    launched = train(ddp, env, sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                     "-m", "openrlaif.cli")
    assert launched.returncode == 0, launched.stdout[-2000:] + launched.stderr[-3000:]
    assert RunStore(ddp).stage_status("train")["summary"]["processes"] == 2


def adapter(run_dir):
    return load_file(str(run_dir / "round_1" / "policy" / "adapter_model.safetensors"))


def assert_same(a_dir, b_dir, atol):
    a, b = adapter(a_dir), adapter(b_dir)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0)
    ra = [m["reward_mean"] for m in curve(RunStore(a_dir))]
    rb = [m["reward_mean"] for m in curve(RunStore(b_dir))]
    assert ra == pytest.approx(rb, abs=1e-4)  # the same answers were sampled and scored


def prepared(tmp_path, tiny_model_dir, names, *extra):
    cfg = load_config(None, tiny_overrides(tiny_model_dir) + grpo_args("rl.steps=4", "rl.prompts_per_step=2",
                                                                       "rl.k=4", "rl.kl_coef=0.05", *extra))
    return [open_run(cfg, tmp_path / name).root for name in names]


def test_killed_grpo_resumes_to_the_same_adapter(tmp_path, tiny_model_dir):
    """SIGKILL after update 3 (checkpoints every update), rerun: the adapter equals an uninterrupted run's."""
    straight, killed = prepared(tmp_path, tiny_model_dir, ["straight", "killed"], "train.checkpoint_every=1")
    done = train(straight, rlaif_env())
    assert done.returncode == 0, done.stderr[-3000:]
    died = train(killed, rlaif_env("train.step@3"))
    assert died.returncode == -signal.SIGKILL, died.stderr[-3000:]
    resumed = train(killed, rlaif_env())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert RunStore(killed).stage_status("train")["summary"]["resumed_from_step"] == 3
    assert_same(straight, killed, atol=1e-5)


def test_two_ddp_processes_match_one_process(tmp_path, tiny_model_dir):
    """Each process samples its prompt's k answers from the rows' own seeds, so the 2-process run sees the
    1-process run's rollouts; the group advantages and the per-sequence loss average the same way."""
    single, ddp = prepared(tmp_path, tiny_model_dir, ["single", "ddp"])
    single_and_ddp(single, ddp)
    # Adam amplifies float-order noise on near-zero gradients. With the math attention kernel on these short rows
    # (model.math_attention_up_to) the split batches round differently from the whole one: at most 2.01e-4 here
    # (one element of 3,200), against < 2e-4 with the flash kernel.
    assert_same(single, ddp, atol=3e-4)
