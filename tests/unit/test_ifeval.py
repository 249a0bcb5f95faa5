"""IFEval: the file loader's refusals, the checkers run offline, the accuracies and the paired bootstrap by hand."""

import json

import pytest

from openrlaif.core.errors import UserError
from openrlaif.evaluate.ifeval import Checked, IFEvalItem, accuracies, check, load_ifeval, metric_of
from openrlaif.evaluate.winrate import paired_bootstrap_diff

ROWS = [
    {"key": 1, "prompt": "Describe rain in lowercase letters only.", "instruction_id_list": ["change_case:english_lowercase"],
     "kwargs": [{}]},
    {"key": 2, "prompt": "Name three fruits without commas, in fewer than 3 sentences.",
     "instruction_id_list": ["punctuation:no_comma", "length_constraints:number_sentences"],
     "kwargs": [{}, {"relation": "less than", "num_sentences": 3}]},
]


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_checkers_follow_ifevals_rules_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENRLAIF_CACHE", str(tmp_path / "cache"))  # a fresh cache: punkt_tab is written, not fetched
    items = load_ifeval(write(tmp_path / "p.jsonl", ROWS))
    assert [it.key for it in items] == ["1", "2"] and items[1].kwargs[1]["num_sentences"] == 3
    assert check(items[0], "soft grey rain on the roof.").strict == [True]
    assert check(items[0], "Soft grey rain.").strict == [False]
    # sentence counting reads NLTK's punkt model ("Dr." does not end a sentence)
    assert check(items[1], "Dr. Lee likes apples pears and plums. That is all.").strict == [True, True]
    assert check(items[1], "Apples, pears. Plums. Figs.").strict == [False, False]
    # loose also accepts the answer without its first line (IFEval's variants)
    c = check(items[0], "Sure! Here it is:\nsoft grey rain.")
    assert c.strict == [False] and c.loose == [True]


def test_accuracies_and_the_paired_difference_by_hand():
    items = [IFEvalItem("a", "p", ("x:1", "x:2"), ({}, {})), IFEvalItem("b", "p", ("x:1",), ({},))]
    checked = [Checked([True, False], [True, True]), Checked([True], [True])]
    acc = accuracies(items, checked)
    # prompt strict: only b has every instruction; instruction strict: 2 of 3; loose: all
    assert acc["prompt_strict"] == 0.5 and acc["instruction_strict"] == pytest.approx(2 / 3)
    assert acc["prompt_loose"] == 1.0 and acc["instruction_loose"] == 1.0
    assert acc["per_instruction"]["x:1"] == {"n": 2, "strict": 1.0, "loose": 1.0}
    assert acc["per_instruction"]["x:2"] == {"n": 1, "strict": 0.0, "loose": 1.0}
    assert metric_of("instruction_strict")(checked) == pytest.approx(2 / 3)
    # the paired bootstrap: identical systems differ by exactly 0; one that wins every item by 1
    same = paired_bootstrap_diff([1.0, 0.0, 1.0], [1.0, 0.0, 1.0], lambda v: sum(v) / len(v), 200, 0)
    assert same == (0.0, 0.0, 0.0)
    up = paired_bootstrap_diff([1.0] * 5, [0.0] * 5, lambda v: sum(v) / len(v), 200, 0)
    assert up == (1.0, 1.0, 1.0)
    d, lo, hi = paired_bootstrap_diff([1.0, 1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0], lambda v: sum(v) / len(v), 500, 1)
    assert d == 0.5 and 0.0 <= lo <= d <= hi <= 1.0
    with pytest.raises(ValueError):
        paired_bootstrap_diff([1.0], [], lambda v: 0.0)


