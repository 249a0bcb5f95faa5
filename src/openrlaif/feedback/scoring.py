"""The maths of feedback, as pure functions: order-averaged probabilities, score -> probability, expected
ratings, aggregation over an ensemble, position statistics."""

from __future__ import annotations

import math

from openrlaif.feedback.types import Comparison, Verdict


def logsumexp(values: list[float]) -> float:
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


def prob_first_slot(logp_a: list[float], logp_b: list[float]) -> float:
    """P(slot A is better) from the log-probs of the tokens that spell 'A' and those that spell 'B'.

    The probability mass of each answer is summed over its token variants, then renormalised over
    the two answers: sigmoid(logsumexp(A) - logsumexp(B)).
    """
    d = logsumexp(logp_a) - logsumexp(logp_b)
    return 1.0 / (1.0 + math.exp(-d)) if d > -700 else 0.0


def combine_orders(p_a_when_first_is_a: float, p_a_when_first_is_b: float) -> tuple[float, float, float]:
    """Both orders -> (p_first averaged, score_ab, score_ba), all as P(first is better).

    In the swapped order the first response sits in slot B, so P(first better) = 1 - P(A better).
    """
    score_ab = p_a_when_first_is_a
    score_ba = 1.0 - p_a_when_first_is_b
    return (score_ab + score_ba) / 2.0, score_ab, score_ba


def position_stats(verdicts: list[Verdict]) -> dict[str, float | int]:
    """Position consistency, first-position rate and confidence of a list of scored verdicts.

    - position_consistency: share of comparisons whose two orders pick the same response;
    - first_position_rate: share of the 2n single-order readings that prefer slot A (0.5 = no bias);
    - mean_confidence: mean of max(p, 1 - p) of the averaged probability (0.5 = coin flip).
    """
    scored = [v for v in verdicts if v.p_first is not None]
    n = len(scored)
    if n == 0:
        return {"n": 0, "unscored": len(verdicts), "position_consistency": None,
                "first_position_rate": None, "mean_confidence": None}
    consistent = sum((v.score_ab > 0.5) == (v.score_ba > 0.5) for v in scored)
    # Slot A holds `first` in the AB reading and `second` in the BA reading.
    picks_a = sum(v.score_ab > 0.5 for v in scored) + sum(v.score_ba <= 0.5 for v in scored)
    return {
        "n": n,
        "unscored": len(verdicts) - n,
        "position_consistency": consistent / n,
        "first_position_rate": picks_a / (2 * n),
        "mean_confidence": sum(max(v.p_first, 1 - v.p_first) for v in scored) / n,
    }


def aggregate_probabilities(ps: list[float], how: str) -> tuple[float, float]:
    """Ensemble of member probabilities -> (p, disagreement).

    'mean' averages the probabilities; 'majority' is the share of members preferring the first
    response (0.5 on a split vote). Disagreement is the share of members on the minority side
    (0 = unanimous, 0.5 = evenly split).
    """
    if not ps:
        raise ValueError("no member probabilities")
    votes = sum(1.0 if p > 0.5 else 0.0 if p < 0.5 else 0.5 for p in ps) / len(ps)
    disagreement = min(votes, 1.0 - votes)
    if how == "mean":
        return sum(ps) / len(ps), disagreement
    if how == "majority":
        return votes, disagreement
    raise ValueError(f"unknown aggregation {how!r}")


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def contrastive_score(logp_positive: float, logp_negative: float, n_tokens: int, normalize: str) -> float:
    """Log-likelihood ratio of a response under the positive vs the negative system prompt.

    ``normalize='mean'`` divides by the response length in tokens (a per-token ratio), ``'sum'`` keeps
    the total, which grows with length.
    """
    diff = logp_positive - logp_negative
    if normalize == "mean":
        return diff / max(n_tokens, 1)
    if normalize == "sum":
        return diff
    raise ValueError(f"unknown normalize {normalize!r}")


def pair_probability(score_first: float, score_second: float, temperature: float) -> float:
    """P(first is better) = sigmoid((score_first - score_second) / temperature)."""
    return sigmoid((score_first - score_second) / temperature)


def compare_by_scores(items: list[Comparison], unit_of, score_units, temperature: float) -> list[Verdict]:
    """Verdicts for judges that score each response alone.

    ``unit_of(item, response)`` gives the hashable unit to score; each distinct unit is scored once by
    ``score_units(units)``, however many pairs share it; P(first) = sigmoid(score difference / T). A score
    of None (a rating that could not be read) makes that pair's verdict an error, never a guess.
    """
    index: dict = {}
    for it in items:
        for response in (it.first, it.second):
            index.setdefault(unit_of(it, response), len(index))
    scores = score_units(list(index))
    verdicts = []
    for it in items:
        a, b = scores[index[unit_of(it, it.first)]], scores[index[unit_of(it, it.second)]]
        if a is None or b is None:
            verdicts.append(Verdict(None, None, None, it.principle.id, error="unreadable rating",
                                    raw={"score_first": a, "score_second": b}))
            continue
        p = pair_probability(a, b, temperature)
        verdicts.append(Verdict(p, p, p, it.principle.id, raw={"score_first": a, "score_second": b}))
    return verdicts


def expected_rating(logps: list[list[float]] | dict[int, list[float]]) -> float | None:
    """E[rating] from each digit's token log-probs (a list indexed by digit 0..9, or {digit: log-probs} for
    the digits an API listed), renormalised over the digits given; None when no digit is given."""
    by_digit = dict(enumerate(logps)) if isinstance(logps, list) else logps
    per_digit = {d: logsumexp(g) for d, g in by_digit.items() if g}
    if not per_digit:
        return None
    m = max(per_digit.values())
    weights = {d: math.exp(v - m) for d, v in per_digit.items()}
    return sum(d * w for d, w in weights.items()) / sum(weights.values())


def select_pairs(n: int, p_better: dict[tuple[int, int], float], mode: str, min_margin: float = 0.0
                 ) -> list[tuple[int, int, float]]:
    """Choose (chosen, rejected, p_chosen) among ``n`` candidates from judged pair probabilities.

    ``p_better[(i, j)]`` (i < j) is P(candidate i beats candidate j). Every pair is oriented so that
    p_chosen >= 0.5. 'best_worst' keeps one pair per prompt: the candidate with the highest mean win
    probability against the others vs the one with the lowest. Pairs with |p - 0.5| < min_margin
    are dropped as too uncertain.
    """

    def p(i: int, j: int) -> float:
        return p_better[(i, j)] if (i, j) in p_better else 1.0 - p_better[(j, i)]

    def oriented(i: int, j: int) -> tuple[int, int, float]:
        q = p(i, j)
        return (i, j, q) if q >= 0.5 else (j, i, 1.0 - q)

    judged = sorted({i for pair in p_better for i in pair})
    if len(judged) < 2:
        return []
    if mode == "all":
        pairs = [oriented(i, j) for i, j in sorted(p_better)]
    elif mode == "best_worst":
        neighbours = {i: [j for j in judged if j != i and (min(i, j), max(i, j)) in p_better] for i in judged}
        wins = {i: sum(p(i, j) for j in neighbours[i]) / len(neighbours[i]) for i in judged}
        best = max(judged, key=lambda i: (wins[i], -i))
        worst = min(judged, key=lambda i: (wins[i], i))
        if best == worst or (min(best, worst), max(best, worst)) not in p_better:
            return []
        pairs = [oriented(best, worst)]
    else:
        raise ValueError(f"unknown pair mode {mode!r}")
    return [t for t in pairs if t[2] - 0.5 >= min_margin]
