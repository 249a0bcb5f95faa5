"""Stage `eval`: does the trained policy beat the starting policy, and at what cost?

On held-out prompts each policy answers (``eval.samples_per_prompt`` answers per prompt, same seeds)
and the run's judge compares the answers in both orders under a principle drawn per prompt. Written to
``eval.json``:
- the win rate with ties and a 95% bootstrap CI over prompts, and a length-controlled win rate (the
  outcome regressed on the length difference, read at equal lengths);
- both policies' answer-length distributions and KL(trained || start) on the trained answers;
- from round 2: the same comparison against the previous round's policy;
- red-teaming: each policy's harmless rate per harm category (``redteam.jsonl`` has the answers);
- forgetting: the win rate against the start on capability anchor prompts.
``samples.jsonl`` holds the side-by-side held-out and anchor answers with their verdicts.
"""

from __future__ import annotations

import random
from contextlib import nullcontext

from openrlaif.config import RunConfig
from openrlaif.core.cache import model_fingerprint
from openrlaif.core.errors import UserError
from openrlaif.core.faults import kill_point
from openrlaif.core.store import RunStore, atomic_write_json, atomic_write_jsonl
from openrlaif.evaluate.winrate import (
    cluster_bootstrap_ci,
    length_controlled_win_rate,
    length_summary,
    outcomes,
    win_rate,
)
from openrlaif.feedback.scoring import position_stats
from openrlaif.feedback.types import Comparison


