"""audit.sqlite: the review queue and the people's verdicts.

``items`` holds each queued AI label with everything a reviewer needs (prompt, both responses, the
judge's probability, principle, rationale, why it was queued); ``verdicts`` holds one row per review
(agree | flip | flag, a note, the reviewer, when). The latest verdict of a pair is the one that
counts. SQLite in WAL mode, so the desk and a `train` stage reading overrides can open it together.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from openrlaif.audit.queue import QueueItem, agreement

VERDICTS = ("agree", "flip", "flag")

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    pair_id TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    round INTEGER,
    row TEXT NOT NULL,
    priority REAL NOT NULL,
    reasons TEXT NOT NULL,
    random_slice INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS verdicts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pair_id TEXT NOT NULL REFERENCES items(pair_id),
    verdict TEXT NOT NULL CHECK (verdict IN ('agree', 'flip', 'flag')),
    note TEXT NOT NULL DEFAULT '',
    reviewer TEXT NOT NULL DEFAULT '',
    created TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS verdicts_pair ON verdicts(pair_id);
"""


class AuditDB:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA busy_timeout=5000")
        self.conn.executescript(SCHEMA)

    def close(self) -> None:
        self.conn.close()

    # --- queue ----------------------------------------------------------------------------------
    def add_items(self, items: list[QueueItem]) -> int:
        """Queue new items after the existing ones; items already queued keep their place and verdicts."""
        start = self.conn.execute("SELECT COALESCE(MAX(position), -1) + 1 FROM items").fetchone()[0]
        added = 0
        with self.conn:
            for item in items:
                cur = self.conn.execute(
                    "INSERT OR IGNORE INTO items VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (item.pair_id, start + added, item.row.get("round"), json.dumps(item.row, ensure_ascii=False),
                     item.priority, json.dumps(item.reasons), int(item.random_slice)))
                added += cur.rowcount
        return added

    def item(self, pair_id: str) -> dict | None:
        row = self.conn.execute("SELECT * FROM items WHERE pair_id = ?", (pair_id,)).fetchone()
        return self._item(row) if row else None

    def next_item(self, after: str | None = None) -> dict | None:
        """The first unreviewed item in queue order (after ``after``'s position when given), else None."""
        pos = -1
        if after:
            found = self.conn.execute("SELECT position FROM items WHERE pair_id = ?", (after,)).fetchone()
            pos = found[0] if found else -1
        row = self.conn.execute(
            "SELECT * FROM items WHERE position > ? AND pair_id NOT IN (SELECT pair_id FROM verdicts) "
            "ORDER BY position LIMIT 1", (pos,)).fetchone()
        if row is None and after:
            return self.next_item()
        return self._item(row) if row else None

    def _item(self, row) -> dict:
        pair_id, position, rnd, payload, priority, reasons, random_slice = row
        return {"pair_id": pair_id, "position": position, "round": rnd, "row": json.loads(payload),
                "priority": priority, "reasons": json.loads(reasons), "random_slice": bool(random_slice),
                "verdict": self.latest(pair_id)}

    # --- verdicts -------------------------------------------------------------------------------
    def record(self, pair_id: str, verdict: str, note: str = "", reviewer: str = "") -> None:
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}")
        if self.item(pair_id) is None:
            raise KeyError(pair_id)
        with self.conn:
            self.conn.execute("INSERT INTO verdicts (pair_id, verdict, note, reviewer, created) VALUES (?, ?, ?, ?, ?)",
                              (pair_id, verdict, note[:2000], reviewer[:200], time.strftime("%Y-%m-%dT%H:%M:%S%z")))

    def latest(self, pair_id: str) -> dict | None:
        row = self.conn.execute("SELECT verdict, note, reviewer, created FROM verdicts WHERE pair_id = ? "
                                "ORDER BY id DESC LIMIT 1", (pair_id,)).fetchone()
        return dict(zip(("verdict", "note", "reviewer", "created"), row)) if row else None

    def latest_verdicts(self) -> dict[str, str]:
        """pair_id -> the latest verdict of every reviewed pair."""
        rows = self.conn.execute(
            "SELECT v.pair_id, v.verdict FROM verdicts v JOIN (SELECT pair_id, MAX(id) AS id FROM verdicts "
            "GROUP BY pair_id) last ON v.id = last.id").fetchall()
        return dict(rows)

    def random_slice(self) -> set[str]:
        """pair_ids of the uniform random slice (the items that measure agreement without bias)."""
        return {p for (p,) in self.conn.execute("SELECT pair_id FROM items WHERE random_slice = 1").fetchall()}

    def stats(self) -> dict:
        total = self.conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
        in_slice = dict(self.conn.execute("SELECT pair_id, random_slice FROM items").fetchall())
        latest = self.latest_verdicts()
        return {"queued": total, "reviewed": len(latest), "random_slice_size": sum(in_slice.values()),
                **agreement([(v, bool(in_slice.get(p))) for p, v in latest.items()])}


def apply_human_verdicts(rows: list[dict], path: str | Path) -> tuple[list[dict], dict]:
    """Preference rows with the people's latest verdicts applied: 'agree' keeps the pair as a human label
    (p_chosen 1), 'flip' swaps chosen and rejected (p_chosen 1), 'flag' drops the pair. Returns the rows
    and counts; without an audit database the rows come back unchanged."""
    from openrlaif.audit.queue import pair_id

    counts = {"agree": 0, "flip": 0, "flag": 0}
    path = Path(path)
    if not path.is_file():
        return rows, counts
    db = AuditDB(path)
    try:
        latest = db.latest_verdicts()
    finally:
        db.close()
    out = []
    for row in rows:
        verdict = latest.get(pair_id(row))
        if verdict is None:
            out.append(row)
            continue
        counts[verdict] += 1
        if verdict == "flag":
            continue
        human = dict(row, p_chosen=1.0, source="human", ai_p_chosen=row.get("p_chosen"), audit_pair_id=pair_id(row),
                     audit_verdict=verdict)
        if verdict == "flip":
            human["chosen"], human["rejected"] = row["rejected"], row["chosen"]
        out.append(human)
    return out, counts
