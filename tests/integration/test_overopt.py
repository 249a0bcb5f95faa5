"""The over-optimisation monitor on the tiny model: a proxy the policy can game ('e' count) against a
held-out score that agrees at first and then turns (too many 'e's are penalised), as in Gao et al.'s
gold-vs-proxy curves. The alarm must fire, the best checkpoint by the held-out score must be kept, and a
held-out judge that agrees with the proxy must never fire it."""

import json

import pytest
from conftest import die_on_call, tiny_overrides

from openrlaif.config import load_config
from openrlaif.evaluate.overopt import first_alarm
from openrlaif.pipeline import open_run, run_stage


def count_e(prompts, responses):
    return [float(r.count("e")) for r in responses]


def goodhart(prompts, responses):
    """Agrees with the proxy up to 2 'e's per answer, then falls: more is worse."""
    return [e - e * e / 4 for e in count_e(prompts, responses)]


def monitor_config(tiny_model_dir, algo, *extra):
    return load_config(None, tiny_overrides(tiny_model_dir) + [
        f"train.algo={algo}", "rl.reward=test_overopt:count_e", "rl.steps=16", "rl.prompts_per_step=4", "rl.k=4",
        "rl.max_new_tokens=8", "rl.kl_coef=0.0", "train.learning_rate=2e-2", "train.lora_r=8", "train.lora_alpha=16",
        "train.lora_target_modules=[q_proj,v_proj,o_proj,down_proj,lm_head]", "monitor.every=2", "monitor.prompts=4",
        "monitor.samples_per_prompt=4", "monitor.patience=2", *extra])


def checks(store):
    return [m for m in store.read_metrics() if m.get("stage") == "monitor"]


# PPO at this learning rate climbs the proxy in zigzags (e.g. proxy 1.0, 1.1, 3.3, 3.2, 7.7, 4.6 at checks 1-6, each
# rise with a held-out fall): the order of its float sums decides whether two rises come in a row, so its case asks
# for one diverging check and RLOO's, which climbs steadily, for two
@pytest.mark.parametrize(("algo", "patience"), [("rloo", 2), ("ppo", 1)])
def test_the_alarm_fires_when_the_proxy_rises_and_the_heldout_score_falls(tmp_path, tiny_model_dir, algo, patience):
    cfg = monitor_config(tiny_model_dir, algo, "monitor.heldout=test_overopt:goodhart", f"monitor.patience={patience}")
    store = open_run(cfg, tmp_path / "run")
    summary = run_stage("train", cfg, store)
    rows = checks(store)
    assert [r["step"] for r in rows] == [2, 4, 6, 8, 10, 12, 14, 16]
    proxy, heldout = [r["proxy"] for r in rows], [r["heldout"] for r in rows]
    assert proxy[-1] > proxy[0] + 1.0, proxy  # the policy learned the proxy...
    assert heldout[-1] < max(heldout), heldout  # ...past the held-out score's peak
    alarm = first_alarm(proxy, heldout, patience)
    assert alarm is not None and summary["monitor"]["alarm_step"] == rows[alarm]["step"], (proxy, heldout)
    assert rows[alarm]["alarm"] and not any(r["alarm"] for r in rows[:alarm])
    for r in rows:
        assert r["sqrt_kl"] == pytest.approx(max(r["kl"], 0) ** 0.5, abs=1e-5)
        assert r["heldout_judge"] == "test_overopt:goodhart"
    # The best adapter by the held-out score is kept, with the check it came from.
    best = json.loads((store.path("best_policy") / "best.json").read_text())
    assert best["heldout"] == max(heldout) and best["step"] == rows[heldout.index(max(heldout))]["step"]
    assert (store.path("best_policy") / "adapter_model.safetensors").is_file()


def test_on_alarm_stop_ends_training_and_final_policy_best_keeps_the_best_adapter(tmp_path, tiny_model_dir):
    cfg = monitor_config(tiny_model_dir, "rloo", "monitor.heldout=test_overopt:goodhart", "monitor.on_alarm=stop",
                         "monitor.final_policy=best")
    store = open_run(cfg, tmp_path / "run")
    summary = run_stage("train", cfg, store)
    alarm_step = summary["monitor"]["alarm_step"]
    assert alarm_step is not None and summary["steps"] == alarm_step < 16
    policy = (store.path("policy") / "adapter_model.safetensors").read_bytes()
    assert policy == (store.path("best_policy") / "adapter_model.safetensors").read_bytes()


