"""Pure RL maths for language-model policies: masked statistics, KL estimators, per-token rewards,
GAE, RLOO baselines and KL controllers. Tensors in, tensors out; each is unit-tested against
hand-computed values. Shapes: (B, T) over response tokens, with ``mask`` 1 on real tokens.

References: Ziegler et al. 2019 (per-token KL penalty, adaptive KL controller); Schulman et al. 2016
(GAE); Ahmadian et al. 2024 (RLOO); Shao et al. 2024 and Liu et al. 2025 (GRPO, Dr.GRPO); Schulman's "Approximating KL divergence" note (k1, k3).
"""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Population variance of the masked entries."""
    mean = masked_mean(x, mask)
    return masked_mean((x - mean) ** 2, mask)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked entries; ``shift_mean=False`` keeps the mean (reward whitening
    that only rescales). Masked-out entries come back as 0."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from sampled tokens' log-probs.

    k1 = log p - log q (unbiased, can be negative); k3 = (q/p - 1) - log(q/p) (unbiased, always >= 0).
    """
    log_ratio = ref_logp - logp  # log(q / p)
    if kind == "k1":
        return -log_ratio
    if kind == "k3":
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}; use k1 or k3")


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of each row's last real token (the response may start anywhere in the row; 0 if empty)."""
    positions = torch.arange(mask.shape[1], device=mask.device)
    return (mask.long() * positions).argmax(1)


def token_rewards(score: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per-token rewards: -kl_coef * KL on every response token, plus the sequence score on the last one."""
    rewards = -kl_coef * kl * mask.to(kl.dtype)
    rows = torch.arange(rewards.shape[0])
    rewards[rows, last_token_index(mask)] += score.to(rewards.dtype)
    return rewards


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(returns - values) / Var(returns) over the masked tokens: 1 = a perfect critic, 0 = no better than
    a constant, negative = worse than one."""
    var_returns = masked_var(returns, mask)
    if float(var_returns) == 0.0:
        return 0.0
    return float(1.0 - masked_var(returns - values, mask) / var_returns)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens -> (advantages, returns).

    delta_t = r_t + gamma * V_{t+1} - V_t, A_t = delta_t + gamma * lam * A_{t+1}; the value after a
    row's last real token is 0 (the episode ends there). returns = advantages + values.
    """
    mask = mask.to(values.dtype)
    B, T = rewards.shape
    advantages = torch.zeros_like(rewards)
    next_adv = torch.zeros(B, dtype=rewards.dtype)
    next_value = torch.zeros(B, dtype=rewards.dtype)
    for t in reversed(range(T)):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv = delta + gamma * lam * next_adv
        advantages[:, t] = adv * m
        # Padding after the end keeps the carried values at 0; a real token passes its own on.
        next_adv = adv * m
        next_value = values[:, t] * m
    return advantages, (advantages + values) * mask


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """REINFORCE leave-one-out: (P, k) rewards of k samples per prompt -> each minus the mean of the others."""
    k = rewards.shape[-1]
    if k < 2:
        raise ValueError("RLOO needs at least 2 samples per prompt")
    return rewards - (rewards.sum(-1, keepdim=True) - rewards) / (k - 1)


def group_advantages(rewards: torch.Tensor, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """GRPO's group-relative advantages: (P, k) rewards of k samples per prompt -> each minus its group's mean,
    divided by the group's standard deviation (the sample std, n - 1) + ``eps`` (Shao et al. 2024).
    ``scale=False`` is Dr.GRPO's unscaled variant (Liu et al. 2025): the std division favours groups whose
    rewards barely differ, so it is dropped. A group whose samples all score the same gets advantage 0."""
    k = rewards.shape[-1]
    if k < 2:
        raise ValueError("group advantages need at least 2 samples per prompt")
    centered = rewards - rewards.mean(-1, keepdim=True)
    if not scale:
        return centered
    return centered / (rewards.std(-1, keepdim=True) + eps)


class FixedKLController:
    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        pass


class AdaptiveKLController:
    """Ziegler et al. 2019: move the KL coefficient so the observed KL tracks ``target``.

    error = clip(KL / target - 1, -0.2, 0.2); coef *= 1 + error * n_steps / horizon.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.value = init_kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