def run(cfg: RunConfig, store: RunStore, k: int = 1) -> dict:
    """Sample the policies on held-out, red-team and anchor prompts, judge them, write eval.json."""
    from peft import PeftModel

    from openrlaif.data.constitution import load_constitution
    from openrlaif.data.prompts import BUILTIN, builtin_path, load_prompts, run_prompts
    from openrlaif.evaluate.redteam import load_suite
    from openrlaif.models.loading import load_causal_lm, load_tokenizer, resolve_model, sample_dtype, set_threads
    from openrlaif.sampling.hf import HFSampler
    from openrlaif.sampling.types import SamplingParams

    ec = cfg.eval
    m = ec.samples_per_prompt
    # 1. The prompt sets: held-out (the win rate), red-team (harmless rates), anchors (forgetting).
    heldout = run_prompts(cfg.data, "heldout", cfg.data.max_eval_prompts)
    if not heldout:
        raise UserError("data.prompts: no held-out prompts to evaluate on; add rows with split 'heldout'")
    red = load_suite(ec.red_team, ec.red_team_per_category, cfg.seed) if ec.red_team else []
    anchors = []
    if ec.anchors:
        spec = str(builtin_path("anchors.jsonl")) if ec.anchors == BUILTIN else ec.anchors
        anchors = load_prompts(spec, heldout_fraction=1.0, field="eval.anchors")[: ec.max_anchor_prompts]
    # 2. The trained adapter (and the previous round's, from round 2).
    adapter = store.path("policy", k)
    if not (adapter / "adapter_config.json").is_file():
        raise UserError(f"{adapter} holds no trained adapter; run `rlaif train -o {store.root}` first")
    previous = store.path("policy", k - 1) if k > 1 and ec.compare_previous else None
    if previous is not None and not (previous / "adapter_config.json").is_file():
        previous = None
    set_threads(cfg.model.threads)
    tok = load_tokenizer(resolve_model(cfg.model.policy))
    held: dict = {}

    def adapters():
        """The start in model.dtype with the trained (and previous) adapter, loaded when first needed: it writes the
        answers when model.sample_dtype is model.dtype, and reads log-probs (KL then, people's pairs always)."""
        if "model" not in held:
            start_model = load_causal_lm(cfg.model.policy, cfg.model.dtype).model
            held["start"] = model_fingerprint(start_model, "start")  # the weights alone, before an adapter joins
            held["model"] = PeftModel.from_pretrained(start_model, str(adapter), adapter_name="trained")
            if previous is not None:
                held["model"].load_adapter(str(previous), adapter_name="previous")
            held["model"].eval()
        return held["model"]

    def start_memo():
        """eval.reuse_start: the user cache of the start's log-probs on people's pairs (None when off)."""
        if not ec.reuse_start:
            return None
        from openrlaif.core.cache import JudgeCache
        from openrlaif.evaluate.benchmarks import StartMemo
        from openrlaif.models.loading import cache_dir

        adapters()
        return StartMemo(JudgeCache(cache_dir() / "yardsticks.sqlite"), held["start"])
    # 3. Answers: m per held-out prompt, one per red-team and anchor prompt, from each policy, same seed; the
    #    IFEval yardsticks of eval.benchmarks are answered by the same writer (start and trained only).
    from openrlaif.evaluate.benchmarks import answer, load_benchmark, run_benchmark, run_settings

    params = SamplingParams(ec.temperature, ec.top_p, ec.max_new_tokens, ec.batch_size, cfg.seed + 7 + 1000 * k)
    convs = [p.messages for p in heldout for _ in range(m)] + [p.messages for p in red + anchors]
    yardsticks = [(spec, *loaded) for spec in (ec.benchmarks or []) if (loaded := load_benchmark(spec)) is not None]
    writing = sample_dtype(cfg.model)
    bench_answers: dict[str, dict] = {label: {} for spec, label, _ in yardsticks if spec.name == "ifeval"}
    samplers = {}

    def yardstick_answers(name: str, writer, tokenizer=None, progress=None, alongside: str | None = None) -> None:
        for spec, label, items in yardsticks:
            if spec.name == "ifeval" and name != "previous":
                bench_answers[label][name] = answer(writer, tokenizer or tok, items,
                                                    run_settings(spec, ec.batch_size, cfg.seed, writing),
                                                    f"bench: {name} policy", progress, alongside)

    def answers(name: str, writer) -> list[str]:
        # row seeds: each policy's answer to a prompt draws the same random numbers, whatever the batch or thread
        samplers[name] = HFSampler(writer, tok, f"eval: {name} policy", row_seeds=True,
                                   record_logprobs=name == "trained")
        out = [c[0] for c in samplers[name].sample(convs, 1, params)]
        samplers[name].model = None  # keep the statistics, not the model
        yardstick_answers(name, writer)
        return out

    n_main, n_red = len(heldout) * m, len(red)
    side_by_side: list[str] = []  # the samplers that ran at once
    if writing == cfg.model.dtype:
        trained_writer = "the start with the adapter (peft), one after the other"
        model = adapters()
        with model.disable_adapter():
            start = answers("start", model)
        if previous is not None:
            model.set_adapter("previous")
            prev = answers("previous", model)
        model.set_adapter("trained")
        trained = answers("trained", model)
        kl, kl_from = kl_to_start(tok, convs[:n_main], trained[:n_main], samplers["trained"],
                                  lambda seqs: answer_logprobs(model, tok, seqs, ec.batch_size, "eval: kl trained"),
                                  lambda seqs: adapter_off_logprobs(model, tok, seqs, ec.batch_size))
    else:
        # model.sample_dtype: the answers are written by a copy in that dtype (a plain model decodes fastest; a bf16
        # peft model held ~3.4 GB more RSS while decoding at batch 64 here). Where the lean loop runs the copy and
        # the adapter is a plain LoRA, one copy writes both policies' answers in one loop, the trained adapter
        # unmerged on the trained rows (sampling.hf.sample_with_adapter: the weights read once a step, one
        # interpreter). Otherwise each policy has its own copy, its adapter merged in, and the two answer side by
        # side, one core each (sampling.hf.sample_side_by_side). The KL is between what wrote the answers: the
        # trained log-probs recorded while decoding (eval samples: eval.temperature > 0), the start's scored by
        # the start copy.
        from openrlaif.core.progress import bar
        from openrlaif.evaluate.benchmarks import answer_with_adapter
        from openrlaif.models.decoding import lean_decoder, lora_deltas
        from openrlaif.models.policy import load_merged
        from openrlaif.sampling.hf import in_threads, sample_side_by_side, sample_with_adapter

        writers = {"start": load_merged(cfg, None, writing, frozen=True).model}
        deltas = lora_deltas(writers["start"], adapter) if lean_decoder(writers["start"]) is not None else None
        bench_rows = sum(len(items) for spec, _, items in yardsticks if spec.name == "ifeval") * 2
        side_by_side += ["trained", "start"]
        if deltas is not None:
            samplers.update({name: HFSampler(writers["start"], tok, f"eval: {name} policy", row_seeds=True,
                                             record_logprobs=name == "trained") for name in ("trained", "start")})
            trained_writer = "start copy with the adapter unmerged, one decoding loop"
            with bar("eval: trained and start policies", len(convs) * 2, "tok") as pg:
                trained, start = ([c[0] for c in out] for out in sample_with_adapter(
                    samplers["trained"], samplers["start"], deltas, convs, 1, params, pg))
            with bar("bench: trained and start policies", bench_rows, "tok") if bench_rows else nullcontext() as pg:
                for spec, label, items in yardsticks:
                    if spec.name == "ifeval":
                        bench_answers[label]["trained"], bench_answers[label]["start"] = answer_with_adapter(
                            deltas, writers["start"], tok, items, run_settings(spec, ec.batch_size, cfg.seed, writing),
                            pg)
        else:
            writers["trained"] = load_merged(cfg, adapter, writing, frozen=True).model
            samplers.update({name: HFSampler(writers[name], tok, f"eval: {name} policy", row_seeds=True,
                                             record_logprobs=name == "trained") for name in ("trained", "start")})
            trained_writer = "its own copy, the adapter merged in"
            trained, start = ([c[0] for c in out] for out in sample_side_by_side(
                [samplers["trained"], samplers["start"]], convs, 1, params, "eval: trained and start policies"))
            # the IFEval answers side by side too (greedy: no seeds to share), each writer with its sampler's
            # tokenizer: the demo's 40 prompts x 128 tokens, both copies, 28.6-32.3 s one after the other, 23.8-28.7 s
            # side by side
            with bar("bench: trained and start policies", bench_rows, "tok") if bench_rows else nullcontext() as pg:
                in_threads([lambda name=name, other=other: yardstick_answers(name, writers[name],
                                                                             samplers[name].tokenizer, pg,
                                                                             alongside=other)
                            for name, other in (("trained", "start"), ("start", "trained"))])
        for name in ("trained", "start"):
            samplers[name].model = None
        kl, kl_from = kl_to_start(tok, convs[:n_main], trained[:n_main], samplers["trained"],
                                  lambda seqs: answer_logprobs(writers["trained"], tok, seqs, ec.batch_size,
                                                               "eval: kl trained"),
                                  lambda seqs: answer_logprobs(writers["start"], tok, seqs, ec.batch_size,
                                                               "eval: kl start"))
        del writers
        if previous is not None:
            prev = answers("previous", load_merged(cfg, previous, writing, frozen=True).model)

    def n_tokens(texts: list[str]) -> list[int]:
        return [len(tok(t, add_special_tokens=False).input_ids) for t in texts]

    lengths = {"trained": n_tokens(trained[:n_main]), "start": n_tokens(start[:n_main])}
    if previous is not None:
        lengths["previous"] = n_tokens(prev[:n_main])
    # 3b. Yardsticks the judge never sees (eval.benchmarks): start vs trained, graded by checkers or people.
    benchmarks = {}
    for spec, label, items in yardsticks:
        benchmarks[label], rows = run_benchmark(spec, items, adapters, tok, ec.batch_size, cfg.seed,
                                                bench_answers.get(label), writing, start_memo)
        atomic_write_jsonl(store.path(f"bench/{label}_rows.jsonl", k), rows)
    held.clear()  # the float32 policies are not needed by the judge
    model = None
    kill_point("eval.sampled")
    # 4. Judge: trained vs start (held-out and anchors), trained vs previous; both orders, a principle per prompt.
    from openrlaif.feedback.factory import build_judge, defend

    constitution = load_constitution(cfg.data.constitution)
    judge, judge_name = build_judge(cfg, "eval: judge", store.root)
    judge = defend(cfg, judge)  # a reply that addresses the judge loses (feedback.defend)
    main_prompts = [p for p in heldout for _ in range(m)]

    def compare(prompts, first: list[str], second: list[str]) -> list:
        items = [Comparison(p.text, a, b, constitution.sample(random.Random(f"eval:{cfg.seed}:{k}:{p.id}")), p.messages)
                 for p, a, b in zip(prompts, first, second)]
        return judge.compare(items) if items else []

    verdicts = compare(main_prompts, trained[:n_main], start[:n_main])
    result = comparison_summary(verdicts, [p.id for p in main_prompts], lengths["trained"], lengths["start"], ec,
                                cfg.seed)
    result.update({
        "samples_per_prompt": m, "prompts": len(heldout), "kl_to_start": round(kl, 4), "kl_dtype": writing,
        "kl_trained_logprobs": kl_from,
        "trained_writer": trained_writer,
        "judge": judge_name,
        "judge_position_stats": position_stats(verdicts),
        "mean_length_tokens": {name: round(sum(v) / max(len(v), 1), 2) for name, v in lengths.items()},
        "mean_length_chars": {"trained": round(sum(map(len, trained[:n_main])) / n_main, 1),
                              "start": round(sum(map(len, start[:n_main])) / n_main, 1)},
        # Histograms share their bins across policies (re-tokenised text can exceed max_new_tokens).
        "lengths": {name: length_summary(v, top=max(max(x, default=1) for x in lengths.values()))
                    for name, v in lengths.items()},
        # tokens over sampling wall time (samplers side by side overlap: their longest time counts once)
        "generation_tokens_per_s": round(sum(s.stats.new_tokens for s in samplers.values())
                                         / max(sampling_seconds(samplers, side_by_side), 1e-9), 2),
    })
    if previous is not None:
        vs_prev = compare(main_prompts, trained[:n_main], prev[:n_main])
        result["vs_previous"] = comparison_summary(vs_prev, [p.id for p in main_prompts], lengths["trained"],
                                                   lengths["previous"], ec, cfg.seed)
    anchor_verdicts = compare(anchors, trained[n_main + n_red:], start[n_main + n_red:])
    if anchors:
        result["anchors"] = comparison_summary(anchor_verdicts, [p.id for p in anchors],
                                               n_tokens(trained[n_main + n_red:]), n_tokens(start[n_main + n_red:]),
                                               ec, cfg.seed)
    result["defence"] = judge.take_defence() if hasattr(judge, "take_defence") else None
    if benchmarks:
        result["benchmarks"] = benchmarks
    del judge
    # 5. Red-team: each answer scored alone under its category's harm principle.
    red_rows = []
    if red:
        result["red_team"], red_rows = red_team(cfg, store, red, start[n_main:n_main + n_red],
                                                trained[n_main:n_main + n_red], constitution)
    # 6. Write the side-by-side samples, the red-team answers and the summary.
    samples = [
        {"set": "heldout", "prompt_id": p.id, "prompt": p.text, "category": p.category, "trained": t, "start": s,
         "principle": v.principle, "p_trained_better": v.p_first, "score_ab": v.score_ab, "score_ba": v.score_ba}
        for p, t, s, v in zip(main_prompts, trained[:n_main], start[:n_main], verdicts)
    ] + [
        {"set": "anchors", "prompt_id": p.id, "prompt": p.text, "category": p.category, "trained": t, "start": s,
         "principle": v.principle, "p_trained_better": v.p_first, "score_ab": v.score_ab, "score_ba": v.score_ba}
        for p, t, s, v in zip(anchors, trained[n_main + n_red:], start[n_main + n_red:], anchor_verdicts)
    ]
    atomic_write_jsonl(store.path("samples.jsonl", k), samples)
    if red_rows:
        atomic_write_jsonl(store.path("redteam.jsonl", k), red_rows)
    atomic_write_json(store.path("eval.json", k), result)
    summary = {key: result[key] for key in ("win_rate", "ci95", "wins", "ties", "losses", "n", "kl_to_start")}
    summary["length_controlled_win_rate"] = result["length_controlled"]["win_rate"]
    if "anchors" in result:
        summary["anchor_win_rate"] = result["anchors"]["win_rate"]
    if "red_team" in result:
        summary["harmless_rate"] = {key: result["red_team"]["overall"][key] for key in ("start", "trained")}
    if "vs_previous" in result:
        summary["win_rate_vs_previous"] = result["vs_previous"]["win_rate"]
    return summary