def test_a_heldout_judge_that_agrees_with_the_proxy_never_alarms(tmp_path, tiny_model_dir):
    cfg = monitor_config(tiny_model_dir, "rloo", "monitor.heldout=test_overopt:count_e", "monitor.patience=1")
    store = open_run(cfg, tmp_path / "run")
    summary = run_stage("train", cfg, store)
    rows = checks(store)
    assert len(rows) == 8 and all(r["proxy"] == r["heldout"] for r in rows)
    assert summary["monitor"]["alarm_step"] is None and not any(r["alarm"] for r in rows)


def test_the_monitor_needs_heldout_prompts(tmp_path, tiny_model_dir):
    from openrlaif.core.errors import UserError

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi there", "split": "train"}\n')
    # validate_inputs refuses a prompt file without held-out rows before the monitor is reached, so build
    # the monitor directly.
    from openrlaif.models.loading import load_causal_lm
    from openrlaif.optimize.monitor import OveroptimizationMonitor

    cfg = monitor_config(tiny_model_dir, "rloo", f"data.prompts={prompts}")
    tok = load_causal_lm(str(tiny_model_dir), "float32").tokenizer
    with pytest.raises(UserError, match="monitor.every"):
        OveroptimizationMonitor(cfg, None, 1, tok, count_e)


def test_a_killed_run_resumes_with_its_monitor_history(tmp_path, tiny_model_dir, monkeypatch):
    """The checks made before the checkpoint come back from it; the checks after it are redone: the
    monitor rows equal an uninterrupted run's (the check samples are seeded apart from training)."""
    import openrlaif.optimize.rollout as rollout

    cfg = monitor_config(tiny_model_dir, "rloo", "monitor.heldout=test_overopt:goodhart", "rl.steps=4",
                         "monitor.every=1", "train.checkpoint_every=2")
    whole = open_run(cfg, tmp_path / "whole")
    run_stage("train", cfg, whole)
    # sample() calls: rollout 1, check 1, rollout 2, check 2 (checkpoint), rollout 3 -> killed there
    real_sample = die_on_call(monkeypatch, rollout, "sample", 5)
    killed = open_run(cfg, tmp_path / "killed")
    with pytest.raises(KeyboardInterrupt):
        run_stage("train", cfg, killed)
    monkeypatch.setattr(rollout, "sample", real_sample)
    run_stage("train", cfg, killed)
    a, b = checks(whole), checks(killed)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for x, y in zip(a, b):
        assert x["proxy"] == pytest.approx(y["proxy"], abs=1e-6) and x["heldout"] == pytest.approx(y["heldout"], abs=1e-6)
        assert x["kl"] == pytest.approx(y["kl"], abs=1e-3)


def test_dpo_is_monitored_with_its_implicit_reward(tmp_path, tiny_model_dir):
    """DPO's proxy is its implicit reward beta * log(pi / pi_start) on the check answers: with the judge held
    out, each check logs it, and it equals beta times the check's KL estimate (same answers, same log-probs)."""
    cfg = load_config(None, tiny_overrides(tiny_model_dir) + ["train.soft_labels=false", "train.epochs=2",
                                                              "monitor.every=1", "monitor.prompts=2"])
    store = open_run(cfg, tmp_path / "run")
    for stage in ("generate", "label"):
        run_stage(stage, cfg, store)
    summary = run_stage("train", cfg, store)
    rows = checks(store)
    assert len(rows) == summary["steps"] == summary["monitor"]["checks"] >= 2
    for r in rows:
        assert r["heldout_judge"] == "judge" and r["heldout"] == r["heldout"]  # scored (not NaN)
        assert r["proxy"] == pytest.approx(cfg.train.beta * r["kl"], abs=1e-5)
    assert (store.path("best_policy") / "best.json").is_file()
