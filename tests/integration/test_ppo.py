"""PPO on the tiny model with a synthetic reward: the reward rises while the KL to the start stays
near its target; with a large KL coefficient the policy barely moves; the critic learns (explained
variance rises); a killed run resumes from its checkpoint and ends where an uninterrupted one does."""

import pytest
import torch

from conftest import die_on_call, tiny_overrides
from openrlaif.config import load_config
from openrlaif.pipeline import open_run, run_stage


def count_target(prompts, responses):
    """Synthetic, dense reward: how many times the reply contains the letter 'e'."""
    return [r.count("e") for r in responses]


def ppo_config(tiny_model_dir, *extra):
    return load_config(None, tiny_overrides(tiny_model_dir) + [
        "train.algo=ppo", "rl.reward=test_ppo:count_target", "rl.steps=20", "rl.prompts_per_step=4", "rl.k=4",
        "rl.max_new_tokens=8", "rl.temperature=1.0", "train.learning_rate=1e-2", "train.lora_r=8",
        "train.lora_alpha=16", "ppo.epochs=2", "ppo.minibatch_size=8", "ppo.vf_coef=0.1",
        "train.lora_target_modules=[q_proj,v_proj,o_proj,down_proj,lm_head]", *extra])


def steps(store):
    return [m for m in store.read_metrics() if m.get("algo") == "ppo" and "step" in m]


def mean(rows, key):
    return sum(r[key] for r in rows) / len(rows)


def test_ppo_raises_the_reward_and_logs_its_diagnostics(tmp_path, tiny_model_dir):
    cfg = ppo_config(tiny_model_dir, "rl.kl_coef=0.01")
    store = open_run(cfg, tmp_path / "run")
    summary = run_stage("train", cfg, store)
    rows = steps(store)
    assert len(rows) == 20 and summary["episodes"] == 20 * 16
    assert summary["reward_last"] > 2 * summary["reward_first"] + 1.0, summary
    for key in ("approx_kl", "clipfrac", "entropy", "explained_variance", "kl", "kl_coef", "reward_std",
                "response_length", "lr", "policy_loss", "value_loss", "value_clipfrac"):
        assert all(torch.isfinite(torch.tensor(float(r[key]))) for r in rows), key
    assert any(r["clipfrac"] > 0 for r in rows)  # the ratio clipping is exercised
    assert (store.path("policy") / "adapter_config.json").is_file()
    assert (store.path("critic") / "value_head.safetensors").is_file()
    assert not store.path("checkpoint").exists()
    evaluation = run_stage("eval", cfg, store)  # the PPO adapter is evaluated like a DPO one
    # The policy moved far from the start (training KL ~ tens of nats): the eval's KL estimate sees it.
    assert evaluation["kl_to_start"] > 1.0, evaluation


def test_the_critic_learns_a_predictable_return(tmp_path, tiny_model_dir):
    """When the return is predictable (it depends on the prompt only) the value head explains most of it.
    (On the 'e'-count reward the return is mostly future sampling noise: explained variance stays near 0.)"""
    cfg = ppo_config(tiny_model_dir, "rl.kl_coef=0.0", "rl.reward=test_ppo:prompt_reward", "rl.steps=12")
    store = open_run(cfg, tmp_path / "run")
    run_stage("train", cfg, store)
    rows = steps(store)
    assert rows[0]["explained_variance"] == 0.0  # the head starts at zero: it predicts nothing
    assert mean(rows[-4:], "explained_variance") > 0.5, [r["explained_variance"] for r in rows]


def test_large_kl_coef_keeps_the_policy_near_the_start(tmp_path, tiny_model_dir):
    free_cfg = ppo_config(tiny_model_dir, "rl.kl_coef=0.01", "rl.steps=12")
    tight_cfg = ppo_config(tiny_model_dir, "rl.kl_coef=5.0", "rl.steps=12")
    free, tight = open_run(free_cfg, tmp_path / "free"), open_run(tight_cfg, tmp_path / "tight")
    run_stage("train", free_cfg, free)
    run_stage("train", tight_cfg, tight)
    kl_free, kl_tight = mean(steps(free)[-4:], "kl"), mean(steps(tight)[-4:], "kl")
    gain_free = mean(steps(free)[-4:], "reward_mean") - steps(free)[0]["reward_mean"]
    gain_tight = mean(steps(tight)[-4:], "reward_mean") - steps(tight)[0]["reward_mean"]
    assert kl_tight < kl_free / 3 and kl_tight < 1.0, (kl_tight, kl_free)  # nats per 8-token response
    assert gain_tight < gain_free, (gain_tight, gain_free)


