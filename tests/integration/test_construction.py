"""Feedback by construction on the tiny model: RLCD sampling + pairing, and Constitutional-AI
critique -> revision (pairs + SFT rows), each through the stages of a run directory."""

import json

import pytest
from conftest import tiny_overrides

from openrlaif.config import load_config
from openrlaif.core.errors import UserError
from openrlaif.core.store import read_jsonl
from openrlaif.core.text import with_system
from openrlaif.data.constitution import Principle, load_constitution
from openrlaif.data.prompts import load_prompts, select
from openrlaif.feedback.revision import Revision, critique_and_revise, critique_messages, revision_messages, rlcd_pairs
from openrlaif.models.loading import load_causal_lm
from openrlaif.pipeline import open_run, run_stage
from openrlaif.sampling.hf import HFSampler
from openrlaif.sampling.types import SamplingParams


def test_rlcd_pairs_match_positives_to_negatives_in_order():
    assert rlcd_pairs(["positive", "positive", "negative", "negative", "negative"]) == [(0, 2), (1, 3)]
    assert rlcd_pairs(["negative"]) == []


def test_revision_usable_and_prompts():
    assert Revision("a", "c", "b", "p").usable
    assert not Revision("same", "c", " same ", "p").usable and not Revision("a", "c", "  ", "p").usable
    pr = Principle("kind", "Which response is kinder?", critique="Was it kind?")
    conv = [{"role": "user", "content": "Hi"}]
    msgs = revision_messages(conv, "Go away.", "It was rude.", pr)
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant", "user"]
    assert msgs[2]["content"] == "Was it kind?" and "Which response is kinder?" in msgs[4]["content"]
    assert critique_messages(conv, "Go away.", pr) == msgs[:3]


def test_rlcd_generate_and_label(tmp_path, tiny_model_dir):
    cfg = load_config(None, tiny_overrides(tiny_model_dir) + ["generate.mode=rlcd", "generate.n=4",
                                                               "feedback.method=rlcd", "feedback.construction_confidence=0.9"])
    store = open_run(cfg, tmp_path / "run")
    run_stage("generate", cfg, store)
    rows = read_jsonl(store.path("candidates.jsonl"))
    constitution = {p.id: p for p in load_constitution("builtin").principles}
    for row in rows:
        assert row["conditions"] == ["positive", "positive", "negative", "negative"]
        assert row["principle"] in constitution and row["messages"][0]["role"] == "user"  # no system prompt kept
    # The positive candidates are exactly what the policy samples under the positive system prompt (row seeds:
    # the same draws whether generate.lanes dealt the prompts out to two decoding loops or not).
    tiny = load_causal_lm(str(tiny_model_dir))
    prompts = select(load_prompts("builtin"), "train", cfg.data.max_train_prompts)
    params = SamplingParams(cfg.generate.temperature, cfg.generate.top_p, cfg.generate.max_new_tokens,
                            cfg.generate.batch_size, cfg.seed + 1000)
    again = HFSampler(tiny.model, tiny.tokenizer, row_seeds=True).sample(
        [with_system(p.messages, constitution[r["principle"]].positive_prompt) for p, r in zip(prompts, rows)], 2, params)
    assert [r["candidates"][:2] for r in rows] == again
    run_stage("label", cfg, store)
    prefs = read_jsonl(store.path("preferences.jsonl"))
    assert prefs and all(p["source"] == "ai-rlcd" and p["p_chosen"] == 0.9 for p in prefs)
    for p in prefs:
        row = next(r for r in rows if r["prompt_id"] == p["prompt_id"])
        assert p["chosen"][0]["content"] in row["candidates"][:2]
        assert p["rejected"][0]["content"] in row["candidates"][2:]
    run_stage("train", cfg, store)  # the pairs train like judged ones


def test_rlcd_label_refuses_plain_candidates(tmp_path, tiny_model_dir):
    cfg = load_config(None, tiny_overrides(tiny_model_dir))
    store = open_run(cfg, tmp_path / "run")
    run_stage("generate", cfg, store)
    cfg2 = load_config(None, tiny_overrides(tiny_model_dir) + ["feedback.method=rlcd"])
    with pytest.raises(UserError, match="generate.mode=rlcd"):
        from openrlaif.stages.label import run

        run(cfg2, store)


def test_critique_then_revision_writes_pairs_and_sft_rows(tmp_path, tiny_model_dir):
    cfg = load_config(None, tiny_overrides(tiny_model_dir) + ["feedback.method=revision", "feedback.revision_max_tokens=10",
                                                               "feedback.revisions_per_prompt=2", "generate.temperature=1.0"])
    store = open_run(cfg, tmp_path / "run")
    run_stage("generate", cfg, store)
    summary = run_stage("label", cfg, store)
    stats = json.loads(store.path("judge_stats.json").read_text())
    assert stats["method"] == "revision" and stats["revisions"] == 8  # 4 prompts x 2 candidates
    sft = read_jsonl(store.path("revisions.jsonl"))
    prefs = read_jsonl(store.path("preferences.jsonl"))
    assert len(sft) == len(prefs) == stats["usable_revisions"] == summary["pairs_written"] > 0
    for row, pref in zip(sft, prefs):
        assert row["messages"][-1] == {"role": "assistant", "content": pref["chosen"][0]["content"]}
        assert pref["rejected"][0]["content"] == row["original"] != pref["chosen"][0]["content"]
        assert pref["rationale"] == row["critique"] and pref["source"] == "ai-revision"
    # The revision is the judge model's greedy rewrite given its own critique: recompute one by hand.
    tiny = load_causal_lm(str(tiny_model_dir))
    constitution = {p.id: p for p in load_constitution("builtin").principles}
    first = sft[0]
    [rev] = critique_and_revise(tiny.model, tiny.tokenizer, [(first["messages"][:-1], first["original"],
                                                              constitution[first["principle"]])], max_new_tokens=10)
    assert rev.critique == first["critique"] and rev.revised == first["messages"][-1]["content"]
    run_stage("train", cfg, store)
    run_stage("eval", cfg, store)  # graded by the contrastive judge


def test_judge_eval_refuses_construction_methods():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "openrlaif.cli", "judge-eval", "-n", "2", "feedback.method=rlcd"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "by construction" in r.stderr and len(r.stderr.strip().splitlines()) == 1
