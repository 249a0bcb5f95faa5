"""Stage `train` (algo grpo): Group Relative Policy Optimization on a reward, no critic.

Each update samples ``rl.k`` responses for each of ``rl.prompts_per_step`` train prompts (the rollouts RLOO
and PPO take, scored by the same reward source), gives every response the advantage of its score against the
others of its prompt (``optimize.advantages.group_advantages``: minus the group mean, divided by the group std;
Dr.GRPO keeps the difference unscaled), then takes ``grpo.epochs`` passes of the clipped surrogate over the
rollouts with a k3 KL(policy || reference) term in the loss (``optimize.losses.grpo_loss``; Shao et al. 2024,
Liu et al. 2025). The policy is a LoRA adapter on the starting model (adapter off = the reference); the adapter
goes to ``round_K/policy``, so `eval` compares it with the start exactly as after DPO.
"""

from __future__ import annotations

import time

import torch

from openrlaif.config import RunConfig
from openrlaif.core.store import RunStore
from openrlaif.models.logprobs import token_logprobs
from openrlaif.models.policy import reference_policy
from openrlaif.optimize.advantages import group_advantages
from openrlaif.optimize.losses import grpo_loss
from openrlaif.optimize.loop import after_update, finish, quarter_means
from openrlaif.optimize.monitor import OveroptimizationMonitor
from openrlaif.optimize.rollout import reward_source, rl_parts, rollout


