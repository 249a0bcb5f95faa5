"""Stage `train` (algo ppo): PPO with a per-token KL penalty to the starting policy.

Each step samples ``rl.k`` responses for ``rl.prompts_per_step`` train prompts (rollouts), scores each
finished response once (the reward model, the judge, or a function: ``rl.reward``), and turns the
score into per-token rewards: -kl_coef * KL(policy || start) on every token plus the score on the last
one. GAE over a learned value gives the advantages (whitened); then ``ppo.epochs`` passes of clipped
policy and value updates over minibatches. The policy is a LoRA adapter on the starting model (adapter
off = the frozen reference); the critic is a value head on the policy's last hidden state
(``ppo.critic: shared``) or on a second LoRA copy of the model (``separate``). Implementation details
follow Ziegler et al. 2019 and Huang et al. 2024 ("The N implementation details of RLHF with PPO").
"""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

from openrlaif.config import RunConfig
from openrlaif.core.errors import UserError
from openrlaif.core.store import RunStore, atomic_directory
from openrlaif.models.loading import encode_prompts
from openrlaif.models.policy import save_adapter
from openrlaif.optimize.advantages import (
    AdaptiveKLController,
    FixedKLController,
    explained_variance,
    gae,
    kl_estimate,
    masked_mean,
    token_rewards,
    whiten,
)
from openrlaif.optimize.losses import entropy_from_logits, gathered_logprobs, ppo_policy_loss, ppo_value_loss
from openrlaif.optimize.loop import after_update
from openrlaif.optimize.monitor import OveroptimizationMonitor


def _trunk(model):
    """(decoder, lm_head), or a one-line error for a model whose head cannot run on chosen positions only."""
    from openrlaif.models.logprobs import decoder_and_head

    decoder, head = decoder_and_head(model)
    if decoder is None:
        raise UserError("model.policy: PPO needs a decoder-only causal LM with a separate output head and no logit "
                        "soft-capping (e.g. Llama, Qwen, SmolLM)")
    return decoder, head


class ActorCritic(nn.Module):
    """The policy and its value function in one module, so one wrapper (DDP, FSDP, DeepSpeed) covers both.

    ``forward(ids, attn, resp)`` returns per-token (log-prob, value, entropy), each (B, T-1), where
    position t is about token t + 1 and only response tokens (``resp[:, 1:]``) are non-zero. The LM
    head runs on response positions only. Log-probs and entropy are the tempered policy's (logits /
    ``temperature``), the distribution the rollouts were sampled from."""

    def __init__(self, policy, critic=None, temperature: float = 1.0):
        super().__init__()
        self.policy = policy
        self.critic = critic  # None: the value head reads the policy's hidden states
        self.temperature = temperature
        self.value_head = nn.Linear(policy.config.hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, ids: torch.Tensor, attn: torch.Tensor, resp: torch.Tensor, with_entropy: bool = True):
        decoder, head = _trunk(self.policy)
        mask = resp[:, 1:].bool()
        hidden = decoder(input_ids=ids, attention_mask=attn).last_hidden_state[:, :-1]
        logits = head(hidden[mask]).float() / self.temperature
        logp = gathered_logprobs(logits, ids[:, 1:][mask])
        if self.critic is not None:
            critic_decoder, _ = _trunk(self.critic)
            hidden = critic_decoder(input_ids=ids, attention_mask=attn).last_hidden_state[:, :-1]
        values = self.value_head(hidden[mask]).squeeze(-1).float()
        entropy = entropy_from_logits(logits) if with_entropy else torch.zeros_like(logp)

        def spread(x: torch.Tensor) -> torch.Tensor:
            return torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_scatter(mask, x)

        return spread(logp), spread(values), spread(entropy)


def reference_logprobs(actor_critic: ActorCritic, ids, attn, resp) -> torch.Tensor:
    """Per-token log-probs under the reference policy (the starting model: the LoRA adapter switched off; or
    the previous round's adapter with pipeline.reference=previous)."""
    from openrlaif.models.logprobs import token_logprobs
    from openrlaif.models.policy import reference_policy

    with torch.inference_mode(), reference_policy(actor_critic.policy):
        return token_logprobs(actor_critic.policy, ids, attn, resp, actor_critic.temperature)


