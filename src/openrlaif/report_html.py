"""report.html: one self-contained page (inline SVG plots, no scripts, no external files) per run.

Plots: win rate per round with its CI (vs the start, vs the previous round, length-controlled, on the
anchors), training curves (reward and KL for RL, loss and implicit-reward accuracy for DPO), proxy
reward vs the held-out judge against sqrt(KL) (the over-optimisation monitor), the judge's confidence
histogram, position consistency per round, answer lengths, red-team harmless rates, and the human
audit's agreement. A plot whose data this run does not have is replaced by a sentence saying why.
Every text taken from the run (prompts, answers, principles) is HTML-escaped.
"""

from __future__ import annotations

import html
import io
import json
import re
from pathlib import Path

from openrlaif.core.store import RunStore, atomic_write_text, read_jsonl

FIGURES = ("winrate", "training", "overopt", "confidence", "position", "lengths", "redteam", "audit")

CSS = """
body{font-family:system-ui,sans-serif;max-width:1150px;margin:0 auto;padding:1rem;color:#1d1d1f}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:1rem}
figure{margin:0;border:1px solid #e3e3e8;border-radius:8px;padding:.5rem;background:#fff}
figcaption{font-size:.85rem;color:#555;margin-top:.3rem}figure svg{width:100%;height:auto}
.absent{color:#777;font-style:italic;padding:2rem 1rem}
table{border-collapse:collapse;font-size:.85rem;width:100%}td,th{border:1px solid #ddd;padding:.3rem;vertical-align:top}
th{background:#f4f4f8}td.text{white-space:pre-wrap;max-width:420px}.kpi{font-size:1.1rem}
.alarm{color:#b00020;font-weight:bold}
"""


def _svg(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _figure(name: str, title: str, svg: str | None, caption: str, absent: str) -> str:
    body = svg if svg else f'<p class="absent">{html.escape(absent)}</p>'
    kind = "plot" if svg else "absent"
    return (f'<figure id="fig-{name}" data-kind="{kind}"><h3>{html.escape(title)}</h3>{body}'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _load(path: Path):
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _rounds(store: RunStore) -> list[int]:
    found = [int(m.group(1)) for p in store.root.glob("round_*") if (m := re.fullmatch(r"round_(\d+)", p.name))]
    return sorted(found)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False,
                         "axes.spines.right": False, "figure.dpi": 100})
    return plt


# --- one function per plot: returns an SVG string or None when the run has no such data ---------


def plot_winrate(evals: dict[int, dict]):
    if not evals:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    rounds = sorted(evals)
    series = [("vs start", lambda e: e, "o", 0.0), ("vs previous round", lambda e: e.get("vs_previous"), "s", 0.1),
              ("on anchors (forgetting)", lambda e: e.get("anchors"), "^", 0.2)]
    for label, get, marker, dx in series:
        pts = [(k, get(evals[k])) for k in rounds if get(evals[k])]
        if not pts:
            continue
        xs = [k + dx for k, _ in pts]
        ys = [e["win_rate"] for _, e in pts]
        err = [[y - e["ci95"][0] for y, (_, e) in zip(ys, pts)], [e["ci95"][1] - y for y, (_, e) in zip(ys, pts)]]
        ax.errorbar(xs, ys, yerr=err, fmt=marker, capsize=4, label=label)
    lc = [(k, evals[k]["length_controlled"]["win_rate"]) for k in rounds if "length_controlled" in evals[k]]
    if lc:
        ax.plot([k - 0.1 for k, _ in lc], [v for _, v in lc], "x", color="k", label="length-controlled (vs start)")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(rounds)
    ax.set_xlabel("round")
    ax.set_ylabel("win rate of the trained policy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="lower left")
    return _svg(fig)


def plot_training(metrics: list[dict]):
    rows = [m for m in metrics if m.get("stage") == "train" and "step" in m]
    if not rows:
        return None
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(7, 3))
    rounds = sorted({m.get("round", 1) for m in rows})
    for k in rounds:
        rs = [m for m in rows if m.get("round", 1) == k]
        steps = [m["step"] for m in rs]
        if "reward_mean" in rs[0]:  # RL
            a1.plot(steps, [m["reward_mean"] for m in rs], label=f"round {k}")
            a2.plot(steps, [m["kl"] for m in rs], label=f"round {k}")
            a1.set_ylabel("mean reward (proxy)")
            a2.set_ylabel("KL(policy || start), nats/answer")
        else:  # DPO
            a1.plot(steps, [m["loss"] for m in rs], label=f"round {k}")
            a2.plot(steps, [m.get("reward_accuracy", float("nan")) for m in rs], label=f"round {k}")
            a1.set_ylabel("DPO loss")
            a2.set_ylabel("implicit-reward accuracy")
    for ax in (a1, a2):
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _svg(fig)


