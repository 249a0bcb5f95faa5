"""The run directory: layout, manifest and atomic writes.

```
RUN_DIR/
  config.resolved.yaml  manifest.json  metrics.jsonl  report.md  report.html
  judge_cache.sqlite      (feedback.cache=run)      audit.sqlite   (the audit desk's queue and verdicts)
  judge_refits.jsonl      (rlaif fit-judge --from-audit: the random slice's agreement before/after a refit)
  tensorboard/  mlartifacts/  wandb/                (tracking, when enabled)   export/ (rlaif export)
  round_K/
    sft/model  sft/summary.json                     sft (round 1, before generate): the run's starting policy
    candidates.jsonl (+ .partial while sampling)    generate: N candidates per train prompt
    preferences.jsonl  judge_stats.json             label: TRL-style pairs with p_chosen, principle, judge
    revisions.jsonl                                 label, feedback.method=revision: critique -> revision rows
    heads/                                          label, label.refit_from_audit: heads refitted on verdicts
    reward_model/                                   reward: Bradley-Terry model(s)
    policy/  ref_logps.json  checkpoint/            train: LoRA adapter (peft), DPO's reference log-probs
    critic/  best_policy/                           train: PPO's value head; the monitor's best adapter
    eval.json  samples.jsonl  redteam.jsonl         eval: win rates, side-by-side samples, red-team answers
```
Every file is written to a temporary name in the same directory and renamed into place, so a crash
never leaves a half-written file under its real name. A stage marks itself done in the manifest
only after its outputs exist.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from openrlaif.core.errors import UserError

STAGES = ("generate", "label", "train", "eval")  # what `rlaif run` chains
# every stage, in data order (reward: `rlaif reward`; sft: before round 1 when the sft section is set)
ALL_STAGES = ("sft", "generate", "label", "reward", "train", "eval")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# A write that failed because the disk (or the quota, or the process's file-size limit) is full. Libraries that
# write for us (safetensors, torch.save, sqlite) report it in their own words; these are the ones they use.
_FULL_ERRNOS = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
_FULL_WORDS = re.compile(r"No space left on device|File too large|Disk quota exceeded|database or disk is full|"
                         r"os error (?:27|28|122)\b|file write failed|unexpected pos \d+ vs \d+", re.I)


def is_write_failure(err: BaseException) -> bool:
    """Whether ``err`` (or what caused it) says that a write ran out of space or hit a size limit."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in _FULL_ERRNOS:
            return True
        if _FULL_WORDS.search(str(err)):
            return True
        err = err.__cause__ or err.__context__
    return False


def _human_bytes(n: float) -> str:
    unit = "B"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            break
        n /= 1024
    return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"


