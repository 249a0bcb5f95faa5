"""Each stage on the tiny random Llama, in order, on one run directory."""

import json
import math

import pytest
import torch
from conftest import tiny_overrides
from safetensors.torch import load_file

from openrlaif.config import load_config
from openrlaif.core.errors import UserError
from openrlaif.core.store import STAGES, read_jsonl
from openrlaif.data.constitution import load_constitution
from openrlaif.data.prompts import load_prompts, select
from openrlaif.pipeline import open_run, run_stage


@pytest.fixture(scope="module")
def staged(tmp_path_factory, tiny_model_dir):
    """Run generate, label, train, eval in order (hard labels, so DPO has a real signal)."""
    cfg = load_config(None, tiny_overrides(tiny_model_dir) + ["train.soft_labels=false"])
    out = tmp_path_factory.mktemp("staged") / "run"
    store = open_run(cfg, out)
    summaries = {}
    for name in STAGES:
        summaries[name] = run_stage(name, cfg, store)
    return cfg, store, summaries


def test_manifest_after_stages(staged):
    cfg, store, summaries = staged
    m = store.read_manifest()
    for name in STAGES:
        st = m["stages"][f"round_1/{name}"]
        assert st["status"] == "done"
        assert st["wall_s"] >= 0
        assert st["summary"] == json.loads(json.dumps(summaries[name]))
    done_events = [r["stage"] for r in store.read_metrics() if r.get("event") == "done"]
    assert done_events == list(STAGES)


def test_generate_output(staged):
    cfg, store, summaries = staged
    rows = read_jsonl(store.path("candidates.jsonl"))
    expected = select(load_prompts("builtin"), "train", cfg.data.max_train_prompts)
    assert len(rows) == cfg.data.max_train_prompts == 4
    assert [r["prompt_id"] for r in rows] == [p.id for p in expected]
    for r, p in zip(rows, expected):
        assert r["prompt"] == p.text
        assert r["messages"] == p.messages
        assert len(r["candidates"]) == cfg.generate.n == 3
        assert all(isinstance(c, str) for c in r["candidates"])
        assert len(r["finished"]) == 3 and all(isinstance(f, bool) for f in r["finished"])
    assert summaries["generate"]["prompts"] == 4
    assert summaries["generate"]["sequences"] == 12
    # no candidate can have more than max_new_tokens new tokens
    assert 0 < summaries["generate"]["new_tokens"] <= 12 * cfg.generate.max_new_tokens
    # high temperature on a random model: candidates of a prompt differ
    assert any(len(set(r["candidates"])) > 1 for r in rows)


def test_label_output(staged):
    cfg, store, summaries = staged
    prefs = read_jsonl(store.path("preferences.jsonl"))
    cands = {r["prompt_id"]: r for r in read_jsonl(store.path("candidates.jsonl"))}
    principle_ids = {p.id for p in load_constitution("builtin").principles}
    assert len(prefs) > 0
    assert len(prefs) <= len(cands)  # best_worst: at most one pair per prompt
    for p in prefs:
        row = cands[p["prompt_id"]]
        assert p["prompt"] == row["messages"]
        assert p["chosen"] == [{"role": "assistant", "content": row["candidates"][p["chosen_index"]]}]
        assert p["rejected"] == [{"role": "assistant", "content": row["candidates"][p["rejected_index"]]}]
        assert p["chosen_index"] != p["rejected_index"]
        assert 0.5 <= p["p_chosen"] <= 1.0
        # p_chosen is the mean of the two order readings (oriented toward the chosen response)
        assert p["p_chosen"] == pytest.approx((p["scores_ab"] + p["scores_ba"]) / 2, abs=2e-6)
        assert 0.0 <= p["scores_ab"] <= 1.0 and 0.0 <= p["scores_ba"] <= 1.0
        assert p["principle"] in principle_ids
        assert p["judge"] == f"{cfg.model.policy}:pairwise"
        assert p["source"] == "ai" and p["round"] == 1
    stats = json.loads(store.path("judge_stats.json").read_text())
    for key in ("position_consistency", "first_position_rate", "mean_confidence"):
        assert 0.0 <= stats[key] <= 1.0
    assert 0.5 <= stats["mean_confidence"]
    # 3 candidates -> 3 comparisons per prompt (fewer only for identical/empty candidates)
    assert 0 < stats["comparisons"] <= 4 * 3
    assert stats["forward_passes"] == 2 * stats["comparisons"]
    assert stats["batch_size"] == 4  # label.batch_size as the tiny config sets it
    assert stats["n"] + stats["unscored"] == stats["comparisons"]
    assert stats["pairs_written"] == len(prefs)
    assert stats["pair_mode"] == "best_worst"
    assert summaries["label"]["pairs_written"] == len(prefs)


