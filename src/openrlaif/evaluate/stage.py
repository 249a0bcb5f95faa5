"""Stage `eval`: does the trained policy beat the starting policy on held-out prompts?

One sample per held-out prompt from each policy (same seed), judged in both orders by the run's
judge under a sampled principle. Writes ``eval.json`` (win rate, ties, 95% bootstrap CI, n, mean
response lengths, KL of the trained policy to the start on its answers) and ``samples.jsonl`` (the side-by-side texts with the verdicts).
"""

from __future__ import annotations

import random

from openrlaif.config import RunConfig
from openrlaif.errors import UserError
from openrlaif.evaluate.winrate import bootstrap_ci, outcomes, win_rate
from openrlaif.feedback.judges import Comparison, position_stats
from openrlaif.store import RunStore, atomic_write_json, atomic_write_jsonl


def run(cfg: RunConfig, store: RunStore, k: int = 1) -> dict:
    """Sample both policies on held-out prompts, judge them, write eval.json + samples.jsonl."""
    from peft import PeftModel

    from openrlaif.feedback.constitution import load_constitution
    from openrlaif.feedback.label import build_judge
    from openrlaif.generate import HFSampler, SamplingParams
    from openrlaif.models import load_causal_lm, set_threads
    from openrlaif.prompts import load_prompts, select

    ec = cfg.eval
    # 1. Held-out prompts and the trained adapter.
    prompts = select(load_prompts(cfg.data.prompts, cfg.data.heldout_fraction), "heldout", cfg.data.max_eval_prompts)
    if not prompts:
        raise UserError("data.prompts: no held-out prompts to evaluate on; add rows with split 'heldout'")
    adapter = store.path("policy", k)
    if not (adapter / "adapter_config.json").is_file():
        raise UserError(f"{adapter} holds no trained adapter; run `rlaif train -o {store.root}` first")
    set_threads(cfg.model.threads)
    base = load_causal_lm(cfg.model.policy, cfg.model.dtype)
    model = PeftModel.from_pretrained(base.model, str(adapter))
    model.eval()
    tok = base.tokenizer
    # 2. One answer per prompt from the starting policy (adapter off) and the trained one, same seed.
    params = SamplingParams(ec.temperature, ec.top_p, ec.max_new_tokens, ec.batch_size, cfg.seed + 7 + 1000 * k)
    convs = [p.messages for p in prompts]
    with model.disable_adapter():
        start_sampler = HFSampler(model, tok, "eval: start policy")
        start = [c[0] for c in start_sampler.sample(convs, 1, params)]
    trained_sampler = HFSampler(model, tok, "eval: trained policy")
    trained = [c[0] for c in trained_sampler.sample(convs, 1, params)]
    kl = kl_to_start(model, tok, convs, trained, ec.batch_size)
    del model, base
    # 3. Judge trained (first) vs start (second), both orders, a principle per prompt.
    constitution = load_constitution(cfg.data.constitution)
    items = [
        Comparison(p.text, t, s, constitution.sample(random.Random(f"eval:{cfg.seed}:{k}:{p.id}")), p.messages)
        for p, t, s in zip(prompts, trained, start)
    ]
    judge, judge_name = build_judge(cfg, "eval: judge", store.root)
    verdicts = judge.compare(items)
    # 4. Win rate with ties and a bootstrap CI over prompts.
    scored = [(i, v) for i, v in enumerate(verdicts) if v.p_first is not None]
    scores = outcomes([v.p_first for _, v in scored], ec.tie_margin)
    lo, hi = bootstrap_ci(scores, ec.bootstrap, cfg.seed)

    def mean_tokens(texts: list[str]) -> float:
        return round(sum(len(tok(t, add_special_tokens=False).input_ids) for t in texts) / max(len(texts), 1), 2)

    result = {
        "win_rate": round(win_rate(scores), 4),
        "ci95": [round(lo, 4), round(hi, 4)],
        "wins": sum(s == 1.0 for s in scores),
        "ties": sum(s == 0.5 for s in scores),
        "losses": sum(s == 0.0 for s in scores),
        "n": len(scores),
        "unscored": len(verdicts) - len(scored),
        "mean_p_trained_better": round(sum(v.p_first for _, v in scored) / max(len(scored), 1), 4),
        "tie_margin": ec.tie_margin,
        "mean_length_tokens": {"trained": mean_tokens(trained), "start": mean_tokens(start)},
        "mean_length_chars": {"trained": round(sum(map(len, trained)) / len(trained), 1),
                              "start": round(sum(map(len, start)) / len(start), 1)},
        "kl_to_start": round(kl, 4),
        "judge": judge_name,
        "judge_position_stats": position_stats(verdicts),
        "generation_tokens_per_s": round((start_sampler.stats.new_tokens + trained_sampler.stats.new_tokens)
                                         / max(start_sampler.stats.seconds + trained_sampler.stats.seconds, 1e-9), 2),
    }
    # 5. Write the side-by-side samples and the summary.
    samples = [
        {"prompt_id": p.id, "prompt": p.text, "category": p.category, "trained": t, "start": s,
         "principle": v.principle, "p_trained_better": v.p_first, "score_ab": v.score_ab, "score_ba": v.score_ba}
        for p, t, s, v in zip(prompts, trained, start, verdicts)
    ]
    atomic_write_jsonl(store.path("samples.jsonl", k), samples)
    atomic_write_json(store.path("eval.json", k), result)
    return {key: result[key] for key in ("win_rate", "ci95", "wins", "ties", "losses", "n", "kl_to_start")}


def kl_to_start(model, tok, convs: list[list[dict]], answers: list[str], batch_size: int) -> float:
    """Mean log pi_trained(y) - log pi_start(y) (nats per answer) over the trained policy's eval answers.

    A Monte-Carlo estimate of KL(trained || start); the answers were sampled at eval.temperature/top_p,
    not at temperature 1, so it is a proxy that tracks how far training moved the policy."""
    from openrlaif.logprobs import batched_response_logprobs, encode_response

    seqs = [encode_response(tok, c, a, 10_000) for c, a in zip(convs, answers)]
    trained, _ = batched_response_logprobs(model, seqs, tok.pad_token_id, batch_size, "eval: kl trained")
    with model.disable_adapter():
        start, _ = batched_response_logprobs(model, seqs, tok.pad_token_id, batch_size, "eval: kl start")
    return sum(t - s for t, s in zip(trained, start)) / max(len(seqs), 1)
