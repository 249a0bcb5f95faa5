"""RL rollouts shared by RLOO, PPO, GRPO and the monitor: the train prompts, sampling k responses per prompt,
and the reward source that scores them (a judge or a reward model)."""

from __future__ import annotations

import random

import torch

from openrlaif.config import RunConfig
from openrlaif.core.errors import UserError
from openrlaif.core.store import RunStore
from openrlaif.models.loading import cut_at_stop, stop_token_ids
from openrlaif.models.logprobs import Encoded, collate
from openrlaif.sampling.nucleus import sampling_kwargs


def reward_source(cfg: RunConfig, store: RunStore, k: int = 1, spec: str | None = None, tag: str = "rl"):
    """(conversations, prompt texts, responses) -> list[float], from ``spec`` (default rl.reward).

    Besides rl.reward's values, ``spec`` may be 'contrastive' or 'pointwise' (the run's judge model with
    that scoring method). ``tag`` seeds the principle drawn per prompt (the over-optimisation monitor's
    held-out judge draws its own)."""
    from openrlaif.reward.model import load_reward

    spec = cfg.rl.reward if spec is None else spec
    field = "rl.reward" if tag == "rl" else "monitor.heldout"
    if spec == "reward_model":
        path = store.path("reward_model", k)
        if not (path / "ensemble.json").is_file():
            raise UserError(f"{field}: {path} not found; run `rlaif reward -o {store.root}` first "
                            "(or `rlaif run`, which trains it before RL)")
        spec = str(path)
    if spec not in ("judge", "contrastive", "pointwise"):
        rm = load_reward(spec, field)
        return lambda convs, texts, responses: [float(x) for x in rm.rewards(convs, responses)]
    from openrlaif.data.constitution import load_constitution
    from openrlaif.feedback.factory import build_judge, defend

    # The run's judge scores each answer alone: its contrastive score when it is the contrastive judge (the
    # same judge that grades `eval`), otherwise the pointwise expected 0-9 rating (d-RLAIF).
    if spec == "judge":
        method = "contrastive" if cfg.feedback.method == "contrastive" else "pointwise"
    else:
        method = spec
    judge, _ = build_judge(cfg.model_copy(update={"feedback": cfg.feedback.model_copy(update={"method": method})}),
                           f"{tag}: judge", store.root)
    defended = defend(cfg, judge)  # an answer that addresses the judge gets less than every other one
    constitution = load_constitution(cfg.data.constitution)

    def score(convs, texts, responses):
        principles = [constitution.sample(random.Random(f"{cfg.seed}:{tag}:{t}")) for t in texts]
        if method == "contrastive":
            raw = judge.scores(list(zip(convs, responses, principles)))
        else:
            raw = judge.score(list(zip(texts, responses, principles)))
        return raw if defended is judge else defended.defend_scores(convs, responses, raw)

    return score


def sample(model, tok, prompt_ids: list[list[int]], k: int, cfg: RunConfig) -> tuple[list[Encoded], list[bool]]:
    """k sampled responses per prompt as Encoded sequences (prompt + response incl. its end-of-turn)."""

    stop = stop_token_ids(tok)
    flat = [ids for ids in prompt_ids for _ in range(k)]
    tok.padding_side = "left"
    enc = tok.pad({"input_ids": flat}, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**enc, **sampling_kwargs(cfg.rl.temperature, cfg.rl.top_p),
                             max_new_tokens=cfg.rl.max_new_tokens, eos_token_id=stop, pad_token_id=tok.pad_token_id)
    seqs, finished = [], []
    for ids, row in zip(flat, out[:, enc["input_ids"].shape[1]:].tolist()):
        response, ended = cut_at_stop(row, stop, keep_stop=True)
        seqs.append(Encoded(ids + response, [0] * len(ids) + [1] * len(response)))
        finished.append(ended)
    return seqs, finished


def train_prompts(cfg: RunConfig) -> list:
    """The train prompts RL samples from, or a one-line error when there are none."""
    from openrlaif.data.prompts import run_prompts

    prompts = run_prompts(cfg.data, "train", cfg.data.max_train_prompts)
    if not prompts:
        raise UserError("data.prompts: no train prompts for RL")
    return prompts


def rollout(policy, tok, prompts, encoded_prompts: list[list[int]], step: int, score, cfg: RunConfig, accelerator):
    """One update's rollouts: this process's share of the step's ``rl.prompts_per_step`` prompts (cycling
    through them), ``rl.k`` samples each, each finished answer scored once.

    Returns (input_ids, attention_mask, response_mask) on the device, ``finished`` (list of bool: ended
    before max_new_tokens) and the raw scores (float tensor, one per sample, prompt-major)."""
    from openrlaif.models.accel import shard

    rl = cfg.rl
    chosen = shard([(step * rl.prompts_per_step + i) % len(prompts) for i in range(rl.prompts_per_step)], accelerator)
    policy.eval()
    seqs, finished = sample(policy, tok, [encoded_prompts[i] for i in chosen], rl.k, cfg)
    ids, attn, resp = (t.to(accelerator.device) for t in collate(seqs, tok.pad_token_id))
    texts = [tok.decode([t for t, m in zip(s.input_ids, s.response_mask) if m], skip_special_tokens=True).strip()
             for s in seqs]
    raw = score([prompts[i].messages for i in chosen for _ in range(rl.k)],
                [prompts[i].text for i in chosen for _ in range(rl.k)], texts)
    return ids, attn, resp, finished, torch.tensor(raw, dtype=torch.float32)