def test_adaptive_kl_controller_follows_the_measured_kl(tmp_path, tiny_model_dir):
    """Each step's coefficient moves down when that step's KL was under the target and up when it was over,
    by at most the controller's clip (x1.8 per step at horizon 4 with 16 episodes)."""
    cfg = ppo_config(tiny_model_dir, "rl.kl_coef=0.1", "ppo.kl_target=2.0", "ppo.kl_horizon=4", "rl.steps=12")
    store = open_run(cfg, tmp_path / "run")
    summary = run_stage("train", cfg, store)
    rows = steps(store)
    coefs = [r["kl_coef"] for r in rows] + [summary["kl_coef_last"]]
    assert any(r["kl"] > 2.0 for r in rows) and any(r["kl"] < 2.0 for r in rows)
    for r, before, after in zip(rows, coefs, coefs[1:]):
        expected = before * (1 + max(min(r["kl"] / 2.0 - 1, 0.2), -0.2) * 16 / 4)
        assert after == pytest.approx(expected, rel=1e-3, abs=1e-6), (r["step"], r["kl"], before, after)


def test_separate_critic_trains_too(tmp_path, tiny_model_dir):
    cfg = ppo_config(tiny_model_dir, "rl.kl_coef=0.01", "ppo.critic=separate", "rl.steps=3")
    store = open_run(cfg, tmp_path / "run")
    summary = run_stage("train", cfg, store)
    assert summary["critic"] == "separate" and len(steps(store)) == 3
    assert (store.path("critic") / "adapter_config.json").is_file()


def _adapter_weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def test_killed_ppo_resumes_from_its_checkpoint(tmp_path, tiny_model_dir, monkeypatch):
    import openrlaif.optimize.rollout as rollout

    cfg = ppo_config(tiny_model_dir, "rl.steps=4", "train.checkpoint_every=2")
    whole = open_run(cfg, tmp_path / "whole")
    run_stage("train", cfg, whole)

    real_sample = die_on_call(monkeypatch, rollout, "sample", 3)  # killed at the third step's rollout
    killed = open_run(cfg, tmp_path / "killed")
    with pytest.raises(KeyboardInterrupt):
        run_stage("train", cfg, killed)
    assert (killed.path("checkpoint") / "progress.json").is_file()
    monkeypatch.setattr(rollout, "sample", real_sample)
    run_stage("train", cfg, killed)
    assert [r["step"] for r in steps(killed)] == [1, 2, 3, 4]
    a, b = _adapter_weights(whole.path("policy")), _adapter_weights(killed.path("policy"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4)


def prompt_reward(prompts, responses):
    """A reward the critic can predict from the prompt alone: long prompts pay 1, short ones 0."""
    return [float(len(p[-1]["content"]) > 40) for p in prompts]


def test_rlaif_run_with_ppo_on_the_rounds_reward_model(tmp_path, tiny_model_dir):
    """`rlaif run` with train.algo=ppo and rl.reward=reward_model chains generate -> label -> reward -> PPO -> eval."""
    import json

    from openrlaif.pipeline import run

    cfg = load_config(None, tiny_overrides(tiny_model_dir) + [
        "train.algo=ppo", "rl.reward=reward_model", "rl.steps=2", "rl.prompts_per_step=2", "rl.k=2",
        "rl.max_new_tokens=6", "reward.epochs=1"])
    result = run(cfg, tmp_path / "run")
    root = tmp_path / "run" / "round_1"
    for name in ("candidates.jsonl", "preferences.jsonl", "reward_model/ensemble.json", "policy/adapter_config.json",
                 "critic/value_head.safetensors", "eval.json"):
        assert (root / name).exists(), name
    assert result["eval"]["n"] == json.loads((root / "eval.json").read_text())["n"]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert "PPO" in (tmp_path / "run" / "report.md").read_text()
    assert json.dumps(manifest).count('"done"') >= 5


def test_ppo_on_a_missing_reward_model_fails_with_the_fix(tmp_path, tiny_model_dir):
    from openrlaif.core.errors import UserError
    from openrlaif.pipeline import check_stage_inputs

    cfg = ppo_config(tiny_model_dir, "rl.reward=reward_model")
    store = open_run(cfg, tmp_path / "run")
    with pytest.raises(UserError, match="rlaif reward -o"):
        check_stage_inputs("train", store, 1, cfg)
