"""Fitted preference heads on the tiny model: `rlaif fit-judge` finds the signal in separable synthetic
pairs, the head directory round-trips, a label stage judges with it (falling back for principles without
a head), and bad input is refused in one line before any model loads."""

import json
import random

import pytest
from conftest import labelled_run, tiny_overrides
from test_cli import assert_user_error, rlaif

from openrlaif.config import load_config
from openrlaif.core.store import read_jsonl
from openrlaif.data.constitution import load_constitution
from openrlaif.feedback.fit_heads import fit_judge
from openrlaif.feedback.fitted import ANY_PRINCIPLE, FittedJudge, load_heads
from openrlaif.feedback.types import Comparison
from openrlaif.pipeline import open_run, run_stage

GOOD = ["sunlight", "water", "roots", "leaves", "growth", "soil", "green", "careful"]
BAD = ["zzz", "qqq", "xx", "bzz", "kk", "vvv", "jj", "ww"]


def write_pairs(path, n, seed=0, principle=None, prefer=GOOD, mode="w"):
    """n synthetic pairs whose chosen reply is made of ``prefer`` words, the rejected of the others."""
    rng = random.Random(seed)
    other = BAD if prefer is GOOD else GOOD
    with open(path, mode) as f:
        for i in range(n):
            chosen = " ".join(rng.choice(prefer) for _ in range(6))
            rejected = " ".join(rng.choice(other) for _ in range(6))
            row = {"prompt": [{"role": "user", "content": f"Question {i}: how do plants grow?"}],
                   "chosen": chosen, "rejected": rejected}
            f.write(json.dumps({**row, "principle": principle} if principle else row) + "\n")
    return path


def widest(results):
    """The head fitted on the most pairs (``_any`` when the pairs name several principles)."""
    return max(results, key=lambda r: r.pairs)


