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


def percentile_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` interval of bootstrap replicates (percentile method)."""
    values = sorted(values)
    n = len(values)
    return values[int((1 - level) / 2 * n)], values[min(n - 1, int((1 + level) / 2 * n) - 1)]


def bootstrap_ci(scores: list[float], n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean over prompts (resampled with replacement)."""
    if not scores:
        return float("nan"), float("nan")
    rng = random.Random(seed)
    n = len(scores)
    return percentile_interval([sum(rng.choice(scores) for _ in range(n)) / n for _ in range(n_boot)], level)


def cluster_bootstrap_ci(groups: list[list[float]], n_boot: int = 2000, seed: int = 0,
                         level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean outcome when each prompt contributes several outcomes:
    prompts are resampled (not single answers), so answers to the same prompt are not counted as
    independent evidence. With one outcome per prompt it equals ``bootstrap_ci``."""
    groups = [g for g in groups if g]
    if not groups:
        return float("nan"), float("nan")
    rng = random.Random(seed)
    n = len(groups)
    means = []
    for _ in range(n_boot):
        picked = [rng.choice(groups) for _ in range(n)]
        means.append(sum(sum(g) for g in picked) / sum(len(g) for g in picked))
    return percentile_interval(means, level)


def logistic_fit(y: list[float], x: list[float], ridge: float = 1e-6, iters: int = 100) -> tuple[float, float]:
    """(intercept, slope) of P(y=1) = sigmoid(a + b x) by Newton's method; ``y`` may be fractional (a tie
    is 0.5). A tiny ridge keeps separable data finite."""
    import math

    a = b = 0.0
    n = len(y)
    for _ in range(iters):
        ga = gb = haa = hab = hbb = 0.0
        for yi, xi in zip(y, x):
            z = a + b * xi
            p = 1 / (1 + math.exp(-z)) if z > -700 else 0.0
            w = p * (1 - p)
            ga += p - yi
            gb += (p - yi) * xi
            haa += w
            hab += w * xi
            hbb += w * xi * xi
        ga += ridge * n * a
        gb += ridge * n * b
        haa += ridge * n
        hbb += ridge * n
        det = haa * hbb - hab * hab
        if det <= 0:
            break
        da = (hbb * ga - hab * gb) / det
        db = (haa * gb - hab * ga) / det
        a, b = a - da, b - db
        if abs(da) < 1e-10 and abs(db) < 1e-10:
            break
    return a, b


def length_controlled_win_rate(scores: list[float], length_diff: list[float]) -> dict:
    """The win rate with the answers' length difference regressed out (as AlpacaEval's length-controlled
    win rate does): fit P(win) = sigmoid(a + b * d) on the outcomes (tie = 0.5) against d = trained minus
    start length, and report sigmoid(a), the predicted win rate at equal lengths. ``slope_per_100`` is
    the change in log-odds of a win per 100 extra tokens."""
    import math

    if not scores:
        return {"win_rate": float("nan"), "slope_per_100": float("nan")}
    if len(set(length_diff)) < 2:  # no length variation: nothing to control for
        return {"win_rate": win_rate(scores), "slope_per_100": 0.0}
    mean = sum(length_diff) / len(length_diff)
    sd = (sum((d - mean) ** 2 for d in length_diff) / len(length_diff)) ** 0.5
    # Centre at zero difference (not at the mean): the question is "at equal length", so only rescale.
    a, b = logistic_fit(scores, [d / sd for d in length_diff])
    return {"win_rate": 1 / (1 + math.exp(-a)), "slope_per_100": b / sd * 100}


def length_summary(lengths: list[int], bins: int = 10, top: int | None = None) -> dict:
    """Mean, 10/50/90th percentiles and a histogram (``bins`` equal bins from 0 to ``top`` or the max)."""
    if not lengths:
        return {"n": 0}
    s = sorted(lengths)

    def q(f: float) -> int:
        return s[min(len(s) - 1, int(f * len(s)))]

    top = top or max(s) or 1
    width = top / bins
    hist = [0] * bins
    for v in s:
        hist[min(bins - 1, int(v / width))] += 1
    return {"n": len(s), "mean": round(sum(s) / len(s), 2), "p10": q(0.1), "p50": q(0.5), "p90": q(0.9),
            "hist": hist, "hist_edges": [round(i * width, 2) for i in range(bins + 1)]}


def paired_bootstrap_diff(a: list, b: list, stat, n_boot: int = 2000, seed: int = 0,
                          level: float = 0.95) -> tuple[float, float, float]:
    """stat(a) - stat(b) for two systems scored on the same items, and its percentile bootstrap CI:
    items are resampled together (a[i] with b[i]), so the CI is of the paired difference."""
    if len(a) != len(b) or not a:
        raise ValueError("paired_bootstrap_diff needs two equally long, non-empty lists")
    rng = random.Random(seed)
    n = len(a)
    diffs = []
    for _ in range(n_boot):
        idx = [rng.randrange(n) for _ in range(n)]
        diffs.append(stat([a[i] for i in idx]) - stat([b[i] for i in idx]))
    lo, hi = percentile_interval(diffs, level)
    return stat(a) - stat(b), lo, hi


def margin_outcomes(margins: list[float]) -> list[float]:
    """1 when a pair's margin favours the chosen reply, 0 when it favours the rejected one, 0.5 at exactly 0."""
    return [1.0 if m > 0 else 0.0 if m < 0 else 0.5 for m in margins]
