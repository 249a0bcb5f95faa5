"""Building the judge a config names (local methods, reward model, rule, API, ensemble) and its cache."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from openrlaif.config import FEEDBACK_METHODS, RunConfig
from openrlaif.core.cache import model_fingerprint
from openrlaif.core.errors import UserError
from openrlaif.feedback.judges import LocalJudge


def open_cache(cfg: RunConfig, run_dir: Path | None):
    """The judge cache the config names ('run' = inside the run directory, else the user cache)."""
    from openrlaif.core.cache import JudgeCache
    from openrlaif.models.loading import cache_dir

    spec = cfg.feedback.cache
    if spec is None:
        return None
    if spec == "run":
        return JudgeCache((run_dir if run_dir is not None else cache_dir()) / "judge_cache.sqlite")
    return JudgeCache(Path(spec).expanduser())


@dataclass
class JudgeContext:
    """What a judge builder may use: the config, the loaded judge model (None when no method needs one),
    the judge cache, the user's rule and reward-model judge (when configured), and the progress label."""

    cfg: RunConfig
    loaded: object | None
    spec: str
    cache: object | None
    description: str
    rule: object | None = None
    reward: object | None = None

    @property
    def label(self):
        return self.cfg.label

    @property
    def batch_size(self) -> int:
        """label.batch_size resolved for this machine (``models.loading.judge_batch_size``)."""
        from openrlaif.models.loading import judge_batch_size

        return judge_batch_size(self.cfg)

    @property
    def fb(self):
        return self.cfg.feedback


def _pairwise(c: JudgeContext):
    return LocalJudge(c.loaded.model, c.loaded.tokenizer, name=c.spec, batch_size=c.batch_size,
                      max_response_chars=c.label.max_response_chars, description=c.description, cache=c.cache)


def _contrastive(c: JudgeContext):
    from openrlaif.feedback.methods import ContrastiveJudge

    return ContrastiveJudge(c.loaded.model, c.loaded.tokenizer, name=c.spec, batch_size=c.batch_size,
                            max_length=c.fb.max_length, normalize=c.fb.normalize, temperature=c.fb.temperature,
                            description=c.description, cache=c.cache)


def _pointwise(c: JudgeContext):
    from openrlaif.feedback.methods import PointwiseJudge

    return PointwiseJudge(c.loaded.model, c.loaded.tokenizer, name=c.spec, batch_size=c.batch_size,
                          max_response_chars=c.label.max_response_chars, temperature=c.fb.temperature,
                          description=c.description, cache=c.cache)


def _cot(c: JudgeContext):
    from openrlaif.feedback.methods import ChainOfThoughtJudge

    return ChainOfThoughtJudge(c.loaded.model, c.loaded.tokenizer, name=c.spec, batch_size=c.batch_size,
                               max_response_chars=c.label.max_response_chars, max_new_tokens=c.fb.cot_max_tokens,
                               description=c.description, cache=c.cache)


def _rule(c: JudgeContext):
    from openrlaif.feedback.judges import RuleJudge

    return RuleJudge(c.rule, name=c.fb.rule, temperature=c.fb.temperature)


def _reward_model(c: JudgeContext):
    return c.reward


def _fitted(c: JudgeContext):
    from openrlaif.feedback.fitted import FittedJudge, heads_directory, load_heads

    card, heads = load_heads(c.fb.heads)
    fallback = JUDGE_BUILDERS[c.fb.fallback](c) if c.fb.fallback else None
    return FittedJudge(c.loaded.model, c.loaded.tokenizer, heads, fallback=fallback, name=c.spec,
                       batch_size=c.batch_size, max_length=c.fb.max_length, cache=c.cache,
                       description=c.description, expected_fingerprint=card.get("judge_fingerprint"), card=card,
                       directory=c.fb.heads if c.fb.heads == "builtin" else str(heads_directory(c.fb.heads)),
                       use_any=c.fb.any_head)


# feedback.method -> the judge it builds. The methods themselves (and what the rest of the code needs to
# know about each) are declared in config.FEEDBACK_METHODS; a test checks that the two lists agree.
JUDGE_BUILDERS = {"pairwise": _pairwise, "contrastive": _contrastive, "pointwise": _pointwise, "cot": _cot,
                  "rule": _rule, "reward_model": _reward_model, "fitted": _fitted}
