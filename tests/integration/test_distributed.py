"""The one training stack under real multi-process DDP (2 CPU processes, gloo, launched by torchrun;
accelerate's Accelerator picks the process group up) and gradient accumulation: the same global batch
split over processes or micro-batches takes the same optimizer steps as one process with the whole batch."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_overrides
from openrlaif.config import load_config
from openrlaif.pipeline import open_run, run_stage
from openrlaif.core.store import RunStore

DPO = ["train.batch_size=4", "train.epochs=3", "train.soft_labels=false"]


@pytest.fixture
def labelled_run(tmp_path, tiny_model_dir):
    """A tiny run with its generate and label stages done (4 hard-labelled pairs)."""
    def make(*extra):
        cfg = load_config(None, tiny_overrides(tiny_model_dir) + DPO + list(extra))
        store = open_run(cfg, tmp_path / "base")
        run_stage("generate", cfg, store)
        run_stage("label", cfg, store)
        return cfg, store
    return make


def launch(nproc: int, *args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "openrlaif.cli", *args]
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def train_steps(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("stage") == "train" and "step" in r and "loss" in r]


def adapter(run_dir):
    return load_file(str(run_dir / "round_1" / "policy" / "adapter_model.safetensors"))


def assert_same_training(a_dir, b_dir):
    a_steps, b_steps = train_steps(a_dir), train_steps(b_dir)
    assert len(a_steps) == len(b_steps) == 3
    for x, y in zip(a_steps, b_steps):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-5) and x["grad_norm"] == pytest.approx(y["grad_norm"], abs=1e-5)
    assert a_steps[-1]["loss"] < a_steps[0]["loss"]  # it learned something, so equality means something
    a, b = adapter(a_dir), adapter(b_dir)
    for name in a:  # Adam's first steps amplify float-order noise on near-zero gradients: 2e-4 on weights ~0.1
        torch.testing.assert_close(a[name], b[name], atol=2e-4, rtol=1e-3)


def copies(base, tmp_path, *names):
    for name in names:
        shutil.copytree(base.root, tmp_path / name)
    return [tmp_path / name for name in names]


@pytest.mark.parametrize("trainer", ["dpo", "sft"])
def test_two_ddp_processes_match_one_process(tmp_path, trainer, request):
    """DPO on 4 labelled pairs; SFT (train.algo=sft) on 12 chat rows of different lengths."""
    cfg, base = request.getfixturevalue("labelled_run")() if trainer == "dpo" else request.getfixturevalue("sft_run")
    single, ddp = copies(base, tmp_path, "single", "ddp")
    run_stage("train", cfg, open_run(cfg, single))
    launch(2, "train", "-o", str(ddp), cwd=tmp_path)
    assert RunStore(ddp).stage_status("train")["summary"]["processes"] == 2
    assert_same_training(single, ddp)


@pytest.mark.parametrize("trainer", ["dpo", "sft"])
def test_gradient_accumulation_matches_the_whole_batch(tmp_path, trainer, request):
    """SFT's micro-batches hold rows with different token counts: the per-token loss of the step is unchanged."""
    cfg, base = request.getfixturevalue("labelled_run")() if trainer == "dpo" else request.getfixturevalue("sft_run")
    whole, accum = copies(base, tmp_path, "whole", "accum")
    run_stage("train", cfg, open_run(cfg, whole))
    accum_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"grad_accum_steps": 2})})
    run_stage("train", accum_cfg, open_run(accum_cfg, accum, force=True))
    assert_same_training(whole, accum)


def kill_in_third_step(monkeypatch):
    """Make DPO's 3rd optimizer step die (as a kill would); returns the real function to put back."""
    import openrlaif.models.accel as accel

    real, calls = accel.accumulate, {"n": 0}

    def dies_in_third_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(accel, "accumulate", dies_in_third_step)
    return real


def test_killed_dpo_resumes_from_its_checkpoint(tmp_path, labelled_run, monkeypatch):
    """Killed during its 3rd step with a checkpoint after every step, DPO resumes at step 3 (model,
    optimizer, scheduler and RNG restored) and ends where an uninterrupted run ends."""
    import openrlaif.models.accel as accel

    cfg, base = labelled_run("train.checkpoint_every=1")
    whole, killed = copies(base, tmp_path, "whole", "killed")
    run_stage("train", cfg, open_run(cfg, whole))
    real = kill_in_third_step(monkeypatch)
    store = open_run(cfg, killed)
    with pytest.raises(KeyboardInterrupt):
        run_stage("train", cfg, store)
    assert json.loads((store.path("checkpoint") / "progress.json").read_text())["step"] == 2
    monkeypatch.setattr(accel, "accumulate", real)
    run_stage("train", cfg, store)
    assert not store.path("checkpoint").exists()
    assert [r["step"] for r in train_steps(killed)] == [1, 2, 3]
    assert_same_training(whole, killed)


