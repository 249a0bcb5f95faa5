"""Stage `train` (algo rloo): RL directly on a reward, REINFORCE with leave-one-out baselines.

Each update samples ``rl.k`` responses for each of ``rl.prompts_per_step`` train prompts from the
policy (LoRA on the starting model), scores them with the reward source (the judge's pointwise score
= d-RLAIF, a reward model, or a function), folds a KL(policy || start) penalty into each sample's
reward, and takes each sample's advantage against the mean of the other k - 1 samples of its prompt
(Ahmadian et al. 2024). No critic, no reward model needed. The adapter goes to ``round_K/policy``, so
`eval` compares it with the start exactly as after DPO.
"""

from __future__ import annotations

import random
import time

import torch

from openrlaif.core.faults import kill_point
from openrlaif.config import RunConfig
from openrlaif.core.errors import UserError
from openrlaif.evaluate.overopt import OveroptimizationMonitor
from openrlaif.models.logprobs import Encoded, collate, token_logprobs
from openrlaif.optimize.advantages import kl_estimate, rloo_advantages, whiten
from openrlaif.core.store import RunStore, atomic_directory


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
    from openrlaif.stages.label import build_judge

    # The run's judge scores each answer alone: its contrastive score when it is the contrastive judge (the
    # same judge that grades `eval`), otherwise the pointwise expected 0-9 rating (d-RLAIF).
    if spec == "judge":
        method = "contrastive" if cfg.feedback.method == "contrastive" else "pointwise"
    else:
        method = spec
    judge, _ = build_judge(cfg.model_copy(update={"feedback": cfg.feedback.model_copy(update={"method": method})}),
                           f"{tag}: judge", store.root)
    constitution = load_constitution(cfg.data.constitution)

    def score(convs, texts, responses):
        principles = [constitution.sample(random.Random(f"{cfg.seed}:{tag}:{t}")) for t in texts]
        if method == "contrastive":
            return judge.scores(list(zip(convs, responses, principles)))
        return judge.score(list(zip(texts, responses, principles)))

    return score


def sample(model, tok, prompt_ids: list[list[int]], k: int, cfg: RunConfig) -> tuple[list[Encoded], list[bool]]:
    """k sampled responses per prompt as Encoded sequences (prompt + response incl. its end-of-turn)."""
    from openrlaif.models.loading import end_of_turn_id

    stop = sorted({end_of_turn_id(tok), tok.eos_token_id} - {None})
    flat = [ids for ids in prompt_ids for _ in range(k)]
    tok.padding_side = "left"
    enc = tok.pad({"input_ids": flat}, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**enc, do_sample=True, temperature=cfg.rl.temperature, top_p=cfg.rl.top_p, top_k=0,
                             max_new_tokens=cfg.rl.max_new_tokens, eos_token_id=stop, pad_token_id=tok.pad_token_id)
    seqs, finished = [], []
    for ids, row in zip(flat, out[:, enc["input_ids"].shape[1]:].tolist()):
        end = next((t for t, x in enumerate(row) if x in stop), None)
        response = row if end is None else row[: end + 1]
        seqs.append(Encoded(ids + response, [0] * len(ids) + [1] * len(response)))
        finished.append(end is not None)
    return seqs, finished


def train_prompts(cfg: RunConfig) -> list:
    """The train prompts RL samples from, or a one-line error when there are none."""
    from openrlaif.data.prompts import load_prompts, select

    prompts = select(load_prompts(cfg.data.prompts, cfg.data.heldout_fraction), "train", cfg.data.max_train_prompts)
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