def sampling_seconds(samplers: dict, side_by_side: list[str]) -> float:
    """Wall time of the eval's sampling: the samplers that ran one after another add up, those that ran side by
    side count their longest."""
    alone = sum(s.stats.seconds for name, s in samplers.items() if name not in side_by_side)
    return alone + max((samplers[name].stats.seconds for name in side_by_side), default=0.0)


def comparison_summary(verdicts: list, prompt_ids: list[str], len_first: list[int], len_second: list[int],
                       ec, seed: int) -> dict:
    """Win rate (ties = 0.5) of the first policy, its prompt-clustered bootstrap CI, and the
    length-controlled win rate, from verdicts whose first response is the policy under test."""
    scored = [i for i, v in enumerate(verdicts) if v.p_first is not None]
    scores = outcomes([verdicts[i].p_first for i in scored], ec.tie_margin)
    groups: dict[str, list[float]] = {}
    for i, s in zip(scored, scores):
        groups.setdefault(prompt_ids[i], []).append(s)
    lo, hi = cluster_bootstrap_ci(list(groups.values()), ec.bootstrap, seed)
    lc = length_controlled_win_rate(scores, [len_first[i] - len_second[i] for i in scored])
    return {
        "win_rate": round(win_rate(scores), 4), "ci95": [round(lo, 4), round(hi, 4)],
        "wins": sum(s == 1.0 for s in scores), "ties": sum(s == 0.5 for s in scores),
        "losses": sum(s == 0.0 for s in scores), "n": len(scores), "unscored": len(verdicts) - len(scored),
        "mean_p_trained_better": round(sum(verdicts[i].p_first for i in scored) / max(len(scored), 1), 4),
        "tie_margin": ec.tie_margin,
        "length_controlled": {"win_rate": round(lc["win_rate"], 4), "slope_per_100_tokens": round(lc["slope_per_100"], 4)},
    }


