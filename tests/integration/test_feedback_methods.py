"""The contrastive judge and `rlaif judge-eval` on the tiny model; labelled-pair loading."""

import json
import subprocess
import sys

import pytest
import torch

from openrlaif.core.errors import UserError
from openrlaif.core.text import with_system
from openrlaif.data.constitution import Principle, load_constitution
from openrlaif.data.pairs import load_labelled_pairs
from openrlaif.evaluate.judge_eval import evaluate_judge
from openrlaif.feedback.methods import ContrastiveJudge
from openrlaif.feedback.scoring import position_stats
from openrlaif.feedback.types import Comparison
from openrlaif.models.loading import load_causal_lm
from openrlaif.models.logprobs import batch_logprobs, encode_response


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_causal_lm(str(tiny_model_dir))


PRINCIPLE = Principle("p", "Which response is kinder?", 1.0, "You are kind.", "You are rude.")


def test_contrastive_judge_matches_manual_likelihood_ratio(tiny):
    judge = ContrastiveJudge(tiny.model, tiny.tokenizer, batch_size=3, normalize="sum", temperature=2.0)
    conv = [{"role": "user", "content": "Say hello."}]
    a, b = "Hello there, friend.", "Go away."
    [v] = judge.compare([Comparison("Say hello.", a, b, PRINCIPLE, conv)])

    def ratio(text):
        tok = tiny.tokenizer
        pos = encode_response(tok, with_system(conv, "You are kind."), text, 384)
        neg = encode_response(tok, with_system(conv, "You are rude."), text, 384)
        with torch.no_grad():
            lp = batch_logprobs(tiny.model, [pos, neg], tok.pad_token_id)
        return (lp[0] - lp[1]).item()

    expected = 1 / (1 + torch.exp(torch.tensor(-(ratio(a) - ratio(b)) / 2.0)).item())
    assert v.p_first == pytest.approx(expected, abs=1e-5)
    assert v.raw["score_first"] == pytest.approx(ratio(a), abs=1e-4)


def test_contrastive_judge_is_order_free_and_scores_each_response_once(tiny):
    judge = ContrastiveJudge(tiny.model, tiny.tokenizer, batch_size=4)
    calls = []
    original = judge.scores
    judge.scores = lambda units: calls.append(len(units)) or original(units)
    texts = ["An apple.", "The sea is wide.", "Numbers one two."]
    items = [Comparison("Q?", texts[i], texts[j], PRINCIPLE) for i in range(3) for j in range(3) if i != j]
    verdicts = judge.compare(items)
    assert calls == [3]  # three distinct responses, six ordered pairs
    by_pair = {(it.first, it.second): v.p_first for it, v in zip(items, verdicts)}
    for (x, y), p in by_pair.items():
        assert p == pytest.approx(1 - by_pair[(y, x)], abs=1e-6)
    stats = position_stats(verdicts)
    assert stats["position_consistency"] == 1.0 and stats["first_position_rate"] == 0.5


def test_load_labelled_pairs_formats(tmp_path):
    f = tmp_path / "pairs.jsonl"
    rows = [
        {"context": "Human: hi\n\nAssistant: hello\n\nHuman: help me", "chosen": "Sure.", "rejected": "No."},
        {"prompt": "Q?", "chosen": [{"role": "assistant", "content": "A1"}], "rejected": "A2", "principle": "helpful"},
        {"instruction": "Do X", "output_1": "o1", "output_2": "o2", "gpt4_preference": 2},
        {"instruction": "Tie", "output_1": "o1", "output_2": "o2", "preference": 1.5},
    ]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = load_labelled_pairs(str(f))
    assert len(pairs) == 3  # the tie carries no label
    assert pairs[0].messages[-1] == {"role": "user", "content": "help me"} and pairs[0].chosen == "Sure."
    assert pairs[1].chosen == "A1" and pairs[1].principle == "helpful"
    assert (pairs[2].chosen, pairs[2].rejected, pairs[2].prompt) == ("o2", "o1", "Do X")
    assert len(load_labelled_pairs(str(f), limit=2)) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"foo": 1}) + "\n")
    with pytest.raises(UserError, match="bad.jsonl:1"):
        load_labelled_pairs(str(bad))
    with pytest.raises(UserError, match="not found"):
        load_labelled_pairs(str(tmp_path / "missing.jsonl"))


def test_builtin_calibration_set_is_balanced():
    pairs = load_labelled_pairs("builtin")
    ids = {p.id for p in load_constitution("builtin").principles}
    assert len(pairs) >= 60 and all(p.principle in ids for p in pairs)
    shorter = sum(len(p.chosen) < len(p.rejected) for p in pairs) / len(pairs)
    assert 0.35 < shorter < 0.65  # a judge cannot score well by preferring length


class _OracleJudge:
    """Knows the right answer from the text: a real judge stand-in to check the metric plumbing."""

    name, method = "oracle", "oracle"

    def __init__(self, good):
        self.good = good

    def compare(self, items):
        from openrlaif.feedback.types import Verdict

        return [Verdict(0.9 if it.first in self.good else 0.1, 0.9 if it.first in self.good else 0.1,
                        0.9 if it.first in self.good else 0.1, it.principle.id) for it in items]


