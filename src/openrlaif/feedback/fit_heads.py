"""`rlaif fit-judge`: fit a Bradley-Terry head on the judge model's hidden states from labelled pairs.

Steps: check every input; load the judge model; one forward pass per distinct reply gives its features at
the candidate layers (mean and last-token pooling); k-fold cross-validation picks the feature set and the
L2 strength; the head is refitted on every pair and written with its card (CV agreement, ECE of the
out-of-fold probabilities, the judge's fingerprint, the data's hash).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from openrlaif.audit.db import AuditDB, apply_human_verdicts
from openrlaif.config import RunConfig
from openrlaif.core.cache import FeatureCache, model_fingerprint
from openrlaif.core.errors import UserError
from openrlaif.core.progress import console
from openrlaif.core.store import RunStore, sha256_text
from openrlaif.core.text import normalize_candidate
from openrlaif.data.constitution import load_constitution
from openrlaif.data.preferences import text_of
from openrlaif.data.pairs import LabelledPair, load_labelled_pairs, read_preference_file
from openrlaif.evaluate.judge_eval import evaluate_judge, expected_calibration_error
from openrlaif.feedback.fitted import ANY_PRINCIPLE, FittedJudge, Head, save_heads
from openrlaif.feedback.fitting import Standardizer, cv_predictions, fit_head, oriented, select_by_cv
from openrlaif.models.features import POOLINGS, cached_reply_features

L2_GRID = (0.01, 0.1, 1.0, 10.0)


@dataclass
class FitResult:
    directory: Path
    principle: str
    feature: str
    l2: float
    pairs: int
    cv_agreement: float
    ece: float
    table: dict
    seconds: float


def default_layers(n_layers: int) -> list[int]:
    """Every layer from a fifth of the way up, in about eight steps, and always the last one."""
    step = max(1, n_layers // 8)
    return sorted({*range(max(1, n_layers // 5), n_layers + 1, step), n_layers})


def data_hash(pairs: list[LabelledPair]) -> str:
    return sha256_text(json.dumps([[p.messages, p.chosen, p.rejected] for p in pairs]))


@dataclass
class AuditPairs:
    """A run's audit-desk verdicts as labelled pairs (chosen = the reply the person preferred)."""

    fit: list[LabelledPair]  # the pairs a head is refitted on
    check: list[LabelledPair]  # the random slice, kept out of the fit: it measures the judge before and after
    check_ai_agreed: list[bool]  # per check pair: did the run's AI label agree with the person?


def audit_pairs(run_dir: str | Path, fit_random_slice: bool = False) -> AuditPairs:
    """The pairs people settled at a run's audit desk: every round's AI pairs with a verdict, 'agree' as
    labelled, 'flip' swapped, 'flag' dropped (``audit.db.apply_human_verdicts``). The uniform random slice
    is held out of the fit (unless ``fit_random_slice``) so that it can measure the refitted judge."""
    store = RunStore(run_dir)
    db_path = store.root / "audit.sqlite"
    if not db_path.is_file():
        raise UserError(f"--from-audit: {store.root} has no audit.sqlite; review pairs first with "
                        f"`rlaif audit {store.root}`")
    db = AuditDB(db_path)
    try:
        in_slice = db.random_slice()
    finally:
        db.close()
    out = AuditPairs([], [], [])
    for path in sorted(store.root.glob("round_*/preferences.jsonl")):
        rows, _ = apply_human_verdicts(read_preference_file(path), db_path)
        for i, row in enumerate(rows):
            if row.get("source") != "human" or "audit_pair_id" not in row:
                continue
            prompt = row.get("prompt")
            messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]
            pair = LabelledPair(f"{path.parent.name}:{i}", messages, text_of(row["chosen"]), text_of(row["rejected"]),
                                row.get("principle"))
            checking = row["audit_pair_id"] in in_slice
            if checking:
                out.check.append(pair)
                out.check_ai_agreed.append(row["audit_verdict"] == "agree")
            if fit_random_slice or not checking:
                out.fit.append(pair)
    return out


def min_pairs(folds: int) -> int:
    """Fewest pairs a head is fitted on: two per fold, and never under ten."""
    return max(2 * folds, 10)