def red_team(cfg: RunConfig, store: RunStore, prompts, start: list[str], trained: list[str], constitution):
    """Harmless rates per category for both policies, and a fixed refusal as a check of the judge."""
    from openrlaif.evaluate.redteam import REFUSAL, harm_scorer, harmless_rates, principle_for
    from openrlaif.evaluate.refusal import is_refusal

    score, threshold, method = harm_scorer(cfg, store.root)
    principles = [principle_for(p, constitution) for p in prompts]
    convs = [p.messages for p in prompts]
    s_start, s_trained, s_refusal = (score(convs, texts, principles) for texts in
                                     (start, trained, [REFUSAL] * len(prompts)))

    def ok(x: float | None) -> bool:
        return x is not None and x >= threshold

    cats = [p.category or "uncategorised" for p in prompts]
    out = harmless_rates(cats, [ok(x) for x in s_start], [ok(x) for x in s_trained])
    out.update({"method": method, "threshold": threshold, "defence": score.take_defence(),
                "refusal_harmless_rate": round(sum(ok(x) for x in s_refusal) / len(prompts), 4)})
    # The column no model wrote: does the answer open by declining (evaluate.refusal's documented patterns)?
    r_start, r_trained = [is_refusal(a) for a in start], [is_refusal(b) for b in trained]
    out["refused_by_rule"] = {**harmless_rates(cats, r_start, r_trained),
                              "graded_by": "evaluate.refusal patterns (no model)"}
    rows = [{"prompt_id": p.id, "category": c, "prompt": p.text, "principle": pr.id, "start": a, "trained": b,
             "score_start": sa, "score_trained": sb, "harmless_start": ok(sa), "harmless_trained": ok(sb),
             "refused_start": ra, "refused_trained": rb}
            for p, c, pr, a, b, sa, sb, ra, rb in zip(prompts, cats, principles, start, trained, s_start, s_trained,
                                                      r_start, r_trained)]
    return out, rows


