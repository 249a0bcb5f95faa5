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


@dataclass
class PolicyAnswers:
    answers: list[str]
    finished: list[bool]  # ended on its own rather than at max_new_tokens
    tokens_per_s: float
    seconds: float
    new_tokens: int


def answer(model, tokenizer, items: list[IFEvalItem], settings: GenerationSettings, description: str) -> PolicyAnswers:
    """One answer per prompt (the tokenizer's chat template, the settings' decoding)."""
    sampler = HFSampler(model, tokenizer, description)
    params = SamplingParams(0.0 if settings.greedy else settings.temperature, 1.0, settings.max_new_tokens,
                            settings.batch_size, settings.seed)
    out = sampler.sample([it.messages for it in items], 1, params)
    s = sampler.stats
    return PolicyAnswers([o[0] for o in out], [f[0] for f in sampler.finished], round(s.tokens_per_s, 2),
                         round(s.seconds, 2), s.new_tokens)


def score(items: list[IFEvalItem], answers: PolicyAnswers) -> tuple[list[Checked], dict]:
    """Each answer checked, and the four accuracies (plus per-instruction rates, finish rate, speed)."""
    checked = [check(it, a) for it, a in zip(items, answers.answers)]
    result = accuracies(items, checked)
    result.update({"finish_rate": sum(answers.finished) / len(answers.finished), "tokens_per_s": answers.tokens_per_s,
                   "seconds": answers.seconds, "new_tokens": answers.new_tokens})
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
