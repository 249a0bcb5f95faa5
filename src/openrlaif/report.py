"""report.md: what happened in a run, in words and numbers a person can read."""

from __future__ import annotations

import json

from openrlaif.core.store import STAGES, RunStore, atomic_write_text, read_jsonl


def _load(path):
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _fmt(x, digits=3):
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_rounds(store: RunStore) -> list[int]:
    """The rounds a run directory has any stage record of, in order (at least round 1)."""
    keys = store.read_manifest().get("stages", {})
    found = {int(key.split("/")[0].split("_")[1]) for key in keys if key.startswith("round_")}
    return sorted(found) or [1]


def write_report(store: RunStore) -> str:
    """report.md (and report.html): a rounds table, then each round's stages, feedback, training and eval."""
    m = store.read_manifest()
    lines = [f"# OpenRLAIF run: {m.get('name', '')}", "", f"Run directory: `{store.root}`", ""]
    rounds = run_rounds(store)
    records = m.get("rounds", [])
    if len(rounds) > 1 or len(records) > 1 or any(r.get("stop") for r in records):
        lines += ["## Rounds", "", "| round | win rate vs start (95% CI) | vs previous round | length-controlled | "
                  "KL to start | train pairs | judge position consistency | alarm |", "|---|---|---|---|---|---|---|---|"]
        for r in records:
            ci = f" ({r['ci95'][0]:.3f}-{r['ci95'][1]:.3f})" if r.get("ci95") else ""
            lines.append(f"| {r['round']} | {_fmt(r.get('win_rate'))}{ci} | {_fmt(r.get('win_rate_vs_previous'))} | "
                         f"{_fmt(r.get('length_controlled_win_rate'))} | {_fmt(r.get('kl_to_start'))} | "
                         f"{_fmt(r.get('train_pairs'))} | {_fmt(r.get('label_position_consistency'))} | "
                         f"{'update ' + str(r['alarm_step']) if r.get('alarm_step') is not None else 'none'} |")
        stopped = [r for r in records if r.get("stop")]
        if stopped:
            lines += ["", f"**Stopped after round {stopped[-1]['round']}**: {stopped[-1]['stop']}."]
        lines.append("")
    for k in rounds:
        if len(rounds) > 1:
            lines += [f"# Round {k}", ""]
        lines += _round_lines(store, k)
        lines.append("")
    audit_path = store.root / "audit.sqlite"
    if audit_path.is_file():
        from openrlaif.audit.db import AuditDB

        db = AuditDB(audit_path)
        try:
            st = db.stats()
        finally:
            db.close()
        lines += ["", "## Human audit", "", f"{st['reviewed']} of {st['queued']} queued AI labels reviewed by "
                  f"{st['reviewers']} reviewer(s) ({st['verdicts']} verdicts, {st['blind_verdicts']} given blind); "
                  f"{st['flagged']} flagged, {st['disputed']} disputed (people disagree: left out of training)."]
        lines += ["", "| agreement | figure | 95% Wilson CI | n |", "|---|---|---|---|"]
        hh = st["human_human"]
        for name, value, ci, n in [
                ("human-AI (random slice)", st["agreement"], st["ci95"], st["random_slice_n"]),
                ("human-human (pairs two people decided)", hh["agreement"], hh["ci95"], hh["n"])]:
            lines.append(f"| {name} | {value:.1%} | {ci[0]:.1%}-{ci[1]:.1%} | {n} |" if value is not None
                         else f"| {name} | no data yet | | 0 |")
        lines += ["", "Human-human agreement is the ceiling to read the judge's against (people agree ~73-77% on "
                  "HH-style pairs): a judge that agrees with people as often as they agree with each other has "
                  "nothing left to learn from them."]
        if st["agreement"] is not None:
            lines += ["", f"On all reviewed labels (biased towards doubtful ones) people agreed with the AI on "
                      f"{st['all_reviewed_agreement']:.1%} of {st['all_reviewed_n']}."]
        else:
            lines += ["", "No random-slice label has a verdict yet: no human-AI agreement estimate."]
    refits = store.root / "judge_refits.jsonl"
    if refits.is_file():
        lines += ["", "## People improve the judge", "",
                  "Heads refitted on the audit desk's verdicts (`rlaif fit-judge --from-audit`), measured on the "
                  "random slice's verdicts, which the fit did not see unless marked in-sample:", "",
                  "| heads | date | random-slice pairs | agreement before (the run's AI labels) | after (the new heads) |",
                  "|---|---|---|---|---|"]
        for r in read_jsonl(refits):
            note = " (in-sample)" if r.get("in_sample") else ""
            lines.append(f"| `{r['heads']}` | {r['date']} | {r['n']} | {r['before']:.1%} | {r['after']:.1%}{note} |")
    text = "\n".join(lines) + "\n"
    atomic_write_text(store.report_path, text)
    from openrlaif.report_html import write_html_report

    write_html_report(store)
    return text


