"""Pure win-rate statistics: outcomes from judge probabilities, bootstrap confidence intervals."""

from __future__ import annotations

import random


def outcomes(p_trained: list[float], tie_margin: float) -> list[float]:
    """1 = trained policy wins, 0 = loses, 0.5 = tie (|p - 0.5| <= tie_margin)."""
    eps = 1e-9  # so that 0.55 and 0.45 sit on the same side of a 0.05 margin despite float error
    return [0.5 if abs(p - 0.5) <= tie_margin + eps else (1.0 if p > 0.5 else 0.0) for p in p_trained]


def win_rate(scores: list[float]) -> float:
    """Mean outcome: wins count 1, ties 0.5."""
    return sum(scores) / len(scores) if scores else float("nan")


def bootstrap_ci(scores: list[float], n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean over prompts (resampled with replacement)."""
    if not scores:
        return float("nan"), float("nan")
    rng = random.Random(seed)
    n = len(scores)
    means = sorted(sum(rng.choice(scores) for _ in range(n)) / n for _ in range(n_boot))
    lo_i = int((1 - level) / 2 * n_boot)
    hi_i = min(n_boot - 1, int((1 + level) / 2 * n_boot) - 1)
    return means[lo_i], means[hi_i]