@pytest.fixture(scope="module")
def heads(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("heads")
    cfg = load_config(None, tiny_overrides(tiny_model_dir))
    pairs = write_pairs(root / "pairs.jsonl", 40)
    [result] = fit_judge(cfg, str(pairs), root / "heads", folds=4, layers=[1, 2])
    return root, result


def test_fit_judge_finds_the_signal_and_writes_a_card(heads, tiny_model_dir):
    root, result = heads
    assert result.cv_agreement >= 0.9 and result.pairs == 40
    assert result.feature in {f"layer{i}:{p}" for i in (1, 2) for p in ("mean", "last")}
    assert len(result.table) == 4 * 4  # 2 layers x 2 poolings x 4 L2 strengths
    card, loaded = load_heads(root / "heads")
    assert set(loaded) == {ANY_PRINCIPLE}
    meta = card["heads"][ANY_PRINCIPLE]
    assert meta["feature"] == result.feature and meta["pairs"] == 40 and 0 <= meta["ece"] <= 1
    assert len(card["judge_fingerprint"]) == 32 and len(meta["data_sha256"]) == 64
    assert meta["debias_length"] is False and meta["length_weight"] is None


def test_a_refit_reads_every_reply_s_features_from_the_cache(heads, tiny_model_dir, capsys):
    """Fitting again on the same pairs computes no features (they are cached by model and token ids) and
    gives the same head."""
    root, first = heads
    cfg = load_config(None, tiny_overrides(tiny_model_dir))
    capsys.readouterr()
    [again] = fit_judge(cfg, str(root / "pairs.jsonl"), root / "again", folds=4, layers=[1, 2])
    assert "80 read from" in capsys.readouterr().err  # 40 pairs -> 80 replies, all from the cache
    (_, a), (_, b) = load_heads(root / "heads"), load_heads(root / "again")
    assert again.feature == first.feature and a[ANY_PRINCIPLE].w.tolist() == b[ANY_PRINCIPLE].w.tolist()


def test_a_length_debiased_head_scores_without_the_length_column(tmp_path, tiny_model_dir):
    cfg = load_config(None, tiny_overrides(tiny_model_dir))
    pairs = write_pairs(tmp_path / "pairs.jsonl", 24)
    [result] = fit_judge(cfg, str(pairs), tmp_path / "heads", folds=3, layers=[2], debias_length=True)
    card, loaded = load_heads(tmp_path / "heads")
    meta = card["heads"][ANY_PRINCIPLE]
    assert meta["debias_length"] is True and isinstance(meta["length_weight"], float)
    head = loaded[ANY_PRINCIPLE]
    from openrlaif.models.loading import load_causal_lm

    hidden = load_causal_lm(str(tiny_model_dir)).model.config.hidden_size
    assert head.w.shape == (hidden,) and head.standardizer.mean.shape == (hidden,)
    assert result.cv_agreement >= 0.8  # the words differ, not only the lengths


def test_a_fitted_judge_names_its_fallbacks_progress_as_its_own(heads, tiny_model_dir):
    from openrlaif.feedback.methods import ContrastiveJudge
    from openrlaif.models.loading import load_causal_lm

    root, _ = heads
    card, loaded = load_heads(root / "heads")
    lm = load_causal_lm(str(tiny_model_dir))
    fallback = ContrastiveJudge(lm.model, lm.tokenizer, description="other")
    judge = FittedJudge(lm.model, lm.tokenizer, loaded, fallback=fallback, description="label")
    assert fallback.description == "label"
    judge.description = "judge gate"  # what label's gate does while it measures
    assert (judge.description, fallback.description) == ("judge gate", "judge gate")


def test_fitted_judge_prefers_the_kind_of_reply_people_chose(heads, tiny_model_dir):
    from openrlaif.models.loading import load_causal_lm

    root, _ = heads
    card, loaded = load_heads(root / "heads")
    lm = load_causal_lm(str(tiny_model_dir))
    judge = FittedJudge(lm.model, lm.tokenizer, loaded, expected_fingerprint=card["judge_fingerprint"])
    principle = load_constitution("builtin").principles[0]
    fresh = [Comparison(f"New question {i}?", "water roots green soil leaves growth", "zzz qqq kk jj ww vvv",
                        principle) for i in range(4)]
    swapped = [Comparison(c.prompt, c.second, c.first, principle) for c in fresh]
    a, b = judge.compare(fresh), judge.compare(swapped)
    assert all(v.p_first > 0.5 for v in a) and all(v.p_first < 0.5 for v in b)
    assert [round(v.p_first, 6) for v in a] == [round(1 - v.p_first, 6) for v in b]  # order-free


def test_a_label_stage_judges_with_the_heads(heads, tiny_model_dir, tmp_path):
    root, _ = heads
    cfg = load_config(None, tiny_overrides(tiny_model_dir) + [
        "feedback.method=fitted", f"feedback.heads={root / 'heads'}", "feedback.min_agreement=0"])
    store = open_run(cfg, tmp_path / "run")
    run_stage("generate", cfg, store)
    run_stage("label", cfg, store)
    prefs = read_jsonl(store.path("preferences.jsonl"))
    assert prefs and all(0 <= p["p_chosen"] <= 1 for p in prefs)
    assert json.loads(store.path("judge_stats.json").read_text())["method"] == "fitted"


def test_the_principle_column_gives_one_head_per_principle(tmp_path, tiny_model_dir):
    """Two principles whose people prefer opposite replies get opposite heads; a principle with too few
    pairs has none and is served by the head fitted on every pair."""
    from openrlaif.models.loading import load_causal_lm

    cfg = load_config(None, tiny_overrides(tiny_model_dir))
    pairs = write_pairs(tmp_path / "pairs.jsonl", 16, principle="harmless")
    write_pairs(pairs, 16, seed=1, principle="concise", prefer=BAD, mode="a")
    write_pairs(pairs, 4, seed=2, principle="honest", mode="a")
    results = {r.principle: r for r in fit_judge(cfg, str(pairs), tmp_path / "heads", folds=3, layers=[2])}
    assert set(results) == {"harmless", "concise", ANY_PRINCIPLE}
    assert results["harmless"].pairs == 16 and results["concise"].pairs == 16 and results[ANY_PRINCIPLE].pairs == 36
    assert results["harmless"].cv_agreement >= 0.9 and results["concise"].cv_agreement >= 0.9
    card, loaded = load_heads(tmp_path / "heads")
    lm = load_causal_lm(str(tiny_model_dir))
    judge = FittedJudge(lm.model, lm.tokenizer, loaded, expected_fingerprint=card["judge_fingerprint"])
    by_id = {p.id: p for p in load_constitution("builtin").principles}
    good, bad = "water roots green soil leaves growth", "zzz qqq kk jj ww vvv"
    harmless, concise = judge.compare([Comparison("New?", good, bad, by_id["harmless"]),
                                       Comparison("New?", good, bad, by_id["concise"])])
    assert harmless.p_first > 0.5 > concise.p_first
    assert judge.head_for("honest") is loaded[ANY_PRINCIPLE]
    # a principle column naming something outside the constitution is one clear line, nothing written
    foreign = write_pairs(tmp_path / "foreign.jsonl", 12, principle="kindness")
    assert_user_error(rlaif("fit-judge", "--pairs", foreign, "-o", tmp_path / "h", f"model.policy={tiny_model_dir}"),
                      "kindness", "--principle")
    assert not (tmp_path / "h").exists()


def test_a_head_for_another_judge_model_is_refused(heads, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from openrlaif.core.errors import UserError

    root, _ = heads
    card, loaded = load_heads(root / "heads")
    other = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2))
    with pytest.raises(UserError, match="different judge model"):
        FittedJudge(other, None, loaded, expected_fingerprint=card["judge_fingerprint"])