def run(cfg: RunConfig, store: RunStore, k: int = 1) -> dict:
    """GRPO updates of a LoRA policy against rl.reward; the adapter goes to round_K/policy."""
    from openrlaif.core.progress import advance, bar
    from openrlaif.models.accel import Checkpointer, adamw, config_fingerprint, gather_mean, items_per_step, prepare
    from openrlaif.models.logprobs import SequenceLogprobs

    rl, gc, tc = cfg.rl, cfg.grpo, cfg.train
    # 1. Train prompts, the policy (a LoRA adapter; adapter off = the reference) and the reward source.
    parts = rl_parts(cfg, store, k)
    accelerator, tok, model, prompts = parts.accelerator, parts.tokenizer, parts.model, parts.prompts
    samples = rl.prompts_per_step * rl.k
    minibatch = gc.minibatch_size or samples
    items_per_step(accelerator, tc, minibatch, "grpo.minibatch_size", "samples")
    local_minibatch = minibatch // accelerator.num_processes
    score = reward_source(cfg, store, k)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(accelerator, params, tc.learning_rate)
    policy, optimizer = prepare(accelerator, model,
                                SequenceLogprobs(model, per_token=True, temperature=rl.temperature), optimizer)
    checkpoint = Checkpointer(store.path("checkpoint", k), tc.checkpoint_every, accelerator, config_fingerprint(cfg))
    progress = checkpoint.resume() or {"step": 0, "episodes": 0, "metrics": [], "seconds": 0.0}
    monitor = OveroptimizationMonitor(cfg, store, k, tok, score, progress.get("monitor"))
    metrics, episodes = progress["metrics"], progress["episodes"]
    token_budget = rl.max_new_tokens if gc.variant == "dr_grpo" else None
    start = time.perf_counter() - progress["seconds"]
    with bar("grpo", rl.steps, "steps") as pg:
        advance(pg, progress["step"], 0.0, "steps")
        for step in range(progress["step"], rl.steps):
            # 2. Rollouts: k samples for each of this process's prompts (each row from its own seed), scored once.
            ids, attn, resp, finished, raw = rollout(model, tok, prompts, parts.encoded_prompts, step, score, cfg,
                                                     accelerator)
            # 3. Group-relative advantages of the scores (- the missing-EOS penalty), one per sample.
            unfinished = 1.0 - torch.tensor(finished, dtype=torch.float32)
            scores = raw - rl.missing_eos_penalty * unfinished
            adv = group_advantages(scores.view(-1, rl.k), scale=gc.variant == "grpo").view(-1).to(ids.device)
            mask = resp[:, 1:].float()
            with torch.inference_mode(), accelerator.autocast():  # the policy forward's precision: ratio 1 at epoch 0
                old_logp = token_logprobs(model, ids, attn, resp, rl.temperature)
                with reference_policy(model):
                    ref_logp = token_logprobs(model, ids, attn, resp, rl.temperature)
            old_logp, ref_logp = old_logp.clone(), ref_logp.clone()
            # 4. grpo.epochs passes of the clipped surrogate + k3 KL, in minibatches of the rollouts.
            model.train()
            stats = {"loss": [], "clipfrac": [], "kl_per_token": [], "grad_norm": []}
            order_rng = torch.Generator().manual_seed(cfg.seed * 100_003 + step)
            for _epoch in range(gc.epochs):
                order = torch.randperm(len(raw), generator=order_rng)
                for b in range(0, len(raw), local_minibatch):
                    idx = order[b:b + local_minibatch]
                    width = int(attn[idx].sum(1).max())  # right-padded rows: trim the shared padding
                    logp = policy(ids[idx][:, :width], attn[idx][:, :width], resp[idx][:, :width])
                    loss, st = grpo_loss(logp, old_logp[idx][:, :width - 1], ref_logp[idx][:, :width - 1], adv[idx],
                                         mask[idx][:, :width - 1], gc.clip_range, rl.kl_coef, token_budget)
                    accelerator.backward(loss)
                    grad_norm = accelerator.clip_grad_norm_(params, tc.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    for key, value in (("loss", loss), ("grad_norm", grad_norm), ("clipfrac", st["clipfrac"]),
                                       ("kl_per_token", st["kl"])):
                        stats[key].append(float(torch.as_tensor(value).detach()))
            # 5. Log the update (the KL is the sequences' k3 sum under the sampling policy), checkpoint.
            seq_kl = ((torch.expm1(ref_logp - old_logp) - (ref_logp - old_logp)) * mask).sum(1)
            episodes += len(raw) * accelerator.num_processes
            elapsed = time.perf_counter() - start
            row = {"stage": "train", "algo": "grpo", "round": k, "step": step + 1,
                   "reward_mean": round(gather_mean(raw.mean(), accelerator), 6),
                   "reward_std": round(float(raw.std()), 6),
                   "kl": round(gather_mean(seq_kl.mean(), accelerator), 6),
                   "advantage_abs_mean": round(float(adv.abs().mean()), 6),
                   "response_length": round(float(mask.sum(1).mean()), 2),
                   "finished_rate": round(sum(finished) / len(finished), 4), "kl_coef": rl.kl_coef,
                   "lr": tc.learning_rate, "episodes_per_s": round(episodes / elapsed, 4)}
            row.update({key: round(sum(v) / len(v), 6) for key, v in stats.items()})
            metrics.append(row)
            # 6. Every monitor.every updates: proxy reward vs the held-out judge on fixed held-out answers.
            if after_update(step + 1, model, monitor, checkpoint, accelerator, pg, progress, elapsed,
                            episodes=episodes, metrics=metrics):
                break
    # 7. Save the adapter like DPO does (or the monitor's best, with monitor.final_policy=best).
    finish(model, tok, store, k, monitor, checkpoint, accelerator, metrics)
    (reward_first, reward_last), (_, kl_last) = quarter_means(metrics, "reward_mean"), quarter_means(metrics, "kl")
    return {"algo": "grpo", "variant": gc.variant, "steps": len(metrics), "episodes": episodes,
            "processes": accelerator.num_processes, "resumed_from_step": progress["step"],
            "episodes_per_s": round(episodes / (time.perf_counter() - start), 4),
            "reward_first": reward_first, "reward_last": reward_last, "kl_last": kl_last,
            "monitor": monitor.state.summary()}
