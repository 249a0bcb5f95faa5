"""Supervised fine-tuning on the tiny model: before round 1 (the run's new starting policy) and as a round's
trainer (train.algo=sft); the held-out loss falls; `rlaif sft` alone."""

import json

import pytest
import torch

from conftest import tiny_overrides
from openrlaif import pipeline
from openrlaif.config import load_config
from openrlaif.core.store import RunStore, read_jsonl

REPLIES = ["Hello! How can I help you today?", "Water boils at one hundred degrees Celsius at sea level.",
           "Exercise regularly, eat vegetables, and drink enough water."]


def chat_file(path, n=24):
    rows = [{"messages": [{"role": "user", "content": f"Question {i}?"},
                          {"role": "assistant", "content": REPLIES[i % 3]}]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


SFT = ["sft.epochs=3", "sft.learning_rate=0.01", "sft.batch_size=4", "sft.eval_fraction=0.25", "train.checkpoint_every=0"]


@pytest.fixture(scope="module")
def sft_first_run(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("sft")
    cfg = load_config(None, tiny_overrides(tiny_model_dir) + [f"sft.data={chat_file(root / 'chat.jsonl')}", *SFT])
    out = root / "run"
    return cfg, out, pipeline.run(cfg, out)


def test_sft_runs_first_and_its_model_is_the_start(sft_first_run, tiny_model_dir):
    cfg, out, _ = sft_first_run
    store = RunStore(out)
    st = store.stage_status("sft", 1)
    assert st["status"] == "done"
    summary = st["summary"]
    assert summary["rows"] + summary["heldout_rows"] == 24 and summary["heldout_rows"] >= 1
    assert summary["eval_loss_after"] < summary["eval_loss_before"]  # the held-out replies got likelier
    assert summary["final_loss"] < summary["first_loss"]
    model_dir = out / "round_1" / "sft" / "model"
    assert (model_dir / "config.json").is_file() and list(model_dir.glob("*.safetensors"))
    # a full model: the merged weights differ from the starting model's
    from safetensors.torch import load_file
    before = load_file(str(next(tiny_model_dir.glob("*.safetensors"))))
    after = load_file(str(next(model_dir.glob("*.safetensors"))))
    name = next(k for k in before if "q_proj" in k)
    assert not torch.allclose(before[name], after[name])
    # every later stage loaded the fine-tuned model as the policy; the judge stayed the original model
    for stage in ("generate", "label", "train", "eval"):
        models = store.stage_status(stage, 1)["artifacts"]["models"]
        assert models["policy"]["path"] == str(model_dir), stage
    assert store.stage_status("label", 1)["artifacts"]["models"]["judge"]["path"] == str(tiny_model_dir)
    assert "round_1/sft" in store.stage_status("generate", 1)["artifacts"]["inputs"]
    # metrics and report
    rows = [m for m in read_jsonl(store.metrics_path) if m.get("stage") == "sft" and "step" in m]
    assert len(rows) == summary["steps"] and all(m["loss"] > 0 for m in rows)
    assert "## Supervised fine-tuning" in (out / "report.md").read_text()


def test_a_second_call_skips_the_finished_sft(sft_first_run):
    cfg, out, _ = sft_first_run
    before = RunStore(out).stage_status("sft", 1)["updated"]
    pipeline.run(cfg, out)
    assert RunStore(out).stage_status("sft", 1)["updated"] == before


def test_sft_as_the_round_trainer(tmp_path, tiny_model_dir):
    cfg = load_config(None, tiny_overrides(tiny_model_dir) + [f"sft.data={chat_file(tmp_path / 'chat.jsonl')}",
                                                              "train.algo=sft", *SFT])
    out = tmp_path / "run"
    pipeline.run(cfg, out)
    store = RunStore(out)
    assert not store.stage_status("generate", 1) and not store.stage_status("sft", 1)  # (train, eval) only
    summary = store.stage_status("train", 1)["summary"]
    assert summary["eval_loss_after"] < summary["eval_loss_before"]
    assert (out / "round_1" / "policy" / "adapter_config.json").is_file()
    assert store.stage_status("eval", 1)["status"] == "done"


def test_rlaif_sft_alone(tmp_path, tiny_model_dir):
    from test_cli import rlaif

    data = chat_file(tmp_path / "chat.jsonl", 8)
    out = tmp_path / "run"
    config = tmp_path / "sft.yaml"
    config.write_text(f"model: {{policy: {tiny_model_dir}}}\nsft: {{data: {data}, epochs: 1, batch_size: 4}}\n")
    proc = rlaif("sft", "-c", config, "-o", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "round_1" / "sft" / "model" / "config.json").is_file()
    assert RunStore(out).stage_status("sft", 1)["status"] == "done" and not RunStore(out).stage_status("generate", 1)
    # without an sft section: one line, exit 2
    plain = tmp_path / "plain.yaml"
    plain.write_text(f"model: {{policy: {tiny_model_dir}}}\n")
    bad = rlaif("sft", "-c", plain, "-o", tmp_path / "other")
    assert bad.returncode == 2 and "needs an sft section" in bad.stderr and not (tmp_path / "other").exists()


def test_killed_sft_resumes_to_the_same_model(tmp_path, tiny_model_dir):
    """SIGKILL at SFT step 3 (checkpoint at step 2), rerun: the fine-tuned model equals an uninterrupted run's."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    from openrlaif.core.faults import ENV

    data = chat_file(tmp_path / "chat.jsonl", 16)
    config = tmp_path / "sft.yaml"
    config.write_text(f"model: {{policy: {tiny_model_dir}}}\nsft: {{data: {data}, epochs: 2, batch_size: 4, "
                      "learning_rate: 0.01}\ntrain: {checkpoint_every: 2}\n")
    rlaif = str(Path(sys.executable).with_name("rlaif"))

    def attempt(out, kill_at=None):
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        env.pop(ENV, None)
        if kill_at:
            env[ENV] = kill_at
        return subprocess.run([rlaif, "sft", "-c", str(config), "-o", str(out)], env=env, capture_output=True,
                              text=True, timeout=600)

    straight = attempt(tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = attempt(tmp_path / "killed", "train.step@3")
    assert killed.returncode == -signal.SIGKILL
    assert (tmp_path / "killed" / "round_1" / "sft_checkpoint" / "progress.json").is_file()
    resumed = attempt(tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    assert RunStore(tmp_path / "killed").stage_status("sft", 1)["summary"]["resumed_from_step"] == 2
    a = load_file(str(next((tmp_path / "straight" / "round_1" / "sft" / "model").glob("*.safetensors"))))
    b = load_file(str(next((tmp_path / "killed" / "round_1" / "sft" / "model").glob("*.safetensors"))))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=1e-4)
    assert not (tmp_path / "killed" / "round_1" / "sft_checkpoint").exists()  # cleared once the stage finished


def varied_chat_file(path, n=10):
    """Rows of different lengths (so packs mix short and long rows)."""
    rows = [{"messages": [{"role": "user", "content": "Question " + "why " * (i % 4) + f"{i}?"},
                          {"role": "assistant", "content": " ".join([REPLIES[i % 3]] * (1 + i % 3))}]}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_packed_rows_score_as_if_alone(tiny_model_dir, tmp_path):
    """A pack's log-prob is the sum of its rows' log-probs computed one by one (the block-diagonal mask and the
    restarting positions isolate the rows); without the mask the second row would read the first."""
    from openrlaif.data.chat import load_chat_rows, pack_groups
    from openrlaif.models.chat import encode_chat
    from openrlaif.models.loading import load_causal_lm
    from openrlaif.models.logprobs import collate, collate_packed, pack_encoded, response_logprobs

    loaded = load_causal_lm(str(tiny_model_dir), "float32")
    tok, model = loaded.tokenizer, loaded.model.eval()
    seqs = [encode_chat(tok, r.messages, 128) for r in load_chat_rows(varied_chat_file(tmp_path / "c.jsonl"))]
    groups = pack_groups([len(s.input_ids) for s in seqs], 128)
    assert len(groups) < len(seqs) and sorted(i for g in groups for i in g) == list(range(len(seqs)))
    packs = pack_encoded(seqs, groups)
    with torch.no_grad():
        alone = response_logprobs(model, *collate(seqs, tok.pad_token_id))
        ids, mask, resp, pos = collate_packed(packs, tok.pad_token_id)
        packed = response_logprobs(model, ids, mask, resp, pos)
        leaky = response_logprobs(model, ids, (ids != tok.pad_token_id).long(), resp)
    expected = torch.stack([alone[g].sum() for g in groups])
    torch.testing.assert_close(packed, expected, atol=1e-4, rtol=1e-5)
    assert (leaky - expected).abs().max() > 1e-2  # the mask is what makes them equal


def test_packed_sft_takes_the_same_step_as_unpacked(tmp_path, tiny_model_dir):
    """One optimizer step over all rows: packed and unpacked give the same loss and the same adapter."""
    from safetensors.torch import load_file

    data = varied_chat_file(tmp_path / "c.jsonl", 12)
    results = {}
    for packing in (False, True):
        cfg = load_config(None, tiny_overrides(tiny_model_dir) + [
            f"sft.data={data}", "train.algo=sft", "sft.epochs=1", "sft.batch_size=12", "sft.eval_fraction=0",
            "sft.learning_rate=0.01", "sft.max_length=160", f"sft.packing={packing}", "train.checkpoint_every=0"])
        store = pipeline.open_run(cfg, tmp_path / f"run-{packing}")
        summary = pipeline.run_stage("train", cfg, store)
        results[packing] = (summary, load_file(str(store.path("policy") / "adapter_model.safetensors")))
    (plain, a), (packed, b) = results[False], results[True]
    assert plain["steps"] == 1 and packed["packs"] < packed["rows"] == plain["rows"] == 12
    assert packed["first_loss"] == pytest.approx(plain["first_loss"], abs=1e-5)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4)
