"""Rounds: round k's trained policy samples round k+1's candidates and is where round k+1's training starts.

The pieces `pipeline.run` needs between rounds, kept as plain functions:
- ``round_config``: the run's config with ``pipeline.overrides[k]`` applied;
- ``start_adapter`` / ``load_round_policy``: the policy a round starts from (round 1: the starting model;
  round k: the starting model + round k-1's LoRA adapter, which round k's training continues);
- ``select_rounds``: which rounds' preference pairs a round trains on (newest, all, or a mix);
- ``stop_reason``: the stop rules, read from a round's eval and training summaries and the audit desk;
- ``round_record``: the figures of one round for the manifest and the report.
"""

from __future__ import annotations

from openrlaif.config import RunConfig, apply_overrides, config_from_dict
from openrlaif.core.errors import UserError
from openrlaif.core.store import RunStore

FIXED_KEYS = ("pipeline", "model.policy", "seed", "name")


def round_config(cfg: RunConfig, k: int) -> RunConfig:
    """``cfg`` with the overrides of round ``k`` (``pipeline.overrides[k]``) applied and validated."""
    overrides = cfg.pipeline.overrides.get(k)
    if not overrides:
        return cfg
    for text in overrides:
        key = text.partition("=")[0].strip()
        if any(key == fixed or key.startswith(fixed + ".") for fixed in FIXED_KEYS):
            raise UserError(f"pipeline.overrides[{k}]: '{key}' cannot change between rounds; remove that override")
    return config_from_dict(apply_overrides(cfg.model_dump(mode="json"), overrides), f"pipeline.overrides[{k}]")


def check_round_overrides(cfg: RunConfig) -> None:
    """Fail before anything runs when an override names a round past pipeline.rounds or is invalid."""
    for k in sorted(cfg.pipeline.overrides):
        if not 2 <= k <= cfg.pipeline.rounds:
            raise UserError(f"pipeline.overrides: round {k} is not one of rounds 2..{cfg.pipeline.rounds}; "
                            "round 1 uses the config itself")
        round_config(cfg, k)


def stop_reason(cfg: RunConfig, k: int, eval_summary: dict, train_summary: dict,
                audit: dict | None = None) -> str | None:
    """Why the run should stop after round ``k`` (None: go on). The rules, in order: the over-optimisation
    alarm fired in training; the KL budget is spent; the win-rate gain is below the threshold; people
    disagree with the AI labels too often."""
    pc = cfg.pipeline
    alarm = (train_summary.get("monitor") or {}).get("alarm_step")
    if pc.stop_on_alarm and alarm is not None:
        return f"over-optimisation alarm in round {k}'s training (update {alarm})"
    kl = eval_summary.get("kl_to_start")
    if pc.stop_max_kl is not None and kl is not None and kl > pc.stop_max_kl:
        return f"KL to the start {kl:.3f} exceeds the budget pipeline.stop_max_kl={pc.stop_max_kl}"
    if pc.stop_min_gain is not None:
        versus, rate = ("previous round", eval_summary.get("win_rate_vs_previous")) if k > 1 else (None, None)
        if rate is None:
            versus, rate = "start", eval_summary.get("win_rate")
        if rate is not None and rate - 0.5 < pc.stop_min_gain:
            return (f"win rate against the {versus} {rate:.3f} gains less than "
                    f"pipeline.stop_min_gain={pc.stop_min_gain} over 0.5")
    if pc.stop_max_disagreement is not None and audit:
        n, agreement = audit.get("random_slice_n", 0), audit.get("agreement")
        if agreement is not None and n >= pc.stop_min_audited and 1 - agreement > pc.stop_max_disagreement:
            return (f"people disagree with {1 - agreement:.0%} of the audited AI labels ({n} random-slice pairs), "
                    f"above pipeline.stop_max_disagreement={pc.stop_max_disagreement}")
    return None


def audit_stats(store: RunStore) -> dict | None:
    """The audit desk's agreement figures, or None when nobody has audited this run."""
    path = store.root / "audit.sqlite"
    if not path.is_file():
        return None
    from openrlaif.audit.db import AuditDB

    db = AuditDB(path)
    try:
        return db.stats()
    finally:
        db.close()


def round_record(store: RunStore, k: int) -> dict:
    """One round's figures for the manifest and the report (from the stages' summaries)."""
    ev = store.stage_status("eval", k).get("summary", {})
    tr = store.stage_status("train", k).get("summary", {})
    lab = store.stage_status("label", k).get("summary", {})
    record = {"round": k, "win_rate": ev.get("win_rate"), "ci95": ev.get("ci95"),
              "win_rate_vs_previous": ev.get("win_rate_vs_previous"), "kl_to_start": ev.get("kl_to_start"),
              "length_controlled_win_rate": ev.get("length_controlled_win_rate"),
              "train_pairs": tr.get("pairs"), "alarm_step": (tr.get("monitor") or {}).get("alarm_step")}
    for key in ("pairs_written", "position_consistency", "mean_confidence", "first_position_rate"):
        if key in lab:
            record[f"label_{key}"] = lab[key]
    return record