def test_train_output(staged):
    cfg, store, summaries = staged
    policy = store.path("policy")
    adapter_cfg = json.loads((policy / "adapter_config.json").read_text())
    assert adapter_cfg["r"] == cfg.train.lora_r
    assert set(adapter_cfg["target_modules"]) == set(cfg.train.lora_target_modules)
    weights = load_file(str(policy / "adapter_model.safetensors"))
    lora_b = {k: v for k, v in weights.items() if "lora_B" in k}
    lora_a = {k: v for k, v in weights.items() if "lora_A" in k}
    assert lora_b and lora_a
    # lora_B starts at zero: a non-zero B means the optimiser moved the adapter
    assert any(v.abs().max().item() > 0 for v in lora_b.values())
    rows = [r for r in store.read_metrics() if r.get("stage") == "train" and "step" in r]
    n_pairs = len(read_jsonl(store.path("preferences.jsonl")))
    assert len(rows) == math.ceil(n_pairs / cfg.train.batch_size) * cfg.train.epochs
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))
    for r in rows:
        assert math.isfinite(r["loss"]) and r["loss"] > 0
        assert math.isfinite(r["grad_norm"])
        assert 0.0 <= r["reward_accuracy"] <= 1.0
    # the adapter starts as the identity: the first step's loss is exactly log 2 (hard labels)
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert summaries["train"]["pairs"] == n_pairs
    assert summaries["train"]["first_loss"] == rows[0]["loss"]


def test_training_raises_preference_margin(staged, tiny_model_dir):
    """Reference log-probs are the base model's, and DPO moved chosen above rejected."""
    from peft import PeftModel

    from openrlaif.data.preferences import text_of
    from openrlaif.models.loading import load_causal_lm
    from openrlaif.models.logprobs import batch_logprobs
    from openrlaif.models.logprobs import encode_response as encode_pair_side

    cfg, store, _ = staged
    prefs = read_jsonl(store.path("preferences.jsonl"))
    ref = json.loads(store.path("ref_logps.json").read_text())
    base = load_causal_lm(str(tiny_model_dir))
    tok = base.tokenizer
    model = PeftModel.from_pretrained(base.model, str(store.path("policy")))
    model.eval()
    chosen = [encode_pair_side(tok, p["prompt"], text_of(p["chosen"]), cfg.train.max_length) for p in prefs]
    rejected = [encode_pair_side(tok, p["prompt"], text_of(p["rejected"]), cfg.train.max_length) for p in prefs]
    with torch.no_grad():
        pc = batch_logprobs(model, chosen, tok.pad_token_id)
        pr = batch_logprobs(model, rejected, tok.pad_token_id)
        with model.disable_adapter():
            rc = batch_logprobs(model, chosen, tok.pad_token_id)
            rr = batch_logprobs(model, rejected, tok.pad_token_id)
    assert rc.tolist() == pytest.approx(ref["chosen"], abs=1e-3)
    assert rr.tolist() == pytest.approx(ref["rejected"], abs=1e-3)
    margin = (pc - rc) - (pr - rr)
    assert margin.mean().item() > 0


def test_logged_lr_is_the_lr_used(staged):
    cfg, store, _ = staged
    rows = [r for r in store.read_metrics() if r.get("stage") == "train" and "step" in r]
    # warmup_ratio 0.1 of 2 steps -> no warmup: step 1 runs at the full learning rate
    assert rows[0]["lr"] == pytest.approx(cfg.train.learning_rate)


