"""The whole round through openrlaif.pipeline.run: outputs, manifest, resume, config guard."""

import json
import re

import pytest
import yaml
from safetensors.torch import load_file

import openrlaif
from conftest import tiny_overrides
from openrlaif import pipeline
from openrlaif.config import dump_config, load_config
from openrlaif.core.errors import UserError
from openrlaif.core.store import STAGES, RunStore, sha256_file


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("pipeline")
    people = root / "people.jsonl"
    people.write_text("".join(json.dumps({"prompt": f"Question {i}?", "chosen": f"A kind answer {i}.",
                                          "rejected": "Go away."}) + "\n" for i in range(5)))
    benchmarks = json.dumps([{"name": "ifeval", "file": "builtin", "limit": 3, "max_new_tokens": 8},
                             {"name": "human_prefs", "file": str(people), "skip": 1},
                             {"name": "human_prefs", "file": str(root / "absent.jsonl"), "if_missing": "skip"}])
    cfg = load_config(None, tiny_overrides(tiny_model_dir) + [f"eval.benchmarks={benchmarks}",
                                                              "data.instruction=Answer in one sentence."])
    out = root / "run"
    result = pipeline.run(cfg, out)
    return cfg, out, result


def test_result_and_files(full_run):
    cfg, out, result = full_run
    assert result["run_dir"] == str(out)
    ev = json.loads((out / "round_1" / "eval.json").read_text())
    assert result["eval"]["win_rate"] == ev["win_rate"]
    assert result["eval"]["n"] == ev["n"] == 4
    # eval's judge is defended (feedback.defend): the patterns read every reply it compared
    assert ev["defence"]["detector"] == "patterns" and ev["defence"]["replies_checked"] >= 4
    # yardsticks the judge never sees: the built-in verifiable set (held-out split) and people's pairs
    assert set(ev["benchmarks"]) == {"ifeval-builtin-heldout", "human_prefs-people"}  # the absent file skipped
    ife = ev["benchmarks"]["ifeval-builtin-heldout"]
    assert ife["start"]["prompts"] == 3 and "IFEval" in ife["graded_by"] and set(ife["difference"]) >= {"prompt_strict"}
    hp = ev["benchmarks"]["human_prefs-people"]
    assert hp["n"] == 4 and hp["start_accuracy"] == 0.5 and 0 <= hp["accuracy"] <= 1
    assert (out / "round_1" / "bench" / "ifeval-builtin-heldout_rows.jsonl").is_file()
    # data.instruction reaches the candidates' prompts and the held-out samples, not the red team's
    candidates = [json.loads(line) for line in (out / "round_1" / "candidates.jsonl").open()]
    assert all(c["messages"][-1]["content"].endswith(" Answer in one sentence.") for c in candidates)
    samples = [json.loads(line) for line in (out / "round_1" / "samples.jsonl").open()]
    held = [s for s in samples if s.get("set") == "heldout"]
    assert held and all(s["prompt"].endswith(" Answer in one sentence.") for s in held)
    assert all(not s["prompt"].endswith(" Answer in one sentence.") for s in samples if s.get("set") != "heldout")
    # the red team's rule column
    rule = ev["red_team"]["refused_by_rule"]
    assert rule["graded_by"].startswith("evaluate.refusal") and rule["overall"]["n"] == ev["red_team"]["overall"]["n"]
    for name in ("candidates.jsonl", "preferences.jsonl", "judge_stats.json", "eval.json", "samples.jsonl",
                 "ref_logps.json", "policy/adapter_config.json", "policy/adapter_model.safetensors"):
        assert (out / "round_1" / name).is_file(), name
    weights = load_file(str(out / "round_1" / "policy" / "adapter_model.safetensors"))
    assert any(v.abs().max().item() > 0 for k, v in weights.items() if "lora_B" in k)
    # no temp files or directories left behind anywhere
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp") or ".old-" in p.name]
    assert leftovers == []


def test_config_resolved_and_report(full_run):
    cfg, out, _ = full_run
    resolved = (out / "config.resolved.yaml").read_text()
    assert resolved == dump_config(cfg)
    assert yaml.safe_load(resolved)["generate"]["n"] == 3
    report = (out / "report.md").read_text()
    assert "# OpenRLAIF run" in report
    ev = json.loads((out / "round_1" / "eval.json").read_text())
    assert f"Win rate {ev['win_rate']:.3f}" in report
    # the headline: each measure beside who graded it
    assert "| measure | graded by | start | trained | trained - start (95% CI) |" in report
    for grader in ("the run's judge", "IFEval's checkers", "people (implicit reward", "a rule (evaluate.refusal"):
        assert grader in report, grader
    assert not re.search(r"\{[a-z_]+\[", report), "an unformatted placeholder in report.md"
    for name in STAGES:
        assert f"| {name} | done |" in report


