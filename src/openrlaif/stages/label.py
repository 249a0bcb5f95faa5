"""Stage `label`: candidates -> AI preference pairs.

Every pair of distinct candidates of a prompt is judged in both orders under a principle sampled
for that comparison; pairs are then selected (best vs worst by mean win probability, or all) and
written as ``preferences.jsonl`` in TRL's conversational preference format plus the judge's
probability, per-order scores and principle. ``judge_stats.json`` holds the judge's position
consistency, first-position rate and confidence.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from itertools import combinations

from openrlaif.config import FEEDBACK_METHODS, JUDGE_METHODS, RunConfig
from openrlaif.core.errors import UserError
from openrlaif.core.store import RunStore, atomic_write_json, atomic_write_jsonl, read_jsonl
from openrlaif.core.text import judge_directed
from openrlaif.feedback.api import usage_json
from openrlaif.feedback.factory import build_detector, build_judge, open_cache
from openrlaif.feedback.gate_cache import GateCache, gate_key
from openrlaif.feedback.scoring import position_stats, select_pairs
from openrlaif.feedback.types import Comparison


def comparison_seed(seed: int, k: int, prompt_id: str, i: int, j: int, per_prompt: bool = False) -> str:
    """Seed of the principle drawn for one comparison (or for all of a prompt's comparisons)."""
    return f"{seed}:{k}:{prompt_id}" if per_prompt else f"{seed}:{k}:{prompt_id}:{i}:{j}"


def directed_p_first(p_first: float, first_directed: bool, second_directed: bool, policy: str) -> float:
    """P(first better) after the judge-directed policy: under 'penalize' a candidate that addresses the judge
    loses (probability 0 or 1) to one that does not; otherwise, or when both or neither do, the judge's
    probability stands."""
    from openrlaif.feedback.defended import defended_p_first

    return defended_p_first(p_first, first_directed, second_directed) if policy == "penalize" else p_first


def directed_fields(chosen_directed: bool, rejected_directed: bool, policy: str) -> dict:
    """The judge-directed columns of a preference row. Under 'audit' a pair whose chosen reply addresses the
    judge is held out of training (``held_for_review``) until a person's verdict settles it."""
    return {"judge_directed": chosen_directed or rejected_directed, "chosen_directed": chosen_directed,
            "rejected_directed": rejected_directed, "held_for_review": policy == "audit" and chosen_directed}


def refit_from_audit(cfg: RunConfig, store: RunStore, k: int) -> dict | None:
    """Heads refitted on the run's audit verdicts (and label.refit_pairs) in round_k/heads, and the config that
    labels with them; None (with a note) while too few verdicts lie outside the random slice."""
    from openrlaif.core.progress import console
    from openrlaif.feedback.fit_heads import audit_pairs, fit_judge, min_pairs

    if not (store.root / "audit.sqlite").is_file():
        console.print("label.refit_from_audit: no audit desk in this run yet; labelling with the configured judge")
        return None
    people = audit_pairs(store.root).fit
    if len(people) < min_pairs(5):
        console.print(f"label.refit_from_audit: {len(people)} verdict(s) outside the random slice, fewer than "
                      f"{min_pairs(5)}; labelling with the configured judge (review more pairs: `rlaif audit {store.root}`)")
        return None
    out = store.path("heads", k)
    results = fit_judge(cfg, cfg.label.refit_pairs, out, from_audit=store.root, force=True, seed=cfg.seed)
    fb = cfg.feedback
    fallback = fb.fallback if fb.method == "fitted" else (fb.method if fb.method in JUDGE_METHODS else None)
    new_fb = fb.model_copy(update={"method": "fitted", "heads": str(out), "any_head": True, "fallback": fallback})
    return {"config": cfg.model_copy(update={"feedback": new_fb}), "heads": str(out),
            "audit_pairs": len(people), "heads_fitted": {r.principle: round(r.cv_agreement, 4) for r in results}}


def judge_gate(cfg: RunConfig, judge, constitution) -> dict | None:
    """Measure the judge on labelled pairs; stop (or warn) when it agrees less than feedback.min_agreement."""
    from openrlaif.core.progress import console
    from openrlaif.data.pairs import load_labelled_pairs
    from openrlaif.evaluate.judge_eval import evaluate_judge

    fb = cfg.feedback
    if fb.min_agreement <= 0:
        return None
    pairs = load_labelled_pairs(fb.gate_pairs, fb.gate_limit, field="feedback.gate_pairs")
    # The gate paid once: the same judge on the same pairs was measured before on this machine (user cache).
    key = gate_key(judge, cfg, constitution, pairs) if fb.gate_cache else None
    cached = GateCache().get(key) if key else None
    started = time.perf_counter()
    if cached is not None:
        measured = cached["measured"]
        console.print(f"judge gate: figures measured on {cached['at']} for this judge and these {measured['n']} pairs "
                      "(user cache; feedback.gate_cache=false measures again)")
    else:
        description, judge.description = judge.description, "judge gate"
        try:
            metrics = evaluate_judge(judge, pairs, constitution, None, cfg.seed).metrics
        finally:
            judge.description = description
        measured = {"pairs": fb.gate_pairs, "n": metrics["n"], "agreement": round(metrics["agreement"], 4),
                    "heads": metrics.get("heads"), "ece": round(metrics["ece"], 4), "brier": round(metrics["brier"], 4),
                    "position_consistency": metrics["position_consistency"]}
        if key:
            GateCache().put(key, measured)
    agreement = measured["agreement"]
    passed = agreement >= fb.min_agreement
    heads = measured["heads"]
    result = {**measured, "min_agreement": fb.min_agreement, "passed": passed, "action": fb.gate_action,
              "cached": cached["at"] if cached is not None else None, "wall_s": round(time.perf_counter() - started, 2)}
    message = (f"judge '{judge.name}' ({judge.method}) agrees with {agreement:.1%} of {measured['n']} labelled "
               f"calibration pairs, below feedback.min_agreement={fb.min_agreement}")
    if not passed and fb.gate_action == "stop":
        raise UserError(f"{message}; use a stronger judge (model.judge) or method (feedback.method=contrastive), "
                        "or set feedback.gate_action=warn to label anyway")
    if not passed:
        console.print(f"[bold yellow]warning:[/bold yellow] {message}; labelling anyway (feedback.gate_action=warn)")
    else:
        console.print(f"judge gate passed: agreement {agreement:.1%} on {measured['n']} calibration pairs")
    if heads:
        console.print(f"judge heads ({heads['directory']}): " + ", ".join(
            f"{key} {n} comparison(s)" for key, n in heads["comparisons"].items()))
    return result


def run(cfg: RunConfig, store: RunStore, k: int = 1) -> dict:
    """Judge all candidate pairs and write preferences.jsonl + judge_stats.json."""
    from openrlaif.core.preempt import stop_between_batches
    from openrlaif.data.constitution import load_constitution
    from openrlaif.models.loading import set_threads

    # 1. Inputs: this round's candidates and the constitution.
    cand_path = store.path("candidates.jsonl", k)
    if not cand_path.is_file():
        raise UserError(f"{cand_path} not found; run `rlaif generate -o {store.root}` first")
    rows = read_jsonl(cand_path)
    constitution = load_constitution(cfg.data.constitution)
    if FEEDBACK_METHODS[cfg.feedback.method].by_construction:  # labelled by construction, not by verdicts
        return construction_run(cfg, store, k, rows, constitution)
    # 2. One comparison per pair of distinct candidates, each with its own sampled principle
    #    (one principle per prompt for methods that score each candidate alone, so each is scored once).
    #    Which candidates address the judge (by the patterns, read after Unicode normalisation; the probe in 3b).
    per_prompt = FEEDBACK_METHODS[cfg.feedback.method].one_principle_per_prompt
    policy = cfg.label.on_judge_directed
    directed = {(r, c): judge_directed(text)
                for r, row in enumerate(rows) for c, text in enumerate(row["candidates"])}
    items: list[Comparison] = []
    keys: list[tuple[int, int, int]] = []
    for r, row in enumerate(rows):
        cands = row["candidates"]
        for i, j in combinations(range(len(cands)), 2):
            if not cands[i].strip() or not cands[j].strip() or cands[i].strip() == cands[j].strip():
                continue
            rng = random.Random(comparison_seed(cfg.seed, k, row["prompt_id"], i, j, per_prompt))
            items.append(Comparison(row["prompt"], cands[i], cands[j], constitution.sample(rng), row["messages"]))
            keys.append((r, i, j))
    # 3. The judge (refitted on people's verdicts first, when asked), measured on labelled calibration pairs
    #    before it is trusted (the gate).
    set_threads(cfg.model.threads)
    refit = refit_from_audit(cfg, store, k) if cfg.label.refit_from_audit and k > 1 else None
    judge, judge_name = build_judge(refit["config"] if refit else cfg, "label", store.root)
    # 3b. Candidates that address the judge: the patterns, and the learned probe on the judge's model
    #     ('drop' leaves them out of judging).
    detector = build_detector(cfg, judge)
    probe_flagged = None
    if detector is not None:
        flat = [(r, c) for r, row in enumerate(rows) for c, text in enumerate(row["candidates"]) if text.strip()]
        flags = detector.flags([rows[r]["messages"] for r, _ in flat], [rows[r]["candidates"][c] for r, c in flat])
        probe_flagged = sum(f and not directed[key] for key, f in zip(flat, flags))
        for key, f in zip(flat, flags):
            directed[key] = directed[key] or f
    if policy == "drop":
        kept = [n for n, (r, i, j) in enumerate(keys) if not (directed[(r, i)] or directed[(r, j)])]
        items, keys = [items[n] for n in kept], [keys[n] for n in kept]
    gate = judge_gate(cfg, judge, constitution)
    if judge.cache is not None:
        judge.cache.hits = judge.cache.misses = 0  # count the labelling itself below
    # 4. Judge every comparison (both orders for pairwise judges).
    start = time.perf_counter()
    with stop_between_batches():  # SIGTERM/SIGINT: stop after the current batch (kept in the judge cache)
        verdicts = judge.compare(items)
    seconds = time.perf_counter() - start
    # 5. Select pairs per prompt ('penalize': a judge-directed candidate loses to one that is not).
    per_prompt: dict[int, dict[tuple[int, int], float]] = {}
    detail: dict[tuple[int, int, int], object] = {}
    penalized = 0
    for (r, i, j), v in zip(keys, verdicts):
        if v.p_first is not None:
            p = directed_p_first(v.p_first, directed[(r, i)], directed[(r, j)], policy)
            penalized += p != v.p_first
            per_prompt.setdefault(r, {})[(i, j)] = p
            detail[(r, i, j)] = v
    prefs = []
    for r, probs in per_prompt.items():
        row = rows[r]
        for c, rej, p_chosen in select_pairs(len(row["candidates"]), probs, cfg.label.pairs, cfg.label.min_margin):
            v = detail[(r, min(c, rej), max(c, rej))]
            chosen_first = c < rej  # the comparison showed the lower index as `first`
            prefs.append({
                "prompt": row["messages"],
                "chosen": [{"role": "assistant", "content": row["candidates"][c]}],
                "rejected": [{"role": "assistant", "content": row["candidates"][rej]}],
                "p_chosen": round(p_chosen, 6),
                "principle": v.principle,
                "judge": f"{judge_name}:{judge.method}",
                "scores_ab": round(v.score_ab if chosen_first else 1 - v.score_ab, 6),
                "scores_ba": round(v.score_ba if chosen_first else 1 - v.score_ba, 6),
                "rationale": v.rationale,
                "source": "ai",
                "round": k,
                "prompt_id": row["prompt_id"],
                **directed_fields(directed[(r, c)], directed[(r, rej)], policy),
                "chosen_index": c,
                "rejected_index": rej,
            })
    # 6. Write the pairs and the judge's statistics.
    atomic_write_jsonl(store.path("preferences.jsonl", k), prefs)
    held = sum(p["held_for_review"] for p in prefs)
    if held:
        from openrlaif.core.progress import console

        console.print(f"[bold yellow]{held} pair(s) whose chosen reply addresses the judge are held out of "
                      f"training until reviewed[/bold yellow] (label.on_judge_directed=audit): `rlaif audit {store.root}`")
    stats = position_stats(verdicts)
    stats.update({
        "judge": judge_name,
        "method": judge.method,
        "template": judge.template,
        "constitution": constitution.name,
        "comparisons": len(items),
        "forward_passes": 2 * len(items),
        # sequences per local pass (label.batch_size resolved); None for a remote, rule or ensemble judge
        "batch_size": getattr(judge, "batch_size", None),
        "pairs_written": len(prefs),
        "pair_mode": cfg.label.pairs,
        "seconds": round(seconds, 2),
        "comparisons_per_s": round(len(items) / seconds, 3) if seconds else None,
        "mean_p_chosen": round(sum(p["p_chosen"] for p in prefs) / len(prefs), 4) if prefs else None,
        "cache": {"path": str(judge.cache.path), "hits": judge.cache.hits, "misses": judge.cache.misses}
        if judge.cache is not None else None,
        "gate": gate,
        "api": usage_json(judge),
        "unscored_errors": dict(Counter(v.error for v in verdicts if v.p_first is None and v.error)),
        "judge_directed": {"policy": policy, "candidates": sum(directed.values()),
                           "detector": "patterns + probe" if probe_flagged is not None else "patterns",
                           "probe_only": probe_flagged,
                           "pairs": sum(p["judge_directed"] for p in prefs), "held_for_review": held,
                           "penalized_comparisons": penalized},
        "heads": judge.take_usage() if hasattr(judge, "take_usage") else None,
        "refit": {key: v for key, v in refit.items() if key != "config"} if refit else None,
    })
    atomic_write_json(store.path("judge_stats.json", k), stats)
    return {k2: stats[k2] for k2 in ("comparisons", "pairs_written", "position_consistency",
                                     "first_position_rate", "mean_confidence", "comparisons_per_s")}


def preference_row(row: dict, chosen: str, rejected: str, p_chosen: float, principle: str, judge: str, source: str,
                   k: int, rationale: str | None = None, policy: str = "audit") -> dict:
    """A pair labelled by construction, in the same columns as judged pairs (no per-order scores)."""
    return {"prompt": row["messages"], "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}], "p_chosen": p_chosen, "principle": principle,
            "judge": judge, "scores_ab": None, "scores_ba": None, "rationale": rationale, "source": source,
            "round": k, "prompt_id": row["prompt_id"],
            **directed_fields(judge_directed(chosen), judge_directed(rejected),
                              policy)}


def construction_directed(prefs: list[dict], policy: str) -> list[dict]:
    """Pairs made by construction under the judge-directed policy: 'drop' removes pairs with a directed side;
    'penalize' swaps a pair whose chosen side alone addresses the judge; 'audit' and 'keep' leave them (audit
    has marked them held_for_review)."""
    out = []
    for row in prefs:
        if policy == "drop" and row["judge_directed"]:
            continue
        if policy == "penalize" and row["chosen_directed"] and not row["rejected_directed"]:
            row = {**row, "chosen": row["rejected"], "rejected": row["chosen"], "chosen_directed": False,
                   "rejected_directed": True}
        out.append(row)
    return out


def construction_run(cfg: RunConfig, store: RunStore, k: int, rows: list[dict], constitution) -> dict:
    """Label pairs by how they were made: Constitutional-AI revisions (revised > original, plus revision SFT
    rows in revisions.jsonl) or RLCD (positive-prompt candidate > negative-prompt candidate)."""
    from openrlaif.feedback.revision import critique_and_revise, rlcd_pairs
    from openrlaif.models.loading import judge_batch_size, load_causal_lm, set_threads

    fb = cfg.feedback
    start = time.perf_counter()
    prefs: list[dict] = []
    stats: dict = {"method": fb.method, "constitution": constitution.name, "gate": None,
                   "construction_confidence": fb.construction_confidence}
    if fb.method == "rlcd":
        # 1. Pair each positive-prompt candidate with a negative-prompt one.
        if not all("conditions" in row for row in rows):
            raise UserError("feedback.method=rlcd needs candidates sampled with generate.mode=rlcd; set it and run "
                            "`rlaif generate --force` first (or pick a judging method)")
        for row in rows:
            for i, j in rlcd_pairs(row["conditions"]):
                a, b = row["candidates"][i], row["candidates"][j]
                if a.strip() and b.strip() and a.strip() != b.strip():
                    prefs.append(preference_row(row, a, b, fb.construction_confidence, row["principle"],
                                                "rlcd:construction", "ai-rlcd", k, policy=cfg.label.on_judge_directed))
        judge_name = "rlcd"
    else:
        # 1. The judge model critiques and rewrites the first candidates of every prompt under a principle.
        set_threads(cfg.model.threads)
        spec = cfg.model.judge or cfg.model.policy
        loaded = load_causal_lm(spec, cfg.model.dtype, field="model.judge" if cfg.model.judge else "model.policy")
        units, owners = [], []
        for r, row in enumerate(rows):
            picked = [c for c in row["candidates"] if c.strip()][: fb.revisions_per_prompt]
            for c, reply in enumerate(picked):
                principle = constitution.sample(random.Random(comparison_seed(cfg.seed, k, row["prompt_id"], c, -1)))
                units.append((row["messages"], reply, principle))
                owners.append(r)
        cache = open_cache(cfg, store.root)
        revisions = critique_and_revise(loaded.model, loaded.tokenizer, units, max_new_tokens=fb.revision_max_tokens,
                                        batch_size=judge_batch_size(cfg), cache=cache, name=spec, description="revise")
        # 2. Usable revisions become pairs and SFT rows.
        sft = []
        for r, rev in zip(owners, revisions):
            if not rev.usable:
                continue
            row = rows[r]
            prefs.append(preference_row(row, rev.revised, rev.original, fb.construction_confidence, rev.principle,
                                        f"{spec}:revision", "ai-revision", k, rationale=rev.critique,
                                        policy=cfg.label.on_judge_directed))
            sft.append({"messages": [*row["messages"], {"role": "assistant", "content": rev.revised}],
                        "prompt_id": row["prompt_id"], "original": rev.original, "critique": rev.critique,
                        "principle": rev.principle, "round": k})
        atomic_write_jsonl(store.path("revisions.jsonl", k), sft)
        stats.update({"revisions": len(revisions), "usable_revisions": len(sft),
                      "usable_rate": round(len(sft) / len(revisions), 4) if revisions else None})
        judge_name = spec
    # 3. The judge-directed policy on pairs made by construction, then write the pairs and what was done.
    prefs = construction_directed(prefs, cfg.label.on_judge_directed)
    atomic_write_jsonl(store.path("preferences.jsonl", k), prefs)
    seconds = time.perf_counter() - start
    stats.update({"judge": judge_name, "pairs_written": len(prefs), "seconds": round(seconds, 2),
                  "position_consistency": None, "first_position_rate": None, "mean_confidence": None,
                  "comparisons": 0, "comparisons_per_s": None})
    atomic_write_json(store.path("judge_stats.json", k), stats)
    return {k2: stats[k2] for k2 in ("comparisons", "pairs_written", "position_consistency",
                                     "first_position_rate", "mean_confidence", "comparisons_per_s")}