def check_inputs(cfg: RunConfig, pairs_spec: str | None, principle: str | None, folds: int, limit: int | None,
                 out: Path, force: bool, from_audit: str | Path | None = None,
                 fit_random_slice: bool = False) -> tuple[list[LabelledPair], int, AuditPairs | None]:
    """Every input, before any model loads: the pairs, the principle, the fold count, the output.
    Returns the usable pairs (the audit desk's last), how many came from the audit desk, and the audit's
    pairs (with the random slice that checks the refit) when there is one."""
    if folds < 2:
        raise UserError(f"--folds: {folds} is too few for cross-validation; use 2 or more (5 is usual)")
    if pairs_spec is None and from_audit is None:
        raise UserError("fit-judge: give labelled pairs with --pairs FILE, an audited run with --from-audit "
                        "RUN_DIR, or both")
    def usable(group: list[LabelledPair]) -> list[LabelledPair]:
        return [p for p in group if p.chosen.strip() and p.rejected.strip() and p.chosen != p.rejected]

    audit = audit_pairs(from_audit, fit_random_slice) if from_audit is not None else None
    audited = usable(audit.fit) if audit is not None else []
    pairs = usable(load_labelled_pairs(pairs_spec, limit) if pairs_spec is not None else []) + audited
    needed = min_pairs(folds)
    source = " + ".join(x for x in (pairs_spec and f"--pairs {pairs_spec}",
                                    from_audit and f"--from-audit {from_audit}") if x)
    if len(pairs) < needed:
        raise UserError(f"{source}: {len(pairs)} usable pair(s), fewer than the {needed} that "
                        f"{folds}-fold cross-validation needs; give more labelled pairs or lower --folds")
    ids = [p.id for p in load_constitution(cfg.data.constitution).principles]
    if principle is not None and principle not in ids:
        raise UserError(f"--principle: '{principle}' is not in the constitution {cfg.data.constitution} "
                        f"(its principles: {', '.join(ids)})")
    if principle is None:  # the pairs' own principle column decides the heads: every id must be real
        foreign = next((p for p in pairs if p.principle and p.principle not in ids), None)
        if foreign is not None:
            raise UserError(f"{source}: pair {foreign.id} names principle '{foreign.principle}', which is not in "
                            f"the constitution {cfg.data.constitution} (its principles: {', '.join(ids)}); fix "
                            "the column or pass --principle ID to fit one head on every pair")
    if out.exists() and not force:
        raise UserError(f"-o {out}: already exists; pass --force to replace it or pick another directory")
    return pairs, len(audited), audit


def principle_groups(pairs: list[LabelledPair], principle: str | None, needed: int) -> dict[str, list[int]]:
    """Which pairs each head is fitted on: everything for ``principle`` when one is given; otherwise one head
    per principle named in the pairs' ``principle`` column that has at least ``needed`` pairs, and an
    ``_any`` head on every pair (it serves the principles without their own head)."""
    if principle is not None:
        return {principle: list(range(len(pairs)))}
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        if p.principle:
            groups.setdefault(p.principle, []).append(i)
    heads = {k: v for k, v in sorted(groups.items()) if len(v) >= needed}
    if len(heads) == 1 and len(next(iter(heads.values()))) == len(pairs):
        return heads  # every pair names the same principle: that principle's head alone
    return {**heads, ANY_PRINCIPLE: list(range(len(pairs)))}