def test_evaluate_judge_metrics_with_known_judges():
    pairs = load_labelled_pairs("builtin")
    constitution = load_constitution("builtin")
    good = {p.chosen for p in pairs}
    m = evaluate_judge(_OracleJudge(good), pairs, constitution).metrics
    assert m["agreement"] == 1.0 and m["brier"] == pytest.approx(0.01) and m["ece"] == pytest.approx(0.1)
    anti = evaluate_judge(_OracleJudge({p.rejected for p in pairs}), pairs, constitution).metrics
    assert anti["agreement"] == 0.0
    # the oracle agrees whatever the lengths; a length detector would not
    assert m["bias"]["agreement_when_winner_shorter"] in (None, 1.0)
    assert m["bias"]["agreement_when_winner_longer"] in (None, 1.0)
    with pytest.raises(UserError, match="--principle"):
        evaluate_judge(_OracleJudge(good), pairs, constitution, principle="nope")


def test_judge_eval_cli_on_tiny_model(tiny_model_dir, tmp_path):
    out = tmp_path / "je.json"
    proc = subprocess.run(
        [sys.executable, "-m", "openrlaif.cli", "judge-eval", "--limit", "12", "--json", str(out),
         f"model.policy={tiny_model_dir}", "feedback.method=contrastive"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = json.loads(out.read_text())
    for key in ("agreement", "position_consistency", "first_position_rate", "ece", "brier", "unscored",
                "pairs_per_s", "n", "method"):
        assert key in m, key
    assert m["n"] == 12 and m["method"] == "contrastive" and 0.0 <= m["agreement"] <= 1.0
    assert m["position_consistency"] == 1.0
    bias = m["bias"]
    assert bias["longer_wins_agreement"] + bias["shorter_wins_agreement"] == pytest.approx(1.0)
    assert sum(bias["pairs_by_case"].values()) == 12 - m["unscored"]
    assert "bias: p_prefer_longer" in proc.stderr  # the table; stdout holds the JSON
    # the injection set: flip rates per attack kind, and which detector decided what the defence catches
    inj = subprocess.run([sys.executable, "-m", "openrlaif.cli", "judge-eval", "--pairs", "builtin:injection",
                          "--json", str(tmp_path / "inj.json"), f"model.policy={tiny_model_dir}",
                          "feedback.method=contrastive"], capture_output=True, text=True, timeout=300)
    assert inj.returncode == 0, inj.stderr[-2000:]
    profile = json.loads((tmp_path / "inj.json").read_text())["injection"]
    assert len(profile["by_kind"]) >= 12 and all(row["n"] >= 4 for row in profile["by_kind"].values())
    assert profile["detector"] == "patterns"  # the shipped probe fits the embedded judge, not the tiny one
    assert 0 <= profile["flip_rate_after_defence"] <= profile["flip_rate_orders"] <= 1
    assert "injection flips: unicode_obfuscation" in inj.stderr
    # a missing pairs file is one clear line with exit code 2
    bad = subprocess.run([sys.executable, "-m", "openrlaif.cli", "judge-eval", "--pairs", str(tmp_path / "x.jsonl"),
                          f"model.policy={tiny_model_dir}"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "error:" in bad.stderr and "Traceback" not in bad.stderr


def test_rule_and_ensemble_through_build_judge(tiny_config, tmp_path, monkeypatch):
    from openrlaif.feedback.factory import build_judge

    (tmp_path / "my_rules.py").write_text("def words(prompt, response):\n    return len(response.split())\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = tiny_config.model_copy(deep=True)
    cfg.feedback.method = "rule"
    cfg.feedback.rule = "my_rules:words"
    judge, name = build_judge(cfg)
    assert name == "my_rules:words" and judge.method == "rule"
    [v] = judge.compare([Comparison("q", "a b c", "a", PRINCIPLE)])
    assert v.p_first > 0.5
    cfg.feedback.method = "ensemble"
    cfg.feedback.members = ["pairwise", "contrastive", "rule"]
    judge, _ = build_judge(cfg, run_dir=tmp_path)
    [v] = judge.compare([Comparison("q", "a b c", "a", PRINCIPLE)])
    assert [m["method"] for m in v.raw["members"]] == ["pairwise", "contrastive", "rule"]
    assert 0.0 <= v.p_first <= 1.0 and 0.0 <= v.raw["disagreement"] <= 0.5
    cfg.feedback.rule = None
    with pytest.raises(UserError, match="feedback.rule"):
        build_judge(cfg)


def test_pointwise_judge_on_tiny_model(tiny, tmp_path):
    from openrlaif.core.cache import JudgeCache
    from openrlaif.feedback.methods import PointwiseJudge, digit_token_groups

    groups = digit_token_groups(tiny.tokenizer)
    assert len(groups) == 10 and all(groups) and not set(groups[0]) & set(groups[1])
    judge = PointwiseJudge(tiny.model, tiny.tokenizer, batch_size=2, cache=JudgeCache(tmp_path / "c.sqlite"))
    texts = ["An apple.", "The sea is wide.", "Numbers one two."]
    items = [Comparison("Q?", texts[i], texts[j], PRINCIPLE) for i in range(3) for j in range(3) if i != j]
    verdicts = judge.compare(items)
    assert judge.cache.misses == 3  # each response rated once
    for v in verdicts:
        assert 0.0 <= v.raw["score_first"] <= 9.0 and 0.0 < v.p_first < 1.0
    by_pair = {(it.first, it.second): v.p_first for it, v in zip(items, verdicts)}
    assert by_pair[(texts[0], texts[1])] == pytest.approx(1 - by_pair[(texts[1], texts[0])], abs=1e-9)
    judge.compare(items)
    assert judge.cache.hits == 3  # the second call reads the cache


def test_builtin_injection_set_loads():
    pairs = load_labelled_pairs("builtin:injection")
    assert len(pairs) >= 30 and all(p.principle for p in pairs)