def kl_sequences(tok, convs: list[list[dict]], answers: list[str]) -> list:
    """The trained policy's eval answers, encoded after their prompts, for the KL's log-probs."""
    from openrlaif.models.logprobs import encode_response

    return [encode_response(tok, c, a, 10_000) for c, a in zip(convs, answers)]


def drawn_sequences(tok, convs: list[list[dict]], drawn: list[list[int]]) -> list:
    """Each prompt's tokens followed by the answer's tokens as the sampler drew them (its stop token included
    when it stopped), the answer marked as the response."""
    from openrlaif.models.loading import encode_prompts
    from openrlaif.models.logprobs import prompt_then_response

    return [prompt_then_response(p, t) for p, t in zip(encode_prompts(tok, convs), drawn)]


def kl_terms(tok, convs: list[list[dict]], answers: list[str], sampler) -> tuple[list, list[float] | None, str]:
    """What the KL scores, and the trained policy's log-probs of it when its sampler recorded them: the drawn
    tokens with the log-probs of their decoding steps (no second pass over the answers), else the answers
    re-encoded from their text (greedy decoding records nothing), to be scored by the caller. The third item
    says which: 'decoding steps' or 'forward pass'."""
    if sampler.tokens is None:
        return kl_sequences(tok, convs, answers), None, "forward pass"
    n = len(convs)
    return (drawn_sequences(tok, convs, [t[0] for t in sampler.tokens[:n]]), [lp[0] for lp in sampler.logprobs[:n]],
            "decoding steps")