def write_failure(err: BaseException, path: str | Path | None) -> UserError:
    """One line for a write of ``path`` that failed for want of space: which file, why, how much room is
    left, and that the previous version is still there (every artifact is written beside its real name and
    renamed into place only when complete)."""
    if path is None:  # a library's own write (sqlite, a checkpoint): name what it said
        path = getattr(err, "filename", None) or f"a file ({type(err).__name__}: {str(err)[:120]})"
        where = Path.cwd()
    else:
        where = next((p for p in [Path(path), *Path(path).parents] if p.exists()), Path("/"))
    why = "no space left on the device"
    codes = [e.errno for e in (err, err.__cause__, err.__context__) if isinstance(e, OSError)]
    if errno.EFBIG in codes or re.search(r"File too large|os error 27\b", str(err)):
        import resource

        soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        limit = "unlimited" if soft == resource.RLIM_INFINITY else _human_bytes(soft)
        why = f"the process's file-size limit was reached (ulimit -f: {limit})"
    elif getattr(errno, "EDQUOT", None) in codes or "quota" in str(err).lower():
        why = "the disk quota is exhausted"
    try:
        free = f"{_human_bytes(shutil.disk_usage(where).free)} free on the device of {where}"
    except OSError:
        free = "free space unknown"
    return UserError(f"cannot write {path}: {why} ({free}); the previous complete version and the manifest are "
                     "intact: free some space (or raise the limit) and run the same command again")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory + ``os.replace``. A disk that fills up
    leaves the old file as it was and raises a ``UserError`` naming the file and the space left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(err, OSError) and is_write_failure(err):
            raise write_failure(err, path) from None
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line; bad lines are errors naming file:line."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory; give a JSONL file (one JSON object per line)")
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise UserError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[err.start]:02x} at column {err.start + 1}); "
                                "re-save the file as UTF-8 or remove that line") from None
            if lineno == 1 and line.startswith("\ufeff"):  # a byte-order mark (Windows editors): not data
                line = line[1:]
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                if lineno == 1 and line.lstrip().startswith("["):
                    raise UserError(f"{path}:1: this looks like a JSON array (a .json file), not JSONL; write one "
                                    f"JSON object per line (e.g. `jq -c '.[]' {path.name}`)") from None
                raise UserError(f"{path}:{lineno}: not valid JSON ({err.msg}); fix or remove that line") from None
            if isinstance(row, list) and lineno == 1:
                raise UserError(f"{path}:1: a JSON array on one line; JSONL wants one JSON object per line "
                                f"(e.g. `jq -c '.[]' {path.name}`)")
            if not isinstance(row, dict):
                raise UserError(f"{path}:{lineno}: expected a JSON object per line, got {type(row).__name__}")
            yield lineno, row


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    return [row for _, row in iter_jsonl(path)]


