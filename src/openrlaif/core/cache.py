"""Persistent judge cache (SQLite): nothing already judged is judged again.

A key is a hash of everything that decides a judge's raw output: the judge model's fingerprint, the
method and its template version, and the exact token ids the model reads (which contain the
principle, the prompt, the responses and their order). Values are small JSON documents (log-probs).
Each batch is committed as soon as it is computed, so an interrupted `label` resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from openrlaif.core.faults import kill_point
from openrlaif.core.preempt import batch_done


def cache_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, separators=(",", ":"), ensure_ascii=False).encode("utf-8")).hexdigest()


# Config keys that say where a model was loaded from, by which library version, or how it is being run
# (not what it computes): left out of the fingerprint, as is every key starting with '_'.
VOLATILE_CONFIG_KEYS = {"transformers_version", "use_cache", "output_attentions", "output_hidden_states", "return_dict"}


def model_fingerprint(model, name: str = "") -> str:
    """A cheap identity of a model's weights: its config plus a sample of every 16th parameter tensor.

    Computed once per (model object, name) and remembered on the model: meant for frozen judge models.
    """
    import torch

    remembered = getattr(model, "_openrlaif_fingerprint", None)
    if remembered is not None and remembered[0] == name:
        return remembered[1]

    h = hashlib.sha256()
    h.update(name.encode())
    config = getattr(model, "config", None)
    if config is not None:  # the architecture, not the library version that wrote it (heads ship across versions)
        described = {k: v for k, v in config.to_dict().items()
                     if k not in VOLATILE_CONFIG_KEYS and not k.startswith("_")}
        h.update(json.dumps(described, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for i, (pname, param) in enumerate(model.named_parameters()):
            if i % 16 == 0:
                h.update(pname.encode())
                h.update(param.detach().flatten()[:4096].float().cpu().numpy().tobytes())
    fingerprint = h.hexdigest()[:32]
    try:
        model._openrlaif_fingerprint = (name, fingerprint)
    except AttributeError:
        pass
    return fingerprint


def select_many(conn: sqlite3.Connection, table: str, keys: list[str]):
    """(key, value) rows of ``table`` for the distinct ``keys``, 500 at a time (SQLite's variable limit)."""
    unique = list(dict.fromkeys(keys))
    for start in range(0, len(unique), 500):
        chunk = unique[start : start + 500]
        yield from conn.execute(f"SELECT key, value FROM {table} WHERE key IN ({','.join('?' * len(chunk))})", chunk)


class JudgeCache:
    """Key -> JSON value store in one SQLite file (safe to share between runs of the same judge)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(self.path), timeout=30)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("CREATE TABLE IF NOT EXISTS judged (key TEXT PRIMARY KEY, value TEXT NOT NULL, "
                          "method TEXT, created REAL)")
        self.conn.commit()
        self.hits = 0
        self.misses = 0

    def get_many(self, keys: list[str]) -> dict[str, Any]:
        found = {key: json.loads(value) for key, value in select_many(self.conn, "judged", keys)}
        self.hits += sum(k in found for k in keys)
        self.misses += sum(k not in found for k in keys)
        return found

    def put_many(self, items: dict[str, Any], method: str = "") -> None:
        now = time.time()
        with self.conn:
            self.conn.executemany("INSERT OR REPLACE INTO judged (key, value, method, created) VALUES (?, ?, ?, ?)",
                                  [(k, json.dumps(v), method, now) for k, v in items.items()])

    def __len__(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM judged").fetchone()[0]

    def close(self) -> None:
        self.conn.close()


class FeatureCache:
    """Key -> float32 vector store in one SQLite file: a judge model's pooled hidden states of a reply, so
    `rlaif fit-judge` never computes a reply's features twice (the vectors are a few KB each)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(self.path), timeout=30)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("CREATE TABLE IF NOT EXISTS features (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
        self.conn.commit()
        self.hits = 0
        self.misses = 0

    def get_many(self, keys: list[str]):
        """{key: 1-d float32 numpy array} for the keys stored."""
        import numpy as np

        found = {key: np.frombuffer(value, dtype=np.float32) for key, value in select_many(self.conn, "features", keys)}
        self.hits += sum(k in found for k in keys)
        self.misses += sum(k not in found for k in keys)
        return found

    def put_many(self, items: dict) -> None:
        """Store {key: 1-d float tensor or array}."""
        import numpy as np

        with self.conn:
            self.conn.executemany("INSERT OR REPLACE INTO features (key, value) VALUES (?, ?)",
                                  [(k, np.asarray(v, dtype=np.float32).tobytes()) for k, v in items.items()])

    def close(self) -> None:
        self.conn.close()


def cached_compute(cache: JudgeCache | None, keys: list[str], compute, method: str = "") -> list[Any]:
    """Values for ``keys``: cached ones read back, the rest computed by ``compute(indices, on_batch)``.

    ``compute`` receives the indices still missing and a callback ``on_batch({index: value})`` that it
    calls after each batch, so finished batches are stored even if a later one is interrupted.
    """
    values: list[Any] = [None] * len(keys)
    found = cache.get_many(keys) if cache is not None else {}
    missing = []
    for i, key in enumerate(keys):
        if key in found:
            values[i] = found[key]
        else:
            missing.append(i)

    batches = 0

    def on_batch(batch: dict[int, Any]) -> None:
        nonlocal batches
        for i, v in batch.items():
            values[i] = v
        if cache is not None:
            cache.put_many({keys[i]: v for i, v in batch.items()}, method)
            batches += 1
            kill_point("judge.batch")
            batch_done(batches, f"its verdicts are kept in {cache.path}")  # SIGTERM during labelling

    if missing:
        compute(missing, on_batch)
    return values