def run(cfg: RunConfig, store: RunStore, k: int = 1) -> dict:
    """PPO updates of a LoRA policy against rl.reward; the adapter goes to round_K/policy."""
    from openrlaif.core.progress import advance, bar
    from openrlaif.models.accel import Checkpointer, adamw, config_fingerprint, gather_mean, make_accelerator, prepare
    from openrlaif.models.loading import load_causal_lm, set_threads
    from openrlaif.models.policy import add_lora, round_adapters
    from openrlaif.optimize.rollout import reward_source, rollout, train_prompts

    rl, pc, tc = cfg.rl, cfg.ppo, cfg.train
    # 1. Train prompts, the policy (+ critic) and the reward source.
    prompts = train_prompts(cfg)
    set_threads(cfg.model.threads)
    torch.manual_seed(cfg.seed)
    accelerator = make_accelerator(tc)
    loaded = load_causal_lm(cfg.model.policy, cfg.model.dtype, math_attention_up_to=cfg.model.math_attention_up_to)
    tok = loaded.tokenizer
    # A separate critic is a copy of the starting model (not a second load from disk) with its own adapter.
    critic = add_lora(copy.deepcopy(loaded.model), tc) if pc.critic == "separate" else None
    model = ActorCritic(add_lora(loaded.model, tc, *round_adapters(cfg, store, k)), critic, rl.temperature)
    score = reward_source(cfg, store, k)
    encoded_prompts = encode_prompts(tok, [p.messages for p in prompts])
    optimizer = adamw(accelerator, [p for p in model.parameters() if p.requires_grad], tc.learning_rate)
    model, optimizer = prepare(accelerator, model, model, optimizer)
    inner = accelerator.unwrap_model(model)
    params = [p for p in model.parameters() if p.requires_grad]
    kl_ctl = (AdaptiveKLController(rl.kl_coef, pc.kl_target, pc.kl_horizon) if pc.kl_target
              else FixedKLController(rl.kl_coef))
    checkpoint = Checkpointer(store.path("checkpoint", k), tc.checkpoint_every, accelerator,
                              config_fingerprint(cfg))
    progress = checkpoint.resume() or {"step": 0, "kl_coef": rl.kl_coef, "episodes": 0, "metrics": [], "seconds": 0.0}
    kl_ctl.value = progress["kl_coef"]
    monitor = OveroptimizationMonitor(cfg, store, k, tok, score, progress.get("monitor"))
    metrics, episodes = progress["metrics"], progress["episodes"]
    start = time.perf_counter() - progress["seconds"]
    with bar("ppo", rl.steps, "steps") as pg:
        advance(pg, progress["step"], 0.0, "steps")
        for step in range(progress["step"], rl.steps):
            # 2. Rollouts: this process's share of the step's prompts, k samples each, scored once.
            ids, attn, resp, finished, raw = rollout(inner.policy, tok, prompts, encoded_prompts, step, score, cfg,
                                                     accelerator)
            # 3. Per-token rewards: the score (- missing-EOS penalty) on the last token, -kl_coef * KL on each.
            mask = resp[:, 1:].float()
            unfinished = 1.0 - torch.tensor(finished, dtype=torch.float32)
            scores = raw - rl.missing_eos_penalty * unfinished
            if pc.whiten_rewards and len(scores) > 1:
                scores = whiten(scores, torch.ones_like(scores), shift_mean=False)
            with torch.no_grad():
                old_logp, old_values, _ = model(ids, attn, resp, with_entropy=False)
            with accelerator.autocast():  # the prepared policy's precision (train.mixed_precision)
                ref_logp = reference_logprobs(inner, ids, attn, resp)
            kl = kl_estimate(old_logp, ref_logp, rl.kl_estimator) * mask
            rewards = token_rewards(scores, kl, mask, kl_ctl.value)
            # 4. GAE against the critic's values, advantages whitened over the batch's tokens.
            advantages, returns = gae(rewards, old_values, mask, pc.gamma, pc.lam)
            advantages = whiten(advantages, mask)
            # 5. Clipped policy + value updates, several epochs of minibatches.
            model.train()
            stats = {"policy_loss": [], "value_loss": [], "approx_kl": [], "clipfrac": [], "value_clipfrac": [],
                     "entropy": []}
            n = len(raw)
            for _epoch in range(pc.epochs):
                order = torch.randperm(n).tolist()
                for b in range(0, n, pc.minibatch_size):
                    idx = torch.tensor(order[b:b + pc.minibatch_size])
                    width = int(attn[idx].sum(1).max())
                    mb = lambda t: t[idx][:, :width]  # noqa: E731 - right-padded rows: trim shared padding
                    mb1 = lambda t: t[idx][:, :width - 1]  # noqa: E731
                    with accelerator.accumulate(model):
                        logp, values, entropy = model(mb(ids), mb(attn), mb(resp), with_entropy=True)
                        m = mb1(mask)
                        pg_loss, clipfrac, approx_kl = ppo_policy_loss(logp, mb1(old_logp), mb1(advantages), m,
                                                                       pc.clip_range)
                        vf_loss, vf_clipfrac = ppo_value_loss(values, mb1(old_values), mb1(returns), m,
                                                              pc.value_clip_range)
                        ent = masked_mean(entropy, m)
                        loss = pg_loss + pc.vf_coef * vf_loss - pc.entropy_coef * ent
                        accelerator.backward(loss)
                        if accelerator.sync_gradients:
                            accelerator.clip_grad_norm_(params, tc.max_grad_norm)
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                    for key, value in (("policy_loss", pg_loss), ("value_loss", vf_loss), ("approx_kl", approx_kl),
                                       ("clipfrac", clipfrac), ("value_clipfrac", vf_clipfrac), ("entropy", ent)):
                        stats[key].append(float(value.detach()))
            # 6. Log the step, move the KL coefficient towards its target, checkpoint.
            seq_kl = kl.sum(1)
            episodes += n * accelerator.num_processes
            elapsed = time.perf_counter() - start
            row = {"stage": "train", "algo": "ppo", "round": k, "step": step + 1,
                   "reward_mean": round(gather_mean(raw.mean(), accelerator), 6),
                   "reward_std": round(float(raw.std()) if n > 1 else 0.0, 6),
                   "kl": round(gather_mean(seq_kl.mean(), accelerator), 6),
                   "kl_coef": round(kl_ctl.value, 6),
                   "total_reward_mean": round(float((scores - kl_ctl.value * seq_kl).mean()), 6),
                   "explained_variance": round(explained_variance(old_values, returns, mask), 4),
                   "response_length": round(float(mask.sum(1).mean()), 2),
                   "finished_rate": round(sum(finished) / len(finished), 4),
                   "lr": tc.learning_rate, "episodes_per_s": round(episodes / elapsed, 4)}
            row.update({key: round(sum(v) / len(v), 6) for key, v in stats.items()})
            metrics.append(row)
            kl_ctl.update(row["kl"], n * accelerator.num_processes)
            # 7. Every monitor.every updates: proxy reward vs the held-out judge on fixed held-out answers.
            if after_update(step + 1, inner.policy, monitor, checkpoint, accelerator, pg, progress, elapsed,
                            kl_coef=kl_ctl.value, episodes=episodes, metrics=metrics):
                break
    # 8. Save the policy adapter like DPO does (and the value head, for inspection).
    if accelerator.is_main_process:
        from safetensors.torch import save_file

        save_adapter(inner.policy, tok, store.path("policy", k))
        with atomic_directory(store.path("critic", k)) as tmp:
            save_file({n: t.detach().contiguous() for n, t in inner.value_head.state_dict().items()},
                      str(tmp / "value_head.safetensors"))
            if inner.critic is not None:
                inner.critic.save_pretrained(tmp)
        monitor.finish(accelerator.is_main_process)
        store.append_metrics(metrics + monitor.rows())
    accelerator.wait_for_everyone()
    checkpoint.clear()
    quarter = max(1, len(metrics) // 4)
    first, last = metrics[:quarter], metrics[-quarter:]
    return {"algo": "ppo", "critic": pc.critic, "steps": len(metrics), "episodes": episodes,
            "resumed_from_step": progress["step"],
            "episodes_per_s": round(episodes / (time.perf_counter() - start), 4),
            "reward_first": round(sum(m["reward_mean"] for m in first) / len(first), 4),
            "reward_last": round(sum(m["reward_mean"] for m in last) / len(last), 4),
            "kl_last": round(sum(m["kl"] for m in last) / len(last), 4),
            "kl_coef_last": round(kl_ctl.value, 6),
            "explained_variance_last": round(sum(m["explained_variance"] for m in last) / len(last), 4),
            "monitor": monitor.state.summary()}
