"""`rlaif export` cards the Hub understands, built from a real one-round run of the tiny model: the model card
and the dataset card carry YAML front matter (base model, license, library, tags, size, data files) that
parses, that huggingface_hub reads back, and whose data files load."""

from __future__ import annotations

import shutil

import pytest
import yaml
from conftest import tiny_overrides

from openrlaif import pipeline
from openrlaif.config import load_config
from openrlaif.core.store import read_jsonl
from openrlaif.export import DATA_FILE, DISK_ONLY, export_round, front_matter, name_dataset


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model_dir):
    # The starting model sits where the Hugging Face cache would put `someone/tiny-base`, and its own card
    # declares a license: the export must name the base by that id and carry the license over.
    root = tmp_path_factory.mktemp("cards")
    base = root / "hub" / "models--someone--tiny-base" / "snapshots" / "0123abcd"
    shutil.copytree(tiny_model_dir, base)
    (base / "README.md").write_text("---\nlicense: apache-2.0\nlanguage: [en]\n---\n# tiny base\n")
    # The judge gate runs (a random tiny model will not pass 0.99: it warns and labels anyway).
    cfg = load_config(None, tiny_overrides(base) + ["feedback.min_agreement=0.99", "feedback.gate_action=warn",
                                                    "feedback.gate_limit=8"])
    out = root / "run"
    pipeline.run(cfg, out)
    return cfg, out


def yaml_head(text: str) -> dict:
    """The front matter parsed on its own (not through the module under test)."""
    assert text.startswith("---\n")
    head, _ = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head)


def test_model_card_front_matter(run, tmp_path):
    from huggingface_hub import ModelCard

    _, out = run
    export_round(out, 1, tmp_path / "exp")
    text = (tmp_path / "exp" / "model" / "README.md").read_text()
    meta = yaml_head(text)
    assert meta == {"base_model": "someone/tiny-base", "license": "apache-2.0", "pipeline_tag": "text-generation",
                    "library_name": "transformers", "tags": ["rlaif", "openrlaif", "dpo", "lora"]}
    assert "datasets" not in meta  # no repo named: no dataset id to link
    assert ModelCard(text).data.to_dict() == meta  # huggingface_hub reads the same metadata
    # the body says how it was trained and keeps what the card reported before
    assert "round 1 policy" in text and "Win rate against the starting model" in text
    assert "DPO with a LoRA adapter" in text and "`pairwise`" in text and "`helpful`" in text
    assert "(someone/tiny-base)" in text


def test_adapter_card_names_its_dataset_when_the_repo_is_known(run, tmp_path):
    from huggingface_hub import ModelCard

    _, out = run
    export_round(out, 1, tmp_path / "exp", adapter_only=True, repo="someone/policy")
    text = (tmp_path / "exp" / "model" / "README.md").read_text()
    meta = yaml_head(text)
    assert meta["library_name"] == "peft" and meta["base_model"] == "someone/tiny-base"
    assert meta["datasets"] == ["someone/policy-preferences"]
    assert ModelCard(text).data.to_dict()["datasets"] == ["someone/policy-preferences"]
    assert "a LoRA adapter (peft) for" in text


def test_push_names_the_dataset_in_the_model_card(run, tmp_path):
    # `push` (what `rlaif export --push REPO` runs) adds REPO-preferences to the card before uploading
    _, out = run
    export_round(out, 1, tmp_path / "exp", adapter_only=True)
    readme = tmp_path / "exp" / "model" / "README.md"
    before, body = front_matter(readme.read_text())
    name_dataset(tmp_path / "exp" / "model", "someone/earlier-preferences")
    name_dataset(tmp_path / "exp" / "model", "someone/policy-preferences")  # a second push: its name replaces
    after = yaml_head(readme.read_text())
    assert after == {**before, "datasets": ["someone/policy-preferences"]}
    assert list(after)[:3] == ["base_model", "license", "datasets"]
    assert front_matter(readme.read_text())[1] == body


def test_dataset_card_front_matter_and_data_files(run, tmp_path):
    from datasets import load_dataset, load_from_disk
    from huggingface_hub import DatasetCard
    from huggingface_hub.utils import filter_repo_objects

    _, out = run
    result = export_round(out, 1, tmp_path / "exp", adapter_only=True)
    prefs = read_jsonl(out / "round_1" / "preferences.jsonl")
    assert result["pairs"] == len(prefs) < 1000
    text = (tmp_path / "exp" / "dataset" / "README.md").read_text()
    meta = yaml_head(text)
    assert meta["size_categories"] == ["n<1K"] and meta["license"] == "apache-2.0"
    assert meta["task_categories"] == ["text-generation"]
    assert {"rlaif", "preference", "dpo", "synthetic"} <= set(meta["tags"])
    assert meta["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": DATA_FILE}]}]
    assert DatasetCard(text).data.to_dict() == meta
    # the file the config names exists beside the card; what `push` uploads (the same ignore patterns, through
    # huggingface_hub's own filter) is a dataset repo that load_dataset reads through that config
    folder = tmp_path / "exp" / "dataset"
    assert (folder / DATA_FILE).is_file()
    files = [str(f.relative_to(folder)) for f in folder.rglob("*") if f.is_file()]
    uploaded = sorted(filter_repo_objects(files, ignore_patterns=DISK_ONLY))
    assert uploaded == ["README.md", DATA_FILE]
    repo = tmp_path / "repo"
    for name in uploaded:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(folder / name, repo / name)
    ds = load_dataset(str(repo), split="train", cache_dir=str(tmp_path / "hf-cache"))
    assert len(ds) == len(prefs) and ds[0]["chosen"] == prefs[0]["chosen"]
    assert len(load_from_disk(str(folder))) == len(prefs)  # the local folder still loads from disk


