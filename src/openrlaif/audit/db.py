"""audit.sqlite: the review queue, the reviewers and the people's verdicts.

``items`` holds each queued AI label with everything a reviewer needs (prompt, both responses, the
judge's probability, principle, rationale, why it was queued) and how many people should review it (2 for
the overlap that measures human-human agreement); ``reviewers`` holds each reviewer's name and the sha256 of
their token (the token itself is shown once, when the reviewer is added); ``verdicts`` holds one row per
review (agree | flip | flag relative to the AI's pick, a note, the reviewer, when, whether it was given blind
and with the sides swapped). A reviewer's latest verdict on a pair is theirs; a pair's verdict is the one
its reviewers share, and a pair they disagree on is 'disputed' (left out of training like a flag). SQLite in
WAL mode, so the desk and a `train` stage reading overrides can open it together; one lock serialises this
process's threads (the desk's request handlers) on its connection.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import sqlite3
import threading
import time
from pathlib import Path

from openrlaif.audit.queue import QueueItem, agreement, human_agreement, reviews_needed

VERDICTS = ("agree", "flip", "flag")
OWNER = "owner"  # the reviewer name of the desk's own token (the person who started `rlaif audit`)
REVIEWER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")

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
CREATE TABLE IF NOT EXISTS reviewers (
    name TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL UNIQUE,
    created TEXT NOT NULL
);
"""
# Columns added after the first release: an older audit.sqlite gets them on open.
ADDED_COLUMNS = {"items": [("reviews_needed", "INTEGER NOT NULL DEFAULT 1")],
                 "verdicts": [("blind", "INTEGER NOT NULL DEFAULT 0"), ("swapped", "INTEGER NOT NULL DEFAULT 0")]}
