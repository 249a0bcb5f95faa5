"""The bad-input corpus: each malformed input makes `rlaif` exit 2 with one line naming the file:line or the
config field and the fix, before anything is written (no run directory, no partial artifact).

Every case runs the real command line in a subprocess on the tiny model."""

import json
import shutil
import socket

import pytest

from conftest import TINY_OVERRIDES
from test_cli import assert_user_error, rlaif


def prompts_file(tmp_path, lines: list[bytes | str], name="prompts.jsonl"):
    path = tmp_path / name
    path.write_bytes(b"".join((ln.encode() if isinstance(ln, str) else ln) + b"\n" for ln in lines))
    return path


GOOD = json.dumps({"prompt": "How do I boil an egg?", "split": "train"})
HELD = json.dumps({"prompt": "Name a fruit.", "split": "heldout"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def case_broken_json(tmp_path, model):
    p = prompts_file(tmp_path, [GOOD, '{"prompt": "unclosed', HELD])
    return [f"data.prompts={p}"], [f"{p}:2:", "not valid JSON"]


def case_missing_field(tmp_path, model):
    p = prompts_file(tmp_path, [GOOD, HELD, json.dumps({"text": "no prompt field"})])
    return [f"data.prompts={p}"], [f"{p}:3:", "needs a non-empty 'prompt'"]


def case_wrong_type(tmp_path, model):
    p = prompts_file(tmp_path, [GOOD, json.dumps({"prompt": 42}), HELD])
    return [f"data.prompts={p}"], [f"{p}:2:", "'prompt' must be a string, got int"]


def case_wrong_message_shape(tmp_path, model):
    p = prompts_file(tmp_path, [GOOD, HELD, json.dumps({"messages": [{"role": "robot", "content": "hi"}]})])
    return [f"data.prompts={p}"], [f"{p}:3:", "messages[0].role is 'robot'; use one of system, user, assistant"]


def case_message_content_not_a_string(tmp_path, model):
    p = prompts_file(tmp_path, [GOOD, HELD, json.dumps({"messages": [{"role": "user", "content": ["hi"]}]})])
    return [f"data.prompts={p}"], [f"{p}:3:", "messages[0].content must be a string, got list"]


def case_gate_pairs_null_rejected(tmp_path, model):
    p = tmp_path / "gate.jsonl"
    p.write_text(json.dumps({"prompt": "Hi?", "chosen": "Hello.", "rejected": None}) + "\n")
    return ["feedback.min_agreement=0.5", f"feedback.gate_pairs={p}"], [
        f"feedback.gate_pairs: {p}:1:", "'rejected' is null"]


def case_gate_pairs_identical_replies(tmp_path, model):
    p = tmp_path / "gate.jsonl"
    p.write_text(json.dumps({"prompt": "Hi?", "chosen": "Hello.", "rejected": "Hello. "}) + "\n")
    return ["feedback.min_agreement=0.5", f"feedback.gate_pairs={p}"], [
        f"{p}:1:", "'chosen' and 'rejected' are the same text"]


def case_bad_split(tmp_path, model):
    p = prompts_file(tmp_path, [GOOD, HELD, json.dumps({"prompt": "x", "split": 3})])
    return [f"data.prompts={p}"], [f"{p}:3:", "split must be 'train' or 'heldout'"]


def case_empty_prompt(tmp_path, model):
    p = prompts_file(tmp_path, [GOOD, json.dumps({"prompt": "   "}), HELD])
    return [f"data.prompts={p}"], [f"{p}:2:", "non-empty 'prompt'"]


def case_huge_prompt(tmp_path, model):
    p = prompts_file(tmp_path, [GOOD, HELD, json.dumps({"prompt": "word " * 20000, "split": "train"})])  # 100k chars
    return [f"data.prompts={p}"], [f"{p}:3:", "prompt is 60011 tokens; the policy's context (", "shorten it"]


def case_non_utf8(tmp_path, model):
    p = prompts_file(tmp_path, [GOOD, b'{"prompt": "caf\xe9 \xff"}', HELD])
    return [f"data.prompts={p}"], [f"{p}:2:", "not UTF-8", "0xe9"]


def case_empty_file(tmp_path, model):
    p = prompts_file(tmp_path, [])
    return [f"data.prompts={p}"], [str(p), "no prompts"]


def case_unknown_key_in_yaml(tmp_path, model):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("generate:\n  n: 2\n  temprature: 0.7\n")
    return ["-c", str(cfg)], [str(cfg), "unknown config key 'generate.temprature'", "known keys in generate"]


def case_unknown_key_override(tmp_path, model):
    return ["train.betta=1"], ["unknown config key 'train.betta'"]


def case_wrong_type_config(tmp_path, model):
    return ["generate.n=three"], ["field 'generate.n'", "'three'"]


def case_bad_yaml(tmp_path, model):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("generate:\n  n: [2\n")
    return ["-c", str(cfg)], [str(cfg), "not valid YAML"]


def case_yaml_key_given_twice(tmp_path, model):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: twice\ngenerate:\n  n: 2\n  temperature: 0.7\n  n: 3\n")
    return ["-c", str(cfg)], [f"{cfg}:5:", "key 'n' is given twice (lines 3 and 5)"]


def case_yaml_unclosed_quote_names_its_line(tmp_path, model):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: 'unclosed\ngenerate:\n  n: 2\ntrain:\n  beta: 0.1\n")
    return ["-c", str(cfg)], [f"{cfg}:1:", "quoted scalar", "gave up at line 6"]


def case_constitution_key_given_twice(tmp_path, model):
    c = tmp_path / "const.yaml"
    c.write_text("principles:\n  - id: a\n    text: Be kind.\n    text: Be brief.\n")
    return [f"data.constitution={c}"], [f"{c}:4:", "key 'text' is given twice (lines 3 and 4)"]


def case_prompts_file_is_a_directory(tmp_path, model):
    d = tmp_path / "prompts_dir"
    d.mkdir()
    return [f"data.prompts={d}"], [f"'{d}' is a directory"]


def case_pretty_json_array_given_as_jsonl(tmp_path, model):
    p = tmp_path / "prompts.jsonl"
    p.write_text(json.dumps([json.loads(GOOD), json.loads(HELD)], indent=2) + "\n")
    return [f"data.prompts={p}"], [f"{p}:1:", "looks like a JSON array", "one JSON object per line"]


def case_gate_pairs_bad_file_before_any_work(tmp_path, model):
    p = tmp_path / "gate.jsonl"
    p.write_text(json.dumps({"prompt": "Hi?", "chosen": "Hello."}) + "\n")
    return ["feedback.min_agreement=0.5", f"feedback.gate_pairs={p}"], [f"feedback.gate_pairs: {p}:1:",
                                                                         "missing 'rejected'"]


def case_red_team_file_missing_before_any_work(tmp_path, model):
    return [f"eval.red_team={tmp_path / 'attacks.jsonl'}"], ["eval.red_team: prompt file", "attacks.jsonl' not found"]


def case_anchor_file_bad_line_before_any_work(tmp_path, model):
    p = prompts_file(tmp_path, [GOOD, json.dumps({"messages": [{"role": "user", "content": 5}]})], "anchors.jsonl")
    return [f"eval.anchors={p}"], [f"{p}:2:", "messages[0].content must be a string, got int"]


def case_heads_directory_without_a_card(tmp_path, model):
    d = tmp_path / "heads"
    d.mkdir()
    return ["feedback.method=fitted", f"feedback.heads={d}"], ["feedback.heads:", "is not a head directory"]


def case_refit_pairs_bad_row(tmp_path, model):
    p = tmp_path / "base_pairs.jsonl"
    p.write_text(json.dumps({"prompt": "Hi?", "chosen": "Hello.", "rejected": 3}) + "\n")
    return ["pipeline.rounds=2", "label.refit_from_audit=true", f"label.refit_pairs={p}"], [
        f"label.refit_pairs: {p}:1:", "'rejected' must be a string or a chat list, got int"]


def case_model_not_a_model(tmp_path, model):
    bad = tmp_path / "notamodel"
    bad.mkdir()
    (bad / "config.json").write_text('{"hello": "world"}')
    return [f"model.policy={bad}"], ["model.policy", "config.json is not a model config"]


def case_model_without_weights(tmp_path, model):
    bad = tmp_path / "noweights"
    shutil.copytree(model, bad)
    for f in list(bad.glob("*.safetensors")) + list(bad.glob("*.bin")):
        f.unlink()
    return [f"model.policy={bad}"], ["model.policy", "has no weight files"]


def case_model_is_a_file(tmp_path, model):
    f = tmp_path / "model.txt"
    f.write_text("not a model")
    return [f"model.policy={f}"], ["model.policy", "unknown model"]


def case_no_chat_template(tmp_path, model):
    bad = tmp_path / "notemplate"
    shutil.copytree(model, bad)
    cfg = json.loads((bad / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (bad / "tokenizer_config.json").write_text(json.dumps(cfg))
    for extra in ("chat_template.jinja", "chat_template.json"):
        (bad / extra).unlink(missing_ok=True)
    return [f"model.policy={bad}"], ["model.policy", "has no chat template"]


def case_judge_refuses_connections(tmp_path, model):
    url = f"http://127.0.0.1:{free_port()}/v1"
    return [f"feedback.api.base_url={url}", "feedback.api.model=judge"], ["feedback.api.base_url", "cannot connect", url]


def case_bad_constitution(tmp_path, model):
    c = tmp_path / "constitution.yaml"
    c.write_text("principles:\n  - id: a\n    weight: 1\n")
    return [f"data.constitution={c}"], [str(c), "principles[0] needs a 'text' string"]


def case_bad_round_override(tmp_path, model):
    return ["pipeline.rounds=2", "pipeline.overrides={2: ['model.policy=x']}"], ["'model.policy' cannot change between rounds"]


def case_benchmark_unknown_instruction(tmp_path, model):
    p = prompts_file(tmp_path, [json.dumps({"key": 1, "prompt": "x", "instruction_id_list": ["punctuation:no_comma"],
                                            "kwargs": [{}]}),
                                json.dumps({"key": 2, "prompt": "y", "instruction_id_list": ["style:haiku"],
                                            "kwargs": [{}]})], "ifeval.jsonl")
    return [f"eval.benchmarks=[{{name: ifeval, file: {p}}}]"], [f"{p}:2:", "unknown instruction id 'style:haiku'"]


def case_benchmark_wrong_format(tmp_path, model):
    p = tmp_path / "ifeval.json"
    p.write_text('[\n  {"key": 1, "prompt": "x"}\n]\n')  # a pretty-printed JSON array, not JSONL
    return [f"eval.benchmarks=[{{name: ifeval, file: {p}}}]"], [f"{p}:1:"]


def case_benchmark_missing_file(tmp_path, model):
    return [f"eval.benchmarks=[{{name: human_prefs, file: {tmp_path / 'people.jsonl'}}}]"], ["people.jsonl"]


def case_sft_rows_without_assistant_turn(tmp_path, model):
    p = prompts_file(tmp_path, [json.dumps({"messages": [{"role": "user", "content": "Hi?"},
                                                         {"role": "assistant", "content": "Hello."}]}),
                                json.dumps({"messages": [{"role": "user", "content": "Only a question?"}]})], "sft.jsonl")
    return [f"sft.data={p}"], [f"{p}:2:", "no assistant turn to learn from"]


def case_sft_bad_role(tmp_path, model):
    p = prompts_file(tmp_path, [json.dumps({"messages": [{"role": "user", "content": "Hi?"},
                                                         {"role": "bot", "content": "Hello."}]})], "sft.jsonl")
    return [f"sft.data={p}"], [f"{p}:1:", "messages[1].role is 'bot'; use one of system, user, assistant"]


def case_sft_nothing_left_after_truncation(tmp_path, model):
    long = "Dear friend, thank you for your kind letter and your thoughtful gift. " * 6
    p = prompts_file(tmp_path, [json.dumps({"messages": [{"role": "user", "content": "Hi?"},
                                                         {"role": "assistant", "content": "Hello."}]}),
                                json.dumps({"prompt": long, "completion": "Thanks."})], "sft.jsonl")
    return [f"sft.data={p}", "sft.max_length=32"], [f"{p}:2:", "no assistant token is left within sft.max_length=32"]


def case_sft_algo_without_rows(tmp_path, model):
    return ["train.algo=sft"], ["train.algo=sft needs an sft section"]


def case_sft_full_finetune_as_round_trainer(tmp_path, model):
    p = prompts_file(tmp_path, [json.dumps({"prompt": "Hi?", "completion": "Hello."})], "sft.jsonl")
    return [f"sft.data={p}", "train.algo=sft", "sft.full_finetune=true"], ["sft.full_finetune: a round's policy is a LoRA"]


def case_grpo_with_one_sample_per_prompt(tmp_path, model):
    return ["train.algo=grpo", "rl.k=1"], ["rl.k: train.algo=grpo needs at least 2 samples per prompt"]


def case_online_dpo_with_one_sample_per_prompt(tmp_path, model):
    return ["train.algo=online_dpo", "rl.k=1"], ["rl.k: train.algo=online_dpo needs at least 2 samples per prompt"]


def case_grpo_minibatch_that_does_not_divide(tmp_path, model):
    return ["train.algo=grpo", "rl.k=4", "rl.prompts_per_step=2", "grpo.minibatch_size=3"], [
        "grpo.minibatch_size: 3 does not divide an update's 8 samples"]


CASES = {name[len("case_"):]: fn for name, fn in dict(globals()).items() if name.startswith("case_")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name, tmp_path, tiny_model_dir):
    args, needles = CASES[name](tmp_path, tiny_model_dir)
    out = tmp_path / "run"
    overrides = [f"model.policy={tiny_model_dir}", *TINY_OVERRIDES]
    if any(a.startswith("model.policy=") for a in args):
        overrides = overrides[1:]
    if "-c" in args:  # the config file comes first, then the overrides
        i = args.index("-c")
        proc = rlaif("run", "-c", args[i + 1], "-o", out, *overrides, *(args[:i] + args[i + 2:]))
    else:
        proc = rlaif("run", "-o", out, *overrides, *args)
    assert_user_error(proc, *needles)
    assert not out.exists(), f"{name}: the failed run left {sorted(p.name for p in out.rglob('*'))}"


PAIR = {"prompt": "How do I boil an egg?", "chosen": "Simmer it for nine minutes.", "rejected": "No idea."}
PAIR_CASES = {  # a labelled-pairs row -> what the one line must say after '--pairs: FILE:2:'
    "null reply": ({**PAIR, "rejected": None}, "'rejected' is null"),
    "missing reply": ({k: v for k, v in PAIR.items() if k != "rejected"}, "missing 'rejected'"),
    "reply of the wrong type": ({**PAIR, "chosen": 3}, "'chosen' must be a string or a chat list, got int"),
    "empty reply": ({**PAIR, "chosen": "  "}, "'chosen' is empty"),
    "identical replies": ({**PAIR, "rejected": PAIR["chosen"]}, "'chosen' and 'rejected' are the same text"),
    "chat reply without an assistant turn": ({**PAIR, "chosen": [{"role": "user", "content": "x"}]},
                                             "'chosen' is a chat list without an assistant turn"),
    "unknown role in a chat reply": ({**PAIR, "chosen": [{"role": "bot", "content": "x"}]},
                                     "chosen[0].role is 'bot'; use one of system, user, assistant"),
    "missing prompt": ({k: v for k, v in PAIR.items() if k != "prompt"}, "missing 'prompt' (or 'context')"),
    "prompt of the wrong type": ({**PAIR, "prompt": {"text": "x"}}, "'prompt' must be a string or a chat list, got dict"),
    "principle of the wrong type": ({**PAIR, "principle": 7}, "'principle' must be a string, got int"),
    "AlpacaEval row without a preference": ({"instruction": "x", "output_1": "a", "output_2": "b"},
                                            "missing 'preference' (or 'gpt4_preference')"),
    "AlpacaEval preference out of range": ({"instruction": "x", "output_1": "a", "output_2": "b", "preference": 3},
                                           "'preference' is 3; use 1"),
    "AlpacaEval null output": ({"instruction": "x", "output_1": None, "output_2": "b", "preference": 1},
                               "'output_1' is null"),
    "neither shape": ({"question": "x", "answer": "y"}, "found answer, question"),
}


@pytest.mark.parametrize("case", sorted(PAIR_CASES))
def test_bad_labelled_pair_row(case, tmp_path):
    """Every reader of labelled pairs goes through data.pairs.load_labelled_pairs: judge-eval shows its lines."""
    row, needle = PAIR_CASES[case]
    p = prompts_file(tmp_path, [json.dumps(PAIR), json.dumps(row)], "pairs.jsonl")
    proc = rlaif("judge-eval", "--pairs", p)
    assert_user_error(proc, f"--pairs: {p}:2:", needle)


def test_ties_are_skipped_and_a_file_of_ties_is_refused(tmp_path):
    from openrlaif.data.pairs import load_labelled_pairs

    ok = {"instruction": "x", "output_1": "a", "output_2": "b", "gpt4_preference": 2}
    tie = {**ok, "gpt4_preference": 1.5}
    p = prompts_file(tmp_path, [json.dumps(tie), json.dumps(ok), json.dumps({**ok, "gpt4_preference": None})])
    pairs = load_labelled_pairs(str(p))
    assert [(x.chosen, x.rejected, x.prompt) for x in pairs] == [("b", "a", "x")]
    only_ties = prompts_file(tmp_path, [json.dumps(tie)], "ties.jsonl")
    proc = rlaif("judge-eval", "--pairs", only_ties)
    assert_user_error(proc, "--pairs:", "holds no labelled pairs (empty, or only ties)")


def test_a_byte_order_mark_is_read_past_and_an_empty_pairs_file_is_named(tmp_path):
    from openrlaif.data.pairs import load_labelled_pairs
    from openrlaif.data.prompts import load_prompts

    p = prompts_file(tmp_path, [b"\xef\xbb\xbf" + json.dumps(PAIR).encode()], "bom.jsonl")  # saved by Notepad
    assert load_labelled_pairs(str(p))[0].prompt == PAIR["prompt"]
    q = prompts_file(tmp_path, [b"\xef\xbb\xbf" + GOOD.encode(), HELD], "bom-prompts.jsonl")
    assert [x.text for x in load_prompts(str(q))] == ["How do I boil an egg?", "Name a fruit."]
    empty = prompts_file(tmp_path, [], "empty.jsonl")
    assert_user_error(rlaif("judge-eval", "--pairs", empty), f"--pairs: {empty} holds no labelled pairs")
    folder = tmp_path / "pairs_dir"
    folder.mkdir()
    assert_user_error(rlaif("judge-eval", "--pairs", folder), f"--pairs: '{folder}' is a directory")


def test_bad_pairs_file_for_judge_eval(tmp_path):
    p = prompts_file(tmp_path, [b'{"prompt": "x", "chosen": "a", "rejected": "b"}', b"\xff\xfe"], "pairs.jsonl")
    proc = rlaif("judge-eval", "--pairs", p)
    assert_user_error(proc, f"{p}:2:", "not UTF-8")


def test_stage_on_existing_run_leaves_it_untouched(tmp_path, tiny_model_dir):
    """A stage command with a bad override on an existing run directory changes nothing in it."""
    out = tmp_path / "run"
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: kept\n")
    ok = rlaif("generate", "-c", cfg, "-o", out, f"model.policy={tiny_model_dir}", *TINY_OVERRIDES, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    bad = tmp_path / "p.jsonl"
    bad.write_bytes(b'{"prompt": 1}\n')
    proc = rlaif("label", "-o", out, f"data.prompts={bad}")
    assert_user_error(proc, f"{bad}:1:")
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before


def test_hand_edited_round_preferences_are_refused_by_train(tmp_path, tiny_model_dir):
    """A round's preferences.jsonl goes through the same checks (data.pairs.read_preference_file) when training
    reads it: a null reply or a p_chosen out of range is one line naming file:line, and nothing is trained."""
    from conftest import labelled_run, tiny_overrides

    from openrlaif.config import load_config

    cfg = load_config(None, tiny_overrides(tiny_model_dir))
    store, rows, db = labelled_run(cfg, tmp_path / "run")
    db.close()
    path = store.path("preferences.jsonl")
    for bad, needle in [({**rows[1], "rejected": None}, "'rejected' is null"),
                        ({**rows[1], "p_chosen": 1.7}, "'p_chosen' is 1.7"),
                        ({**rows[1], "rejected": rows[1]["chosen"]}, "are the same text")]:
        path.write_text("".join(json.dumps(r) + "\n" for r in [rows[0], bad, *rows[2:]]))
        proc = rlaif("train", "-o", store.root)
        assert_user_error(proc, f"{path}:2:", needle)
        assert not store.path("policy").exists()