def test_dataset_card_says_how_the_labels_were_made(run, tmp_path):
    import json

    cfg, out = run
    export_round(out, 1, tmp_path / "exp", adapter_only=True)
    text = (tmp_path / "exp" / "dataset" / "README.md").read_text()
    prefs = read_jsonl(out / "round_1" / "preferences.jsonl")
    js = json.loads((out / "round_1" / "judge_stats.json").read_text())
    gate = js["gate"]
    assert gate is not None and gate["n"] == 8
    assert f"{len(prefs)} pairs" in text and "p_chosen" in text
    assert f"labelled by `{js['judge']}`" in text and "method `pairwise`" in text
    assert f"{gate['agreement']:.1%} (n=8)" in text and "threshold 0.99" in text
    assert ("passed" if gate["passed"] else "not passed (gate_action=warn)") in text
    assert f"position consistency {js['position_consistency']:.3f}" in text
    probs = [r["p_chosen"] for r in prefs]
    soft = sum(0 < p < 1 for p in probs)
    assert f"{sum(probs) / len(probs):.3f}" in text
    assert f"{soft} of {len(prefs)} ({soft / len(prefs):.1%}) are soft" in text
    for principle in {r["principle"] for r in prefs}:
        n = sum(r["principle"] == principle for r in prefs)
        line = next(ln for ln in text.splitlines() if ln.startswith(f"  - `{principle}`: "))
        assert line.endswith(f"({n} pair)" if n == 1 else f"({n} pairs)")


def test_unknown_license_is_left_out(run, tmp_path, tiny_model_dir):
    # the same run, its starting model without a card: no license, no base_model id (a plain local directory)
    import json

    _, out = run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    resolved = (copy / "config.resolved.yaml").read_text()
    base = yaml.safe_load(resolved)["model"]["policy"]
    (copy / "config.resolved.yaml").write_text(resolved.replace(base, str(tiny_model_dir)))
    m = json.loads((copy / "manifest.json").read_text())
    m["inputs"]["policy"] = str(tiny_model_dir)
    (copy / "manifest.json").write_text(json.dumps(m))
    export_round(copy, 1, tmp_path / "exp", adapter_only=True)
    model = yaml_head((tmp_path / "exp" / "model" / "README.md").read_text())
    data = yaml_head((tmp_path / "exp" / "dataset" / "README.md").read_text())
    assert "license" not in model and "base_model" not in model and "license" not in data
    assert model["library_name"] == "peft" and data["size_categories"] == ["n<1K"]


def test_export_after_an_sft_stage_merges_into_the_sft_model(tmp_path, tiny_model_dir):
    # An sft stage before round 1 makes round_1/sft/model the model the rounds train on: the merged export is
    # that model with the round's adapter, and the card names the original base and says an SFT stage ran.
    import json

    import torch
    from transformers import AutoModelForCausalLM

    from openrlaif.config import with_starting_policy
    from openrlaif.core.store import RunStore
    from openrlaif.models.policy import load_round_policy

    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Question {i}?"},
                                                     {"role": "assistant", "content": "Hello! How can I help?"}]})
                            + "\n" for i in range(8)))
    cfg = load_config(None, tiny_overrides(tiny_model_dir) + [
        f"sft.data={chat}", "sft.epochs=1", "sft.learning_rate=0.01", "sft.batch_size=4", "sft.eval_fraction=0"])
    out = tmp_path / "run"
    pipeline.run(cfg, out)
    store = RunStore(out)
    export_round(out, 1, tmp_path / "exp")
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "exp" / "model"))
    expected = load_round_policy(with_starting_policy(cfg, store), store, 2)  # the SFT model + round 1's adapter
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    with torch.inference_mode():
        torch.testing.assert_close(merged(ids).logits, expected.model(ids).logits, atol=1e-4, rtol=1e-4)
    text = (tmp_path / "exp" / "model" / "README.md").read_text()
    assert yaml_head(text)["tags"] == ["rlaif", "openrlaif", "dpo", "sft", "lora"]
    assert "An SFT stage fine-tuned" in text and "round_1/sft/model" in text