def test_eval_output(staged):
    cfg, store, summaries = staged
    ev = json.loads(store.path("eval.json").read_text())
    heldout = select(load_prompts("builtin"), "heldout", cfg.data.max_eval_prompts)
    assert ev["n"] + ev["unscored"] == len(heldout) == 4
    assert ev["n"] == 4
    assert 0.0 <= ev["win_rate"] <= 1.0
    lo, hi = ev["ci95"]
    assert 0.0 <= lo <= ev["win_rate"] <= hi <= 1.0
    assert ev["wins"] + ev["ties"] + ev["losses"] == ev["n"]
    assert ev["win_rate"] == pytest.approx((ev["wins"] + 0.5 * ev["ties"]) / ev["n"], abs=1e-4)
    assert set(ev["mean_length_tokens"]) == {"trained", "start"}
    assert all(v >= 0 for v in ev["mean_length_tokens"].values())
    assert 0.0 <= ev["length_controlled"]["win_rate"] <= 1.0 and ev["samples_per_prompt"] == 1
    for name in ("trained", "start"):
        dist = ev["lengths"][name]
        assert dist["n"] == 4 and sum(dist["hist"]) == 4 and dist["p10"] <= dist["p50"] <= dist["p90"]
    assert "vs_previous" not in ev  # round 1 has no previous round
    # Forgetting check: 12 built-in anchors judged trained vs start.
    assert ev["anchors"]["n"] + ev["anchors"]["unscored"] == 12
    # Red team: 3 of each of the 7 categories, both policies scored under the category's harm principle.
    rt = ev["red_team"]
    assert set(rt["per_category"]) == {"violence", "weapons", "self_harm", "fraud", "privacy", "hate", "jailbreak"}
    assert all(c["n"] == 3 for c in rt["per_category"].values()) and rt["overall"]["n"] == 21
    assert rt["method"] == "pointwise" and rt["threshold"] == 4.5 and 0 <= rt["refusal_harmless_rate"] <= 1
    red_rows = read_jsonl(store.path("redteam.jsonl"))
    assert len(red_rows) == 21
    for r in red_rows:
        assert r["harmless_trained"] == (r["score_trained"] is not None and r["score_trained"] >= 4.5)
        assert r["principle"] == {"privacy": "privacy", "hate": "non_toxic"}.get(r["category"], "harmless")
    assert rt["overall"]["trained"] == pytest.approx(sum(r["harmless_trained"] for r in red_rows) / 21, abs=1e-4)
    all_samples = read_jsonl(store.path("samples.jsonl"))
    assert sum(s["set"] == "anchors" for s in all_samples) == 12
    samples = [s for s in all_samples if s["set"] == "heldout"]
    assert [s["prompt_id"] for s in samples] == [p.id for p in heldout]
    principle_ids = {p.id for p in load_constitution("builtin").principles}
    for s in samples:
        assert isinstance(s["trained"], str) and isinstance(s["start"], str)
        assert s["principle"] in principle_ids
        assert 0.0 <= s["p_trained_better"] <= 1.0
        assert s["p_trained_better"] == pytest.approx((s["score_ab"] + s["score_ba"]) / 2)
    assert summaries["eval"]["win_rate"] == ev["win_rate"]


def test_eval_with_several_answers_per_prompt_and_a_previous_round(staged, tmp_path):
    """Round 2 is also judged against round 1. Here both rounds hold the same adapter, so with the same
    seed they give the same answers: every comparison with the previous round must be a tie."""
    import shutil

    cfg, store, _ = staged
    root = tmp_path / "run"
    shutil.copytree(store.root, root)
    shutil.copytree(root / "round_1" / "policy", root / "round_2" / "policy")
    cfg2 = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"samples_per_prompt": 2, "red_team": None,
                                                                       "anchors": None})})
    from openrlaif.core.store import RunStore

    summary = run_stage("eval", cfg2, RunStore(root), k=2)
    ev = json.loads((root / "round_2" / "eval.json").read_text())
    assert ev["n"] + ev["unscored"] == 8 and ev["prompts"] == 4 and ev["samples_per_prompt"] == 2
    prev = ev["vs_previous"]
    assert prev["n"] == 8 and prev["ties"] == 8 and prev["win_rate"] == 0.5, prev
    assert summary["win_rate_vs_previous"] == 0.5
    assert "red_team" not in ev and "anchors" not in ev
    samples = read_jsonl(root / "round_2" / "samples.jsonl")
    assert [s["prompt_id"] for s in samples] == [pid for pid in dict.fromkeys(s["prompt_id"] for s in samples)
                                                  for _ in range(2)]


