"""RL rollouts shared by RLOO, PPO, GRPO and the monitor: the train prompts, sampling k responses per prompt,
and the reward source that scores them (a judge or a reward model)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from openrlaif.config import RunConfig
from openrlaif.core.errors import UserError
from openrlaif.core.store import RunStore
from openrlaif.models.loading import cut_at_stop, stop_token_ids
from openrlaif.models.logprobs import Encoded, collate, prompt_then_response
from openrlaif.sampling.nucleus import row_seed, sampling_kwargs


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


def rollout_seed(seed: int, step: int, prompt_index: int, sample: int) -> int:
    """The sampling seed of one rollout row: a function of (run seed, update, prompt, sample) alone, so a row is
    drawn the same whichever process or batch samples it, and a resumed run redraws the same rows."""
    return row_seed(seed, step, prompt_index, sample)


def sample(model, tok, prompt_ids: list[list[int]], k: int, cfg: RunConfig,
           row_seeds: list[int] | None = None) -> tuple[list[Encoded], list[bool]]:
    """k sampled responses per prompt as Encoded sequences (prompt + response incl. its end-of-turn); with
    ``row_seeds`` (one per response, prompt-major) each response from its own generator."""

    from openrlaif.sampling.hf import generate_n

    stop = stop_token_ids(tok)
    flat = [ids for ids in prompt_ids for _ in range(k)]
    tok.padding_side = "left"
    enc = tok.pad({"input_ids": prompt_ids}, return_tensors="pt")
    with torch.inference_mode():  # each prompt's prefill once, its KV cache shared by its k samples
        out = generate_n(model, enc["input_ids"], enc["attention_mask"], k,
                         **sampling_kwargs(cfg.rl.temperature, cfg.rl.top_p, row_seeds),
                         max_new_tokens=cfg.rl.max_new_tokens, eos_token_id=stop, pad_token_id=tok.pad_token_id)
    seqs, finished = [], []
    for ids, row in zip(flat, out[:, enc["input_ids"].shape[1]:].tolist()):
        response, ended = cut_at_stop(row, stop, keep_stop=True)
        seqs.append(prompt_then_response(ids, response))
        finished.append(ended)
    return seqs, finished


def train_prompts(cfg: RunConfig) -> list:
    """The train prompts RL samples from, or a one-line error when there are none."""
    from openrlaif.data.prompts import run_prompts

    prompts = run_prompts(cfg.data, "train", cfg.data.max_train_prompts)
    if not prompts:
        raise UserError("data.prompts: no train prompts for RL")
    return prompts


def step_prompts(n_prompts: int, step: int, cfg: RunConfig, accelerator) -> list[tuple[int, int]]:
    """(position in the update, prompt index) of this process's share of update ``step``'s rl.prompts_per_step
    prompts, cycling through the ``n_prompts`` train prompts."""
    from openrlaif.models.accel import shard

    per_step = cfg.rl.prompts_per_step
    return shard([(step * per_step + i, (step * per_step + i) % n_prompts) for i in range(per_step)], accelerator)


def sample_step(policy, tok, encoded_prompts: list[list[int]], step: int, cfg: RunConfig, accelerator):
    """rl.k responses for each of this process's prompts of update ``step``, each row from its own seed
    (``rollout_seed``): the same responses on 1 or N processes and after a resume. Returns (Encoded sequences,
    finished flags, prompt indices)."""
    mine = step_prompts(len(encoded_prompts), step, cfg, accelerator)
    seeds = [rollout_seed(cfg.seed, step, position, j) for position, _ in mine for j in range(cfg.rl.k)]
    chosen = [i for _, i in mine]
    policy.eval()
    seqs, finished = sample(policy, tok, [encoded_prompts[i] for i in chosen], cfg.rl.k, cfg, seeds)
    return seqs, finished, chosen


def rollout(policy, tok, prompts, encoded_prompts: list[list[int]], step: int, score, cfg: RunConfig, accelerator):
    """One update's rollouts: this process's share of the step's ``rl.prompts_per_step`` prompts (cycling
    through them), ``rl.k`` samples each, each finished answer scored once.

    Returns (input_ids, attention_mask, response_mask) on the device, ``finished`` (list of bool: ended
    before max_new_tokens) and the raw scores (float tensor, one per sample, prompt-major)."""
    rl = cfg.rl
    seqs, finished, chosen = sample_step(policy, tok, encoded_prompts, step, cfg, accelerator)
    ids, attn, resp = (t.to(accelerator.device) for t in collate(seqs, tok.pad_token_id))
    texts = [tok.decode([t for t, m in zip(s.input_ids, s.response_mask) if m], skip_special_tokens=True).strip()
             for s in seqs]
    raw = score([prompts[i].messages for i in chosen for _ in range(rl.k)],
                [prompts[i].text for i in chosen for _ in range(rl.k)], texts)
    return ids, attn, resp, finished, torch.tensor(raw, dtype=torch.float32)


@dataclass
class RLParts:
    """What an on-policy trainer starts from (RLOO, GRPO, online DPO)."""

    prompts: list  # the train prompts (data.prompts' train split)
    encoded_prompts: list[list[int]]  # their token ids under the chat template
    accelerator: object  # accelerate's Accelerator (1 or N processes)
    tokenizer: object
    model: object  # the starting policy with a LoRA adapter (fresh, or the previous round's); adapter off = reference


def rl_parts(cfg: RunConfig, store: RunStore, k: int) -> RLParts:
    """The train prompts, the accelerator and the LoRA policy, in the order every on-policy trainer needs them
    (threads and the seed set before the adapter is initialised)."""
    from openrlaif.models.accel import make_accelerator
    from openrlaif.models.loading import encode_prompts, load_causal_lm, set_threads
    from openrlaif.models.policy import add_lora, round_adapters

    prompts = train_prompts(cfg)
    set_threads(cfg.model.threads)
    torch.manual_seed(cfg.seed)
    accelerator = make_accelerator(cfg.train)
    loaded = load_causal_lm(cfg.model.policy, cfg.model.dtype, math_attention_up_to=cfg.model.math_attention_up_to)
    model = add_lora(loaded.model, cfg.train, *round_adapters(cfg, store, k))
    return RLParts(prompts, encode_prompts(loaded.tokenizer, [p.messages for p in prompts]), accelerator,
                   loaded.tokenizer, model)
