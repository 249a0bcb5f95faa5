"""Run directory store: atomic writes, atomic directories, manifest and metrics."""

import json

import pytest

from openrlaif.core import store as store_mod
from openrlaif.core.errors import UserError
from openrlaif.core.store import (
    PartialLog,
    RunStore,
    atomic_directory,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
    is_write_failure,
    read_jsonl,
    sha256_file,
    sha256_text,
)


def names(d):
    return sorted(p.name for p in d.iterdir())


def test_atomic_writes_content_and_no_temp(tmp_path):
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "sub" / "b.txt", "héllo")
    atomic_write_json(tmp_path / "c.json", {"x": [1, 2], "s": "é"})
    atomic_write_jsonl(tmp_path / "d.jsonl", [{"a": 1}, {"b": "ü"}])
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "sub" / "b.txt").read_text(encoding="utf-8") == "héllo"
    assert json.loads((tmp_path / "c.json").read_text(encoding="utf-8")) == {"x": [1, 2], "s": "é"}
    assert (tmp_path / "d.jsonl").read_text(encoding="utf-8") == '{"a": 1}\n{"b": "ü"}\n'
    assert read_jsonl(tmp_path / "d.jsonl") == [{"a": 1}, {"b": "ü"}]
    assert names(tmp_path) == ["a.bin", "c.json", "d.jsonl", "sub"]
    assert names(tmp_path / "sub") == ["b.txt"]


def test_atomic_write_overwrites(tmp_path):
    p = tmp_path / "f.txt"
    atomic_write_text(p, "one")
    atomic_write_text(p, "two")
    assert p.read_text() == "two"
    assert names(tmp_path) == ["f.txt"]