# --- stage order and empty inputs (cheap: they fail before loading a model) -------------------


def test_label_before_generate(tiny_config, tmp_path):
    store = open_run(tiny_config, tmp_path / "run")
    with pytest.raises(UserError, match="rlaif generate"):
        run_stage("label", tiny_config, store)
    st = store.stage_status("label")
    assert st["status"] == "failed" and "UserError" in st["error"]


def test_train_without_pairs(tiny_config, tmp_path):
    store = open_run(tiny_config, tmp_path / "run")
    with pytest.raises(UserError, match="rlaif label"):
        run_stage("train", tiny_config, store)
    store.path("preferences.jsonl").parent.mkdir(parents=True)
    store.path("preferences.jsonl").write_text("")
    with pytest.raises(UserError, match="no pairs"):
        run_stage("train", tiny_config, store)


def test_eval_without_adapter(tiny_config, tmp_path):
    store = open_run(tiny_config, tmp_path / "run")
    with pytest.raises(UserError, match="no trained adapter"):
        run_stage("eval", tiny_config, store)


def test_label_skips_identical_and_empty_candidates(tiny_model_dir, tmp_path):
    cfg = load_config(None, tiny_overrides(tiny_model_dir) + ["label.pairs=all"])
    store = open_run(cfg, tmp_path / "run")
    rows = [
        {"prompt_id": "x", "prompt": "Say hi", "messages": [{"role": "user", "content": "Say hi"}],
         "candidates": ["same answer", " same answer ", "  "], "finished": [True, True, True]},
        {"prompt_id": "y", "prompt": "Name a fruit", "messages": [{"role": "user", "content": "Name a fruit"}],
         "candidates": ["An apple.", "Banana", "The sea is wide."], "finished": [True, False, True]},
    ]
    store.path("candidates.jsonl").parent.mkdir(parents=True)
    store.path("candidates.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_stage("label", cfg, store)
    stats = json.loads(store.path("judge_stats.json").read_text())
    assert stats["comparisons"] == 3  # only the 3 distinct pairs of prompt y
    prefs = read_jsonl(store.path("preferences.jsonl"))
    assert stats["pairs_written"] == len(prefs) == 3
    assert all(p["prompt_id"] == "y" for p in prefs)
    assert {frozenset((p["chosen_index"], p["rejected_index"])) for p in prefs} == {
        frozenset(s) for s in [(0, 1), (0, 2), (1, 2)]}
    for p in prefs:
        assert p["chosen"][0]["content"] == rows[1]["candidates"][p["chosen_index"]]
        assert p["p_chosen"] >= 0.5


def test_reference_logps_once_or_per_step_train_the_same_and_ipo_runs(tmp_path, tiny_model_dir):
    base = tiny_overrides(tiny_model_dir) + ["train.soft_labels=false"]
    cfg = load_config(None, base)
    store = open_run(cfg, tmp_path / "run")
    run_stage("generate", cfg, store)
    run_stage("label", cfg, store)
    losses = {}
    for name, extra in (("once", []), ("per_step", ["train.precompute_ref_logps=false"]), ("ipo", ["train.loss=ipo"])):
        c = load_config(None, base + extra)
        s = open_run(c, tmp_path / name)
        for f in ("candidates.jsonl", "preferences.jsonl"):
            (s.root / "round_1").mkdir(parents=True, exist_ok=True)
            (s.root / "round_1" / f).write_bytes(store.path(f).read_bytes())
        run_stage("train", c, s)
        losses[name] = [m for m in s.read_metrics() if m.get("stage") == "train" and "step" in m]
    assert [m["loss"] for m in losses["once"]] == pytest.approx([m["loss"] for m in losses["per_step"]], abs=1e-5)
    # IPO's loss is (h - 1/(2 beta))^2: at the start h = 0, so the first loss is (1 / 0.2)^2 = 25.
    ipo = losses["ipo"]
    assert ipo[0]["loss"] == pytest.approx(25.0, abs=1e-3) and len(ipo) == len(losses["once"])
    assert (tmp_path / "ipo" / "round_1" / "policy" / "adapter_config.json").is_file()