ITEM_COLUMNS = "pair_id, position, round, row, priority, reasons, random_slice, reviews_needed"


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class AuditDB:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA busy_timeout=5000")
        self.conn.executescript(SCHEMA)
        for table, columns in ADDED_COLUMNS.items():
            have = {r[1] for r in self.conn.execute(f"PRAGMA table_info({table})")}
            for name, decl in columns:
                if name not in have:
                    self.conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")

    def close(self) -> None:
        self.conn.close()

    def _all(self, sql: str, args: tuple = ()) -> list:
        with self.lock:
            return self.conn.execute(sql, args).fetchall()

    # --- queue ----------------------------------------------------------------------------------
    def add_items(self, items: list[QueueItem]) -> int:
        """Queue new items after the existing ones; items already queued keep their place and verdicts."""
        added = 0
        with self.lock, self.conn:
            start = self.conn.execute("SELECT COALESCE(MAX(position), -1) + 1 FROM items").fetchone()[0]
            for item in items:
                cur = self.conn.execute(
                    "INSERT OR IGNORE INTO items (pair_id, position, round, row, priority, reasons, random_slice) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (item.pair_id, start + added, item.row.get("round"), json.dumps(item.row, ensure_ascii=False),
                     item.priority, json.dumps(item.reasons), int(item.random_slice)))
                added += cur.rowcount
        return added

    def set_overlap(self, overlap: float) -> int:
        """Mark which items two people review (``audit.queue.reviews_needed``: about ``overlap`` of the queue,
        drawn from the random slice); returns how many. Deterministic, so every start of the desk agrees."""
        rows = self._all("SELECT pair_id, random_slice FROM items")
        slice_share = sum(r for _, r in rows) / len(rows) if rows else 0.0
        needed = {p: reviews_needed(p, bool(r), overlap, slice_share) for p, r in rows}
        with self.lock, self.conn:
            self.conn.executemany("UPDATE items SET reviews_needed = ? WHERE pair_id = ?",
                                  [(n, p) for p, n in needed.items()])
        return sum(n == 2 for n in needed.values())

    def pair_ids(self, limit: int) -> list[str]:
        """The first ``limit`` pair ids in queue order."""
        return [p for (p,) in self._all("SELECT pair_id FROM items ORDER BY position LIMIT ?", (limit,))]

    def item(self, pair_id: str, reviewer: str | None = None) -> dict | None:
        rows = self._all(f"SELECT {ITEM_COLUMNS} FROM items WHERE pair_id = ?", (pair_id,))
        return self._item(rows[0], reviewer) if rows else None

    def next_item(self, after: str | None = None, reviewer: str = "") -> dict | None:
        """The first item in queue order (after ``after``'s position when given) that ``reviewer`` has not
        reviewed and that still needs a reviewer (fewer distinct reviewers than it needs), else None."""
        pos = -1
        if after:
            found = self._all("SELECT position FROM items WHERE pair_id = ?", (after,))
            pos = found[0][0] if found else -1
        rows = self._all(
            f"SELECT {ITEM_COLUMNS} FROM items i WHERE position > ? "
            "AND NOT EXISTS (SELECT 1 FROM verdicts v WHERE v.pair_id = i.pair_id AND v.reviewer = ?) "
            "AND (SELECT COUNT(DISTINCT reviewer) FROM verdicts v WHERE v.pair_id = i.pair_id) < i.reviews_needed "
            "ORDER BY position LIMIT 1", (pos, reviewer))
        if not rows and after:
            return self.next_item(None, reviewer)
        return self._item(rows[0], reviewer) if rows else None

    def _item(self, row, reviewer: str | None) -> dict:
        pair_id, position, rnd, payload, priority, reasons, random_slice, needed = row
        return {"pair_id": pair_id, "position": position, "round": rnd, "row": json.loads(payload),
                "priority": priority, "reasons": json.loads(reasons), "random_slice": bool(random_slice),
                "reviews_needed": needed, "verdict": self.latest(pair_id, reviewer)}

    # --- reviewers ------------------------------------------------------------------------------
    def add_reviewer(self, name: str) -> str:
        """A new reviewer; returns their token (only its sha256 is stored: show it to them once)."""
        if not REVIEWER_NAME.match(name) or name == OWNER:
            raise ValueError(f"reviewer name '{name}': use 1-40 letters, digits, '.', '_' or '-' (not '{OWNER}')")
        token = secrets.token_urlsafe(24)
        try:
            with self.lock, self.conn:
                self.conn.execute("INSERT INTO reviewers VALUES (?, ?, ?)", (name, token_digest(token), _now()))
        except sqlite3.IntegrityError:
            raise ValueError(f"reviewer '{name}' exists already; remove them first to issue a new token") from None
        return token

    def remove_reviewer(self, name: str) -> bool:
        """Revoke a reviewer's token (their verdicts stay)."""
        with self.lock, self.conn:
            return self.conn.execute("DELETE FROM reviewers WHERE name = ?", (name,)).rowcount == 1

    def reviewers(self) -> list[dict]:
        counts = dict(self._all("SELECT reviewer, COUNT(DISTINCT pair_id) FROM verdicts GROUP BY reviewer"))
        return [{"name": n, "created": c, "reviewed": counts.get(n, 0)}
                for n, c in self._all("SELECT name, created FROM reviewers ORDER BY name")]

    def reviewer_for(self, token: str) -> str | None:
        """The reviewer whose token this is, or None."""
        rows = self._all("SELECT name FROM reviewers WHERE token_sha256 = ?", (token_digest(token),))
        return rows[0][0] if rows else None

    # --- verdicts -------------------------------------------------------------------------------
    def record(self, pair_id: str, verdict: str, note: str = "", reviewer: str = "", *, blind: bool = False,
               swapped: bool = False) -> None:
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}")
        with self.lock, self.conn:
            if not self.conn.execute("SELECT 1 FROM items WHERE pair_id = ?", (pair_id,)).fetchone():
                raise KeyError(pair_id)
            self.conn.execute("INSERT INTO verdicts (pair_id, verdict, note, reviewer, created, blind, swapped) "
                              "VALUES (?, ?, ?, ?, ?, ?, ?)",
                              (pair_id, verdict, note[:2000], reviewer[:200], _now(), int(blind), int(swapped)))

    def latest(self, pair_id: str, reviewer: str | None = None) -> dict | None:
        """The latest verdict on a pair (by ``reviewer`` when given)."""
        where, args = ("pair_id = ?", (pair_id,)) if reviewer is None else ("pair_id = ? AND reviewer = ?",
                                                                            (pair_id, reviewer))
        rows = self._all(f"SELECT verdict, note, reviewer, created, blind, swapped FROM verdicts WHERE {where} "
                         "ORDER BY id DESC LIMIT 1", args)
        if not rows:
            return None
        out = dict(zip(("verdict", "note", "reviewer", "created", "blind", "swapped"), rows[0]))
        out["blind"], out["swapped"] = bool(out["blind"]), bool(out["swapped"])
        return out

    def verdicts_by_reviewer(self) -> dict[str, dict[str, str]]:
        """pair_id -> {reviewer: their latest verdict}."""
        rows = self._all(
            "SELECT v.pair_id, v.reviewer, v.verdict FROM verdicts v JOIN (SELECT MAX(id) AS id FROM verdicts "
            "GROUP BY pair_id, reviewer) last ON v.id = last.id")
        out: dict[str, dict[str, str]] = {}
        for pair, reviewer, verdict in rows:
            out.setdefault(pair, {})[reviewer] = verdict
        return out

    def latest_verdicts(self) -> dict[str, str]:
        """pair_id -> the verdict of every reviewed pair (``settled``)."""
        return settled(self.verdicts_by_reviewer())

    def random_slice(self) -> set[str]:
        """pair_ids of the uniform random slice (the items that measure agreement without bias)."""
        return {p for (p,) in self._all("SELECT pair_id FROM items WHERE random_slice = 1")}

    def stats(self) -> dict:
        """Queue progress, human-AI agreement (every reviewer's latest verdict on the random slice) and
        human-human agreement (the pairs two or more people decided)."""
        items = self._all("SELECT pair_id, random_slice, reviews_needed FROM items")
        in_slice = {p: bool(r) for p, r, _ in items}
        by_pair = self.verdicts_by_reviewer()
        verdicts = settled(by_pair)
        each = [(v, in_slice.get(p, False)) for p, verdicts in by_pair.items() for v in verdicts.values()]
        blind = self._all("SELECT COUNT(*) FROM verdicts v JOIN (SELECT MAX(id) AS id FROM verdicts "
                          "GROUP BY pair_id, reviewer) last ON v.id = last.id WHERE v.blind = 1")[0][0]
        return {"queued": len(items), "reviewed": len(by_pair), "random_slice_size": sum(in_slice.values()),
                "overlap_items": sum(n >= 2 for _, _, n in items), "reviewers": len({r for v in by_pair.values()
                                                                                      for r in v}),
                "verdicts": len(each), "blind_verdicts": blind,
                "disputed": sum(v == "disputed" for v in verdicts.values()),
                **agreement(each), "human_human": human_agreement(by_pair)}


