"""Graceful preemption with real signals on real subprocesses: SIGTERM (or SIGINT) during DPO or GRPO training
finishes the current optimizer step, writes a checkpoint, marks the stage interrupted and exits 75; the same
command resumes and ends with the adapter an uninterrupted run ends with (no completed step lost). Sampling stops
after its current chunk and labelling after its current judge batch, and resume to the uninterrupted output."""

import json
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


def train(run_dir, signal_at=None, stage="train", *args):
    env = dict(os.environ, HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    env.pop(ENV, None)
    if signal_at:
        env[ENV] = signal_at
    return subprocess.run([str(Path(sys.executable).with_name("rlaif")), stage, "-o", str(run_dir), *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=600)


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


def test_sigterm_mid_sampling_keeps_the_finished_chunks_and_resumes_to_the_same_candidates(tmp_path, tiny_model_dir):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("generate:\n  batch_size: 3\n")  # n=3: one prompt per chunk, four chunks
    overrides = tiny_overrides(tiny_model_dir)
    straight = train(tmp_path / "straight", None, "generate", "-c", cfg, *overrides)
    assert straight.returncode == 0, straight.stderr[-3000:]
    first = train(tmp_path / "stopped", "generate.chunk@2:TERM", "generate", "-c", cfg, *overrides)
    assert first.returncode == EXIT_CODE, (first.returncode, first.stderr[-3000:])
    assert "stopped by SIGTERM after chunk 2; 2 of 4 chunks are kept in candidates.jsonl.partial" in first.stderr
    stopped = RunStore(tmp_path / "stopped")
    assert stopped.stage_status("generate")["status"] == "interrupted"
    assert not stopped.path("candidates.jsonl").exists()
    resumed = train(stopped.root, None, "generate")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert stopped.stage_status("generate")["summary"]["resumed_chunks"] == 2
    assert (stopped.path("candidates.jsonl").read_text()
            == RunStore(tmp_path / "straight").path("candidates.jsonl").read_text())


def test_sigterm_mid_labelling_keeps_the_judged_batches_and_resumes_to_the_same_pairs(tmp_path, tiny_model_dir):
    import shutil

    cfg = load_config(None, tiny_overrides(tiny_model_dir))
    straight = open_run(cfg, tmp_path / "straight")
    run_stage("generate", cfg, straight)
    stopped = RunStore(shutil.copytree(straight.root, tmp_path / "stopped"))
    assert train(straight.root, None, "label").returncode == 0
    first = train(stopped.root, "judge.batch@2:TERM", "label")
    assert first.returncode == EXIT_CODE, (first.returncode, first.stderr[-3000:])
    assert "stopped by SIGTERM after batch 2; its verdicts are kept in" in first.stderr
    assert stopped.stage_status("label")["status"] == "interrupted"
    resumed = train(stopped.root, None, "label")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    stats = json.loads(stopped.path("judge_stats.json").read_text())
    assert stats["cache"]["hits"] >= 2 * 4  # the two judged batches (4 texts each) were read back, not re-judged
    assert stopped.path("preferences.jsonl").read_text() == straight.path("preferences.jsonl").read_text()


def test_a_signal_with_no_stop_point_left_stops_after_the_stage(tmp_path, tiny_model_dir):
    """The last chunk is sampled when TERM arrives: the stage finishes, is marked done, and the command exits 75."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: one-chunk\n")  # the default batch holds all four prompts' candidates: one chunk
    first = train(tmp_path / "run", "generate.chunk@1:TERM", "generate", "-c", cfg, *tiny_overrides(tiny_model_dir))
    assert first.returncode == EXIT_CODE, (first.returncode, first.stderr[-3000:])
    assert "after the stage finished; its outputs are kept" in first.stderr
    store = RunStore(tmp_path / "run")
    assert store.stage_done("generate") and store.path("candidates.jsonl").is_file()