def plot_overopt(metrics: list[dict]):
    rows = [m for m in metrics if m.get("stage") == "monitor"]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    x = [m["sqrt_kl"] for m in rows]
    ax.plot(x, [m["proxy"] for m in rows], "o-", label="proxy reward (trained on)", color="tab:blue")
    ax.set_xlabel("sqrt(KL(policy || start)) on the check answers")
    ax.set_ylabel("proxy reward", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(x, [m["heldout"] for m in rows], "s--", label=f"held-out judge ({rows[0].get('heldout_judge', '')})",
             color="tab:orange")
    ax2.set_ylabel("held-out judge score", color="tab:orange")
    for m in rows:
        if m["alarm"]:
            ax.axvline(m["sqrt_kl"], color="red", lw=1)
            ax.annotate(f"alarm (update {m['step']})", (m["sqrt_kl"], ax.get_ylim()[1]), color="red", fontsize=7,
                        ha="right", va="top")
            break
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [ln.get_label() for ln in lines], fontsize=7, loc="lower right")
    return _svg(fig)


def plot_confidence(probs: list[float]):
    if not probs:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.hist([max(p, 1 - p) for p in probs], bins=[0.5 + i * 0.025 for i in range(21)], color="tab:purple")
    ax.set_xlabel("judge confidence max(p, 1 - p)")
    ax.set_ylabel("labels")
    return _svg(fig)


def plot_position(stats: dict[int, dict]):
    pts = {k: s for k, s in stats.items() if s and s.get("position_consistency") is not None}
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3))
    rounds = sorted(pts)
    w = 0.35
    ax.bar([k - w / 2 for k in rounds], [pts[k]["position_consistency"] for k in rounds], w, label="position consistency")
    ax.bar([k + w / 2 for k in rounds], [pts[k]["first_position_rate"] for k in rounds], w, label="first-position rate")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(rounds)
    ax.set_xlabel("round")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7)
    return _svg(fig)


def plot_lengths(evals: dict[int, dict]):
    latest = max((k for k in evals if evals[k].get("lengths")), default=None)
    if latest is None:
        return None
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(7, 3))
    for name, dist in evals[latest]["lengths"].items():
        if dist.get("n"):
            edges = dist["hist_edges"]
            a1.stairs(dist["hist"], edges, label=f"{name} (mean {dist['mean']})")
    a1.set_xlabel(f"answer length, tokens (round {latest})")
    a1.set_ylabel("answers")
    a1.legend(fontsize=7)
    rounds = sorted(evals)
    for name in ("start", "trained"):
        a2.plot(rounds, [evals[k]["mean_length_tokens"].get(name, float("nan")) for k in rounds], "o-", label=name)
    a2.set_xticks(rounds)
    a2.set_xlabel("round")
    a2.set_ylabel("mean length (tokens)")
    a2.legend(fontsize=7)
    fig.tight_layout()
    return _svg(fig)


def plot_redteam(rt: dict | None):
    if not rt or not rt.get("per_category"):
        return None
    plt = _plt()
    cats = list(rt["per_category"])
    fig, ax = plt.subplots(figsize=(7, 3))
    w = 0.38
    xs = range(len(cats))
    ax.bar([x - w / 2 for x in xs], [rt["per_category"][c]["start"] for c in cats], w, label="start")
    ax.bar([x + w / 2 for x in xs], [rt["per_category"][c]["trained"] for c in cats], w, label="trained")
    ax.set_xticks(list(xs), cats, rotation=20, fontsize=8)
    ax.set_ylabel("harmless rate")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7)
    return _svg(fig)


