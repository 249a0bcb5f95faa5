"""Online DPO on the tiny model: the policy learns what a rule judge prefers from pairs it samples and the judge
labels at every update; a large beta keeps it near the start; with the model judge and its cache, a SIGKILLed run
resumes to the same adapter and judges no comparison twice; 2 DDP processes take the same updates as one."""

import json
import signal
import sqlite3

import pytest

from conftest import tiny_overrides
from openrlaif.config import load_config
from openrlaif.core.store import RunStore, read_jsonl
from openrlaif.pipeline import open_run, run_stage
from test_grpo import rlaif_env, single_and_ddp, train


def more_e(prompt, response):
    """A verifiable rule: the more times the reply has the letter 'e', the better."""
    return response.count("e")


def online_args(*extra):
    return ["train.algo=online_dpo", "feedback.method=rule", "feedback.rule=test_online_dpo:more_e",
            "rl.steps=20", "rl.prompts_per_step=4", "rl.k=4", "rl.max_new_tokens=8", "train.learning_rate=2e-2",
            "train.beta=0.1", "train.lora_r=8", "train.lora_alpha=16",
            "train.lora_target_modules=[q_proj,v_proj,o_proj,down_proj,lm_head]", *extra]


def e_per_answer(rows, steps):
    answers = [r[side][0]["content"] for r in rows if r["step"] in steps for side in ("chosen", "rejected")]
    return sum(a.count("e") for a in answers) / len(answers)


def test_online_dpo_learns_what_the_judge_prefers(tmp_path, tiny_model_dir):
    cfg = load_config(None, tiny_overrides(tiny_model_dir) + online_args())
    store = open_run(cfg, tmp_path / "run")
    summary = run_stage("train", cfg, store)
    rows = read_jsonl(store.path("online_pairs.jsonl"))
    assert summary["steps"] == 20 and summary["pairs"] == len(rows) > 60 and summary["judge"].endswith(":rule")
    assert {r["step"] for r in rows} == set(range(1, 21))
    assert all(r["chosen"][0]["content"].count("e") > r["rejected"][0]["content"].count("e") for r in rows)
    first, last = e_per_answer(rows, range(1, 6)), e_per_answer(rows, range(16, 21))
    assert last > 2 * first + 0.5, (first, last)  # the answers the policy samples now have what the rule likes
    steps = [m for m in store.read_metrics() if m.get("algo") == "online_dpo" and "step" in m]
    assert all(m["kl"] == m["kl"] for m in steps) and steps[-1]["kl"] > steps[0]["kl"]
    run_stage("eval", cfg, store)  # evaluated like any adapter


def test_large_beta_keeps_the_policy_near_the_start(tmp_path, tiny_model_dir):
    kl = {}
    for name, beta in (("free", 0.1), ("tight", 20.0)):
        cfg = load_config(None, tiny_overrides(tiny_model_dir) + online_args(f"train.beta={beta}", "rl.steps=10",
                                                                            "train.loss=ipo"))
        store = open_run(cfg, tmp_path / name)
        run_stage("train", cfg, store)
        kl[name] = sum(m["kl"] for m in store.read_metrics() if m.get("algo") == "online_dpo" and m.get("step", 0) > 6) / 4
    assert abs(kl["tight"]) < kl["free"] / 3, kl


def judged_rows(run_dir):
    with sqlite3.connect(run_dir / "judge_cache.sqlite") as conn:
        return conn.execute("SELECT COUNT(*) FROM judged").fetchone()[0]


def model_judge_runs(tmp_path, tiny_model_dir, names, *extra):
    cfg = load_config(None, tiny_overrides(tiny_model_dir) + online_args(
        "feedback.method=contrastive", "rl.steps=4", "rl.prompts_per_step=2", "rl.k=3", *extra))
    return [open_run(cfg, tmp_path / name).root for name in names]


def test_killed_online_dpo_resumes_and_rejudges_nothing(tmp_path, tiny_model_dir):
    """Killed in update 3 after its comparisons are cached (checkpoint after update 2): the rerun samples the same
    answers, finds their verdicts in the cache, and ends with the uninterrupted run's adapter."""
    straight, killed = model_judge_runs(tmp_path, tiny_model_dir, ["straight", "killed"], "train.checkpoint_every=2")
    done = train(straight, rlaif_env())
    assert done.returncode == 0, done.stderr[-3000:]
    died = train(killed, rlaif_env("train.step@3"))
    assert died.returncode == -signal.SIGKILL, died.stderr[-3000:]
    before = judged_rows(killed)
    resumed = train(killed, rlaif_env())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = RunStore(killed).stage_status("train")["summary"]
    assert summary["resumed_from_step"] == 2 and summary["judge_cache"]["hits"] > 0
    assert judged_rows(killed) == judged_rows(straight) > before  # update 3's verdicts were not computed again
    assert_same_online(straight, killed, atol=1e-5)


def assert_same_online(a_dir, b_dir, atol, rtol=0.0):
    import torch
    from safetensors.torch import load_file

    pa, pb = (read_jsonl(d / "round_1" / "online_pairs.jsonl") for d in (a_dir, b_dir))
    assert len(pa) >= 6  # the same answers were sampled, judged and paired
    assert [(r["chosen"], r["rejected"]) for r in pa] == [(r["chosen"], r["rejected"]) for r in pb]
    assert [r["p_chosen"] for r in pa] == pytest.approx([r["p_chosen"] for r in pb], abs=1e-4)
    a, b = (load_file(str(d / "round_1" / "policy" / "adapter_model.safetensors")) for d in (a_dir, b_dir))
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=rtol)


def test_two_ddp_processes_match_one_process(tmp_path, tiny_model_dir):
    single, ddp = model_judge_runs(tmp_path, tiny_model_dir, ["single", "ddp"], "train.learning_rate=2e-3")
    single_and_ddp(single, ddp)
    losses = [[m["loss"] for m in RunStore(d).read_metrics() if m.get("algo") == "online_dpo" and "step" in m]
              for d in (single, ddp)]
    assert losses[0] == pytest.approx(losses[1], abs=1e-5) and len(losses[0]) == 4
    # Adam's first steps amplify float-order noise on near-zero gradients (as in test_distributed's DPO check)
    assert_same_online(single, ddp, atol=2e-4, rtol=1e-3)
    assert json.loads((ddp / "manifest.json").read_text())  # the run directory stays readable


def test_the_monitor_reads_online_dpos_implicit_reward(tmp_path, tiny_model_dir):
    """monitor.every: DPO's implicit reward on fixed held-out answers against the held-out judge, as for DPO."""
    cfg = load_config(None, tiny_overrides(tiny_model_dir) + online_args("rl.steps=4", "monitor.every=2",
                                                                        "monitor.prompts=2"))
    store = open_run(cfg, tmp_path / "run")
    summary = run_stage("train", cfg, store)
    assert summary["monitor"]["checks"] == 2  # after updates 2 and 4
    rows = [m for m in store.read_metrics() if m.get("stage") == "monitor" or "proxy" in m]
    assert rows and all(r.get("step") in (2, 4) for r in rows if "step" in r)