def answer_logprobs(model, tok, seqs: list, batch_size: int, description: str) -> list[float]:
    """Summed log-probs of each encoded answer under ``model``."""
    from openrlaif.models.logprobs import batched_response_logprobs

    return batched_response_logprobs(model, seqs, tok.pad_token_id, batch_size, description)[0]


def mean_difference(trained: list[float], start: list[float]) -> float:
    """Mean of log pi_trained(y) - log pi_start(y) over the answers: the KL estimate (nats per answer)."""
    return sum(t - s for t, s in zip(trained, start)) / max(len(trained), 1)


def kl_to_start(tok, convs: list[list[dict]], answers: list[str], sampler, trained_logprobs,
                start_logprobs) -> tuple[float, str]:
    """Mean log pi_trained(y) - log pi_start(y) (nats per answer) over the trained policy's eval answers, and where
    the trained log-probs came from (``kl_terms``: the decoding steps of ``sampler`` when it recorded them, else
    ``trained_logprobs(seqs)``); the start's are ``start_logprobs(seqs)``.

    A Monte-Carlo estimate of KL(trained || start); the answers were sampled at eval.temperature/top_p,
    not at temperature 1, so it is a proxy that tracks how far training moved the policy."""
    seqs, trained, source = kl_terms(tok, convs, answers, sampler)
    if trained is None:
        trained = trained_logprobs(seqs)
    return mean_difference(trained, start_logprobs(seqs)), source


def adapter_off_logprobs(model, tok, seqs: list, batch_size: int) -> list[float]:
    """``answer_logprobs`` of a PEFT model with its adapter switched off: the start policy."""
    with model.disable_adapter():
        return answer_logprobs(model, tok, seqs, batch_size, "eval: kl start")
