"""Pure losses for policy optimisation (tensors in, tensors out; no models, no state)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    label_smoothing: torch.Tensor | float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example DPO sigmoid loss with cDPO label smoothing.

    With z = beta * ((pi_c - ref_c) - (pi_r - ref_r)) and smoothing e (the probability that the
    label is flipped; a soft label p_chosen gives e = 1 - p_chosen):

        loss = -(1 - e) * log sigmoid(z) - e * log sigmoid(-z)

    Returns (loss, chosen_reward, rejected_reward), each of shape (B,), where the implicit rewards
    are beta * (pi - ref) and carry no gradient.
    """
    chosen_logratio = policy_chosen - ref_chosen
    rejected_logratio = policy_rejected - ref_rejected
    z = beta * (chosen_logratio - rejected_logratio)
    e = torch.as_tensor(label_smoothing, dtype=z.dtype, device=z.device)
    loss = -(1 - e) * F.logsigmoid(z) - e * F.logsigmoid(-z)
    return loss, beta * chosen_logratio.detach(), beta * rejected_logratio.detach()


def ipo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example IPO loss (Azar et al. 2023): regress the log-ratio gap onto 1 / (2 * beta).

        h = (pi_c - ref_c) - (pi_r - ref_r);  loss = (h - 1 / (2 * beta))^2

    Unlike the sigmoid loss it does not push the gap to infinity on pairs it already ranks right.
    Returns (loss, chosen_reward, rejected_reward) like ``dpo_loss``.
    """
    chosen_logratio = policy_chosen - ref_chosen
    rejected_logratio = policy_rejected - ref_rejected
    loss = (chosen_logratio - rejected_logratio - 1.0 / (2.0 * beta)) ** 2
    return loss, beta * chosen_logratio.detach(), beta * rejected_logratio.detach()


def gathered_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) per row of ``logits`` (N, V): logit[target] - logsumexp(logits), by torch's fused log-softmax
    and gather (``cross_entropy``, negated), whose backward is one pass over the logits: for 256 rows of SmolLM2's
    49k vocabulary, forward and backward took 91 -> 47 ms here and a forward alone 25 -> 18 ms against gather minus
    logsumexp (docs/benchmarks.md, session 38). Targets are token ids (none is cross_entropy's ignore_index)."""
    return -torch.nn.functional.cross_entropy(logits, targets, reduction="none")


def sequence_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Sum of log p(token) over the response tokens of each sequence.

    ``logits`` (B, T, V) predict position t+1 from position t; ``response_mask`` (B, T) marks the
    tokens of ``input_ids`` that belong to the response. Returns (B,).
    """
    logits = logits[:, :-1, :]
    targets = input_ids[:, 1:]
    mask = response_mask[:, 1:].to(logits.dtype)
    # log p = logit[target] - logsumexp(logits): avoids materialising a full log_softmax tensor.
    token_logp = torch.gather(logits, 2, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return (token_logp * mask).sum(-1)


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                      clip: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate per token -> (loss, clipped), both (B, T).

    ratio = exp(logp - old_logp); loss = max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)); ``clipped`` is 1
    where the clipped term is the larger (its gradient is then 0). ``advantages`` is (B, T), or (B, 1) for one
    advantage per sequence."""
    ratio = torch.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    return torch.maximum(unclipped, clipped), (clipped > unclipped).to(logp.dtype)


def ppo_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                    clip: float = 0.2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate over response tokens -> (loss, clip fraction, approx KL old->new).

    loss = mean of ``clipped_surrogate`` over the masked tokens; approx KL is mean(0.5 * (logp - old_logp)^2).
    """
    from openrlaif.optimize.advantages import masked_mean

    per_token, clipped = clipped_surrogate(logp, old_logp, advantages, clip)
    loss = masked_mean(per_token, mask)
    clipfrac = masked_mean(clipped, mask)
    approx_kl = masked_mean(0.5 * (logp - old_logp) ** 2, mask)
    return loss, clipfrac.detach(), approx_kl.detach()


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, clip: float, kl_coef: float, token_budget: int | None = None
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO's loss over response tokens (B, T) with one advantage per sequence (B,) -> (loss, stats).

    Per token: the clipped surrogate + kl_coef * k3, where k3 = exp(ref - logp) - (ref - logp) - 1 estimates
    KL(policy || reference) and is never negative (Shao et al. 2024 put the KL in the loss, not the reward).
    Aggregation: with ``token_budget`` None (GRPO), each sequence's mean over its own tokens, then the mean over
    sequences; with ``token_budget`` = L (Dr.GRPO), the sum over every token divided by B * L, a constant, so a
    token's weight does not depend on its sequence's length (no length bias). stats: clipfrac and the mean k3
    over the masked tokens (detached)."""
    from openrlaif.optimize.advantages import kl_estimate, masked_mean

    mask = mask.to(logp.dtype)
    surrogate, clipped = clipped_surrogate(logp, old_logp, advantages.unsqueeze(-1), clip)
    k3 = kl_estimate(logp, ref_logp, "k3")
    per_token = (surrogate + kl_coef * k3) * mask
    if token_budget is None:
        loss = (per_token.sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    else:
        loss = per_token.sum() / (logp.shape[0] * token_budget)
    return loss, {"clipfrac": masked_mean(clipped, mask).detach(), "kl": masked_mean(k3, mask).detach()}


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                   clip: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss -> (loss, value clip fraction).

    v_clipped = old + clip(v - old, -eps, eps); loss = 0.5 * mean(max((v - R)^2, (v_clipped - R)^2)).
    """
    from openrlaif.optimize.advantages import masked_mean

    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(loss_unclipped, loss_clipped), mask)
    clipfrac = masked_mean((loss_clipped > loss_unclipped).to(values.dtype), mask)
    return loss, clipfrac.detach()


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution of each position: logsumexp(z) - sum(softmax(z) * z)."""
    p = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (p * logits).sum(-1)


def sft_loss(summed_logps: torch.Tensor, token_counts: torch.Tensor) -> torch.Tensor:
    """Supervised fine-tuning loss: the mean negative log-likelihood per trained token of a batch, -sum of the
    sequences' summed log-probs / their total trained tokens (every token counts once, however its sequence
    is long: TRL's default)."""
    return -summed_logps.sum() / token_counts.sum().clamp(min=1)
