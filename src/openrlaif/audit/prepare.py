"""Filling the audit desk's queue from a run's AI labels (and the reward model's margins on them)."""

from __future__ import annotations

from pathlib import Path

from openrlaif.audit.db import AuditDB


def prepare_queue(run_dir: str | Path, random_share: float = 0.2, min_random: int = 10, seed: int = 0,
                  use_reward_model: bool = True) -> tuple[AuditDB, dict]:
    """Open RUN_DIR/audit.sqlite and queue every round's AI labels not queued yet. When a round has a
    reward model, pairs it scores the other way round are prioritised. Returns (db, what was added)."""
    from openrlaif.audit.queue import build_queue
    from openrlaif.core.errors import UserError
    from openrlaif.core.store import RunStore
    from openrlaif.data.pairs import read_preference_file

    store = RunStore(run_dir)
    if not store.exists():
        raise UserError(f"{run_dir} is not a run directory (no manifest.json); run `rlaif run -o {run_dir}` first")
    rounds = sorted(int(p.name.split("_")[1]) for p in store.root.glob("round_*")
                    if p.name.split("_")[1].isdigit() and (p / "preferences.jsonl").is_file())
    if not rounds:
        raise UserError(f"{run_dir} has no preferences.jsonl yet; run `rlaif label -o {run_dir}` first")
    db = AuditDB(store.root / "audit.sqlite")
    added: dict[str, int] = {}
    for k in rounds:
        rows = [r for r in read_preference_file(store.path("preferences.jsonl", k)) if r.get("source", "ai") == "ai"]
        margins = reward_margins(rows, store.path("reward_model", k)) if use_reward_model else None
        items = build_queue(rows, margins, random_share, min_random, seed=seed + k)
        added[f"round_{k}"] = db.add_items(items)
    return db, added


def reward_margins(rows: list[dict], path: Path) -> list[float] | None:
    """r(chosen) - r(rejected) under the round's reward model, or None when there is none."""
    if not (path / "ensemble.json").is_file():
        return None
    from openrlaif.data.preferences import text_of
    from openrlaif.reward.model import load_reward

    rm = load_reward(str(path), "reward model")
    convs = [r["prompt"] if isinstance(r["prompt"], list) else [{"role": "user", "content": r["prompt"]}] for r in rows]
    chosen = rm.rewards(convs, [text_of(r["chosen"]) for r in rows])
    rejected = rm.rewards(convs, [text_of(r["rejected"]) for r in rows])
    return [float(c) - float(j) for c, j in zip(chosen, rejected)]