def test_manifest_contents(full_run, tiny_model_dir):
    cfg, out, _ = full_run
    m = json.loads((out / "manifest.json").read_text())
    assert m["name"] == cfg.name
    assert m["seeds"] == {"seed": cfg.seed}
    assert m["inputs"]["policy"] == str(tiny_model_dir)
    assert m["inputs"]["judge"] == str(tiny_model_dir)
    builtin = openrlaif.pipeline.validate_inputs(cfg)
    assert m["inputs"]["prompts"] == builtin["prompts"]
    assert len(m["inputs"]["prompts"]) == 64 and len(m["inputs"]["constitution"]) == 64
    from openrlaif.data.prompts import builtin_path
    assert m["inputs"]["prompts"] == sha256_file(builtin_path("prompts.jsonl"))
    for pkg in ("python", "torch", "transformers", "peft", "openrlaif"):
        assert m["versions"][pkg]
    assert m["versions"]["openrlaif"] == openrlaif.__version__
    assert len(m["config_sha256"]) == 64
    for name in STAGES:
        st = m["stages"][f"round_1/{name}"]
        assert st["status"] == "done"
        assert isinstance(st["wall_s"], float) and st["wall_s"] >= 0
        assert st["peak_rss_mb"] > 0
        assert "updated" in st and "summary" in st


def test_second_call_skips_every_stage(full_run, monkeypatch):
    cfg, out, first = full_run
    before = json.loads((out / "manifest.json").read_text())["stages"]
    eval_bytes = (out / "round_1" / "eval.json").read_bytes()

    def must_not_run(name):
        raise AssertionError(f"stage {name} ran again")

    monkeypatch.setattr(pipeline, "stage_function", must_not_run)
    second = pipeline.run(cfg, out)
    assert second == first
    after = json.loads((out / "manifest.json").read_text())["stages"]
    assert after == before  # statuses, 'updated' timestamps and wall times unchanged
    assert (out / "round_1" / "eval.json").read_bytes() == eval_bytes


def test_different_config_same_dir_is_refused(full_run, tiny_model_dir):
    cfg, out, _ = full_run
    config_before = (out / "config.resolved.yaml").read_text()
    other = load_config(None, tiny_overrides(tiny_model_dir) + ["train.beta=0.3"])
    with pytest.raises(UserError) as ei:
        pipeline.run(other, out)
    assert "different config" in str(ei.value)
    assert str(out / "config.resolved.yaml") in str(ei.value)
    assert (out / "config.resolved.yaml").read_text() == config_before


def test_a_run_written_before_a_config_key_existed_is_the_same_run(tiny_model_dir, tmp_path):
    """Upgrading adds config keys: a run directory whose config.resolved.yaml lacks one (it was written by an
    older version) still reopens with that key's default, and a real change is still refused."""
    import yaml

    from openrlaif.pipeline import open_run

    cfg = load_config(None, tiny_overrides(tiny_model_dir))
    store = open_run(cfg, tmp_path / "run")
    old = yaml.safe_load(store.config_path.read_text())
    del old["model"]["sample_dtype"]  # as written before model.sample_dtype existed
    old["eval"].pop("benchmarks")
    store.config_path.write_text(yaml.safe_dump(old))
    open_run(cfg, tmp_path / "run")
    with pytest.raises(UserError, match="different config"):
        open_run(load_config(None, tiny_overrides(tiny_model_dir) + ["model.sample_dtype=bfloat16"]), tmp_path / "run")
    old["model"]["retired_key"] = 1  # a key this version does not know: not the same config
    store.config_path.write_text(yaml.safe_dump(old))
    with pytest.raises(UserError, match="different config"):
        open_run(cfg, tmp_path / "run")


