"""Chat rows for supervised fine-tuning, in TRL's conversational formats, every row checked before any work.

Accepted per row: ``messages`` (a list of {role: system|user|assistant, content: string} with at least one
assistant turn), or TRL's prompt-completion pair (``prompt`` and ``completion``, each a string or a list of
messages). Files: JSONL (``.jsonl``/``.json`` lines), Parquet, or a directory written by
``datasets.Dataset.save_to_disk``; a round's ``revisions.jsonl`` is JSONL with ``messages``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from openrlaif.core.errors import UserError

ROLES = ("system", "user", "assistant")


@dataclass
class ChatRow:
    messages: list[dict[str, str]]
    where: str  # file:line (or file:row N) for error messages


def load_chat_rows(spec: str | Path, field: str = "sft.data") -> list[ChatRow]:
    """Every row of a JSONL/Parquet file or a saved ``datasets`` directory as a checked conversation."""
    path = Path(spec).expanduser()
    if not path.exists():
        raise UserError(f"{field}: '{spec}' not found; give a JSONL or Parquet file of chat rows ('messages'), or a "
                        "directory saved with datasets' save_to_disk")
    rows = [ChatRow(conversation(row, where), where) for where, row in raw_rows(path, field)]
    if not rows:
        raise UserError(f"{field}: {path} holds no rows; add rows with a 'messages' list")
    return rows


def raw_rows(path: Path, field: str):
    """(where, row dict) for each row of the file or dataset directory."""
    from openrlaif.core.store import iter_jsonl

    if path.is_dir():
        if not (path / "dataset_info.json").is_file() and not (path / "dataset_dict.json").is_file():
            raise UserError(f"{field}: {path} is a directory but not a saved dataset (no dataset_info.json); give a "
                            "JSONL/Parquet file or a directory written by datasets' save_to_disk")
        from datasets import load_from_disk

        data = load_from_disk(str(path))
        if hasattr(data, "keys"):  # a DatasetDict: its train split
            if "train" not in data:
                raise UserError(f"{field}: {path} is a dataset dict without a 'train' split (it has {', '.join(data)})")
            data = data["train"]
        yield from ((f"{path}:row {i}", row) for i, row in enumerate(data))
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a bad file
            raise UserError(f"{field}: {path} is not a readable Parquet file ({err})") from None
        yield from ((f"{path}:row {i}", row) for i, row in enumerate(table.to_pylist()))
    else:
        yield from ((f"{path}:{lineno}", row) for lineno, row in iter_jsonl(path))


def conversation(row: dict, where: str) -> list[dict[str, str]]:
    """The row's conversation (messages, or prompt + completion), checked: roles, string contents, and at
    least one non-empty assistant turn to learn from."""
    if "messages" in row:
        messages = checked_messages(row["messages"], "messages", where)
    elif "prompt" in row and "completion" in row:
        prompt, completion = row["prompt"], row["completion"]
        prompt = ([{"role": "user", "content": prompt}] if isinstance(prompt, str)
                  else checked_messages(prompt, "prompt", where))
        completion = ([{"role": "assistant", "content": completion}] if isinstance(completion, str)
                      else checked_messages(completion, "completion", where))
        messages = prompt + completion
    else:
        raise UserError(f"{where}: needs 'messages' (a list of {{role, content}}) or 'prompt' and 'completion'; "
                        f"found fields {', '.join(sorted(row)) or 'none'}")
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise UserError(f"{where}: has no assistant turn to learn from; add a message with role 'assistant' "
                        "and non-empty content")
    return messages


def checked_messages(value, name: str, where: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise UserError(f"{where}: '{name}' must be a non-empty list of {{role, content}} objects, "
                        f"got {type(value).__name__ if value is not None else 'null'}")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise UserError(f"{where}: {name}[{i}] must be an object with 'role' and 'content', got {type(m).__name__}")
        if m.get("role") not in ROLES:
            raise UserError(f"{where}: {name}[{i}].role is {m.get('role')!r}; use one of {', '.join(ROLES)}")
        if not isinstance(m.get("content"), str):
            got = "missing" if "content" not in m else type(m["content"]).__name__
            raise UserError(f"{where}: {name}[{i}].content must be a string, got {got}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def pack_groups(lengths: list[int], max_length: int) -> list[list[int]]:
    """Rows (by token count) grouped into packs of at most ``max_length`` tokens, best-fit decreasing: longest row
    first, each into the pack it fills most tightly, a new pack when none has room. Deterministic (ties go to
    the earlier row and the earlier pack); a row longer than ``max_length`` gets a pack of its own."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    packs: list[list[int]] = []
    room: list[int] = []
    for i in order:
        fits = [p for p in range(len(packs)) if room[p] >= lengths[i]]
        if fits:
            best = min(fits, key=lambda p: (room[p], p))
            packs[best].append(i)
            room[best] -= lengths[i]
        else:
            packs.append([i])
            room.append(max_length - lengths[i])
    return packs