def test_failed_replace_keeps_original_and_no_temp(tmp_path, monkeypatch):
    p = tmp_path / "f.txt"
    p.write_text("original")

    def boom(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(store_mod.os, "replace", boom)
    with pytest.raises(OSError, match="disk on fire"):
        atomic_write_bytes(p, b"new content")
    monkeypatch.undo()
    assert p.read_text() == "original"
    assert names(tmp_path) == ["f.txt"]


def test_failed_write_keeps_original_and_no_temp(tmp_path, monkeypatch):
    p = tmp_path / "f.txt"
    p.write_text("original")

    def boom(fd):
        raise OSError("fsync failed")

    monkeypatch.setattr(store_mod.os, "fsync", boom)
    with pytest.raises(OSError, match="fsync failed"):
        atomic_write_text(p, "new")
    monkeypatch.undo()
    assert p.read_text() == "original"
    assert names(tmp_path) == ["f.txt"]


def test_atomic_directory_creates_and_replaces(tmp_path):
    final = tmp_path / "policy"
    with atomic_directory(final) as tmp:
        assert tmp != final and tmp.parent == tmp_path
        (tmp / "a.txt").write_text("1")
        assert not final.exists()
    assert names(final) == ["a.txt"]
    with atomic_directory(final) as tmp:
        (tmp / "b.txt").write_text("2")
        # the old directory is still there while the new one is being written
        assert names(final) == ["a.txt"]
    assert names(final) == ["b.txt"]
    assert names(tmp_path) == ["policy"]  # no temp or .old leftovers


def test_atomic_directory_cleans_up_on_exception(tmp_path):
    final = tmp_path / "policy"
    final.mkdir()
    (final / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_directory(final) as tmp:
            (tmp / "half.txt").write_text("partial")
            raise RuntimeError("crash while saving")
    assert names(final) == ["keep.txt"]
    assert (final / "keep.txt").read_text() == "old"
    assert names(tmp_path) == ["policy"]


def test_atomic_directory_exception_without_existing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(tmp_path / "out"):
            raise KeyboardInterrupt
    assert names(tmp_path) == []


def test_read_jsonl_errors_name_file_and_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"a": 1}\n\n{"b": oops}\n')
    with pytest.raises(UserError) as ei:
        read_jsonl(p)
    assert f"{p}:3" in str(ei.value)
    p.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(UserError, match=r"x\.jsonl:2"):
        read_jsonl(p)


def test_read_jsonl_skips_blank_lines(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('\n{"a": 1}\n   \n{"a": 2}\n')
    assert read_jsonl(p) == [{"a": 1}, {"a": 2}]


def test_hashes(tmp_path):
    p = tmp_path / "h"
    p.write_bytes(b"abc")
    expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert sha256_file(p) == expected
    assert sha256_text("abc") == expected


def test_runstore_layout(tmp_path):
    s = RunStore(tmp_path / "run")
    assert s.config_path == tmp_path / "run" / "config.resolved.yaml"
    assert s.manifest_path.name == "manifest.json"
    assert s.path("candidates.jsonl") == tmp_path / "run" / "round_1" / "candidates.jsonl"
    assert s.path("eval.json", 2) == tmp_path / "run" / "round_2" / "eval.json"
    assert s.stage_key("train", 3) == "round_3/train"


def test_manifest_stage_marks(tmp_path):
    s = RunStore(tmp_path / "run")
    assert not s.exists()
    assert s.read_manifest() == {}
    assert s.stage_status("generate") == {}
    assert not s.stage_done("generate")
    s.update_manifest(name="x")
    assert s.exists()
    s.mark_stage("generate", "running")
    assert s.stage_status("generate")["status"] == "running"
    assert not s.stage_done("generate")
    s.mark_stage("generate", "done", wall_s=1.5, summary={"prompts": 2})
    st = s.stage_status("generate")
    assert st["status"] == "done" and st["wall_s"] == 1.5 and st["summary"] == {"prompts": 2}
    assert "updated" in st
    assert s.stage_done("generate")
    assert not s.stage_done("generate", k=2)
    assert not s.stage_done("label")
    m = s.read_manifest()
    assert m["name"] == "x"
    assert set(m["stages"]) == {"round_1/generate"}
    assert [p.name for p in s.root.iterdir()] == ["manifest.json"]


def test_rerun_after_failure_clears_error(tmp_path):
    s = RunStore(tmp_path / "run")
    s.mark_stage("train", "running")
    s.mark_stage("train", "failed", error="RuntimeError: boom")
    s.mark_stage("train", "running")
    s.mark_stage("train", "done", wall_s=2.0, summary={})
    assert "error" not in s.stage_status("train")


def test_append_metrics_appends(tmp_path):
    s = RunStore(tmp_path / "run")
    assert s.read_metrics() == []
    s.append_metrics([{"step": 1, "loss": 0.7}])
    s.append_metrics([{"step": 2, "loss": 0.6}, {"step": 3, "loss": 0.5}])
    assert s.read_metrics() == [{"step": 1, "loss": 0.7}, {"step": 2, "loss": 0.6}, {"step": 3, "loss": 0.5}]
    assert s.metrics_path.read_text().count("\n") == 3
    assert names(s.root) == ["metrics.jsonl"]


def test_partial_log_keeps_complete_lines_and_cuts_a_torn_tail(tmp_path):
    from openrlaif.core.store import PartialLog

    path = tmp_path / "x.partial"
    log = PartialLog(path, "cfg-a")
    assert log.records() == []
    log.append({"chunk": 0, "rows": [1, 2]})
    log.append({"chunk": 1, "rows": [3]})
    assert [r["chunk"] for r in log.records()] == [0, 1]
    with path.open("ab") as fh:  # a kill in the middle of the third append
        fh.write(b'{"chunk": 2, "ro')
    assert [r["chunk"] for r in PartialLog(path, "cfg-a").records()] == [0, 1]
    assert path.read_bytes().endswith(b'"rows": [3]}\n')  # the torn bytes are gone before the next append
    log.append({"chunk": 2, "rows": []})
    assert [r["chunk"] for r in log.records()] == [0, 1, 2]
    # another config's log is not resumed
    assert PartialLog(path, "cfg-b").records() == [] and not path.exists()
    # a kill while writing the header leaves nothing usable: it starts over cleanly
    path.write_bytes(b'{"finger')
    log = PartialLog(path, "cfg-a")
    assert log.records() == [] and path.read_bytes() == b""
    log.append({"chunk": 0})
    assert log.records() == [{"chunk": 0}]


def test_iter_jsonl_names_non_utf8_lines(tmp_path):
    from openrlaif.core.errors import UserError
    from openrlaif.core.store import read_jsonl

    p = tmp_path / "x.jsonl"
    p.write_bytes(b'{"a": 1}\n{"b": "caf\xe9"}\n')
    with pytest.raises(UserError, match=r"x.jsonl:2: not UTF-8 text \(byte 0xe9 at column 11\)"):
        read_jsonl(p)


# A real file-size limit (RLIMIT_FSIZE) in a child process: the kernel answers EFBIG past it, as a full disk
# answers ENOSPC. Python ignores SIGXFSZ, so the write fails instead of killing the process.
FULL_DISK_CHILD = r"""
import json, resource, sys
from pathlib import Path
from safetensors.torch import save_file
import torch
from openrlaif.core.errors import UserError
from openrlaif.core.store import PartialLog, atomic_directory, atomic_write_bytes

root = Path(sys.argv[1])
atomic_write_bytes(root / "small.bin", b"old" * 10)
with atomic_directory(root / "model") as tmp:
    save_file({"w": torch.zeros(4)}, str(tmp / "model.safetensors"))
log = PartialLog(root / "log.partial", "fp")
log.append({"chunk": 0})
resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, resource.RLIM_INFINITY))
out = {}
for name, write in [
    ("bytes", lambda: atomic_write_bytes(root / "small.bin", b"x" * 64 * 1024)),
    ("safetensors", lambda: save_in_dir()),
    ("partial", lambda: log.append({"chunk": 1, "text": "y" * 64 * 1024})),
]:
    def save_in_dir():
        with atomic_directory(root / "model") as tmp:
            save_file({"w": torch.zeros(64 * 1024)}, str(tmp / "model.safetensors"))
    try:
        write()
        out[name] = "written"
    except UserError as err:
        out[name] = str(err)
print(json.dumps(out))
"""


def test_a_full_disk_leaves_the_previous_version_and_names_the_file(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", FULL_DISK_CHILD, str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, path in [("bytes", tmp_path / "small.bin"), ("safetensors", tmp_path / "model"),
                       ("partial", tmp_path / "log.partial")]:
        assert out[name].startswith(f"cannot write {path}: the process's file-size limit was reached "
                                    "(ulimit -f: 16.0 KB)"), out[name]
        assert "free on the device of" in out[name] and "run the same command again" in out[name]
    assert (tmp_path / "small.bin").read_bytes() == b"old" * 10  # the previous complete version
    from safetensors.torch import load_file

    assert load_file(str(tmp_path / "model" / "model.safetensors"))["w"].shape == (4,)
    assert [r["chunk"] for r in PartialLog(tmp_path / "log.partial", "fp").records()] == [0]  # torn tail cut off
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.partial", "model", "small.bin"]  # no temp left


def test_write_failure_recognises_library_wording():
    import errno

    assert is_write_failure(OSError(errno.ENOSPC, "No space left on device"))
    assert is_write_failure(RuntimeError("[enforce fail at inline_container.cc:595] . PytorchStreamWriter failed "
                                         "writing file data/0: file write failed"))
    assert is_write_failure(Exception("I/O error: File too large (os error 27)"))
    import sqlite3

    assert is_write_failure(sqlite3.OperationalError("database or disk is full"))
    wrapped = RuntimeError("saving failed")
    wrapped.__cause__ = OSError(errno.EDQUOT, "Disk quota exceeded")
    assert is_write_failure(wrapped)
    assert not is_write_failure(OSError(errno.EACCES, "Permission denied"))
    assert not is_write_failure(ValueError("no such column"))
