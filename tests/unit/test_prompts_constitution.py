"""Prompt sets and constitutions: built-ins, user files, errors naming file:line, stable splits."""

import json
import random
from collections import Counter

import pytest

from openrlaif.core.errors import UserError
from openrlaif.data.constitution import Constitution, Principle, load_constitution
from openrlaif.data.prompts import load_prompts, select


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


# --- prompts ----------------------------------------------------------------------------------


def test_builtin_prompts():
    prompts = load_prompts("builtin")
    assert len(prompts) >= 200
    splits = Counter(p.split for p in prompts)
    assert set(splits) == {"train", "heldout"}
    assert splits["train"] > 0 and splits["heldout"] > 0
    ids = [p.id for p in prompts]
    assert len(set(ids)) == len(ids)
    for p in prompts:
        assert p.messages and p.messages[-1]["role"] == "user"
        assert p.text.strip()


def test_load_prompt_and_messages_rows(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "  Hello there  ", "id": "a", "split": "train", "category": "chat", "source": "me"},
        "",
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "What is 2+2?"}],
         "split": "heldout"},
    ])
    a, b = load_prompts(str(path))
    assert a.id == "a"
    assert a.messages == [{"role": "user", "content": "Hello there"}]
    assert a.split == "train" and a.category == "chat"
    assert a.extra == {"source": "me"}
    assert a.text == "Hello there"
    assert b.messages[0] == {"role": "system", "content": "be brief"}
    assert b.text == "What is 2+2?"
    assert b.split == "heldout"
    assert b.id.startswith("L3-")  # default id names the line


def test_missing_prompt_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_prompts(str(tmp_path / "nope.jsonl"))


def test_empty_prompt_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    with pytest.raises(UserError) as ei:
        load_prompts(str(path))
    assert str(path) in str(ei.value) and "no prompts" in str(ei.value)


@pytest.mark.parametrize("bad_row", [
    '{"text": "no prompt key"}',
    '{"prompt": "   "}',
    '{"prompt": 3}',
    '{"messages": [{"role": "user"}]}',
    '{"prompt": "x", "split": "test"}',
    '["a list"]',
    '{not json',
])
def test_bad_row_names_file_and_line(tmp_path, bad_row):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "fine"}, "", bad_row])
    with pytest.raises(UserError) as ei:
        load_prompts(str(path))
    assert f"{path}:3" in str(ei.value)


def test_split_without_column_is_stable(tmp_path):
    rows = [{"prompt": f"Question number {i}: tell me something about topic {i}."} for i in range(200)]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    first = load_prompts(str(path), heldout_fraction=0.25)
    second = load_prompts(str(path), heldout_fraction=0.25)
    assert [p.split for p in first] == [p.split for p in second]
    # the split depends on the prompt text, not on its position in the file
    path2 = write_jsonl(tmp_path / "rev.jsonl", list(reversed(rows)))
    by_text = {p.text: p.split for p in first}
    assert all(by_text[p.text] == p.split for p in load_prompts(str(path2), heldout_fraction=0.25))
    n_held = sum(p.split == "heldout" for p in first)
    assert 20 <= n_held <= 80  # about a quarter of 200
    # a larger fraction only moves prompts into heldout
    more = load_prompts(str(path), heldout_fraction=0.5)
    assert sum(p.split == "heldout" for p in more) > n_held
    assert all(m.split == "heldout" for f, m in zip(first, more) if f.split == "heldout")


def test_instruction_is_appended_to_the_last_user_turn_without_moving_the_split(tmp_path):
    rows = [{"prompt": f"Question number {i}: tell me about topic {i}."} for i in range(60)]
    rows.append({"messages": [{"role": "system", "content": "be kind"}, {"role": "user", "content": "Hi?"},
                              {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Why?"}]})
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    plain = load_prompts(str(path))
    told = load_prompts(str(path), instruction="  Answer in one sentence. ")
    assert [p.split for p in told] == [p.split for p in plain]
    assert told[0].text == "Question number 0: tell me about topic 0. Answer in one sentence."
    assert told[-1].messages[:3] == plain[-1].messages[:3]
    assert told[-1].messages[3] == {"role": "user", "content": "Why? Answer in one sentence."}
    assert [p.id for p in told] == [p.id for p in plain]


def test_run_prompts_reads_the_data_config():
    from openrlaif.config import DataConfig
    from openrlaif.data.prompts import run_prompts

    data = DataConfig(instruction="Be brief.")
    held = run_prompts(data, "heldout", 3)
    assert len(held) == 3 and all(p.split == "heldout" and p.text.endswith(" Be brief.") for p in held)
    assert [p.id for p in held] == [p.id for p in select(load_prompts("builtin"), "heldout", 3)]


def test_select():
    prompts = load_prompts("builtin")
    train = select(prompts, "train", 4)
    assert len(train) == 4 and all(p.split == "train" for p in train)
    assert train == [p for p in prompts if p.split == "train"][:4]
    assert len(select(prompts, "heldout", None)) == sum(p.split == "heldout" for p in prompts)


# --- constitution -----------------------------------------------------------------------------


def test_builtin_constitution():
    c = load_constitution("builtin")
    assert 8 <= len(c.principles) <= 16
    assert len({p.id for p in c.principles}) == len(c.principles)
    assert all(p.weight > 0 and p.text for p in c.principles)


def write_yaml(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text, encoding="utf-8")
    return str(p)


def test_user_constitution(tmp_path):
    c = load_constitution(write_yaml(tmp_path, "name: mine\nprinciples:\n  - id: a\n    text: ' Is A better? '\n"
                                     "    weight: 3\n  - text: Which is kinder?\n"))
    assert c.name == "mine"
    assert c.principles == (Principle("a", "Is A better?", 3.0), Principle("p1", "Which is kinder?", 1.0))


@pytest.mark.parametrize("text,needle", [
    ("principles:\n  - id: a\n    text: x\n    weight: 0\n", "weight"),
    ("principles:\n  - id: a\n    text: x\n    weight: -1\n", "weight"),
    ("principles:\n  - id: a\n    text: x\n  - id: a\n    text: y\n", "duplicate"),
    ("principles:\n  - id: a\n", "text"),
    ("principles: []\n", "principles"),
    ("name: x\n", "principles"),
    ("principles: [\n", "not valid YAML"),
])
def test_bad_constitution(tmp_path, text, needle):
    path = write_yaml(tmp_path, text)
    with pytest.raises(UserError) as ei:
        load_constitution(path)
    assert needle in str(ei.value)
    assert path in str(ei.value)


def test_missing_constitution(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_constitution(str(tmp_path / "none.yaml"))


def test_sample_respects_weights_and_seed():
    c = Constitution("t", (Principle("rare", "r", 1.0), Principle("common", "c", 9.0)))
    rng = random.Random(123)
    counts = Counter(c.sample(rng).id for _ in range(4000))
    assert set(counts) == {"rare", "common"}
    assert 0.07 < counts["rare"] / 4000 < 0.13  # expected 0.1
    a = [c.sample(random.Random("seed-x")).id for _ in range(5)]
    b = [c.sample(random.Random("seed-x")).id for _ in range(5)]
    assert a == b
    seq1 = [p.id for p in (c.sample(r) for r in [random.Random(5)] * 20)]
    seq2 = [p.id for p in (c.sample(r) for r in [random.Random(5)] * 20)]
    assert seq1 == seq2


def test_sample_single_heavy_principle_always_wins():
    c = Constitution("t", (Principle("tiny", "t", 1e-12), Principle("big", "b", 1.0)))
    rng = random.Random(0)
    assert all(c.sample(rng).id == "big" for _ in range(200))