# methods an OpenAICompatibleJudge can run itself (the others need a local model, or need no model at all)
API_METHODS = ("pairwise", "pointwise")


def build_judge(cfg: RunConfig, description: str = "judge", run_dir: Path | None = None):
    """The judge the config asks for (model + feedback method + cache); returns (judge, judge name)."""
    from openrlaif.core.plugins import load_callable
    from openrlaif.feedback.judges import EnsembleJudge, RewardModelJudge

    fb = cfg.feedback
    if FEEDBACK_METHODS[fb.method].by_construction:
        # Pairs made by construction have no verdicts; grading (eval, gate) uses the contrastive judge.
        fb = fb.model_copy(update={"method": "contrastive"})
        cfg = cfg.model_copy(update={"feedback": fb})
    methods = fb.members if fb.method == "ensemble" else [fb.method]
    # 1. The user's own scorers, when a method names them.
    if "rule" in methods and not fb.rule:
        raise UserError("feedback.rule: required with feedback.method=rule (or a rule ensemble member); "
                        "give 'package.module:function'")
    rule = load_callable(fb.rule) if "rule" in methods else None
    if "reward_model" in methods and not fb.reward_model:
        raise UserError("feedback.reward_model: required with feedback.method=reward_model (or a reward_model "
                        "ensemble member); give a model directory or 'package.module:function'")
    reward = None
    if "reward_model" in methods:
        from openrlaif.reward.model import load_reward

        reward = RewardModelJudge(load_reward(fb.reward_model), name=fb.reward_model, temperature=fb.temperature)
    if methods == ["rule"]:
        return _rule(JudgeContext(cfg, None, fb.rule, None, description, rule=rule)), fb.rule
    if methods == ["reward_model"]:
        return reward, fb.reward_model
    # 2. The judge model: a served one (feedback.api) or a local one, and the cache.
    cache = open_cache(cfg, run_dir)
    loaded, spec, api = None, cfg.model.judge or cfg.model.policy, None
    if fb.api is not None:
        local_only = sorted(m for m in methods if FEEDBACK_METHODS[m].local_only)
        if local_only:
            raise UserError(f"feedback.api: method(s) {', '.join(local_only)} need a local model (they read "
                            "prompt log-probs); use pairwise or pointwise with an API judge, or remove feedback.api")
        api = api_judge(cfg, cache, description)
    else:
        from openrlaif.models.loading import judge_bf16

        loaded = judge_model(cfg, spec)
        if cfg.model.judge_quantize == "int8":
            spec = f"{spec}@int8"  # a different judge: its own cache entries and its own name in the labels
        elif judge_bf16(cfg.model):
            spec = f"{spec}@bf16"  # likewise: its verdicts are not float32's
    context = JudgeContext(cfg, loaded, spec, cache, description, rule=rule, reward=reward)

    # 3. One judge per method (an ensemble's members share the model and the cache).
    def make(method: str):
        if api is not None and method in API_METHODS:
            return api(method)
        return JUDGE_BUILDERS[method](context)

    name = fb.api.model if fb.api is not None else spec
    if fb.method == "ensemble":
        return EnsembleJudge([make(m) for m in methods], aggregate=fb.aggregate, name=name), name
    return make(fb.method), name


_JUDGE_MODELS: dict[tuple, object] = {}  # this process's frozen judge models, loaded once


