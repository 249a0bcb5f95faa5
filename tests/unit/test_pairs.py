"""select_pairs: best_worst / all selection, orientation, margins, missing comparisons; the judge-directed policy."""

import pytest

from openrlaif.feedback.scoring import select_pairs

# P(i beats j) for i < j. Mean win probabilities:
#   0: (0.8 + 0.6) / 2 = 0.70
#   1: (0.2 + 0.3) / 2 = 0.25
#   2: (0.4 + 0.7) / 2 = 0.55
P3 = {(0, 1): 0.8, (0, 2): 0.6, (1, 2): 0.3}


def test_best_worst_hand_computed():
    assert select_pairs(3, P3, "best_worst") == [(0, 1, pytest.approx(0.8))]


def test_best_worst_n4():
    # wins: 0: (0.9+0.4+0.5)/3=0.6  1: (0.1+0.2+0.3)/3=0.2  2: (0.6+0.8+0.45)/3=0.6167  3: (0.5+0.7+0.55)/3=0.5833
    p = {(0, 1): 0.9, (0, 2): 0.4, (0, 3): 0.5, (1, 2): 0.2, (1, 3): 0.3, (2, 3): 0.45}
    assert select_pairs(4, p, "best_worst") == [(2, 1, pytest.approx(0.8))]


def test_best_worst_orients_when_p_below_half():
    # wins: 0: (0.1+0.3)/2=0.2  1: (0.9+0.6)/2=0.75  2: (0.7+0.4)/2=0.55 -> best 1, worst 0; P(1 beats 0)=0.9
    p = {(0, 1): 0.1, (0, 2): 0.3, (1, 2): 0.6}
    ((c, r, q),) = select_pairs(3, p, "best_worst")
    assert (c, r) == (1, 0)
    assert q == pytest.approx(0.9)


def test_all_pairs_oriented():
    got = select_pairs(3, P3, "all")
    assert got == [(0, 1, pytest.approx(0.8)), (0, 2, pytest.approx(0.6)), (2, 1, pytest.approx(0.7))]
    assert all(q >= 0.5 for _, _, q in got)


def test_all_pairs_keeps_exact_half():
    assert select_pairs(2, {(0, 1): 0.5}, "all") == [(0, 1, 0.5)]


def test_min_margin_drops_uncertain():
    # margins: 0.3, 0.1, 0.2 -> 0.15 keeps the first and the last
    got = select_pairs(3, P3, "all", min_margin=0.15)
    assert [(c, r) for c, r, _ in got] == [(0, 1), (2, 1)]
    assert select_pairs(3, P3, "best_worst", min_margin=0.25) == [(0, 1, pytest.approx(0.8))]
    assert select_pairs(3, P3, "best_worst", min_margin=0.35) == []


def test_unjudged_candidate_is_ignored():
    # Candidate 3 was never judged (e.g. an empty or duplicate answer): same result as n=3.
    assert select_pairs(4, P3, "best_worst") == select_pairs(3, P3, "best_worst")
    assert len(select_pairs(4, P3, "all")) == 3


def test_partial_comparisons_use_own_neighbours():
    # 1 vs 2 never judged. wins: 0: (0.3+0.2)/2=0.25, 1: 0.7, 2: 0.8 -> best 2, worst 0; P(2 beats 0)=0.8
    p = {(0, 1): 0.3, (0, 2): 0.2}
    assert select_pairs(3, p, "best_worst") == [(2, 0, pytest.approx(0.8))]


def test_best_and_worst_never_compared_gives_nothing():
    # wins: 0: 0.9, 1: (0.1+0.9)/2=0.5, 2: 0.1; best 0 and worst 2 were not compared.
    p = {(0, 1): 0.9, (1, 2): 0.9}
    assert select_pairs(3, p, "best_worst") == []


def test_all_tied_gives_nothing_for_best_worst():
    p = {(0, 1): 0.5, (0, 2): 0.5, (1, 2): 0.5}
    assert select_pairs(3, p, "best_worst") == []


def test_fewer_than_two_candidates():
    assert select_pairs(0, {}, "best_worst") == []
    assert select_pairs(1, {}, "all") == []
    assert select_pairs(5, {}, "all") == []


def test_single_pair():
    assert select_pairs(2, {(0, 1): 0.35}, "best_worst") == [(1, 0, pytest.approx(0.65))]


def test_unknown_mode():
    with pytest.raises(ValueError, match="unknown pair mode"):
        select_pairs(3, P3, "random")


def test_the_judge_directed_policy_on_one_comparison():
    from openrlaif.stages.label import directed_fields, directed_p_first

    assert directed_p_first(0.9, True, False, "penalize") == 0.0  # the directed first reply loses
    assert directed_p_first(0.2, False, True, "penalize") == 1.0
    assert directed_p_first(0.7, True, True, "penalize") == 0.7  # both address the judge: the judge decides
    assert directed_p_first(0.9, True, False, "audit") == 0.9
    assert directed_fields(True, False, "audit")["held_for_review"] is True
    assert directed_fields(False, True, "audit") == {"judge_directed": True, "chosen_directed": False,
                                                     "rejected_directed": True, "held_for_review": False}
    assert directed_fields(True, False, "keep")["held_for_review"] is False


def test_judge_directed_pairs_lead_the_audit_queue():
    from openrlaif.audit.queue import build_queue, doubt

    plain = {"p_chosen": 0.5, "scores_ab": 0.9, "scores_ba": 0.1}  # as doubtful as a pair gets: 2 + rm 1
    score, reasons = doubt({"p_chosen": 0.99, "judge_directed": True, "held_for_review": True})
    assert score > doubt(plain, -1.0)[0] and "held from training" in reasons[-1]
    rows = [dict(plain, id=i) for i in range(5)] + [{"p_chosen": 0.99, "judge_directed": True, "id": 5}]
    assert build_queue(rows, random_share=0, min_random=0)[0].row["id"] == 5