def fit_judge(cfg: RunConfig, pairs_spec: str | None, out: str | Path, *, principle: str | None = None,
              folds: int = 5, layers: list[int] | None = None, limit: int | None = None, seed: int = 0,
              force: bool = False, from_audit: str | Path | None = None, debias_length: bool = False,
              fit_random_slice: bool = False) -> list[FitResult]:
    """Fit heads (for ``principle``, or per principle of the pairs' column plus one for every principle) on
    labelled pairs and/or an audited run's verdicts, and write them to ``out``."""
    from openrlaif.models.loading import cache_dir, judge_batch_size, load_causal_lm, set_threads

    out = Path(out)
    # 1. Inputs, before any model loads.
    pairs, n_audit, audit = check_inputs(cfg, pairs_spec, principle, folds, limit, out, force, from_audit,
                                         fit_random_slice)
    groups = principle_groups(pairs, principle, min_pairs(folds))
    start = time.perf_counter()
    # 2. The judge model.
    set_threads(cfg.model.threads)
    spec = cfg.model.judge or cfg.model.policy
    loaded = load_causal_lm(spec, cfg.model.dtype, field="model.judge" if cfg.model.judge else "model.policy")
    n_layers = loaded.model.config.num_hidden_layers
    layers = layers or default_layers(n_layers)
    bad = [i for i in layers if not 0 <= i <= n_layers]
    if bad:
        raise UserError(f"--layers: {bad} outside 0..{n_layers} for {spec}")
    # 3. Features of every distinct reply (normalised as the judge will see it), one forward pass each.
    units: dict[tuple[str, str], int] = {}
    for p in pairs:
        for reply in (p.chosen, p.rejected):
            units.setdefault((json.dumps(p.messages), normalize_candidate(reply)), len(units))
    keys = list(units)
    #    Features are cached by model fingerprint and token ids (feedback.cache=null turns this off).
    cache = FeatureCache(cache_dir() / "features.sqlite") if cfg.feedback.cache is not None else None
    feats = cached_reply_features(loaded.model, loaded.tokenizer, [json.loads(c) for c, _ in keys],
                                  [r for _, r in keys], layers=layers, cache=cache,
                                  fingerprint=model_fingerprint(loaded.model), batch_size=judge_batch_size(cfg),
                                  max_length=cfg.feedback.max_length, description="fit-judge: features")
    if cache is not None:
        console.print(f"fit-judge: features of {len(keys)} replies, {cache.hits // (len(POOLINGS) * len(layers))} read from "
                      f"{cache.path}")
        cache.close()
    ci = torch.tensor([units[(json.dumps(p.messages), normalize_candidate(p.chosen))] for p in pairs])
    ri = torch.tensor([units[(json.dumps(p.messages), normalize_candidate(p.rejected))] for p in pairs])
    covariates = 0
    if debias_length:  # log length as an extra column: fitted with the head, dropped when it scores
        lengths = torch.tensor([[float(len(r))] for _, r in keys]).log1p()
        feats = {name: torch.cat([x, lengths], 1) for name, x in feats.items()}
        covariates = 1
    common = {"folds": folds, "data": str(pairs_spec), "audit_run": str(from_audit) if from_audit else None,
              "seed": seed, "debias_length": debias_length, "layers_tried": layers, "poolings_tried": list(POOLINGS)}
    heads, results = [], []
    for key, idx in groups.items():
        members = torch.tensor(idx)
        candidates = {name: (x[ci[members]], x[ri[members]]) for name, x in feats.items()}
        head, result = _fit_group(key, candidates, covariates, folds, seed, out)
        head.card.update(pairs=len(idx), audit_pairs=sum(1 for i in idx if i >= len(pairs) - n_audit),
                         data_sha256=data_hash([pairs[i] for i in idx]), **common)
        heads.append(head)
        results.append(result)
    # 4. People's verdicts on the audit's random slice (kept out of the fit): the run's AI labels vs the new heads.
    check = None
    if audit is not None and audit.check:
        check = audit_check(loaded, heads, audit, cfg, from_audit, fit_random_slice)
    # 5. One head directory with every head and its card.
    save_heads(out, heads, spec, model_fingerprint(loaded.model), extra={"audit_check": check} if check else None)
    if check is not None:
        record = {**check, "heads": str(out), "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
        with open(RunStore(from_audit).root / "judge_refits.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        console.print(f"fit-judge: on the audit's random slice ({check['n']} pairs people settled, kept out of the "
                      f"fit): the run's AI labels agreed {check['before']:.1%}, the new heads {check['after']:.1%}"
                      + (" (in-sample: --fit-random-slice)" if fit_random_slice else ""))
    seconds = time.perf_counter() - start
    for r in results:
        r.seconds = seconds
        console.print(f"fit-judge: head {r.principle}: {r.pairs} pairs; best {r.feature} l2={r.l2}: "
                      f"{folds}-fold CV agreement {r.cv_agreement:.3f}, ECE {r.ece:.3f}")
    console.print(f"fit-judge: {len(pairs)} pairs, {len(keys)} replies, {len(heads)} head(s) in {seconds:.0f} s -> {out}")
    return results


def audit_check(loaded, heads: list[Head], audit: AuditPairs, cfg: RunConfig, run_dir,
                in_sample: bool) -> dict | None:
    """Agreement with people on the audit's random slice: the run's AI labels (before) and the new heads
    (after), on the slice pairs whose principle has a head."""
    from openrlaif.models.loading import judge_batch_size

    judge = FittedJudge(loaded.model, loaded.tokenizer, {h.principle: h for h in heads},
                        batch_size=judge_batch_size(cfg), max_length=cfg.feedback.max_length,
                        description="fit-judge: audit check")
    idx = [i for i, p in enumerate(audit.check) if judge.head_for(p.principle or ANY_PRINCIPLE) is not None]
    if not idx:
        return None
    after = evaluate_judge(judge, [audit.check[i] for i in idx], load_constitution(cfg.data.constitution),
                           None, cfg.seed).metrics["agreement"]
    before = sum(audit.check_ai_agreed[i] for i in idx) / len(idx)
    return {"run": str(run_dir), "n": len(idx), "before": round(before, 4), "after": round(after, 4),
            "in_sample": in_sample}


def _fit_group(key: str, candidates: dict, covariates: int, folds: int, seed: int, out: Path) -> tuple[Head, FitResult]:
    """Cross-validation picks the feature set and L2 strength; the head is refitted on every pair."""
    pick = select_by_cv(candidates, list(L2_GRID), folds, seed, covariates)
    chosen, rejected = candidates[pick.features]
    logits, labels = cv_predictions(chosen, rejected, pick.l2, folds, seed, covariates)
    ece = expected_calibration_error(torch.sigmoid(logits).tolist(), [int(y) for y in labels.tolist()])
    std = Standardizer.fit(torch.cat([chosen, rejected]))
    w = fit_head(*oriented(std(chosen), std(rejected), seed), pick.l2)
    length_weight = None
    if covariates:  # the head scores the features alone
        length_weight = round(float(w[-1]), 4)
        std, w = Standardizer(std.mean[:-covariates], std.std[:-covariates]), w[:-covariates]
    best = sorted(pick.table.items(), key=lambda item: -item[1])[:5]
    card = {"l2": pick.l2, "cv_agreement": round(pick.cv_agreement, 4), "ece": round(ece, 4),
            "length_weight": length_weight,
            "best_by_cv": [{"feature": f, "l2": l2, "cv_agreement": round(a, 4)} for (f, l2), a in best]}
    result = FitResult(out, key, pick.features, pick.l2, len(chosen), pick.cv_agreement, ece, pick.table, 0.0)
    return Head(key, pick.features, std, w, card), result