@contextmanager
def atomic_directory(final: str | Path):
    """Yield a temp directory beside ``final``; on success it replaces ``final`` in one rename."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(err, UserError) and is_write_failure(err):  # safetensors, torch.save, ... ran out of room
            raise write_failure(err, final) from None
        raise


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


LOCK_NAME = ".lock"
_held_locks: dict[str, list] = {}  # run directory -> [open lock file descriptor, re-entry count] of this process


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def writer_lock(root: str | Path):
    """One writer per run directory: an exclusive ``flock`` on ``RUN_DIR/.lock`` for as long as a command writes
    (re-entrant within a process: `rlaif run` holds it across its stages). The file says who holds it (pid, host,
    command, since). A second writer gets a one-line error naming the holder; a lock left by a process that died
    (a SIGKILL, a lost node) is free again and taken over with a notice. Readers (`rlaif show`, `rlaif report`)
    never take it."""
    import fcntl
    import socket
    import sys

    root = Path(root)
    key = str(root.resolve())
    if key in _held_locks:
        _held_locks[key][1] += 1
        try:
            yield
        finally:
            _held_locks[key][1] -= 1
        return
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _lock_holder(fd)
        os.close(fd)
        raise UserError(f"{root} is being written by pid {holder.get('pid', '?')} on {holder.get('host', '?')} "
                        f"(`{holder.get('command', '?')}`, since {holder.get('since', '?')}); wait for it to end or "
                        "stop it; `rlaif show` and `rlaif report` can read the run meanwhile") from None
    previous = _lock_holder(fd)
    if previous.get("pid") and previous.get("pid") != os.getpid():
        from openrlaif.core.progress import console

        here = previous.get("host") == socket.gethostname()
        state = "no longer running" if here and not _alive(int(previous["pid"])) else "its lock was released"
        console.print(f"[yellow]notice:[/yellow] took over the lock of {root} left by pid {previous['pid']} on "
                      f"{previous.get('host', '?')} (`{previous.get('command', '?')}`, {state})")
    info = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(["rlaif", *sys.argv[1:]])[:200],
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    _held_locks[key] = [fd, 1]
    try:
        yield
    finally:
        _held_locks[key][1] -= 1
        if _held_locks[key][1] == 0:
            del _held_locks[key]
            os.ftruncate(fd, 0)  # a clean release leaves no holder behind
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _lock_holder(fd: int) -> dict:
    """Who wrote the lock file (empty when nobody did, or it is unreadable)."""
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        return json.loads(text) if text else {}
    except (OSError, ValueError):
        return {}


class RunStore:
    """A run directory and its manifest. Stages read and write only through these paths."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # --- layout -------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / "config.resolved.yaml"

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def report_path(self) -> Path:
        return self.root / "report.md"

    def round_dir(self, k: int = 1) -> Path:
        return self.root / f"round_{k}"

    def path(self, name: str, k: int = 1) -> Path:
        return self.round_dir(k) / name

    # --- manifest -----------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def read_manifest(self) -> dict[str, Any]:
        if not self.manifest_path.is_file():
            return {}
        return json.loads(self.manifest_path.read_text(encoding="utf-8"))

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        atomic_write_json(self.manifest_path, manifest)

    def update_manifest(self, **fields: Any) -> dict[str, Any]:
        m = self.read_manifest()
        m.update(fields)
        self.write_manifest(m)
        return m

    def stage_key(self, stage: str, k: int = 1) -> str:
        return f"round_{k}/{stage}"

    def stage_status(self, stage: str, k: int = 1) -> dict[str, Any]:
        return self.read_manifest().get("stages", {}).get(self.stage_key(stage, k), {})

    def stage_done(self, stage: str, k: int = 1) -> bool:
        return self.stage_status(stage, k).get("status") == "done"

    def mark_stage(self, stage: str, status: str, k: int = 1, **info: Any) -> None:
        m = self.read_manifest()
        stages = m.setdefault("stages", {})
        key = self.stage_key(stage, k)
        if status == "running":
            stages[key] = {}  # a new attempt: drop the previous attempt's error, summary and timings
        entry = stages.setdefault(key, {})
        entry.update(status=status, updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"), **info)
        self.write_manifest(m)

    # --- metrics ------------------------------------------------------------------------------
    def append_metrics(self, rows: list[dict[str, Any]]) -> None:
        """Append rows to metrics.jsonl (rewritten atomically, so it is never half a line)."""
        old = self.metrics_path.read_text(encoding="utf-8") if self.metrics_path.exists() else ""
        new = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        atomic_write_text(self.metrics_path, old + new)

    def read_metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.metrics_path) if self.metrics_path.exists() else []


class PartialLog:
    """An append-only JSONL log of finished work units of a stage that is still running (e.g. sampled chunks).

    The first line holds a fingerprint of the config that wrote it; a log with another fingerprint is
    discarded. Each record is appended as one line and synced to disk, so after a kill every complete line
    is a finished unit, and a torn last line is dropped on the next read."""

    def __init__(self, path: str | Path, fingerprint: str):
        self.path = Path(path)
        self.fingerprint = fingerprint

    def records(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        lines = self.path.read_bytes().split(b"\n")
        records: list[dict[str, Any]] = []
        valid = 0  # bytes of the prefix made of complete, parseable lines
        for i, line in enumerate(lines[:-1]):  # the part after the last newline is never complete
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                break
            if i == 0:
                if obj.get("fingerprint") != self.fingerprint:
                    self.remove()
                    return []
            else:
                records.append(obj)
            valid += len(line) + 1
        if valid != self.path.stat().st_size:  # cut a torn tail off before anything is appended after it
            with self.path.open("r+b") as fh:
                fh.truncate(valid)
        return records

    def append(self, record: dict[str, Any]) -> None:
        new = not self.path.is_file() or self.path.stat().st_size == 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self.path.open("ab") as fh:
                if new:
                    fh.write((json.dumps({"fingerprint": self.fingerprint}) + "\n").encode("utf-8"))
                fh.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as err:  # a torn last line is cut off when the log is read again (records())
            if is_write_failure(err):
                raise write_failure(err, self.path) from None
            raise

    def remove(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