def _sft_line(s: dict) -> str:
    """What a supervised fine-tune did, in one paragraph (the held-out loss is the measure it is judged by)."""
    held = (f"held-out loss (per assistant token, {s['heldout_rows']} rows; graded by the rows' own replies, no "
            f"judge) {_fmt(s['eval_loss_before'])} before -> **{_fmt(s['eval_loss_after'])}** after"
            if s.get("eval_loss_before") is not None else "no held-out rows")
    return (f"{s['rows']} rows, {s['steps']} steps, {'every weight' if s.get('full_finetune') else 'LoRA'}, "
            f"{s['tokens_per_s']} trained tokens/s; train loss {_fmt(s['first_loss'])} (first step) -> "
            f"{_fmt(s['final_loss'])} (last epoch mean); {held}. Output: `{s['output']}`.")


def _round_lines(store: RunStore, k: int) -> list[str]:
    """One round's sections: stages, generation, feedback, reward model, training, monitor, evaluation."""
    lines = ["## Stages", "", "| stage | status | wall time (s) | peak RSS (MB) |", "|---|---|---|---|"]
    for name in (("sft",) if store.stage_status("sft", k) else ()) + STAGES:
        st = store.stage_status(name, k)
        lines.append(f"| {name} | {st.get('status', 'not run')} | {st.get('wall_s', '')} | {st.get('peak_rss_mb', '')} |")
    sft = store.stage_status("sft", k).get("summary", {})
    if sft:
        lines += ["", "## Supervised fine-tuning (before round 1: the run's starting policy)", "", _sft_line(sft)]
    gen = store.stage_status("generate", k).get("summary", {})
    if gen:
        lines += ["", "## Generation", "",
                  f"{gen['prompts']} train prompts x {gen['sequences'] // max(gen['prompts'], 1)} candidates; "
                  f"{gen['new_tokens']} tokens at {gen['tokens_per_s']} tok/s; "
                  f"{gen['finished_rate']:.0%} ended on their own (the rest hit max_new_tokens)."]
    js = _load(store.path("judge_stats.json", k)) if store.stage_done("label", k) else None
    if js and js["method"] in ("revision", "rlcd"):
        how = ("the judge model critiqued candidates against a principle and rewrote them; revised preferred to original"
               if js["method"] == "revision" else
               "candidates sampled under a principle's positive vs negative system prompt; positive preferred")
        lines += ["", "## AI feedback (by construction)", "",
                  f"Method {js['method']}: {how}. {js['pairs_written']} pairs, each labelled p_chosen = "
                  f"{js['construction_confidence']} without a verdict."]
        if js["method"] == "revision":
            lines += ["", f"{js['usable_revisions']} of {js['revisions']} revisions were usable (non-empty and different "
                      "from the original); they are also written as SFT rows in revisions.jsonl."]
    elif js:
        lines += ["", "## AI feedback (judge)", "",
                  f"Judge `{js['judge']}`, method {js['method']} ({js['template']}), constitution `{js['constitution']}`.", "",
                  "| comparisons | pairs written | position consistency | first-position rate | mean confidence | comparisons/s |",
                  "|---|---|---|---|---|---|",
                  f"| {js['comparisons']} | {js['pairs_written']} | {_fmt(js['position_consistency'])} | "
                  f"{_fmt(js['first_position_rate'])} | {_fmt(js['mean_confidence'])} | {js['comparisons_per_s']} |", "",
                  "Position consistency is the share of comparisons whose two orders pick the same response; "
                  "a first-position rate far from 0.5 means the judge favours a slot, not a response. "
                  "Low consistency means the labels are noisy: read the win rate below with that in mind. "
                  "(The contrastive method scores each response on its own, so it is order-free by construction.)"]
        heads = js.get("heads")
        if heads:
            used = ", ".join(f"{key}: {n}" for key, n in heads["comparisons"].items())
            figures = "; ".join(
                f"{key} ({h['feature']}, {h['pairs']} pairs, CV {_fmt(h['cv_agreement'])}"
                + "".join(f", held out on {name} {_fmt(a)}" for name, a in (h.get("heldout") or {}).items()) + ")"
                for key, h in heads["heads"].items() if key in heads["comparisons"])
            lines += ["", f"Fitted preference heads `{heads['directory']}` judged these comparisons ({used}). "
                      f"Their cards: {figures}. Agreement figures are against the labels each head was fitted "
                      "for (people's or GPT-4's), on pairs the head never saw."]
        directed = js.get("judge_directed")
        if directed and directed.get("candidates"):
            lines += ["", f"{directed['candidates']} candidate(s) were flagged as addressing the judge by the "
                      f"{directed.get('detector', 'patterns')} (a rule check, not a verdict; label.on_judge_directed="
                      f"{directed['policy']}): {directed['pairs']} pair(s) carry one, "
                      f"{directed['held_for_review']} held out of training until reviewed, "
                      f"{directed['penalized_comparisons']} comparison(s) penalised."]
        api = js.get("api")
        if api:
            lines += ["", f"Judge API: {api['requests']} requests ({api['retries']} retries, {api['failed']} failed after "
                      f"retries), {api['prompt_tokens']:,} prompt + {api['completion_tokens']:,} completion tokens, "
                      f"cost ${api['cost_usd']:.4f}; errors by kind: {api['errors'] or 'none'}."]
        if js.get("unscored"):
            lines += ["", f"{js['unscored']} comparisons were left unscored (never guessed): {js.get('unscored_errors') or ''}."]
        gate = js.get("gate")
        if gate:
            verdict = "passed" if gate["passed"] else f"**FAILED** (action: {gate['action']})"
            lines += ["", f"Judge gate {verdict}: agreement {gate['agreement']:.1%} with the labels of {gate['n']} "
                      f"calibration pairs (`{gate['pairs']}`), threshold {gate['min_agreement']:.0%}; "
                      f"ECE {gate['ece']:.3f}, Brier {gate['brier']:.3f}."
                      + (f" These figures were measured on {gate['cached']} for the same judge and pairs and read from "
                         "the user cache (`feedback.gate_cache`)." if gate.get("cached") else "")]
    rw = store.stage_status("reward", k).get("summary", {})
    if rw:
        lines += ["", "## Reward model (Bradley-Terry)", "",
                  f"{rw['members']} member(s) on {rw['train_pairs']} pairs; held-out accuracy against the judge's "
                  f"labels {_fmt(rw['heldout_accuracy'])} on {rw['heldout_pairs']} pairs "
                  "(per-member loss and calibration in reward_model/ensemble.json)."
                  + (f" Against people (audit-desk verdicts among the held-out pairs): accuracy "
                     f"{_fmt(rw['heldout_human_accuracy'])} on {rw['heldout_human_pairs']} pairs."
                     if rw.get("heldout_human_accuracy") is not None else "")]
    tr = store.stage_status("train", k).get("summary", {})
    if tr.get("algo") == "rloo":
        lines += ["", "## Training (RLOO + LoRA, RL on the reward)", "",
                  f"{tr['steps']} updates, {tr['episodes']} sampled responses at {tr['episodes_per_s']} episodes/s; "
                  f"mean reward {tr['reward_first']} (first quarter) -> {tr['reward_last']} (last quarter), "
                  f"KL to the start {tr['kl_last']} nats per response at the end."]
    elif tr.get("algo") == "ppo":
        lines += ["", f"## Training (PPO + LoRA, {tr['critic']} critic, RL on the reward)", "",
                  f"{tr['steps']} updates, {tr['episodes']} sampled responses at {tr['episodes_per_s']} episodes/s; "
                  f"mean reward {tr['reward_first']} (first quarter) -> {tr['reward_last']} (last quarter), "
                  f"KL to the start {tr['kl_last']} nats per response at the end (KL coefficient {tr['kl_coef_last']}); "
                  f"value explained variance {tr['explained_variance_last']}. Per-step approx_kl, clipfrac, entropy "
                  "and losses are in metrics.jsonl."]
    elif tr.get("algo") == "grpo":
        name = "Dr.GRPO" if tr["variant"] == "dr_grpo" else "GRPO"
        lines += ["", f"## Training ({name} + LoRA, RL on the reward)", "",
                  f"{tr['steps']} updates, {tr['episodes']} sampled responses at {tr['episodes_per_s']} episodes/s; "
                  f"mean reward {tr['reward_first']} (first quarter) -> {tr['reward_last']} (last quarter), "
                  f"KL to the start {tr['kl_last']} nats per response at the end. Per-update clipfrac, loss and "
                  "the per-token k3 KL are in metrics.jsonl."]
    elif tr.get("algo") == "online_dpo":
        cache = tr.get("judge_cache") or {}
        lines += ["", f"## Training (online {'IPO' if tr['loss'] == 'ipo' else 'DPO'} + LoRA, judged every step)", "",
                  f"{tr['steps']} updates on {tr['pairs']} pairs the policy sampled and `{tr['judge']}` judged as "
                  f"it trained ({tr['comparisons']} comparisons"
                  + (f"; judge cache {cache.get('hits', 0)} hits, {cache.get('misses', 0)} misses" if cache else "")
                  + f"); loss {tr['loss_first']} (first quarter) -> {tr['loss_last']} (last quarter), mean "
                  f"p_chosen {_fmt(tr['p_chosen_mean'])}, KL to the start {tr['kl_last']} nats per answer at the end."]
    elif tr.get("algo") == "sft":
        lines += ["", "## Training (supervised fine-tuning + LoRA)", "", _sft_line(tr)]
    elif tr:
        lines += ["", "## Training (DPO + LoRA)", "",
                  f"{tr['pairs']} pairs, {tr['steps']} steps, {tr['pairs_per_s']} pairs/s; "
                  f"loss {tr['first_loss']:.4f} (first step) -> {tr['final_loss']:.4f} (last epoch mean), "
                  f"implicit-reward accuracy {tr['final_reward_accuracy']:.2f}."]
    mon = tr.get("monitor") or {}  # RL: its reward; DPO: its implicit reward
    if mon.get("checks"):
        alarm = (f"**ALARM at update {mon['alarm_step']}**: the proxy rose while the held-out judge's score fell"
                 if mon.get("alarm_step") else "no alarm")
        lines += ["", "### Over-optimisation monitor", "",
                  f"{mon['checks']} checks on fixed held-out answers: proxy reward {mon['proxy_first']} -> "
                  f"{mon['proxy_last']}, held-out judge {mon['heldout_first']} -> {mon['heldout_last']} "
                  f"(best {mon['best_heldout']} at update {mon['best_step']}, kept in best_policy/); {alarm}. "
                  "Per-check values against sqrt(KL) are the `monitor` rows of metrics.jsonl."]
    ev = _load(store.path("eval.json", k)) if store.stage_done("eval", k) else None
    if ev:
        lo, hi = ev["ci95"]
        lines += ["", "## Evaluation: trained vs starting policy (held-out prompts)", "", *yardstick_table(ev), "",
                  f"**Win rate {ev['win_rate']:.3f}** (95% CI {lo:.3f}-{hi:.3f}, n={ev['n']}): "
                  f"{ev['wins']} wins, {ev['ties']} ties, {ev['losses']} losses by the run's own judge"
                  + (f"; KL(trained || start) {ev['kl_to_start']:.2f} nats per answer." if "kl_to_start" in ev else "."), "",
                  f"Mean length (tokens): trained {ev['mean_length_tokens']['trained']}, start {ev['mean_length_tokens']['start']}. "
                  "A win rate bought by longer answers is a length bias of the judge, not better answers."
                  + (f" Length-controlled win rate (the outcome regressed on the length difference, read at equal "
                     f"length): {ev['length_controlled']['win_rate']:.3f}." if "length_controlled" in ev else ""),
                  "", "The judge that labelled the training data also grades this comparison, so this number "
                  "measures how well the policy learned the judge's preferences, not human preference."]
        d = ev.get("defence")
        if d:
            lines += ["", f"Injection defence (feedback.defend, {d['detector']}): {d['replies_flagged']} of "
                      f"{d['replies_checked']} answers were flagged as addressing the judge and lose to any unflagged "
                      f"answer; {d['changed']} verdict(s) changed. A policy that learned to talk to the judge shows here."]
        if "vs_previous" in ev:
            vp = ev["vs_previous"]
            lines += ["", f"Against the previous round's policy: win rate {vp['win_rate']:.3f} (95% CI "
                      f"{vp['ci95'][0]:.3f}-{vp['ci95'][1]:.3f}, n={vp['n']})."]
        if "anchors" in ev:
            an = ev["anchors"]
            lines += ["", f"Forgetting check on {an['n']} capability anchor prompts: win rate vs the start "
                      f"{an['win_rate']:.3f} (95% CI {an['ci95'][0]:.3f}-{an['ci95'][1]:.3f}); well below 0.5 means "
                      "the policy lost ground on ordinary tasks."]
        if "red_team" in ev:
            rt = ev["red_team"]
            rule = (rt.get("refused_by_rule") or {}).get("per_category", {})
            overall_rule = (rt.get("refused_by_rule") or {}).get("overall")

            def declined(v) -> str:
                return f" {v['start']:.0%} | {v['trained']:.0%} |" if v else " - | - |"

            lines += ["", "### Red team", "", "| category | prompts | harmless (start) | harmless (trained) | "
                      "declines by rule (start) | declines by rule (trained) |", "|---|---|---|---|---|---|"]
            lines += [f"| {c} | {v['n']} | {v['start']:.0%} | {v['trained']:.0%} |{declined(rule.get(c))}"
                      for c, v in rt["per_category"].items()]
            lines += [f"| **all** | {rt['overall']['n']} | {rt['overall']['start']:.0%} | {rt['overall']['trained']:.0%} |"
                      f"{declined(overall_rule)}",
                      "", "Harmless: the run's judge. Declines: a rule no model wrote (the answer opens by declining; "
                      f"`openrlaif.evaluate.refusal`). Each answer scored alone ({rt['method']}, harmless at >= {rt['threshold']}) under its "
                      f"category's harm principle; a fixed refusal scores harmless {rt['refusal_harmless_rate']:.0%} "
                      "of the time, a check of the judge itself."]
        samples_path = store.path("samples.jsonl", k)
        if samples_path.is_file():
            lines += ["", "### Samples", ""]
            for s in [row for row in read_jsonl(samples_path) if row.get("set", "heldout") == "heldout"][:3]:
                p = s.get("p_trained_better")
                lines += [f"**Prompt:** {_one_line(s['prompt'])}", "",
                          f"- *trained:* {_one_line(s['trained'])}",
                          f"- *start:* {_one_line(s['start'])}",
                          f"- judge ({s['principle']}): P(trained better) = {_fmt(p)}", ""]
    return lines


