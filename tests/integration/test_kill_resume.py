"""Kill -9 and resume: a 2-round configs/quick.yaml run (on the tiny model) is killed with SIGKILL at six
places, rerun into the same directory each time, and must end exactly like an uninterrupted run: the same
candidates and preferences, no pair judged twice, training resumed from its checkpoints, equal adapters
and eval figures.

The kills are real: a subprocess `rlaif run` sends itself SIGKILL at a named point (``openrlaif.faults``),
so no cleanup code runs, exactly as with `kill -9`. One more case kills at a random moment from outside.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_overrides
from openrlaif.core.faults import ENV
from openrlaif.core.store import read_jsonl

REPO = Path(__file__).resolve().parents[2]
RLAIF = str(Path(sys.executable).with_name("rlaif"))

# Where each successive attempt dies (a point and which pass of it); the last attempt runs to the end.
KILLS = [
    "generate.chunk@2",  # round 1: two of four chunks of candidates sampled
    "judge.batch@3",     # round 1: label, three batches of verdicts in the judge cache (after generate resumed)
    "train.step@3",      # round 1: DPO step 3; the checkpoint is at step 2, so step 3 is redone
    "eval.sampled@1",    # round 1: eval answers sampled, nothing judged yet
    "stage.done@2",      # round 1 eval done (1st), round 2 generate done (2nd): between two stages
    "train.step@2",      # round 2: after label, DPO continues round 1's adapter; killed at its checkpoint
]


def command(model_dir: Path, out: Path) -> list[str]:
    overrides = tiny_overrides(model_dir) + [
        "train.checkpoint_every=2", "generate.batch_size=3", "label.batch_size=2", "train.batch_size=1",
        "monitor.prompts=2", "eval.red_team_per_category=1", "eval.max_anchor_prompts=2",
        # float32 sampling: the resumed adapter matches to ~1e-5, which a bf16 copy's weight roundings can amplify
        # into eval's KL (-0.0386 against -0.0594 once in four CI runs on an AMX CPU, session 43)
        "model.sample_dtype=same"]
    return [RLAIF, "run", "-c", str(REPO / "configs" / "quick.yaml"), "-o", str(out), "--rounds", "2", *overrides]


def attempt(cmd: list[str], kill_at: str | None, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop(ENV, None)
    if kill_at:
        env[ENV] = kill_at
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("kill")
    straight = attempt(command(tiny_model_dir, root / "straight"), None)
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed_dir = root / "killed"
    for kill_at in KILLS:
        proc = attempt(command(tiny_model_dir, killed_dir), kill_at)
        assert proc.returncode == -signal.SIGKILL, (kill_at, proc.returncode, proc.stderr[-3000:])
    final = attempt(command(tiny_model_dir, killed_dir), None)
    assert final.returncode == 0, final.stderr[-3000:]
    return root / "straight", killed_dir, final


def manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def test_same_data_in_both_rounds(runs):
    straight, killed, _ = runs
    for k in (1, 2):
        for name in ("candidates.jsonl", "preferences.jsonl"):
            assert read_jsonl(killed / f"round_{k}" / name) == read_jsonl(straight / f"round_{k}" / name), (k, name)
    assert not list(killed.rglob("*.partial")) and not list(killed.rglob("*.tmp"))
    assert not (killed / "round_1" / "checkpoint").exists() and not (killed / "round_2" / "checkpoint").exists()


def test_work_resumed_not_redone(runs):
    straight, killed, _ = runs
    st = {key: v["summary"] for key, v in manifest(straight)["stages"].items()}
    ki = {key: v["summary"] for key, v in manifest(killed)["stages"].items()}
    assert st["round_1/generate"]["resumed_chunks"] == 0 and ki["round_1/generate"]["resumed_chunks"] == 2
    assert ki["round_1/generate"]["sequences"] == st["round_1/generate"]["sequences"]
    # label: the three committed batches were read back from the cache, only the rest judged
    stats_s = json.loads((straight / "round_1" / "judge_stats.json").read_text())["cache"]
    stats_k = json.loads((killed / "round_1" / "judge_stats.json").read_text())["cache"]
    assert stats_s["hits"] == 0 and stats_k["hits"] >= 3 * 2
    assert stats_k["hits"] + stats_k["misses"] == stats_s["misses"]
    # train: from the checkpoints (round 1: step 2 of the killed step 3; round 2: step 2)
    assert ki["round_1/train"]["resumed_from_step"] == 2 and ki["round_2/train"]["resumed_from_step"] == 2
    assert st["round_1/train"]["resumed_from_step"] == 0
    for key in ("steps", "final_loss", "final_reward_accuracy", "first_loss", "pairs"):
        assert ki["round_1/train"][key] == pytest.approx(st["round_1/train"][key], abs=1e-5), key
        assert ki["round_2/train"][key] == pytest.approx(st["round_2/train"][key], abs=1e-5), key
    assert all(v["status"] == "done" for v in manifest(killed)["stages"].values())


def test_same_policies_and_eval(runs):
    straight, killed, _ = runs
    for k in (1, 2):
        a = load_file(str(straight / f"round_{k}" / "policy" / "adapter_model.safetensors"))
        b = load_file(str(killed / f"round_{k}" / "policy" / "adapter_model.safetensors"))
        assert a.keys() == b.keys()
        for name in a:
            torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=1e-4)
        es = json.loads((straight / f"round_{k}" / "eval.json").read_text())
        ek = json.loads((killed / f"round_{k}" / "eval.json").read_text())
        for key in ("win_rate", "wins", "ties", "losses", "n", "kl_to_start"):
            assert ek[key] == pytest.approx(es[key], abs=1e-4), (k, key)
        assert read_jsonl(killed / f"round_{k}" / "samples.jsonl") == read_jsonl(straight / f"round_{k}" / "samples.jsonl")
    assert [r["win_rate"] for r in manifest(killed)["rounds"]] == [r["win_rate"] for r in manifest(straight)["rounds"]]


def test_kill_at_random_moments(runs, tiny_model_dir, tmp_path):
    """Three kill -9 from outside at seeded random moments (not at any hook), then the run finishes with the
    same preferences and eval as the uninterrupted one."""
    straight, _, _ = runs
    out = tmp_path / "run"
    cmd = command(tiny_model_dir, out)
    rng = random.Random(7)
    killed = 0
    for _ in range(3):
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        env.pop(ENV, None)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(3.0, 9.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait(timeout=600)
    assert killed >= 2
    final = attempt(cmd, None)
    assert final.returncode == 0, final.stderr[-3000:]
    for k in (1, 2):
        assert read_jsonl(out / f"round_{k}" / "preferences.jsonl") == read_jsonl(straight / f"round_{k}" / "preferences.jsonl")
        es = json.loads((straight / f"round_{k}" / "eval.json").read_text())
        ek = json.loads((out / f"round_{k}" / "eval.json").read_text())
        assert ek["win_rate"] == pytest.approx(es["win_rate"], abs=1e-4)