def test_bad_fit_judge_input_is_one_line_and_writes_nothing(tmp_path, tiny_model_dir):
    few = write_pairs(tmp_path / "few.jsonl", 6)
    model = f"model.policy={tiny_model_dir}"
    assert_user_error(rlaif("fit-judge", "--pairs", few, "-o", tmp_path / "h1", model), "fewer than", "--folds")
    enough = write_pairs(tmp_path / "enough.jsonl", 12)
    assert_user_error(rlaif("fit-judge", "--pairs", enough, "-o", tmp_path / "h2", "--principle", "nope", model),
                      "--principle", "nope")
    assert_user_error(rlaif("fit-judge", "--pairs", tmp_path / "missing.jsonl", "-o", tmp_path / "h3", model),
                      "not found")
    assert not any((tmp_path / f"h{i}").exists() for i in (1, 2, 3))
    assert_user_error(rlaif("run", "-o", tmp_path / "r", "feedback.method=fitted", model), "feedback.heads")
    assert not (tmp_path / "r").exists()
    # the demo's config with another policy: the shipped heads fit only the embedded judge
    from conftest import REPO_ROOT

    assert_user_error(rlaif("run", "-c", REPO_ROOT / "configs" / "default.yaml", "-o", tmp_path / "r2", model),
                      "'builtin' heads", "feedback.method=contrastive")
    assert not (tmp_path / "r2").exists()


def test_fit_judge_from_the_audit_desks_verdicts(tmp_path, tiny_model_dir):
    """People's verdicts, posted to the desk's HTTP API, are the labels a head is refitted on."""
    import httpx

    from openrlaif.audit.app import create_app
    from openrlaif.audit.queue import pair_id
    from openrlaif.serve import ServerThread

    cfg = load_config(None, tiny_overrides(tiny_model_dir) + ["data.max_train_prompts=8", "label.pairs=all"])
    store, rows, db = labelled_run(cfg, tmp_path / "run")
    assert len(rows) >= 12
    with ServerThread(create_app(db, token="tok")) as url:
        root = url.removesuffix("/v1")
        for i, row in enumerate(rows):
            verdict = "flag" if i == 0 else "flip" if i % 3 == 0 else "agree"
            r = httpx.post(f"{root}/api/verdict", json={"pair_id": pair_id(row), "verdict": verdict},
                           headers={"Authorization": "Bearer tok"})
            assert r.status_code == 200, r.text
    in_slice = db.random_slice()
    db.close()
    verdicts = {pair_id(row): "flag" if i == 0 else "flip" if i % 3 == 0 else "agree" for i, row in enumerate(rows)}
    fitted_on = [p for p, v in verdicts.items() if v != "flag" and p not in in_slice]
    checked = [v for p, v in verdicts.items() if v != "flag" and p in in_slice]
    assert in_slice and len(fitted_on) >= 10
    result = widest(fit_judge(cfg, None, tmp_path / "heads", folds=3, layers=[2], from_audit=store.root))
    assert result.pairs == len(fitted_on)  # the flagged pair is dropped, the random slice kept out
    card, _ = load_heads(tmp_path / "heads")
    meta = card["heads"][result.principle]
    assert meta["audit_pairs"] == len(fitted_on) and meta["audit_run"] == str(store.root)
    # the random slice measures the run's AI labels (before) and the new heads (after) against people
    check = card["audit_check"]
    assert check["n"] == len(checked) and check["before"] == round(checked.count("agree") / len(checked), 4)
    assert 0 <= check["after"] <= 1 and check["in_sample"] is False
    [record] = read_jsonl(store.root / "judge_refits.jsonl")
    assert record["heads"] == str(tmp_path / "heads") and record["after"] == check["after"]
    from openrlaif.report import write_report

    report = write_report(store)
    assert "People improve the judge" in report and f"{check['after']:.1%}" in report
    # base pairs + the audit together; --fit-random-slice fits on the slice too
    base = write_pairs(tmp_path / "base.jsonl", 20)
    both = widest(fit_judge(cfg, str(base), tmp_path / "heads2", folds=3, layers=[2], from_audit=store.root,
                            fit_random_slice=True))
    assert both.pairs == 20 + len(fitted_on) + len(checked)
    assert load_heads(tmp_path / "heads2")[0]["audit_check"]["in_sample"] is True
    # label.refit_from_audit: round 2 refits heads on the verdicts (and the base pairs) and labels with them
    refit_cfg = load_config(None, tiny_overrides(tiny_model_dir) + [
        "data.max_train_prompts=8", "label.pairs=all", "label.refit_from_audit=true", f"label.refit_pairs={base}"])
    run_stage("train", refit_cfg, store)
    run_stage("generate", refit_cfg, store, 2)
    run_stage("label", refit_cfg, store, 2)
    stats = json.loads(store.path("judge_stats.json", 2).read_text())
    assert stats["method"] == "fitted" and stats["refit"]["heads"] == str(store.path("heads", 2))
    assert stats["refit"]["audit_pairs"] == len(fitted_on) and stats["heads"]["directory"] == str(store.path("heads", 2))
    assert len(read_jsonl(store.root / "judge_refits.jsonl")) == 3  # two fits above, and round 2's
    # a run without an audit desk is one clear line
    assert_user_error(rlaif("fit-judge", "--from-audit", tmp_path, "-o", tmp_path / "h", f"model.policy={tiny_model_dir}"),
                      "audit.sqlite")