def yardstick_table(ev: dict) -> list[str]:
    """The headline: every measure of the trained policy beside who graded it (the run's judge, checkers,
    people, a rule), start vs trained, with its 95% CI."""
    def ci(pair) -> str:
        return f" ({pair[0]:.3f}-{pair[1]:.3f})"

    judge = ev.get("judge", "the run's judge")
    lo, hi = ev["ci95"]
    rows = ["| measure | graded by | start | trained | trained - start (95% CI) |", "|---|---|---|---|---|",
            f"| win rate vs the start | the run's judge ({judge}) | 0.500 | {ev['win_rate']:.3f}{ci((lo, hi))} | |"]
    for label, b in (ev.get("benchmarks") or {}).items():
        if b["benchmark"] == "ifeval":
            for metric in ("instruction_strict", "prompt_strict"):
                d = b["difference"][metric]
                rows.append(f"| {label}: {metric.replace('_', ' ')} accuracy ({b['start']['prompts']} prompts) | "
                            f"IFEval's checkers | {b['start'][metric]:.3f} | {b['trained'][metric]:.3f} | "
                            f"{d['difference']:+.3f} ({d['ci95'][0]:+.3f} to {d['ci95'][1]:+.3f}) |")
        else:
            rows.append(f"| {label}: agreement with people's choices ({b['n']} pairs) | people (implicit reward "
                        f"log pi/pi_start ranks them) | 0.500 | {b['accuracy']:.3f}{ci(b['ci95'])} | "
                        f"{b['accuracy'] - 0.5:+.3f} |")
    rt = ev.get("red_team")
    if rt:
        o = rt["overall"]
        rows.append(f"| red team: harmless rate ({o['n']} prompts) | the run's judge ({rt['method']}) | {o['start']:.0%} | "
                    f"{o['trained']:.0%} | |")
        if "refused_by_rule" in rt:
            r = rt["refused_by_rule"]["overall"]
            rows.append(f"| red team: answers that decline | a rule (evaluate.refusal patterns) | {r['start']:.0%} | "
                        f"{r['trained']:.0%} | |")
    return rows
