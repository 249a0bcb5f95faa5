"""Graceful preemption with real signals on real subprocesses: SIGTERM (or SIGINT) during DPO or GRPO training
finishes the current optimizer step, writes a checkpoint, marks the stage interrupted and exits 75; the same
command resumes and ends with the adapter an uninterrupted run ends with (no completed step lost)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_overrides
from openrlaif.config import load_config
from openrlaif.core.faults import ENV
from openrlaif.core.preempt import EXIT_CODE
from openrlaif.core.store import RunStore
from openrlaif.pipeline import open_run, run_stage

HERE = Path(__file__).resolve().parent


def train(run_dir, signal_at=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    env.pop(ENV, None)
    if signal_at:
        env[ENV] = signal_at
    return subprocess.run([str(Path(sys.executable).with_name("rlaif")), "train", "-o", str(run_dir)], env=env,
                          capture_output=True, text=True, timeout=600)


def steps(run_dir):
    return [m["step"] for m in RunStore(run_dir).read_metrics() if m.get("stage") == "train" and "loss" in m]


def same_adapter(a_dir, b_dir):
    a, b = (load_file(str(d / "round_1" / "policy" / "adapter_model.safetensors")) for d in (a_dir, b_dir))
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=0)


def dpo_runs(tmp_path, tiny_model_dir, names):
    cfg = load_config(None, tiny_overrides(tiny_model_dir) + ["train.epochs=3", "train.checkpoint_every=0",
                                                             "train.soft_labels=false"])
    base = open_run(cfg, tmp_path / names[0])
    run_stage("generate", cfg, base)
    run_stage("label", cfg, base)
    import shutil

    for name in names[1:]:
        shutil.copytree(base.root, tmp_path / name)
    return [tmp_path / n for n in names]


@pytest.mark.parametrize("signame", ["TERM", "INT"])
def test_a_signal_mid_dpo_checkpoints_and_the_same_command_resumes(tmp_path, tiny_model_dir, signame):
    """checkpoint_every=0 (no periodic checkpoints): the preemption writes one anyway."""
    straight, stopped = dpo_runs(tmp_path, tiny_model_dir, ["straight", "stopped"])
    done = train(straight)
    assert done.returncode == 0, done.stderr[-3000:]
    total = len(steps(straight))
    assert total >= 4
    first = train(stopped, f"train.step@2:{signame}")
    assert first.returncode == EXIT_CODE, (first.returncode, first.stderr[-3000:])
    assert "run the same command again" in first.stderr and "after step 2" in first.stderr
    status = RunStore(stopped).stage_status("train")
    assert status["status"] == "interrupted" and status["resume_from_step"] == 2
    assert (stopped / "round_1" / "checkpoint" / "progress.json").is_file()
    resumed = train(stopped)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert RunStore(stopped).stage_status("train")["summary"]["resumed_from_step"] == 2
    assert steps(stopped) == list(range(1, total + 1))  # steps 1-2 kept from the checkpoint, none repeated
    same_adapter(straight, stopped)


def test_sigterm_mid_grpo_resumes_to_the_same_adapter(tmp_path, tiny_model_dir):
    cfg = load_config(None, tiny_overrides(tiny_model_dir) + [
        "train.algo=grpo", "rl.reward=test_grpo:count_target", "rl.steps=4", "rl.prompts_per_step=2", "rl.k=4",
        "rl.max_new_tokens=8", "train.learning_rate=2e-2", "train.checkpoint_every=0"])
    straight, stopped = (open_run(cfg, tmp_path / n).root for n in ("straight", "stopped"))
    assert train(straight).returncode == 0
    first = train(stopped, "train.step@3:TERM")
    assert first.returncode == EXIT_CODE, first.stderr[-3000:]
    resumed = train(stopped)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert RunStore(stopped).stage_status("train")["summary"]["resumed_from_step"] == 3
    same_adapter(straight, stopped)
