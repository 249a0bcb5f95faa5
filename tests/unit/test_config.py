"""Config loading: defaults, YAML files, dotted overrides, and one-line errors naming the problem."""

from pathlib import Path

import pytest

from openrlaif.config import (
    RunConfig,
    apply_overrides,
    dump_config,
    load_config,
    parse_override,
)
from openrlaif.core.errors import UserError

REPO = Path(__file__).resolve().parents[2]


def test_defaults():
    cfg = load_config(None)
    assert isinstance(cfg, RunConfig)
    assert cfg.model.policy == "embedded"
    assert cfg.generate.n == 4
    assert cfg.train.beta == pytest.approx(0.1)
    assert cfg.data.max_train_prompts is None
    assert cfg.label.pairs == "best_worst"


def test_yaml_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: mine\nseed: 7\ngenerate:\n  n: 5\ntrain:\n  beta: 0.25\n  lora_target_modules: [q_proj]\n")
    cfg = load_config(p)
    assert cfg.name == "mine"
    assert cfg.seed == 7
    assert cfg.generate.n == 5
    assert cfg.train.beta == pytest.approx(0.25)
    assert cfg.train.lora_target_modules == ["q_proj"]
    # untouched sections keep their defaults
    assert cfg.eval.bootstrap == 2000


def test_empty_yaml_file_is_defaults(tmp_path):
    p = tmp_path / "empty.yaml"
    p.write_text("# nothing\n")
    assert load_config(p) == load_config(None)


def test_overrides_are_typed_as_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data:\n  max_train_prompts: 8\n")
    cfg = load_config(p, ["generate.n=2", "data.max_train_prompts=null", "train.beta=0.2",
                          "train.soft_labels=false", "name=hello world"])
    assert cfg.generate.n == 2 and type(cfg.generate.n) is int
    assert cfg.data.max_train_prompts is None
    assert cfg.train.beta == pytest.approx(0.2)
    assert cfg.train.soft_labels is False
    assert cfg.name == "hello world"


def test_parse_override():
    assert parse_override("train.beta=0.2") == (["train", "beta"], 0.2)
    assert parse_override("generate.n=2") == (["generate", "n"], 2)
    assert parse_override("data.max_train_prompts=null") == (["data", "max_train_prompts"], None)
    assert parse_override("model.policy=a=b") == (["model", "policy"], "a=b")
    assert parse_override("name=") == (["name"], "")
    # unparseable YAML falls back to the raw string
    assert parse_override("name=[oops") == (["name"], "[oops")


def test_apply_overrides_does_not_mutate_input():
    data = {"train": {"beta": 0.1}}
    out = apply_overrides(data, ["train.beta=0.3", "generate.n=3"])
    assert data == {"train": {"beta": 0.1}}
    assert out == {"train": {"beta": 0.3}, "generate": {"n": 3}}


def test_unknown_key_names_the_key():
    with pytest.raises(UserError) as ei:
        load_config(None, ["train.betta=1"])
    msg = str(ei.value)
    assert "train.betta" in msg
    assert "unknown config key" in msg
    assert "beta" in msg.replace("betta", "")  # lists the known keys of the section
    assert "\n" not in msg


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("generate:\n  nn: 3\n")
    with pytest.raises(UserError) as ei:
        load_config(p)
    assert str(p) in str(ei.value)
    assert "generate.nn" in str(ei.value)


def test_unknown_section(tmp_path):
    with pytest.raises(UserError, match="'trian'"):
        load_config(None, ["trian.beta=1"])


def test_wrong_type_names_the_field():
    with pytest.raises(UserError) as ei:
        load_config(None, ["generate.n=abc"])
    msg = str(ei.value)
    assert "generate.n" in msg
    assert "'abc'" in msg


def test_out_of_range_names_the_field():
    with pytest.raises(UserError, match=r"generate\.n"):
        load_config(None, ["generate.n=1"])
    with pytest.raises(UserError, match=r"label\.pairs"):
        load_config(None, ["label.pairs=some"])


def test_override_into_scalar_is_an_error():
    with pytest.raises(UserError, match="'name' is not a section"):
        load_config(None, ["name=abc", "name.x=1"])
    # Without an earlier value the nested dict reaches validation, which names the field.
    with pytest.raises(UserError, match="field 'name'"):
        load_config(None, ["name.x=1"])