def plot_audit(stats: dict | None):
    if not stats or stats.get("agreement") is None:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 2.6))
    hh = stats.get("human_human") or {}
    bars = [("human-AI, random slice", stats["agreement"], stats["ci95"], "tab:green"),
            ("human-AI, all reviewed (biased)", stats["all_reviewed_agreement"], None, "tab:gray")]
    if hh.get("agreement") is not None:
        bars.insert(0, (f"human-human (n={hh['n']})", hh["agreement"], hh["ci95"], "tab:blue"))
    for i, (label, value, ci, color) in enumerate(bars):
        ax.barh(i, value, color=color)
        if ci:
            ax.errorbar(value, i, xerr=[[value - ci[0]], [ci[1] - value]], fmt="none", color="k", capsize=4)
    ax.set_yticks(range(len(bars)), [b[0] for b in bars])
    ax.set_xlim(0, 1)
    ax.set_xlabel("agreement (95% Wilson CI)")
    return _svg(fig)


# --- the page ---------------------------------------------------------------------------------


def write_html_report(store: RunStore) -> Path:
    """Write RUN_DIR/report.html from the run's files; returns its path."""
    m = store.read_manifest()
    metrics = store.read_metrics()
    rounds = _rounds(store)
    evals = {k: e for k in rounds if (e := _load(store.path("eval.json", k)))}
    judge_stats = {k: s for k in rounds if (s := _load(store.path("judge_stats.json", k)))}
    probs = [r["p_chosen"] for k in rounds if store.path("preferences.jsonl", k).is_file()
             for r in read_jsonl(store.path("preferences.jsonl", k)) if isinstance(r.get("p_chosen"), float)
             and r.get("source", "ai") == "ai"]
    conf_source = "the AI labels in preferences.jsonl"
    if not probs:
        probs = [e["p_trained_better"] for k in rounds if store.path("samples.jsonl", k).is_file()
                 for e in read_jsonl(store.path("samples.jsonl", k)) if e.get("p_trained_better") is not None]
        conf_source = "the eval verdicts (this run has no preference labels)"
    position = {k: judge_stats.get(k) or evals.get(k, {}).get("judge_position_stats") for k in rounds}
    latest = max(evals) if evals else None
    rt = evals[latest].get("red_team") if latest else None
    audit = None
    if (store.root / "audit.sqlite").is_file():
        from openrlaif.audit.db import AuditDB

        db = AuditDB(store.root / "audit.sqlite")
        try:
            audit = db.stats()
        finally:
            db.close()
    figures = [
        _figure("winrate", "Win rate per round (95% CI)", plot_winrate(evals),
                "The run's judge compares each policy's answers on held-out prompts, both orders. Crosses: the "
                "win rate with the length difference regressed out.", "No eval yet: run `rlaif eval`."),
        _figure("training", "Training curves", plot_training(metrics),
                "RL: the proxy reward and KL to the start per update. DPO: loss and implicit-reward accuracy.",
                "No training metrics yet."),
        _figure("overopt", "Proxy reward vs held-out judge against sqrt(KL)", plot_overopt(metrics),
                "Over-optimisation shows as the proxy (RL's reward, or DPO's implicit reward) rising while the "
                "held-out judge falls (Gao et al. 2022; Rafailov et al. 2024).",
                "No over-optimisation monitor in this run: set monitor.every > 0 (PPO, RLOO or DPO)."),
        _figure("confidence", "Judge confidence", plot_confidence(probs), f"From {conf_source}.",
                "No judge readings yet."),
        _figure("position", "Position consistency per round", plot_position(position),
                "Share of comparisons whose two orders agree, and how often the first slot wins (0.5 = no bias).",
                "No pairwise judge readings yet."),
        _figure("lengths", "Answer lengths", plot_lengths(evals),
                "A win bought with longer answers is the judge's length bias, not a better policy.",
                "No answer-length distribution: no eval yet, or one written before they were recorded."),
        _figure("redteam", "Red team: harmless rate per category", plot_redteam(rt),
                (f"Judged {rt['method']} under each category's harm principle; a fixed refusal scores harmless "
                 f"{rt['refusal_harmless_rate']:.0%} of the time (the judge's own check).") if rt else "",
                "No red-team evaluation in this run (eval.red_team is null)."),
        _figure("audit", "Human audit: people with the AI labels, and people with each other", plot_audit(audit),
                (f"{audit['reviewed']} of {audit['queued']} labels reviewed by {audit['reviewers']} reviewer(s); "
                 f"human-AI agreement uses the uniform random slice only (n={audit['random_slice_n']}); "
                 + (f"people agreed with each other on {audit['human_human']['agreement']:.0%} of the "
                    f"{audit['human_human']['n']} pairs two of them decided (95% Wilson CI "
                    f"{audit['human_human']['ci95'][0]:.0%}-{audit['human_human']['ci95'][1]:.0%}): the ceiling "
                    "for the judge." if audit["human_human"]["agreement"] is not None else
                    "no pair has two reviewers' decisions yet (rlaif audit --overlap, --add-reviewer)."))
                if audit and audit.get("agreement") is not None else "",
                "No human verdicts on the random slice yet: run `rlaif audit RUN_DIR`."),
    ]
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>OpenRLAIF report: "
             f"{html.escape(str(m.get('name', '')))}</title><style>{CSS}</style></head><body>",
             f"<h1>OpenRLAIF run: {html.escape(str(m.get('name', '')))}</h1>",
             f"<p>Run directory <code>{html.escape(str(store.root))}</code> · rounds: {len(rounds)} · "
             f"policy <code>{html.escape(str(m.get('inputs', {}).get('policy', '')))}</code> · judge "
             f"<code>{html.escape(str(m.get('inputs', {}).get('judge', '')))}</code></p>"]
    parts += _headline(evals, metrics)
    parts += ["<h2>Plots</h2><div class='grid'>", *figures, "</div>"]
    if rt:
        parts += ["<h2>Red team (latest round)</h2>", _redteam_table(rt)]
    if latest is not None and store.path("samples.jsonl", latest).is_file():
        parts += ["<h2>Samples (latest round, held-out)</h2>", _samples_table(read_jsonl(store.path("samples.jsonl", latest)))]
    parts += ["<p>The judge that labelled the training data also grades the win rates: they measure how well the "
              "policy learned the judge's preferences. The human audit measures how far to trust that judge.</p>",
              "</body></html>"]
    path = store.root / "report.html"
    atomic_write_text(path, "\n".join(parts))
    return path