def test_a_checkpoint_of_another_config_is_not_resumed(tmp_path, labelled_run, monkeypatch):
    import openrlaif.models.accel as accel

    cfg, base = labelled_run("train.checkpoint_every=1")
    (run_dir,) = copies(base, tmp_path, "run")
    real = kill_in_third_step(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run_stage("train", cfg, open_run(cfg, run_dir))
    monkeypatch.setattr(accel, "accumulate", real)
    other = cfg.model_copy(update={"train": cfg.train.model_copy(update={"learning_rate": 1e-3})})
    run_stage("train", other, open_run(other, run_dir, force=True))
    assert [r["lr"] for r in train_steps(run_dir)][0] == pytest.approx(1e-3)  # step 1 re-run under the new config


def test_ppo_runs_on_two_ddp_processes(tmp_path, tiny_model_dir):
    cfg = load_config(None, tiny_overrides(tiny_model_dir) + [
        "train.algo=ppo", "rl.reward=test_ppo:count_target", "rl.steps=2", "rl.prompts_per_step=2", "rl.k=2",
        "rl.max_new_tokens=6"])
    store = open_run(cfg, tmp_path / "run")
    here = os.path.dirname(os.path.abspath(__file__))  # test_ppo (the reward) and conftest (its import)
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = os.pathsep.join([here, os.path.dirname(here)] + ([env_path] if env_path else []))
    try:
        launch(2, "train", "-o", str(store.root), cwd=tmp_path)
    finally:
        os.environ["PYTHONPATH"] = env_path
    summary = RunStore(store.root).stage_status("train")["summary"]
    assert summary["episodes"] == 2 * 2 * 2  # each process sampled its prompt's k responses per step
    assert (store.path("policy") / "adapter_config.json").is_file()


def test_dpo_under_bf16_mixed_precision(tmp_path, labelled_run):
    """train.mixed_precision=bf16 goes through accelerate's autocast (on a CPU too) and still learns."""
    cfg, base = labelled_run("train.mixed_precision=bf16")
    (run_dir,) = copies(base, tmp_path, "bf16")
    run_stage("train", cfg, open_run(cfg, run_dir))
    steps = train_steps(run_dir)
    assert len(steps) == 3 and steps[-1]["loss"] < steps[0]["loss"]
    # The reference log-probs are computed under the policy forward's own autocast, so the fresh adapter (the
    # reference) gives the first loss log 2 in bf16 as in fp32 (before, a float32 reference against a bf16 policy
    # started the implicit reward off zero).
    assert steps[0]["loss"] == pytest.approx(0.693147, abs=1e-5)


@pytest.fixture
def sft_run(tmp_path, tiny_model_dir):
    """A tiny run whose train stage is SFT (train.algo=sft) on 12 chat rows of different lengths: 3 steps of 4."""
    from test_sft import chat_file

    data = chat_file(tmp_path / "chat.jsonl", 12)
    cfg = load_config(None, tiny_overrides(tiny_model_dir) + [
        "train.algo=sft", f"sft.data={data}", "sft.batch_size=4", "sft.epochs=1", "sft.eval_fraction=0",
        "sft.learning_rate=0.01", "train.checkpoint_every=0"])
    return cfg, open_run(cfg, tmp_path / "base")



EXIT_SCRIPT = """
import atexit, os, sys
import torch, torch.distributed as dist
from openrlaif.config import TrainConfig
from openrlaif.models.accel import make_accelerator

out = sys.argv[1] + "/rank" + os.environ["RANK"]
atexit.register(lambda: open(out, "w").write(str(dist.is_initialized())))  # runs after handlers registered later
accelerator = make_accelerator(TrainConfig(mixed_precision="no"))
total = torch.ones(1)
dist.all_reduce(total)
assert accelerator.num_processes == 2 and total.item() == 2.0
"""


def test_launched_processes_end_their_process_group_before_the_interpreter_does(tmp_path):
    """Left to interpreter teardown, gloo's threads can abort a finished process (SIGABRT); the accelerator's
    exit hook destroys the group first, on every rank."""
    script = tmp_path / "ends.py"
    script.write_text(EXIT_SCRIPT)
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(tmp_path)]
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert [(tmp_path / f"rank{r}").read_text() for r in (0, 1)] == ["False", "False"]
