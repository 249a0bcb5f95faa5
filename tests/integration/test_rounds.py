"""Rounds on the tiny model: round 2 samples with round 1's policy, continues its adapter, trains against
the chosen reference, compares itself with round 1; the manifest keeps each round; stop rules end a run."""

import json

import pytest
import torch
from conftest import tiny_overrides
from safetensors.torch import load_file

from openrlaif import pipeline
from openrlaif.config import load_config
from openrlaif.core.errors import UserError
from openrlaif.core.store import RunStore, read_jsonl
from openrlaif.data.preferences import text_of
from openrlaif.models.loading import load_causal_lm
from openrlaif.models.logprobs import batch_logprobs, encode_response
from openrlaif.models.policy import load_round_policy


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory, tiny_model_dir):
    # Round 2 barely moves (a learning rate of 1e-9): its adapter must then equal round 1's, which shows
    # that round 2 continued round 1's adapter and that per-round overrides apply.
    cfg = load_config(None, tiny_overrides(tiny_model_dir) + [
        "pipeline.rounds=2", "pipeline.reference=previous", "pipeline.train_data=mix", "pipeline.mix_previous=1.0",
        "pipeline.overrides={2: ['train.learning_rate=1e-9']}"])
    out = tmp_path_factory.mktemp("rounds") / "run"
    result = pipeline.run(cfg, out)
    return cfg, out, result


def test_both_rounds_written_and_recorded(two_rounds):
    cfg, out, result = two_rounds
    for k in (1, 2):
        for name in ("candidates.jsonl", "preferences.jsonl", "policy/adapter_config.json", "eval.json"):
            assert (out / f"round_{k}" / name).is_file(), (k, name)
    m = json.loads((out / "manifest.json").read_text())
    assert [r["round"] for r in m["rounds"]] == [1, 2] == [r["round"] for r in result["rounds"]]
    ev2 = json.loads((out / "round_2" / "eval.json").read_text())
    assert "vs_previous" in ev2 and m["rounds"][1]["win_rate_vs_previous"] == ev2["vs_previous"]["win_rate"]
    assert m["rounds"][1]["win_rate"] == ev2["win_rate"] and m["rounds"][0]["win_rate_vs_previous"] is None
    assert result["stopped"] is None
    # round 2's own resolved config carries its override; the run's config does not
    assert "1.0e-09" in (out / "round_2" / "config.resolved.yaml").read_text()
    assert not (out / "round_1" / "config.resolved.yaml").exists()
    report = (out / "report.md").read_text()
    assert "## Rounds" in report and "| 2 |" in report
    assert not list(out.rglob("*.partial"))


def test_round_two_continues_round_one(two_rounds):
    _, out, _ = two_rounds
    a1 = load_file(str(out / "round_1" / "policy" / "adapter_model.safetensors"))
    a2 = load_file(str(out / "round_2" / "policy" / "adapter_model.safetensors"))
    assert a1.keys() == a2.keys()
    assert any(v.abs().max() > 1e-3 for n, v in a1.items() if "lora_B" in n)  # round 1 learned something
    for name in a1:
        torch.testing.assert_close(a2[name], a1[name], atol=1e-6, rtol=0)
    assert not (out / "round_2" / "policy" / "reference").exists()  # only the trained adapter is saved


def test_round_two_samples_with_round_one_policy(two_rounds, tiny_model_dir):
    cfg, out, _ = two_rounds
    store = RunStore(out)
    base = load_causal_lm(str(tiny_model_dir))
    merged = load_round_policy(cfg, store, 2)
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    with torch.inference_mode():
        diff = (merged.model(ids).logits - base.model(ids).logits).abs().max()
    assert diff > 1e-4  # the sampling model is not the starting model
    cands = read_jsonl(out / "round_2" / "candidates.jsonl")
    assert len(cands) == cfg.data.max_train_prompts and all(len(r["candidates"]) == cfg.generate.n for r in cands)