def test_missing_config_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(UserError) as ei:
        load_config(missing)
    assert str(missing) in str(ei.value)
    assert "not found" in str(ei.value)


def test_invalid_yaml_names_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  beta: [0.1\n  epochs: 2\n")
    with pytest.raises(UserError) as ei:
        load_config(p)
    assert str(p) in str(ei.value)
    assert "not valid YAML" in str(ei.value)


def test_top_level_not_a_mapping(tmp_path):
    p = tmp_path / "list.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(UserError, match="mapping"):
        load_config(p)


@pytest.mark.parametrize("bad", ["generate.n", "", "=3", "train..beta=1", ".beta=1"])
def test_malformed_override(bad):
    with pytest.raises(UserError) as ei:
        load_config(None, [bad])
    assert "override" in str(ei.value)


def test_override_without_equals_message():
    with pytest.raises(UserError, match="expected key=value"):
        load_config(None, ["generate.n"])


def test_dump_roundtrip(tmp_path):
    cfg = load_config(None, ["generate.n=3", "data.max_eval_prompts=5"])
    p = tmp_path / "dumped.yaml"
    p.write_text(dump_config(cfg))
    assert load_config(p) == cfg


def test_repo_quick_config_parses():
    cfg = load_config(REPO / "configs" / "quick.yaml")
    assert cfg.name == "quick"
    assert cfg.generate.n == 3


def test_repo_default_config_parses():
    path = REPO / "configs" / "default.yaml"
    if not path.is_file():
        pytest.skip("configs/default.yaml does not exist yet")
    load_config(path)


@pytest.mark.parametrize("name", ["api_judge.yaml", "constitutional.yaml", "rloo.yaml", "ppo.yaml"])
def test_example_configs_load(name):
    cfg = load_config(REPO / "configs" / name)
    assert cfg.name in ("api-judge", "constitutional", "rloo", "ppo")
    if name == "ppo.yaml":
        assert cfg.train.algo == "ppo" and cfg.rl.reward == "judge" and cfg.ppo.critic == "shared"
        assert cfg.rl.temperature == cfg.eval.temperature and cfg.rl.max_new_tokens == cfg.eval.max_new_tokens
        return
    if name == "rloo.yaml":
        assert cfg.train.algo == "rloo" and cfg.rl.reward == "judge" and cfg.rl.whiten_scores
        assert cfg.rl.temperature == cfg.eval.temperature and cfg.rl.max_new_tokens == cfg.eval.max_new_tokens
        return
    if name == "api_judge.yaml":
        assert cfg.feedback.api.base_url.endswith("/v1") and cfg.feedback.api.prefill
    else:
        assert cfg.feedback.method == "revision" and cfg.feedback.construction_confidence == 0.9


def test_instruct_config_and_its_feedback_variants_pass_validation():
    """configs/instruct.yaml with the AI judge, the verifiable rule and both (inputs checked as a run would)."""
    from openrlaif.pipeline import validate_inputs

    for overrides in ([], ["feedback.method=rule", "feedback.min_agreement=0"],
                      ["feedback.method=ensemble", "feedback.min_agreement=0"]):
        cfg = load_config(REPO / "configs" / "instruct.yaml", overrides)
        assert cfg.data.prompts == "builtin:verifiable" and cfg.eval.benchmarks[0].file == "builtin"
        validate_inputs(cfg)
    assert cfg.feedback.members == ["fitted", "rule"] and cfg.feedback.rule.endswith(":verifiable_rule")


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    """Each example config validates as written (its trainer, sections and cross-field rules)."""
    cfg = load_config(path)
    assert cfg.name and cfg.train.algo in ("dpo", "ppo", "rloo", "grpo", "online_dpo", "sft")


def test_sample_dtype_resolves_by_the_processor():
    from openrlaif.config import load_config
    from openrlaif.models import loading

    info = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n"
    assert loading.cpu_flags(info) == {"fpu", "sse2", "avx2", "avx512f", "avx512_bf16"}
    assert loading.native_bf16({"avx2", "amx_bf16"}) and not loading.native_bf16({"avx2", "avx512f"})
    cfg = load_config(None, [])
    assert loading.sample_dtype(cfg.model) == "float32"  # 'same': model.dtype
    assert loading.sample_dtype(load_config(None, ["model.sample_dtype=bfloat16"]).model) == "bfloat16"
    auto = load_config(None, ["model.sample_dtype=auto"]).model
    assert loading.sample_dtype(auto) == ("bfloat16" if loading.native_bf16() else "float32")


def test_judge_mixed_precision_resolves_by_the_processor_and_never_for_int8(monkeypatch):
    from openrlaif.config import load_config
    from openrlaif.models import loading

    assert not loading.judge_bf16(load_config(None, []).model)  # 'no' by default
    assert loading.judge_bf16(load_config(None, ["model.judge_mixed_precision=bf16"]).model)
    assert load_config(None, ["model.judge_mixed_precision=no"]).model.judge_mixed_precision == "no"
    for native in (True, False):
        monkeypatch.setattr(loading, "native_bf16", lambda flags=None, native=native: native)
        assert loading.judge_bf16(load_config(None, ["model.judge_mixed_precision=auto"]).model) is native
        int8 = load_config(None, ["model.judge_mixed_precision=auto", "model.judge_quantize=int8"]).model
        assert not loading.judge_bf16(int8)


def test_decoding_lanes_resolve_by_the_processor_and_dtype():
    """generate.lanes: a number stands; 'auto' is one loop on a GPU and for a bf16 sampler on an AMX CPU, two
    elsewhere (an AVX-512 CPU without AMX, or a float32 sampler); anything but 'auto' or a count >= 1 is refused
    with one line naming the field."""
    from openrlaif.config import load_config
    from openrlaif.core.errors import UserError
    from openrlaif.models import loading
    from openrlaif.sampling.hf import decoding_lanes

    amx, avx512 = {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}, {"avx2", "avx512f", "avx512_bf16"}
    assert loading.amx_bf16(amx) and not loading.amx_bf16(avx512)
    assert decoding_lanes("auto", "bfloat16", amx, cuda=False) == 1
    assert decoding_lanes("auto", "float32", amx, cuda=False) == 2
    assert decoding_lanes("auto", "bfloat16", avx512, cuda=False) == 2
    assert decoding_lanes("auto", "float32", set(), cuda=True) == 1
    assert decoding_lanes(3, "bfloat16", amx, cuda=False) == 3 and decoding_lanes(1, "float32", avx512, cuda=False) == 1
    assert load_config(None, []).generate.lanes == "auto"
    assert load_config(None, ["generate.lanes=2"]).generate.lanes == 2
    for bad in ("0", "many", "true", "1.5"):
        with pytest.raises(UserError, match=r"generate\.lanes.*'auto' or a whole number >= 1") as err:
            load_config(None, [f"generate.lanes={bad}"])
        assert "\n" not in str(err.value)


def test_judge_batch_size_resolves_by_the_processor(monkeypatch):
    """label.batch_size: a number stands; 'auto' is 16 for a bf16 judge on a CPU with AMX tiles, 8 for a float32
    judge there and on a CPU without AMX; a bad value is refused with one line naming the field."""
    from openrlaif.config import load_config
    from openrlaif.core.errors import UserError
    from openrlaif.models import loading

    amx, avx512 = {"avx512f", "avx512_bf16", "amx_bf16"}, {"avx512f", "avx512_bf16"}
    cfg = load_config(None, [])
    assert cfg.label.batch_size == "auto"
    monkeypatch.setattr(loading, "judge_bf16", lambda model_cfg: True)
    assert loading.judge_batch_size(cfg, amx, cuda=False) == 16
    assert loading.judge_batch_size(cfg, avx512, cuda=False) == 8
    assert loading.judge_batch_size(cfg, amx, cuda=True) == 8
    assert loading.judge_batch_size(load_config(None, ["label.batch_size=4"]), amx, cuda=False) == 4
    assert loading.this_cpu_flags() is loading.this_cpu_flags()  # /proc/cpuinfo read once per process
    monkeypatch.setattr(loading, "judge_bf16", lambda model_cfg: False)
    assert loading.judge_batch_size(cfg, amx, cuda=False) == 8
    with pytest.raises(UserError, match=r"label\.batch_size.*'auto' or a whole number >= 1"):
        load_config(None, ["label.batch_size=0"])