def judge_model(cfg: RunConfig, spec: str):
    """The local judge model (frozen), loaded once per process: label, eval, the red team and online DPO of one
    `rlaif run` share it (and its memory of the replies it read). Keyed by the model directory, the dtype, the
    quantisation, the bf16 autocast and the weight files' names, sizes and times (``models.loading.files_stamp``:
    a rewritten directory is loaded again)."""
    from openrlaif.models.features import mark_frozen
    from openrlaif.models.loading import autocast_matmuls, files_stamp, judge_bf16, load_causal_lm, resolve_model

    field = "model.judge" if cfg.model.judge else "model.policy"
    path = resolve_model(spec, field)
    stamp = files_stamp(path, weights=True)
    bf16 = judge_bf16(cfg.model)
    key = (str(path), cfg.model.dtype, cfg.model.judge_quantize, bf16, stamp)
    if key not in _JUDGE_MODELS:
        loaded = load_causal_lm(spec, cfg.model.dtype, field=field)
        if cfg.model.judge_quantize == "int8":
            from openrlaif.models.loading import quantize_int8

            loaded.model = quantize_int8(loaded.model)
        elif bf16:
            autocast_matmuls(loaded.model)  # model.judge_mixed_precision
        mark_frozen(loaded.model)  # never trained: models.features may remember what it read
        _JUDGE_MODELS.clear()  # one judge model at a time: a run that changes judges does not keep the old one
        _JUDGE_MODELS[key] = loaded
    return _JUDGE_MODELS[key]


def api_judge(cfg: RunConfig, cache, description: str):
    """A factory method -> OpenAICompatibleJudge for the endpoint in feedback.api."""

    from openrlaif.feedback.api import OpenAICompatibleJudge

    api = cfg.feedback.api
    key = os.environ.get(api.api_key_env) if api.api_key_env else None

    def make(method: str):
        return OpenAICompatibleJudge(
            api.base_url, api.model, method=method, api_key=key, concurrency=api.concurrency,
            requests_per_s=api.requests_per_s, timeout_s=api.timeout_s, max_retries=api.max_retries,
            backoff_base_s=api.backoff_base_s, top_logprobs=api.top_logprobs, prefill=api.prefill,
            price_input_per_mtok=api.price_input_per_mtok, price_output_per_mtok=api.price_output_per_mtok,
            max_response_chars=cfg.label.max_response_chars, temperature=cfg.feedback.temperature,
            cache=cache, seed=cfg.seed, description=description)

    return make


def defend(cfg: RunConfig, judge):
    """The judge wrapped with the injection defence (``feedback.defended.DefendedJudge``: the patterns and the
    probe of label.injection_probe) when feedback.defend is on; the judge itself otherwise."""
    from openrlaif.feedback.defended import DefendedJudge

    if not cfg.feedback.defend:
        return judge
    # the wrapper records which detectors it used ('patterns' alone where the probe cannot read this judge)
    return DefendedJudge(judge, build_detector(cfg, judge, notes=False))


def build_detector(cfg: RunConfig, judge, notes: bool = True):
    """The learned judge-directed detector (``feedback.injection.ProbeDetector``) that label.injection_probe
    names, on the judge's own model; None when it is off, or when 'builtin' does not fit this judge (then
    the patterns alone decide, and a note says so unless ``notes`` is off)."""
    from openrlaif.core.progress import console
    from openrlaif.feedback.fitted import BUILTIN_HEADS, heads_directory
    from openrlaif.feedback.injection import ProbeDetector, load_probe
    from openrlaif.models.loading import judge_batch_size

    spec = cfg.label.injection_probe
    if spec is None:
        return None
    holder = next((j for j in [judge, *getattr(judge, "members", [])] if getattr(j, "tokenizer", None) is not None
                   and getattr(j, "model", None) is not None and not isinstance(j.model, str)), None)
    probe = load_probe(heads_directory(spec))
    if probe is None:
        if spec == BUILTIN_HEADS:
            return None
        raise UserError(f"label.injection_probe: {heads_directory(spec)}/heads.json has no 'injection_probe'; use "
                        "'builtin' (the probe shipped for the embedded judge, bench/injection_probe.py --ship) or null")
    if holder is None:
        if notes:
            console.print("label.injection_probe: this judge has no local model to read; judge-directed replies "
                          "are found by the patterns alone")
        return None
    if spec == BUILTIN_HEADS and probe.card.get("judge_fingerprint") != model_fingerprint(holder.model):
        if notes:
            console.print("label.injection_probe: the shipped probe was fitted on the embedded judge, not this "
                          "one; judge-directed replies are found by the patterns alone")
        return None
    return ProbeDetector(holder.model, holder.tokenizer, probe, batch_size=judge_batch_size(cfg),
                         max_length=cfg.feedback.max_length)