@pytest.mark.parametrize("row, message", [
    ({"prompt": "x", "instruction_id_list": ["bogus:id"], "kwargs": [{}]}, "unknown instruction id 'bogus:id'"),
    ({"prompt": "x", "instruction_id_list": ["punctuation:no_comma"]}, "missing field 'kwargs'"),
    ({"prompt": "x", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}, {}]}, "list of 1 objects"),
    ({"prompt": "x", "instruction_id_list": ["length_constraints:number_words"], "kwargs": [{"num_word": 5}]},
     "takes no argument(s) num_word"),
    ({"prompt": "", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}, "'prompt' must be"),
    ({"prompt": "x", "instruction_id_list": "punctuation:no_comma", "kwargs": [{}]}, "'instruction_id_list' must be"),
])
def test_bad_ifeval_files_name_the_line_and_field(tmp_path, row, message):
    path = write(tmp_path / "bad.jsonl", [ROWS[0], row])
    with pytest.raises(UserError) as err:
        load_ifeval(path)
    assert f"{path}:2:" in str(err.value) and message in str(err.value)


def test_missing_files_and_splits(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_ifeval(tmp_path / "nope.jsonl")
    with pytest.raises(UserError, match="is a directory"):
        load_ifeval(tmp_path)
    path = write(tmp_path / "s.jsonl", [{**ROWS[0], "split": "train"}, {**ROWS[1], "split": "heldout"}])
    assert [it.key for it in load_ifeval(path, split="heldout")] == ["2"]
    with pytest.raises(UserError, match="no IFEval prompts in split 'dev'"):
        load_ifeval(path, split="dev")


def test_a_missing_checker_dependency_is_one_line_before_any_model(tmp_path):
    import subprocess
    import sys

    path = write(tmp_path / "p.jsonl", ROWS)
    code = ("import sys; sys.modules['langdetect'] = None; from openrlaif.cli import main; "
            f"sys.argv = ['rlaif', 'bench', 'ifeval', '-p', {str(path)!r}, '--policy', '/no/such/model']; main()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-1500:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "langdetect not installed" in lines[0] and "make setup" in lines[0]
    # an unknown benchmark too
    proc = subprocess.run([sys.executable, "-m", "openrlaif.cli", "bench", "mmlu", "-p", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown benchmark 'mmlu'" in proc.stderr


def test_the_builtin_verifiable_set():
    from openrlaif.evaluate.ifeval import resolve_prompts

    path, split = resolve_prompts("builtin", None)
    assert split == "heldout"
    every = load_ifeval(path)  # every row valid for IFEval's checkers
    held, train = load_ifeval(path, "heldout"), load_ifeval(path, "train")
    assert len(every) >= 100 and len(held) + len(train) == len(every) and len(held) >= 30
    # a task's prompts share a split: no held-out request is ever trained on
    request = lambda it: it.prompt.split(". ")[0]  # noqa: E731
    assert not {request(it) for it in held} & {request(it) for it in train}
    assert len({i for it in every for i in it.instruction_ids}) >= 15
    # an answer written to the instructions passes, a careless one does not
    lower = next(it for it in every if it.instruction_ids == ("change_case:english_lowercase",))
    assert check(lower, "the sun sinks into the sea and the sky turns orange.").strict == [True]
    assert check(lower, "The Sun sinks.").strict == [False]


def test_margin_outcomes_by_hand():
    from openrlaif.evaluate.winrate import margin_outcomes

    assert margin_outcomes([0.3, -1e-9, 0.0]) == [1.0, 0.0, 0.5]


def test_the_verifiable_rule_scores_the_share_of_instructions_followed():
    from openrlaif.data.prompts import load_prompts
    from openrlaif.evaluate.ifeval import verifiable_rule

    prompts = load_prompts("builtin:verifiable")  # the set doubles as a prompts file (its split column)
    assert len(prompts) == 120 and {p.split for p in prompts} == {"train", "heldout"}
    text = next(p.messages[-1]["content"] for p in prompts if p.extra["instruction_id_list"] == [
        "change_case:english_lowercase", "length_constraints:number_words"])
    assert verifiable_rule(text, "soft orange light sinks into the water.") == 1.0
    assert verifiable_rule(text, "Soft orange light sinks into the water.") == 0.5  # lowercase missed, length kept
    with pytest.raises(KeyError, match="not a prompt of the built-in verifiable set"):
        verifiable_rule("Tell me a joke.", "No.")