def run(cfg: RunConfig, store: RunStore, k: int = 1) -> dict:
    """RLOO updates of a LoRA policy against rl.reward; the adapter goes to round_K/policy."""
    from openrlaif.models.logprobs import SequenceLogprobs
    from openrlaif.models.loading import chat_prompt, load_causal_lm, set_threads
    from openrlaif.models.accel import Checkpointer, config_fingerprint, gather_mean, make_accelerator
    from openrlaif.stages.dpo import add_lora, reference_policy, round_adapters
    from openrlaif.core.progress import advance, bar

    rl, tc = cfg.rl, cfg.train
    # 1. Train prompts, the policy (a fresh LoRA adapter; adapter off = the reference) and the reward.
    prompts = train_prompts(cfg)
    if rl.k < 2:
        raise UserError("rl.k: RLOO needs at least 2 samples per prompt (each one's baseline is the others' mean)")
    set_threads(cfg.model.threads)
    torch.manual_seed(cfg.seed)
    accelerator = make_accelerator(tc)
    loaded = load_causal_lm(cfg.model.policy, cfg.model.dtype)
    tok = loaded.tokenizer
    model = add_lora(loaded.model, tc, *round_adapters(cfg, store, k))
    score = reward_source(cfg, store, k)
    encoded_prompts = [tok(chat_prompt(tok, p.messages), add_special_tokens=False).input_ids for p in prompts]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tc.learning_rate, weight_decay=0.0)
    policy, optimizer = accelerator.prepare(SequenceLogprobs(model, per_token=True, temperature=rl.temperature), optimizer)
    checkpoint = Checkpointer(store.path("checkpoint", k), tc.checkpoint_every, accelerator,
                              config_fingerprint(cfg))
    progress = checkpoint.resume() or {"step": 0, "episodes": 0, "metrics": [], "seconds": 0.0}
    monitor = OveroptimizationMonitor(cfg, store, k, tok, score, progress.get("monitor"))
    metrics, episodes = progress["metrics"], progress["episodes"]
    start = time.perf_counter() - progress["seconds"]
    with bar("rloo", rl.steps, "steps") as pg:
        advance(pg, progress["step"], 0.0, "steps")
        for step in range(progress["step"], rl.steps):
            # 2. Rollouts: k samples for each of this process's share of the step's prompts, scored once.
            ids, attn, resp, finished, raw = rollout(model, tok, prompts, encoded_prompts, step, score, cfg, accelerator)
            # 3. Reward = score - KL penalty (- missing-EOS penalty); leave-one-out advantages per prompt.
            mask = resp[:, 1:].float()
            with torch.inference_mode(), reference_policy(model):
                ref_logp = token_logprobs(model, ids, attn, resp, rl.temperature)
            model.train()
            logp = policy(ids, attn, resp)
            kl = (kl_estimate(logp.detach(), ref_logp, rl.kl_estimator) * mask).sum(1)
            scores = whiten(raw, torch.ones_like(raw), shift_mean=False) if rl.whiten_scores and len(raw) > 1 else raw
            total = scores - rl.kl_coef * kl - rl.missing_eos_penalty * (1 - torch.tensor(finished, dtype=torch.float32))
            adv = rloo_advantages(total.view(-1, rl.k)).view(-1)
            # 4. REINFORCE with the leave-one-out baseline.
            loss = -(adv * (logp * mask).sum(1)).mean()
            accelerator.backward(loss)
            grad_norm = accelerator.clip_grad_norm_(params, tc.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            episodes += len(raw) * accelerator.num_processes
            elapsed = time.perf_counter() - start
            metrics.append({"stage": "train", "algo": "rloo", "round": k, "step": step + 1,
                            "reward_mean": round(gather_mean(raw.mean(), accelerator), 6),
                            "reward_std": round(float(raw.std()), 6),
                            "kl": round(gather_mean(kl.mean(), accelerator), 6),
                            "total_reward_mean": round(float(total.mean()), 6),
                            "loss": round(loss.item(), 6), "grad_norm": round(float(grad_norm), 6),
                            "response_length": round(float(mask.sum(1).mean()), 2),
                            "finished_rate": round(sum(finished) / len(finished), 4), "kl_coef": rl.kl_coef,
                            "lr": tc.learning_rate, "episodes_per_s": round(episodes / elapsed, 4)})
            # 5. Every monitor.every updates: proxy reward vs the held-out judge on fixed held-out answers.
            monitor.check(step + 1, model, accelerator.is_main_process)
            checkpoint.maybe_save(step + 1, episodes=episodes, metrics=metrics, seconds=elapsed,
                                  monitor=monitor.state.to_dict())
            kill_point("train.step")
            advance(pg, 1, (step + 1 - progress["step"]) / max(elapsed - progress["seconds"], 1e-9), "steps")
            if monitor.should_stop():
                break
    # 6. Save the adapter like DPO does (or the monitor's best, with monitor.final_policy=best).
    if accelerator.is_main_process:
        with atomic_directory(store.path("policy", k)) as tmp:
            model.save_pretrained(tmp, selected_adapters=["default"])
            tok.save_pretrained(tmp)
        monitor.finish(accelerator.is_main_process)
        store.append_metrics(metrics + monitor.rows())
    accelerator.wait_for_everyone()
    checkpoint.clear()
    first, last = metrics[: max(1, len(metrics) // 4)], metrics[-max(1, len(metrics) // 4):]
    return {"algo": "rloo", "steps": len(metrics), "episodes": episodes, "resumed_from_step": progress["step"],
            "episodes_per_s": round(episodes / (time.perf_counter() - start), 4),
            "reward_first": round(sum(m["reward_mean"] for m in first) / len(first), 4),
            "reward_last": round(sum(m["reward_mean"] for m in last) / len(last), 4),
            "kl_last": round(sum(m["kl"] for m in last) / len(last), 4), "monitor": monitor.state.summary()}