def test_open_run_validates_before_writing(tiny_model_dir, tmp_path):
    bad = load_config(None, tiny_overrides(tiny_model_dir) + [f"data.prompts={tmp_path / 'missing.jsonl'}"])
    with pytest.raises(UserError, match="not found"):
        pipeline.run(bad, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_failed_stage_is_recorded_and_resumed(tiny_model_dir, tmp_path, monkeypatch):
    """A stage that crashes is marked failed; the next run redoes only the unfinished stages."""
    cfg = load_config(None, tiny_overrides(tiny_model_dir))
    out = tmp_path / "run"
    calls = []
    crash = {"train": True}

    def fake_stage(name):
        def run(cfg, store, k=1):
            calls.append(name)
            if crash.pop(name, False):
                raise RuntimeError("out of memory (simulated)")
            return {}
        return run

    monkeypatch.setattr(pipeline, "stage_function", fake_stage)
    with pytest.raises(RuntimeError, match="simulated"):
        pipeline.run(cfg, out)
    store = RunStore(out)
    assert store.stage_done("generate") and store.stage_done("label")
    st = store.stage_status("train")
    assert st["status"] == "failed" and "out of memory" in st["error"]
    assert store.stage_status("eval") == {}
    calls.clear()
    pipeline.run(cfg, out)
    assert calls == ["train", "eval"]
    assert all(store.stage_done(s) for s in STAGES)
    # --force redoes everything
    calls.clear()
    pipeline.run(cfg, out, force=True)
    assert calls == list(STAGES)


def test_python_api_entry_point(tiny_model_dir, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(pipeline, "stage_function", lambda name: (lambda c, s, k=1: seen.append(name) or {}))
    result = openrlaif.run(None, out=tmp_path / "r", overrides=tiny_overrides(tiny_model_dir))
    assert seen == list(STAGES)
    assert result["run_dir"] == str(tmp_path / "r")
    assert load_config(tmp_path / "r" / "config.resolved.yaml").model.policy == str(tiny_model_dir)


def test_changed_prompt_file_is_refused_on_resume(tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"prompt": f"Question number {i}?", "split": "heldout" if i % 2 else "train"} for i in range(6)]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(None, tiny_overrides(tiny_model_dir) + [f"data.prompts={prompts}"])
    out = tmp_path / "run"
    pipeline.open_run(cfg, out)
    pipeline.open_run(cfg, out)  # unchanged inputs: reopening is fine
    prompts.write_text(prompts.read_text() + json.dumps({"prompt": "A new one?", "split": "train"}) + "\n")
    with pytest.raises(UserError, match="prompts file .* changed"):
        pipeline.open_run(cfg, out)
    pipeline.open_run(cfg, out, force=True)
    assert RunStore(out).read_manifest()["inputs"]["prompts"] == sha256_file(prompts)


def test_bench_ifeval_on_the_run_start_vs_trained(full_run, tmp_path):
    """`rlaif bench ifeval --run`: both policies answer greedily, IFEval's checkers grade, the paired CI is
    reported, and the result and answers land in round_1/bench/."""
    import subprocess
    import sys

    _, out, _ = full_run
    prompts = tmp_path / "ifeval.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in [
        {"key": 1, "prompt": "Say hi in lowercase.", "instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]},
        {"key": 2, "prompt": "Write two words, no commas.", "instruction_id_list": ["punctuation:no_comma",
         "length_constraints:number_words"], "kwargs": [{}, {"relation": "less than", "num_words": 50}]},
        {"key": 3, "prompt": "End with 'Done.'", "instruction_id_list": ["startend:end_checker"],
         "kwargs": [{"end_phrase": "Done."}]}]))
    proc = subprocess.run([sys.executable, "-m", "openrlaif.cli", "bench", "ifeval", "-p", str(prompts), "--run",
                           str(out), "--max-new-tokens", "8", "--batch-size", "2"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "round_1" / "bench" / "ifeval-ifeval.json").read_text())
    assert result["graded_by"].startswith("IFEval's checkers") and result["generation"]["decoding"] == "greedy"
    for who in ("start", "trained"):
        assert result[who]["prompts"] == 3 and result[who]["instructions"] == 4
        assert 0.0 <= result[who]["prompt_strict"] <= result[who]["prompt_loose"] <= 1.0
    for metric, d in result["difference"].items():
        assert d["ci95"][0] <= d["difference"] <= d["ci95"][1], metric
        assert d["difference"] == pytest.approx(result["trained"][metric] - result["start"][metric], abs=1e-4)
    rows = [json.loads(line) for line in (out / "round_1" / "bench" / "ifeval-ifeval_rows.jsonl").open()]
    assert [r["key"] for r in rows] == ["1", "2", "3"] and len(rows[1]["trained_strict"]) == 2
    # the checks are the checkers' verdicts on the written answers
    from openrlaif.evaluate.ifeval import check, load_ifeval

    items = load_ifeval(prompts)
    assert [check(it, r["start"]).strict for it, r in zip(items, rows)] == [r["start_strict"] for r in rows]
    # greedy: the same answers again
    again = subprocess.run([sys.executable, "-m", "openrlaif.cli", "bench", "ifeval", "-p", str(prompts), "--policy",
                            json.loads((out / "manifest.json").read_text())["inputs"]["policy"], "--max-new-tokens", "8",
                            "--batch-size", "2"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout.strip().splitlines()[-1])["policy"]["prompt_strict"] == result["start"]["prompt_strict"]


def test_bench_human_prefs_ranks_peoples_pairs_by_the_implicit_reward(full_run, tmp_path):
    import subprocess
    import sys

    _, out, _ = full_run
    pairs = tmp_path / "people.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "A pair a head was fitted on?", "chosen": "Yes.", "rejected": "No."},
        {"prompt": "How do I boil an egg?", "chosen": "Simmer it for nine minutes.", "rejected": "Eggs are birds."},
        {"prompt": "Say hello.", "chosen": "Hello!", "rejected": "No."},
        {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Seven."}]))
    proc = subprocess.run([sys.executable, "-m", "openrlaif.cli", "bench", "human_prefs", "--pairs", str(pairs), "--run",
                           str(out), "--batch-size", "2", "--skip", "1"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "round_1" / "bench" / "human_prefs-people.json").read_text())
    rows = [json.loads(line) for line in (out / "round_1" / "bench" / "human_prefs-people_rows.jsonl").open()]
    assert result["n"] == len(rows) == 3 and result["start_accuracy"] == 0.5 and "people" in result["graded_by"]
    assert result["skip"] == 1 and [r["id"] for r in rows] == ["L2", "L3", "L4"]  # the first line left out
    assert [r["agrees"] for r in rows] == [1.0 if r["margin"] > 0 else 0.0 if r["margin"] < 0 else 0.5 for r in rows]
    assert result["accuracy"] == pytest.approx(sum(r["agrees"] for r in rows) / 3, abs=1e-4)
    assert result["ci95"][0] <= result["accuracy"] <= result["ci95"][1]
    assert any(r["margin"] != 0 for r in rows)  # the trained adapter moved the policy
    # without a run there is no start to compare with: one line, exit 2
    bad = subprocess.run([sys.executable, "-m", "openrlaif.cli", "bench", "human_prefs", "--pairs", str(pairs)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "needs --pairs FILE and --run RUN_DIR" in bad.stderr


def test_start_logprobs_of_peoples_pairs_are_paid_once(full_run, tmp_path):
    """eval.reuse_start: the start policy's log-probs of people's replies go to a user-level store keyed by the
    start weights' fingerprint and the tokens; a later run from the same start reads them back (same margins as
    computing them), a different start computes its own."""
    import torch
    from peft import PeftModel

    from openrlaif.core.cache import JudgeCache, model_fingerprint
    from openrlaif.data.pairs import load_labelled_pairs
    from openrlaif.evaluate.benchmarks import StartMemo, human_prefs_benchmark
    from openrlaif.models.loading import load_causal_lm

    cfg, out, _ = full_run
    people = tmp_path / "people.jsonl"
    people.write_text("".join(json.dumps({"prompt": f"Question {i}?", "chosen": f"A kind answer {i}.",
                                          "rejected": "Go away."}) + "\n" for i in range(4)))
    pairs = load_labelled_pairs(str(people))
    store = JudgeCache(tmp_path / "yardsticks.sqlite")

    def policies(nudge: float = 0.0):
        lm = load_causal_lm(cfg.model.policy)
        if nudge:
            with torch.no_grad():
                next(lm.model.parameters()).add_(nudge)  # another start: the fingerprint samples this tensor
        fingerprint = model_fingerprint(lm.model, "start")
        return PeftModel.from_pretrained(lm.model, str(out / "round_1" / "policy")), lm.tokenizer, fingerprint

    model, tok, fingerprint = policies()
    first, rows1 = human_prefs_benchmark(model, tok, pairs, 2, memo=StartMemo(store, fingerprint))
    assert first["start_logprobs"] == "0 of 8 read from the user cache" and len(store) == 8
    plain, rows0 = human_prefs_benchmark(model, tok, pairs, 2)
    assert plain["start_logprobs"] == "computed"
    model, tok, again = policies()
    assert again == fingerprint
    second, rows2 = human_prefs_benchmark(model, tok, pairs, 2, memo=StartMemo(store, again))
    assert second["start_logprobs"] == "8 of 8 read from the user cache"
    assert [r["margin"] for r in rows2] == [r["margin"] for r in rows1] == [r["margin"] for r in rows0]
    model, tok, other = policies(0.05)
    assert other != fingerprint
    third, rows3 = human_prefs_benchmark(model, tok, pairs, 2, memo=StartMemo(store, other))
    assert third["start_logprobs"] == "0 of 8 read from the user cache" and len(store) == 16
    assert [r["margin"] for r in rows3] != [r["margin"] for r in rows1]