def settled(by_pair: dict[str, dict[str, str]]) -> dict[str, str]:
    """Each pair's verdict from its reviewers' latest ones: the one they share ('flag' only when nobody decided),
    or 'disputed' when people gave different decisions."""
    out = {}
    for pair, verdicts in by_pair.items():
        decided = {v for v in verdicts.values() if v != "flag"}
        out[pair] = "flag" if not decided else decided.pop() if len(decided) == 1 else "disputed"
    return out


def apply_human_verdicts(rows: list[dict], path: str | Path) -> tuple[list[dict], dict]:
    """Preference rows with the people's verdicts applied (``AuditDB.latest_verdicts``): 'agree' keeps the pair
    as a human label (p_chosen 1), 'flip' swaps chosen and rejected (p_chosen 1), 'flag' and 'disputed' (people
    disagree) drop the pair. Returns the rows and counts; without an audit database the rows come back
    unchanged."""
    from openrlaif.audit.queue import pair_id

    counts = {"agree": 0, "flip": 0, "flag": 0, "disputed": 0}
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
        if verdict in ("flag", "disputed"):
            continue
        human = dict(row, p_chosen=1.0, source="human", ai_p_chosen=row.get("p_chosen"), audit_pair_id=pair_id(row),
                     audit_verdict=verdict)
        if verdict == "flip":
            human["chosen"], human["rejected"] = row["rejected"], row["chosen"]
        out.append(human)
    return out, counts