def test_reference_previous_and_data_mix(two_rounds):
    cfg, out, _ = two_rounds
    store = RunStore(out)
    prefs2 = read_jsonl(out / "round_2" / "preferences.jsonl")
    n1 = len(read_jsonl(out / "round_1" / "preferences.jsonl"))
    summary = store.stage_status("train", 2)["summary"]
    assert summary["pairs"] == len(prefs2) + min(n1, round(1.0 * len(prefs2)))  # mix: as many earlier pairs again
    # pipeline.reference=previous: round 2's reference log-probs are round 1's policy's, not the start's
    ref = json.loads((out / "round_2" / "ref_logps.json").read_text())
    previous = load_round_policy(cfg, store, 2)
    tok = previous.tokenizer
    first = prefs2[0]
    seq = encode_response(tok, first["prompt"], text_of(first["chosen"]), cfg.train.max_length)
    with torch.inference_mode():
        lp_prev = batch_logprobs(previous.model, [seq], tok.pad_token_id)[0].item()
        lp_start = batch_logprobs(load_causal_lm(cfg.model.policy).model, [seq], tok.pad_token_id)[0].item()
    assert abs(lp_prev - lp_start) > 1e-3  # round 1 moved the policy
    assert ref["chosen"][0] == pytest.approx(lp_prev, abs=1e-4)  # the first training pair is round 2's first


