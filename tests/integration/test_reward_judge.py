"""The reward-model seam: a HF one-label sequence classifier (or a reward function) as the labeler."""

import json
import math

import pytest
import torch
from conftest import build_tokenizer, tiny_overrides

from openrlaif.config import load_config
from openrlaif.core.store import read_jsonl
from openrlaif.data.constitution import Principle
from openrlaif.feedback.judges import RewardModelJudge
from openrlaif.feedback.types import Comparison
from openrlaif.pipeline import open_run, run_stage
from openrlaif.reward.model import CallableReward, HFRewardModel, load_reward

P = Principle("p", "Which is better?")


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = build_tokenizer()
    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, num_labels=1, pad_token_id=tok.pad_token_id)
    model = LlamaForSequenceClassification(config)
    out = tmp_path_factory.mktemp("rm") / "rm"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_hf_reward_model_scores_are_batch_and_padding_independent(rm_dir):
    rm = HFRewardModel.load(str(rm_dir), batch_size=3)
    convs = [[{"role": "user", "content": "Say hello."}]] * 3
    responses = ["Hello there, friend.", "Go away.", "The quick brown fox jumps over the lazy dog."]
    together = rm.rewards(convs, responses)
    alone = [HFRewardModel.load(str(rm_dir), batch_size=1).rewards(convs[:1], [r])[0] for r in responses]
    assert together == pytest.approx(alone, abs=1e-5)
    assert len(set(round(x, 6) for x in together)) == 3


def test_reward_model_judge_is_sigmoid_of_reward_difference(rm_dir):
    rm = HFRewardModel.load(str(rm_dir))
    judge = RewardModelJudge(rm, temperature=0.5)
    conv = [{"role": "user", "content": "Say hello."}]
    [v] = judge.compare([Comparison("Say hello.", "Hello there.", "Go away.", P, conv)])
    r1, r2 = rm.rewards([conv, conv], ["Hello there.", "Go away."])
    assert v.p_first == pytest.approx(1 / (1 + math.exp(-(r1 - r2) / 0.5)), abs=1e-6)
    assert v.score_ab == v.score_ba == v.p_first


def length_reward(prompts, responses):
    return [len(r) for r in responses]


def test_callable_reward_and_errors(tmp_path):
    from openrlaif.core.errors import UserError

    rm = load_reward("test_reward_judge:length_reward")
    assert isinstance(rm, CallableReward) and rm.rewards([[]], ["abc"]) == [3.0]
    with pytest.raises(UserError, match="neither a model directory"):
        load_reward(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        load_reward(str(tmp_path / "empty"))


def test_label_stage_with_a_reward_model(tmp_path, tiny_model_dir, rm_dir):
    cfg = load_config(None, tiny_overrides(tiny_model_dir) + ["feedback.method=reward_model",
                                                               f"feedback.reward_model={rm_dir}", "feedback.temperature=1"])
    store = open_run(cfg, tmp_path / "run")
    run_stage("generate", cfg, store)
    run_stage("label", cfg, store)
    prefs = read_jsonl(store.path("preferences.jsonl"))
    stats = json.loads(store.path("judge_stats.json").read_text())
    assert stats["method"] == "reward_model" and prefs
    rm = HFRewardModel.load(str(rm_dir))
    for p in prefs:
        rc, rr = rm.rewards([p["prompt"]] * 2, [p["chosen"][0]["content"], p["rejected"][0]["content"]])
        assert rc >= rr and p["p_chosen"] == pytest.approx(1 / (1 + math.exp(-(rc - rr))), abs=1e-5)
