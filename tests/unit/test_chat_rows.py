"""SFT rows: TRL's conversational formats from JSONL, Parquet and saved datasets; every bad row named."""

import json

import pytest

from openrlaif.core.errors import UserError
from openrlaif.data.chat import load_chat_rows

GOOD = {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_messages_and_prompt_completion_rows(tmp_path):
    path = write(tmp_path / "sft.jsonl", [
        GOOD, "",
        {"prompt": "Name a colour.", "completion": "Blue."},
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
         "completion": [{"role": "assistant", "content": "4"}]}])
    rows = load_chat_rows(path)
    assert [r.where for r in rows] == [f"{path}:1", f"{path}:3", f"{path}:4"]
    assert rows[1].messages == [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]
    assert [m["role"] for m in rows[2].messages] == ["system", "user", "assistant"]


def test_parquet_and_saved_dataset(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    pq.write_table(pa.Table.from_pylist([GOOD, GOOD]), tmp_path / "sft.parquet")
    assert len(load_chat_rows(tmp_path / "sft.parquet")) == 2
    Dataset.from_list([GOOD] * 3).save_to_disk(str(tmp_path / "ds"))
    rows = load_chat_rows(tmp_path / "ds")
    assert len(rows) == 3 and rows[2].where.endswith(":row 2") and rows[0].messages == GOOD["messages"]


@pytest.mark.parametrize("row, needle", [
    ({"messages": [{"role": "user", "content": "Only a question?"}]}, ":1: has no assistant turn to learn from"),
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "  "}]}, "no assistant turn"),
    ({"messages": [{"role": "bot", "content": "x"}]}, "messages[0].role is 'bot'; use one of system, user, assistant"),
    ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content must be a string, got int"),
    ({"messages": [{"role": "user"}]}, "messages[0].content must be a string, got missing"),
    ({"messages": "hi"}, "'messages' must be a non-empty list"),
    ({"messages": None}, "got null"),
    ({"text": "plain text"}, "needs 'messages'"),
    ({"prompt": "Q", "completion": [{"role": "assistant", "content": 1}]}, "completion[0].content must be a string"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, row, needle):
    path = write(tmp_path / "bad.jsonl", [GOOD, row])
    with pytest.raises(UserError) as err:
        load_chat_rows(path)
    assert f"{path}:2" in str(err.value) and needle.split(":1: ")[-1] in str(err.value)


def test_missing_empty_and_plain_directory(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_chat_rows(tmp_path / "nope.jsonl")
    with pytest.raises(UserError, match="holds no rows"):
        load_chat_rows(write(tmp_path / "empty.jsonl", [""]))
    (tmp_path / "plain").mkdir()
    with pytest.raises(UserError, match="not a saved dataset"):
        load_chat_rows(tmp_path / "plain")


def test_pack_groups_best_fit_decreasing():
    from openrlaif.data.chat import pack_groups

    # lengths 5, 3, 8, 2, 6 into packs of 10: 8 -> new; 6 -> new; 5 -> new; 3 -> fits the 6-pack (room 4)
    # tightest: the 6-pack (room 4 < 5), 2 -> the 8-pack (room 2, tightest)
    assert pack_groups([5, 3, 8, 2, 6], 10) == [[2, 3], [4, 1], [0]]
    assert pack_groups([], 10) == []
    assert pack_groups([12, 1], 10) == [[0], [1]]  # a row over the limit gets its own pack
    assert pack_groups([4, 4, 4], 8) == [[0, 1], [2]]  # ties: the earlier row, the earlier pack
