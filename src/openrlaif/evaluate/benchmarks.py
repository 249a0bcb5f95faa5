"""Yardsticks the judge never sees: IFEval-style verifiable instructions, answered greedily by a policy and
checked by IFEval's checkers (``evaluate.ifeval``); start vs trained with a paired bootstrap CI of each
accuracy's difference."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from openrlaif.evaluate.ifeval import METRICS, Checked, IFEvalItem, accuracies, check, metric_of
from openrlaif.evaluate.winrate import paired_bootstrap_diff
from openrlaif.sampling.hf import HFSampler
from openrlaif.sampling.types import SamplingParams


@dataclass
class GenerationSettings:
    """How benchmark answers are written (recorded with every result)."""

    max_new_tokens: int = 512
    batch_size: int = 16
    greedy: bool = True  # IFEval is reported with greedy decoding
    temperature: float = 0.7  # only when not greedy
    seed: int = 0
    dtype: str = "float32"  # the weights' dtype while writing (the run's model.sample_dtype in `rlaif run`)


@dataclass
class PolicyAnswers:
    answers: list[str]
    finished: list[bool]  # ended on its own rather than at max_new_tokens
    tokens_per_s: float
    seconds: float
    new_tokens: int
    alongside: str | None = None  # the other policy decoding at the same time (its speed shares the cores)


def answer(model, tokenizer, items: list[IFEvalItem], settings: GenerationSettings, description: str,
           progress=None, alongside: str | None = None) -> PolicyAnswers:
    """One answer per prompt (the tokenizer's chat template, the settings' decoding); ``progress``: an open bar
    to advance (two writers side by side share one) instead of one of its own; ``alongside``: the policy that
    answers at the same time in another thread (recorded: this one's tokens/s is then a share of the cores)."""
    sampler = HFSampler(model, tokenizer, description)
    sampler.progress = progress
    out = sampler.sample([it.messages for it in items], 1, sampling_params(settings))
    return policy_answers(sampler, out, alongside)


def answer_with_adapter(deltas: dict, model, tokenizer, items: list[IFEvalItem], settings: GenerationSettings,
                        progress=None) -> tuple[PolicyAnswers, PolicyAnswers]:
    """``answer`` for the trained and the start policy at once: ``model`` with and without the adapter ``deltas``
    in one decoding loop (``sampling.hf.sample_with_adapter``)."""
    from openrlaif.sampling.hf import sample_with_adapter

    trained, start = (HFSampler(model, tokenizer, "bench", row_seeds=True) for _ in range(2))
    out = sample_with_adapter(trained, start, deltas, [it.messages for it in items], 1,
                              sampling_params(settings), progress)
    return policy_answers(trained, out[0], "start"), policy_answers(start, out[1], "trained")


def sampling_params(settings: GenerationSettings) -> SamplingParams:
    return SamplingParams(0.0 if settings.greedy else settings.temperature, 1.0, settings.max_new_tokens,
                          settings.batch_size, settings.seed)


def policy_answers(sampler, out: list[list[str]], alongside: str | None) -> PolicyAnswers:
    """A sampler's first answer to each prompt, with its stops and speed."""
    s = sampler.stats
    return PolicyAnswers([o[0] for o in out], [f[0] for f in sampler.finished], round(s.tokens_per_s, 2),
                         round(s.seconds, 2), s.new_tokens, alongside)


def score(items: list[IFEvalItem], answers: PolicyAnswers) -> tuple[list[Checked], dict]:
    """Each answer checked, and the four accuracies (plus per-instruction rates, finish rate, speed)."""
    checked = [check(it, a) for it, a in zip(items, answers.answers)]
    result = accuracies(items, checked)
    result.update({"finish_rate": sum(answers.finished) / len(answers.finished), "tokens_per_s": answers.tokens_per_s,
                   "seconds": answers.seconds, "new_tokens": answers.new_tokens, "decoded_alongside": answers.alongside})
    return checked, result


def difference(trained: list[Checked], start: list[Checked], n_boot: int = 2000, seed: int = 0) -> dict:
    """Trained minus start for each accuracy, with the paired bootstrap 95% CI (prompts resampled)."""
    out = {}
    for name in METRICS:
        diff, lo, hi = paired_bootstrap_diff(trained, start, metric_of(name), n_boot, seed)
        out[name] = {"difference": round(diff, 4), "ci95": [round(lo, 4), round(hi, 4)]}
    return out


def answer_rows(items: list[IFEvalItem], answers: dict[str, PolicyAnswers], checked: dict[str, list[Checked]]) -> list[dict]:
    """One row per prompt: the prompt, its instructions, and each policy's answer with what it followed."""
    rows = []
    for n, it in enumerate(items):
        row = {"key": it.key, "prompt": it.prompt, "instruction_id_list": list(it.instruction_ids)}
        for name in answers:
            row[name] = answers[name].answers[n]
            row[f"{name}_strict"] = checked[name][n].strict
            row[f"{name}_loose"] = checked[name][n].loose
        rows.append(row)
    return rows


def settings_json(settings: GenerationSettings, tokenizer) -> dict:
    return {**asdict(settings), "chat_template": bool(getattr(tokenizer, "chat_template", None)),
            "decoding": "greedy" if settings.greedy else f"temperature {settings.temperature}, top_p 1.0"}


def ifeval_benchmark(model, tokenizer, items: list[IFEvalItem], settings: GenerationSettings,
                     with_adapter: bool) -> tuple[dict, list[dict]]:
    """IFEval on one policy (``model``), or on the start and trained policies of a PEFT model
    (``with_adapter``: the adapter disabled, then enabled) with the paired difference; (result, answer rows)."""
    answers = {}
    if with_adapter:
        with model.disable_adapter():
            answers["start"] = answer(model, tokenizer, items, settings, "bench: start policy")
        answers["trained"] = answer(model, tokenizer, items, settings, "bench: trained policy")
    else:
        answers["policy"] = answer(model, tokenizer, items, settings, "bench: policy")
    return ifeval_result(items, answers, settings, tokenizer)


def ifeval_result(items: list[IFEvalItem], answers: dict[str, PolicyAnswers], settings: GenerationSettings,
                  tokenizer) -> tuple[dict, list[dict]]:
    """Each policy's answers checked (``answers``: "policy", or "start" and "trained"), the accuracies, and for
    start and trained the paired difference; (result, answer rows)."""
    checked, result = {}, {"graded_by": "IFEval's checkers (lm-eval's copy); no model",
                           "generation": settings_json(settings, tokenizer)}
    for who, a in answers.items():
        checked[who], result[who] = score(items, a)
    if "start" in answers and "trained" in answers:
        result["difference"] = difference(checked["trained"], checked["start"], seed=settings.seed)
    return result, answer_rows(items, answers, checked)


@dataclass
class StartMemo:
    """Where the start policy's log-probs of people's replies are kept between runs: a key-value store
    (``core.cache.JudgeCache``) and the start weights' fingerprint (``core.cache.model_fingerprint`` of the
    model before any adapter was added)."""

    store: object
    fingerprint: str


def start_logprobs(model, seqs: list, pad: int, batch_size: int, memo: StartMemo | None) -> tuple[list[float], int]:
    """The start policy's (``model`` with its adapter disabled) summed reply log-probs of ``seqs``, read from
    ``memo`` where an earlier run stored them; (log-probs, how many were read back)."""
    from openrlaif.core.cache import cache_key, cached_compute

    def compute(missing: list[int], on_batch) -> None:
        with model.disable_adapter():
            values = pair_logprobs(model, [seqs[i] for i in missing], pad, batch_size, "bench: start log-probs")
        on_batch(dict(zip(missing, values)))

    if memo is None:
        with model.disable_adapter():
            return pair_logprobs(model, seqs, pad, batch_size, "bench: start log-probs"), 0
    keys = [cache_key(memo.fingerprint, "start-response-logprob", s.input_ids, s.response_mask) for s in seqs]
    hits = memo.store.hits
    values = cached_compute(memo.store, keys, compute, "start-logprob")
    return values, memo.store.hits - hits


def human_prefs_benchmark(model, tokenizer, pairs, batch_size: int = 8, max_length: int = 1024,
                          n_boot: int = 2000, seed: int = 0, memo: StartMemo | None = None) -> tuple[dict, list[dict]]:
    """Does the trained policy's implicit reward, log pi_trained/pi_start (DPO's reward up to beta), rank
    people's preferred reply above the other? Per pair: margin = [log pi_t(chosen) - log pi_s(chosen)] -
    [log pi_t(rejected) - log pi_s(rejected)]; accuracy = share of margins > 0 (0 counts half) with a bootstrap
    CI. The start policy scores exactly 0.5 (every margin is 0), so any gain is what training moved. With
    ``memo`` the start's log-probs come from (and go to) the user cache."""
    from openrlaif.evaluate.winrate import bootstrap_ci, margin_outcomes
    from openrlaif.models.logprobs import encode_response

    seqs = [encode_response(tokenizer, p.messages, reply, max_length) for p in pairs for reply in (p.chosen, p.rejected)]
    pad = tokenizer.pad_token_id
    trained = pair_logprobs(model, seqs, pad, batch_size, "bench: trained log-probs")
    start, reused = start_logprobs(model, seqs, pad, batch_size, memo)
    reward = [t - s for t, s in zip(trained, start)]
    margins = [reward[2 * i] - reward[2 * i + 1] for i in range(len(pairs))]
    outcomes = margin_outcomes(margins)
    lo, hi = bootstrap_ci(outcomes, n_boot, seed)
    result = {"graded_by": "people's labels (the pairs file); the policy's implicit reward ranks, no judge",
              "n": len(pairs), "accuracy": round(sum(outcomes) / len(outcomes), 4), "ci95": [round(lo, 4), round(hi, 4)],
              "start_accuracy": 0.5, "mean_margin": round(sum(margins) / len(margins), 4),
              "ties": sum(m == 0 for m in margins),
              "start_logprobs": f"{reused} of {len(seqs)} read from the user cache" if memo is not None else "computed"}
    rows = [{"id": p.id, "margin": round(m, 6), "agrees": o} for p, m, o in zip(pairs, margins, outcomes)]
    return result, rows


PREFIX_BATCH = 8  # sequences per batch on the shared-prefix path (each prefix keeps its KV cache while in use)


def pair_logprobs(model, seqs: list, pad: int, batch_size: int, description: str) -> list[float]:
    """Summed reply log-probs of people's pairs: a pair's two replies follow the same conversation, which runs
    once (``models.logprobs.shared_prefix_logprobs``), at most ``PREFIX_BATCH`` sequences a batch."""
    from openrlaif.models.logprobs import shared_prefix_logprobs

    return shared_prefix_logprobs(model, seqs, pad, min(batch_size, PREFIX_BATCH), description)


def result_table(name: str, result: dict):
    """A rich table of a benchmark result, saying who graded it."""
    from rich.table import Table

    table = Table(title=f"{name} · {result.get('file')} · graded by {result['graded_by']}")
    table.add_column("measure")
    if name == "human_prefs":
        table.add_column("value", justify="right")
        table.add_row("pairs", str(result["n"]))
        table.add_row("agreement with people (trained)", f"{result['accuracy']:.3f} ({result['ci95'][0]:.3f}, "
                      f"{result['ci95'][1]:.3f})")
        table.add_row("agreement with people (start)", "0.500 (by construction)")
        table.add_row("mean margin (nats)", f"{result['mean_margin']:+.4f}")
        return table
    who = [w for w in ("policy", "start", "trained") if w in result]
    for w in who:
        table.add_column(w, justify="right")
    if "difference" in result:
        table.add_column("trained - start (95% CI)", justify="right")
    for metric in METRICS:
        row = [metric] + [f"{result[w][metric]:.3f}" for w in who]
        if "difference" in result:
            d = result["difference"][metric]
            row.append(f"{d['difference']:+.3f} ({d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f})")
        table.add_row(*row)
    table.add_row("prompts", *[str(result[w]["prompts"]) for w in who])
    table.add_row("finish rate", *[f"{result[w]['finish_rate']:.2f}" for w in who])
    table.add_row("tokens/s", *[f"{result[w]['tokens_per_s']:.1f}" for w in who])
    return table


def load_benchmark(spec) -> tuple[str, list] | None:
    """(label, items) of an eval.benchmarks entry (``config.BenchmarkSpec``), every row checked; None when its
    file is absent and ``if_missing: skip`` (a note says so)."""
    from pathlib import Path

    from openrlaif.evaluate.ifeval import load_ifeval, resolve_prompts

    if spec.name == "ifeval":
        path, split = resolve_prompts(spec.file, spec.split)
    else:
        path, split = Path(spec.file).expanduser(), None
    if spec.if_missing == "skip" and spec.file != "builtin" and not path.exists():
        from openrlaif.core.progress import console

        console.print(f"eval.benchmarks: {path} is absent; {spec.name} skipped (if_missing: skip)")
        return None
    if spec.name == "ifeval":
        items = load_ifeval(path, split)
        label = f"ifeval-{'builtin' if spec.file == 'builtin' else path.stem}" + (f"-{split}" if split else "")
    else:
        from openrlaif.data.pairs import load_labelled_pairs

        items = load_labelled_pairs(str(path), field="eval.benchmarks")
        label = f"human_prefs-{path.stem}"
    items = items[spec.skip:]
    if spec.limit:
        items = items[: spec.limit]
    if not items:
        from openrlaif.core.errors import UserError

        raise UserError(f"eval.benchmarks: {path} has no rows left after skip={spec.skip}")
    return label, items


def run_settings(spec, batch_size: int, seed: int, dtype: str = "float32") -> GenerationSettings:
    """How an ifeval entry of eval.benchmarks is answered in `rlaif run` (greedy, its max_new_tokens)."""
    return GenerationSettings(spec.max_new_tokens, batch_size, seed=seed, dtype=dtype)


def run_benchmark(spec, items: list, model, tokenizer, batch_size: int, seed: int,
                  answers: dict[str, PolicyAnswers] | None = None, dtype: str = "float32",
                  memo=None) -> tuple[dict, list[dict]]:
    """One eval.benchmarks entry: start vs trained. IFEval checks ``answers`` when the eval stage wrote them
    beside its held-out answers (each policy's own copy in ``dtype``), else writes them with ``model`` (a PEFT
    model: adapter disabled, then the active adapter); people's pairs are scored by ``model``'s log-probs.
    ``model`` may be a function that returns it (loaded only when needed); ``memo``: a function that returns the
    ``StartMemo`` for people's pairs (or None)."""
    if spec.name == "ifeval" and answers is not None:
        result, rows = ifeval_result(items, answers, run_settings(spec, batch_size, seed, dtype), tokenizer)
    else:
        model = model() if callable(model) and not hasattr(model, "forward") else model
        if spec.name == "ifeval":
            result, rows = ifeval_benchmark(model, tokenizer, items, run_settings(spec, batch_size, seed, dtype),
                                            with_adapter=True)
        else:
            result, rows = human_prefs_benchmark(model, tokenizer, items, batch_size, seed=seed,
                                                 memo=memo() if memo is not None else None)
    return {"benchmark": spec.name, "file": spec.file, "split": getattr(spec, "split", None), "skip": spec.skip,
            "limit": spec.limit, **result}, rows