def test_stop_rule_ends_the_run(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    result = pipeline.run(None, out, tiny_overrides(tiny_model_dir) + ["pipeline.stop_min_gain=0.6"], rounds=3)
    assert [r["round"] for r in result["rounds"]] == [1]
    assert "gains less than pipeline.stop_min_gain=0.6" in result["stopped"]
    assert not (out / "round_2").exists()
    m = json.loads((out / "manifest.json").read_text())
    assert m["rounds"][0]["stop"] == result["stopped"]
    assert "Stopped after round 1" in (out / "report.md").read_text()


def test_round_k_stage_needs_the_previous_policy(tmp_path, tiny_model_dir):
    from openrlaif.stages.generate import run as generate

    cfg = load_config(None, tiny_overrides(tiny_model_dir) + ["pipeline.rounds=2"])
    store = pipeline.open_run(cfg, tmp_path / "run")
    with pytest.raises(UserError, match="round_1/policy holds no trained policy, and round 2 starts from it"):
        generate(cfg, store, 2)


def test_lineage_in_manifest(two_rounds, tiny_model_dir):
    from openrlaif.lineage import sha256_path

    _, out, _ = two_rounds
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    gen2 = stages["round_2/generate"]["artifacts"]
    assert gen2["outputs"]["round_2/candidates.jsonl"] == sha256_path(out / "round_2" / "candidates.jsonl")
    # round 2 sampled with round 1's policy: that input's hash is what round 1's train recorded as its output
    assert gen2["inputs"]["round_1/policy"]["from"] == "round_1/train"
    assert gen2["inputs"]["round_1/policy"]["sha256"] == stages["round_1/train"]["artifacts"]["outputs"]["round_1/policy"]
    train2 = stages["round_2/train"]["artifacts"]
    assert set(train2["inputs"]) == {"round_1/policy", "round_1/preferences.jsonl", "round_2/preferences.jsonl"}
    assert train2["config_sections"]["train"]["learning_rate"] == pytest.approx(1e-9)  # round 2's own config
    assert train2["models"]["policy"]["spec"] == str(tiny_model_dir) and len(train2["models"]["policy"]["fingerprint"]) == 16
    assert train2["code"]["openrlaif"]
    label1 = stages["round_1/label"]["artifacts"]
    assert set(label1["config_sections"]) == {"model", "data", "label", "feedback"}
    assert label1["inputs"]["round_1/candidates.jsonl"]["sha256"] == stages["round_1/generate"]["artifacts"]["outputs"]["round_1/candidates.jsonl"]


def test_rlaif_show_prints_the_tree_and_catches_tampering(two_rounds, tmp_path):
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    _, out, _ = two_rounds
    rlaif = str(Path(sys.executable).with_name("rlaif"))
    proc = subprocess.run([rlaif, "show", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for text in ("round_1", "round_2", "generate", "-> round_2/candidates.jsonl", "<- round_1/policy",
                 "from round_1/train", "lineage verified"):
        assert text in proc.stdout, text
    as_json = json.loads(subprocess.run([rlaif, "show", str(out), "--json"], capture_output=True, text=True,
                                        timeout=120).stdout)
    assert as_json["problems"] == [] and "round_2/eval" in as_json["stages"]
    # a copy whose round-1 preferences were edited after the fact: both the output and its consumers are flagged
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    prefs = copy / "round_1" / "preferences.jsonl"
    prefs.write_text(prefs.read_text().replace('"p_chosen": ', '"p_chosen": 0.0, "was": ', 1))
    bad = subprocess.run([rlaif, "show", str(copy)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1
    assert "round_1/label: output round_1/preferences.jsonl changed after the stage wrote it" in bad.stdout


def test_export_merged_model_and_dataset(two_rounds, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    import pyarrow.parquet as pq
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM

    cfg, out, _ = two_rounds
    rlaif = str(Path(sys.executable).with_name("rlaif"))
    dest = tmp_path / "exp"
    proc = subprocess.run([rlaif, "export", str(out), "--round", "2", "-o", str(dest)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"model (merged): {dest / 'model'}" in proc.stdout
    # the merged model computes what the base + round-2 adapter computes
    merged = AutoModelForCausalLM.from_pretrained(str(dest / "model"))
    reference = load_round_policy(cfg, RunStore(out), 3)  # round 3 would start from round 2's policy
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    with torch.inference_mode():
        torch.testing.assert_close(merged(ids).logits, reference.model(ids).logits, atol=1e-4, rtol=1e-4)
    assert not (dest / "model" / "adapter_config.json").exists()
    card = (dest / "model" / "README.md").read_text()
    assert "round 2 policy" in card and "Win rate against the starting model" in card
    # the pairs: datasets directory and Parquet, TRL columns, with a card
    prefs = read_jsonl(out / "round_2" / "preferences.jsonl")
    ds = load_from_disk(str(dest / "dataset"))
    assert len(ds) == len(prefs) and {"prompt", "chosen", "rejected", "p_chosen", "principle", "round"} <= set(ds.column_names)
    assert ds[0]["chosen"] == prefs[0]["chosen"] and ds[0]["p_chosen"] == pytest.approx(prefs[0]["p_chosen"])
    table = pq.read_table(dest / "preferences.parquet")
    assert table.num_rows == len(prefs)
    dcard = (dest / "dataset" / "README.md").read_text()
    assert f"{len(prefs)} pairs" in dcard and "p_chosen" in dcard
    # --adapter --all-rounds: the adapter alone, and both rounds' pairs
    dest2 = tmp_path / "exp2"
    proc = subprocess.run([rlaif, "export", str(out), "-k", "2", "-o", str(dest2), "--adapter", "--all-rounds"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (dest2 / "model" / "adapter_config.json").is_file()
    n1 = len(read_jsonl(out / "round_1" / "preferences.jsonl"))
    assert len(load_from_disk(str(dest2 / "dataset"))) == n1 + len(prefs)
    # --push without a reachable Hub: one clear line, exit 2, the export itself complete
    env = dict(os.environ, HF_ENDPOINT="http://127.0.0.1:9", HF_TOKEN="hf_dummy")
    env.pop("HF_HUB_OFFLINE", None)
    proc = subprocess.run([rlaif, "export", str(out), "-k", "2", "-o", str(tmp_path / "exp3"), "--adapter",
                           "--push", "someone/policy"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "--push someone/policy: the Hub upload failed" in errors[0]
    assert (tmp_path / "exp3" / "model" / "adapter_config.json").is_file()


def test_export_errors(two_rounds, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    _, out, _ = two_rounds
    rlaif = str(Path(sys.executable).with_name("rlaif"))
    proc = subprocess.run([rlaif, "export", str(out), "--round", "3"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--round 3" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([rlaif, "export", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not a run directory" in proc.stderr