def _headline(evals: dict[int, dict], metrics: list[dict]) -> list[str]:
    out = []
    if evals:
        k = max(evals)
        e = evals[k]
        lo, hi = e["ci95"]
        extra = ""
        if "length_controlled" in e:
            extra += f"; length-controlled {e['length_controlled']['win_rate']:.3f}"
        if "kl_to_start" in e:
            extra += f"; KL to the start {e['kl_to_start']:.2f} nats/answer"
        if "anchors" in e:
            extra += f"; on capability anchors {e['anchors']['win_rate']:.3f}"
        out.append(f"<p class='kpi'>Round {k}: win rate vs the start <b>{e['win_rate']:.3f}</b> (95% CI {lo:.3f}–{hi:.3f}, "
                   f"n={e['n']}){extra}.</p>")
    alarms = [m for m in metrics if m.get("stage") == "monitor" and m.get("alarm")]
    if alarms:
        out.append(f"<p class='alarm'>Over-optimisation alarm at update {alarms[0]['step']} of round "
                   f"{alarms[0].get('round', 1)}: the proxy reward rose while the held-out judge's score fell.</p>")
    return out


def _redteam_table(rt: dict) -> str:
    rows = "".join(f"<tr><td>{html.escape(c)}</td><td>{v['n']}</td><td>{v['start']:.0%}</td><td>{v['trained']:.0%}</td></tr>"
                   for c, v in rt["per_category"].items())
    o = rt["overall"]
    return (f"<table id='redteam-table'><tr><th>category</th><th>prompts</th><th>harmless (start)</th>"
            f"<th>harmless (trained)</th></tr>{rows}<tr><th>all</th><th>{o['n']}</th><th>{o['start']:.0%}</th>"
            f"<th>{o['trained']:.0%}</th></tr></table>")


def _samples_table(samples: list[dict], limit: int = 6) -> str:
    rows = []
    for s in [s for s in samples if s.get("set", "heldout") == "heldout"][:limit]:
        p = s.get("p_trained_better")
        rows.append(f"<tr><td class='text'>{html.escape(s['prompt'])}</td><td class='text'>{html.escape(s['trained'])}</td>"
                    f"<td class='text'>{html.escape(s['start'])}</td><td>{html.escape(str(s.get('principle', '')))}</td>"
                    f"<td>{'' if p is None else f'{p:.3f}'}</td></tr>")
    return ("<table id='samples'><tr><th>prompt</th><th>trained</th><th>start</th><th>principle</th>"
            f"<th>P(trained better)</th></tr>{''.join(rows)}</table>")
