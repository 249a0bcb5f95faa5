"""Pure reward-model maths: the Bradley-Terry loss with soft labels, and ensemble aggregation.

Tensors in, tensors out; no models. The trainer (reward issue) and the RL reward callables use these.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, p_chosen: torch.Tensor | float = 1.0,
                       margin: torch.Tensor | float = 0.0, center_coef: float = 0.0) -> torch.Tensor:
    """Per-pair Bradley-Terry loss: cross-entropy of sigmoid(r_c - r_r - margin) to the soft label.

        d = r_chosen - r_rejected - margin
        loss = -(p * log sigmoid(d) + (1 - p) * log sigmoid(-d)) + center_coef * (r_chosen + r_rejected)^2

    ``p_chosen`` is the judge's probability (1.0 = a hard label). The centering term (Eisenstein et al.
    2023) keeps rewards near zero without changing which response wins. Returns shape (B,).
    """
    d = r_chosen - r_rejected - torch.as_tensor(margin, dtype=r_chosen.dtype)
    p = torch.as_tensor(p_chosen, dtype=r_chosen.dtype)
    loss = -(p * F.logsigmoid(d) + (1 - p) * F.logsigmoid(-d))
    if center_coef:
        loss = loss + center_coef * (r_chosen + r_rejected) ** 2
    return loss


def preference_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> float:
    """Share of pairs where the chosen response gets the higher reward (ties count half)."""
    wins = (r_chosen > r_rejected).float() + 0.5 * (r_chosen == r_rejected).float()
    return float(wins.mean())


def aggregate_ensemble(rewards: torch.Tensor, how: str = "mean", lam: float = 1.0) -> torch.Tensor:
    """Combine per-member rewards (K, B) into one reward per example (B,).

    'mean' averages; 'min' takes the worst case (conservative against a member's blind spot);
    'uwo' is uncertainty-weighted: mean - lam * std across members (Coste et al. 2023).
    """
    if rewards.dim() != 2 or rewards.shape[0] < 1:
        raise ValueError("expected rewards of shape (members, batch)")
    if how == "mean":
        return rewards.mean(0)
    if how == "min":
        return rewards.min(0).values
    if how == "uwo":
        std = rewards.std(0, unbiased=False) if rewards.shape[0] > 1 else torch.zeros_like(rewards[0])
        return rewards.mean(0) - lam * std
    raise ValueError(f"unknown aggregation {how!r}; use mean, min or uwo")
