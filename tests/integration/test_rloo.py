"""RLOO on the tiny model with a synthetic reward: the reward rises while the KL penalty holds the
policy near the start; with a large KL coefficient the policy barely moves."""


import pytest

from conftest import tiny_overrides
from openrlaif.config import load_config
from openrlaif.pipeline import open_run, run_stage


def count_target(prompts, responses):
    """Synthetic, dense reward: how many times the reply contains the letter 'e'."""
    return [r.count("e") for r in responses]


def rl_config(tiny_model_dir, *extra):
    return load_config(None, tiny_overrides(tiny_model_dir) + [
        "train.algo=rloo", "rl.reward=test_rloo:count_target", "rl.steps=30", "rl.prompts_per_step=4", "rl.k=4",
        "rl.max_new_tokens=8", "rl.temperature=1.0", "train.learning_rate=2e-2", "train.lora_r=8", "train.lora_alpha=16",
        # A random tiny model moves its token distribution fastest through the output layer.
        "train.lora_target_modules=[q_proj,v_proj,o_proj,down_proj,lm_head]", *extra])


def reward_curve(store):
    return [m for m in store.read_metrics() if m.get("algo") == "rloo" and "step" in m]


@pytest.mark.parametrize("whiten", [False, True])
def test_rloo_raises_the_reward(tmp_path, tiny_model_dir, whiten):
    # whitened, the scores have unit spread: the KL coefficient is scaled down with them
    cfg = rl_config(tiny_model_dir, "rl.kl_coef=0.01" if not whiten else "rl.kl_coef=0.002", f"rl.whiten_scores={whiten}")
    store = open_run(cfg, tmp_path / "run")
    summary = run_stage("train", cfg, store)
    steps = reward_curve(store)
    assert len(steps) == 30 and summary["episodes"] == 30 * 16
    assert summary["reward_last"] > 2 * summary["reward_first"] + 1.0, summary
    assert (store.path("policy") / "adapter_config.json").is_file()
    run_stage("eval", cfg, store)  # the RL adapter is evaluated like a DPO one


def test_large_kl_coef_keeps_the_policy_near_the_start(tmp_path, tiny_model_dir):
    free = open_run(rl_config(tiny_model_dir, "rl.kl_coef=0.01"), tmp_path / "free")
    tight_cfg = rl_config(tiny_model_dir, "rl.kl_coef=5.0")
    tight = open_run(tight_cfg, tmp_path / "tight")
    run_stage("train", rl_config(tiny_model_dir, "rl.kl_coef=0.01"), free)
    run_stage("train", tight_cfg, tight)
    kl_free = sum(m["kl"] for m in reward_curve(free)[-5:]) / 5
    kl_tight = sum(m["kl"] for m in reward_curve(tight)[-5:]) / 5
    gain_free = reward_curve(free)[-1]["reward_mean"] - reward_curve(free)[0]["reward_mean"]
    gain_tight = reward_curve(tight)[-1]["reward_mean"] - reward_curve(tight)[0]["reward_mean"]
    assert kl_tight < kl_free / 3 and kl_tight < 2.0, (kl_tight, kl_free)  # nats per 8-token response
    assert gain_tight < gain_free, (gain_tight, gain_free)


@pytest.mark.parametrize("method", ["contrastive", "pointwise"])
def test_rlaif_run_with_rloo_on_the_judges_score(tmp_path, tiny_model_dir, method):
    """d-RLAIF: the judge's score of each answer is the reward (the contrastive log-ratio, or the pointwise
    expected rating); `rlaif run` skips generate/label."""
    import json

    from openrlaif.pipeline import run

    cfg = load_config(None, tiny_overrides(tiny_model_dir) + [
        "train.algo=rloo", "rl.reward=judge", "rl.steps=2", "rl.prompts_per_step=2", "rl.k=2", "rl.max_new_tokens=6",
        f"feedback.method={method}"])
    result = run(cfg, tmp_path / "run")
    root = tmp_path / "run" / "round_1"
    assert not (root / "candidates.jsonl").exists() and (root / "policy" / "adapter_config.json").is_file()
    assert json.loads((root / "eval.json").read_text())["n"] == 4
    assert result["eval"]["n"] == 4
    assert "RLOO" in (tmp_path / "run" / "report.md").read_text()
    rewards = [m["reward_mean"] for m in run_metrics(tmp_path / "run") if m.get("algo") == "rloo" and "step" in m]
    assert len(rewards) == 2 and all(r == r for r in rewards)  # finite scores from the judge
    if method == "pointwise":
        assert all(0.0 <= r <= 9.0 for r in rewards)  # an expected 0-9 rating


def run_metrics(root):
    from openrlaif.core.store import RunStore

    return RunStore(root).read_metrics()


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_the_fresh_adapter_is_the_reference_in_every_precision(tmp_path, tiny_model_dir, precision):
    """Step 1's KL to the reference is zero (the adapter starts as the reference) also under bf16 autocast: the
    reference log-probs are computed in the policy forward's precision, not in float32 beside a bf16 policy."""
    cfg = rl_config(tiny_model_dir, "rl.steps=1", f"train.mixed_precision={precision}")  # a bare no is read as 'no'
    store = open_run(cfg, tmp_path / "run")
    run_stage("train", cfg, store)
    (first,) = reward_curve(store)
    assert first["kl"] == pytest.approx(0.0, abs=1e-6), first
