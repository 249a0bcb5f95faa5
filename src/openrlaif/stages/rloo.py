"""Stage `train` (algo rloo): RL directly on a reward, REINFORCE with leave-one-out baselines.

Each update samples ``rl.k`` responses for each of ``rl.prompts_per_step`` train prompts from the
policy (LoRA on the starting model), scores them with the reward source (the judge's pointwise score
= d-RLAIF, a reward model, or a function), folds a KL(policy || start) penalty into each sample's
reward, and takes each sample's advantage against the mean of the other k - 1 samples of its prompt
(Ahmadian et al. 2024). No critic, no reward model needed. The adapter goes to ``round_K/policy``, so
`eval` compares it with the start exactly as after DPO.
"""

from __future__ import annotations

import time

import torch

from openrlaif.config import RunConfig
from openrlaif.core.errors import UserError
from openrlaif.core.store import RunStore
from openrlaif.models.logprobs import token_logprobs
from openrlaif.models.policy import reference_policy
from openrlaif.optimize.advantages import kl_estimate, rloo_advantages, whiten
from openrlaif.optimize.loop import after_update, finish, quarter_means
from openrlaif.optimize.monitor import OveroptimizationMonitor
from openrlaif.optimize.rollout import reward_source, rl_parts, rollout


def run(cfg: RunConfig, store: RunStore, k: int = 1) -> dict:
    """RLOO updates of a LoRA policy against rl.reward; the adapter goes to round_K/policy."""
    from openrlaif.core.progress import advance, bar
    from openrlaif.models.accel import Checkpointer, adamw, config_fingerprint, gather_mean, prepare
    from openrlaif.models.logprobs import SequenceLogprobs

    rl, tc = cfg.rl, cfg.train
    # 1. Train prompts, the policy (a fresh LoRA adapter; adapter off = the reference) and the reward.
    if rl.k < 2:
        raise UserError("rl.k: RLOO needs at least 2 samples per prompt (each one's baseline is the others' mean)")
    parts = rl_parts(cfg, store, k)
    accelerator, tok, model, prompts = parts.accelerator, parts.tokenizer, parts.model, parts.prompts
    score = reward_source(cfg, store, k)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(accelerator, params, tc.learning_rate)
    policy, optimizer = prepare(accelerator, model,
                                SequenceLogprobs(model, per_token=True, temperature=rl.temperature), optimizer)
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
            ids, attn, resp, finished, raw = rollout(model, tok, prompts, parts.encoded_prompts, step, score, cfg, accelerator)
            # 3. Reward = score - KL penalty (- missing-EOS penalty); leave-one-out advantages per prompt.
            mask = resp[:, 1:].float()
            with torch.inference_mode(), accelerator.autocast(), reference_policy(model):
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
            if after_update(step + 1, model, monitor, checkpoint, accelerator, pg, progress, elapsed,
                            episodes=episodes, metrics=metrics):
                break
    # 6. Save the adapter like DPO does (or the monitor's best, with monitor.final_policy=best).
    finish(model, tok, store, k, monitor, checkpoint, accelerator, metrics)
    (reward_first, reward_last), (_, kl_last) = quarter_means(metrics, "reward_mean"), quarter_means(metrics, "kl")
    return {"algo": "rloo", "steps": len(metrics), "episodes": episodes, "resumed_from_step": progress["step"],
            "episodes_per_s": round(episodes / (time.perf_counter() - start), 4),
            "reward_first": reward_first, "reward_last": reward_last, "kl_last": kl_last,
            "monitor": monitor.state.summary()}
