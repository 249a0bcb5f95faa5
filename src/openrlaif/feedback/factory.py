"""Building the judge a config names (local methods, reward model, rule, API, ensemble) and its cache."""

from __future__ import annotations

import os
from pathlib import Path

from openrlaif.config import RunConfig
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


def build_judge(cfg: RunConfig, description: str = "judge", run_dir: Path | None = None):
    """The judge the config asks for (model + feedback method + cache); returns (judge, judge name)."""
    from openrlaif.core.plugins import load_callable
    from openrlaif.feedback.judges import EnsembleJudge, RewardModelJudge, RuleJudge
    from openrlaif.feedback.methods import ChainOfThoughtJudge, ContrastiveJudge, PointwiseJudge
    from openrlaif.models.loading import load_causal_lm

    fb = cfg.feedback
    if fb.method in ("revision", "rlcd"):
        # Pairs made by construction have no verdicts; grading (eval, gate) uses the contrastive judge.
        fb = fb.model_copy(update={"method": "contrastive"})
    methods = fb.members if fb.method == "ensemble" else [fb.method]
    if "rule" in methods and not fb.rule:
        raise UserError("feedback.rule: required with feedback.method=rule (or a rule ensemble member); "
                        "give 'package.module:function'")
    rule = load_callable(fb.rule) if "rule" in methods else None
    if methods == ["rule"]:
        return RuleJudge(rule, name=fb.rule, temperature=fb.temperature), fb.rule
    if "reward_model" in methods and not fb.reward_model:
        raise UserError("feedback.reward_model: required with feedback.method=reward_model (or a reward_model "
                        "ensemble member); give a model directory or 'package.module:function'")
    reward = None
    if "reward_model" in methods:
        from openrlaif.reward.model import load_reward

        reward = RewardModelJudge(load_reward(fb.reward_model), name=fb.reward_model, temperature=fb.temperature)
        if methods == ["reward_model"]:
            return reward, fb.reward_model
    cache = open_cache(cfg, run_dir)
    if fb.api is not None:
        local_only = sorted(set(methods) - {"pairwise", "pointwise", "rule", "reward_model"})
        if local_only:
            raise UserError(f"feedback.api: method(s) {', '.join(local_only)} need a local model (they read "
                            "prompt log-probs); use pairwise or pointwise with an API judge, or remove feedback.api")
        api = api_judge(cfg, cache, description)
    else:
        spec = cfg.model.judge or cfg.model.policy
        loaded = load_causal_lm(spec, cfg.model.dtype, field="model.judge" if cfg.model.judge else "model.policy")
        if cfg.model.judge_quantize == "int8":
            from openrlaif.models.loading import quantize_int8

            loaded.model = quantize_int8(loaded.model)
            spec = f"{spec}@int8"  # a different judge: its own cache entries and its own name in the labels

    def make(method: str):
        if method == "reward_model":
            return reward
        if fb.api is not None and method != "rule":
            return api(method)
        if method == "contrastive":
            return ContrastiveJudge(loaded.model, loaded.tokenizer, name=spec, batch_size=cfg.label.batch_size,
                                    max_length=fb.max_length, normalize=fb.normalize, temperature=fb.temperature,
                                    description=description, cache=cache)
        if method == "rule":
            return RuleJudge(rule, name=fb.rule, temperature=fb.temperature)
        if method == "cot":
            return ChainOfThoughtJudge(loaded.model, loaded.tokenizer, name=spec, batch_size=cfg.label.batch_size,
                                       max_response_chars=cfg.label.max_response_chars, max_new_tokens=fb.cot_max_tokens,
                                       description=description, cache=cache)
        if method == "pointwise":
            return PointwiseJudge(loaded.model, loaded.tokenizer, name=spec, batch_size=cfg.label.batch_size,
                                  max_response_chars=cfg.label.max_response_chars, temperature=fb.temperature,
                                  description=description, cache=cache)
        return LocalJudge(loaded.model, loaded.tokenizer, name=spec, batch_size=cfg.label.batch_size,
                          max_response_chars=cfg.label.max_response_chars, description=description, cache=cache)

    name = fb.api.model if fb.api is not None else spec
    if fb.method == "ensemble":
        return EnsembleJudge([make(m) for m in methods], aggregate=fb.aggregate, name=name), name
    return make(fb.method), name


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
