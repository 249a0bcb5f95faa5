"""Audit queue priorities, the random slice, Wilson intervals and human overrides, on hand-made rows."""

import pytest

from openrlaif.audit.db import AuditDB, apply_human_verdicts
from openrlaif.audit.queue import agreement, build_queue, doubt, pair_id, wilson_interval


def row(i, p, ab=None, ba=None):
    return {"prompt": [{"role": "user", "content": f"q{i}"}], "chosen": [{"role": "assistant", "content": f"c{i}"}],
            "rejected": [{"role": "assistant", "content": f"r{i}"}], "p_chosen": p, "scores_ab": ab, "scores_ba": ba,
            "principle": "helpful", "round": 1, "source": "ai"}


def test_doubt_adds_up_its_reasons():
    assert doubt(row(0, 1.0)) == (0.0, [])
    assert doubt(row(0, 0.55)) == (pytest.approx(0.9), ["low confidence"])
    score, reasons = doubt(row(0, 0.55, ab=0.8, ba=0.3), rm_margin=-0.2)
    assert score == pytest.approx(2.9) and reasons == ["low confidence", "position inconsistent", "reward model disagrees"]
    assert doubt(row(0, 0.9, ab=0.9, ba=0.9), rm_margin=0.5) == (pytest.approx(0.2), [])


def test_queue_puts_doubtful_labels_first_and_spreads_the_random_slice():
    rows = [row(i, 0.5 + i / 40) for i in range(20)]  # p from 0.5 (most doubtful) up to 0.975
    queue = build_queue(rows, random_share=0.25, min_random=2, seed=1)
    assert len(queue) == 20 and len({q.pair_id for q in queue}) == 20
    rand = [i for i, q in enumerate(queue) if q.random_slice]
    assert rand == [0, 4, 8, 12, 16]  # 5 random items at evenly spaced slots, the first on top
    ranked = [q.priority for q in queue if not q.random_slice]
    assert ranked == sorted(ranked, reverse=True)
    # min_random wins over a small share; the slice never exceeds the rows
    assert sum(q.random_slice for q in build_queue(rows[:3], random_share=0.1, min_random=10)) == 3


def test_pair_id_is_stable_and_orientation_sensitive():
    a = row(1, 0.7)
    assert pair_id(a) == pair_id(dict(a))
    flipped = dict(a, chosen=a["rejected"], rejected=a["chosen"])
    assert pair_id(flipped) != pair_id(a)


def test_wilson_interval_matches_the_hand_computed_values():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.49016, abs=1e-4) and hi == pytest.approx(0.94333, abs=1e-4)
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0


def test_agreement_uses_the_random_slice_and_leaves_flags_out():
    stats = agreement([("agree", True), ("flip", True), ("agree", True), ("flag", True), ("flip", False)])
    assert stats["random_slice_n"] == 3 and stats["agreement"] == pytest.approx(2 / 3)
    assert stats["all_reviewed_n"] == 4 and stats["all_reviewed_agreement"] == 0.5 and stats["flagged"] == 1
    assert agreement([("flip", False)])["agreement"] is None


def test_human_verdicts_override_the_ai_labels(tmp_path):
    rows = [row(i, 0.6) for i in range(4)]
    db = AuditDB(tmp_path / "audit.sqlite")
    db.add_items(build_queue(rows, min_random=0, random_share=0))
    db.record(pair_id(rows[0]), "agree")
    db.record(pair_id(rows[1]), "agree")
    db.record(pair_id(rows[1]), "flip", note="B answers the question")  # the latest verdict counts
    db.record(pair_id(rows[2]), "flag")
    with pytest.raises(ValueError):
        db.record(pair_id(rows[3]), "maybe")
    with pytest.raises(KeyError):
        db.record("no-such-pair", "agree")
    db.close()
    out, counts = apply_human_verdicts(rows, tmp_path / "audit.sqlite")
    assert counts == {"agree": 1, "flip": 1, "flag": 1} and len(out) == 3
    assert out[0]["source"] == "human" and out[0]["p_chosen"] == 1.0 and out[0]["chosen"] == rows[0]["chosen"]
    assert out[1]["chosen"] == rows[1]["rejected"] and out[1]["rejected"] == rows[1]["chosen"]
    assert out[1]["ai_p_chosen"] == 0.6 and out[2] is rows[3]
    assert apply_human_verdicts(rows, tmp_path / "missing.sqlite") == (rows, {"agree": 0, "flip": 0, "flag": 0})


def test_requeueing_keeps_places_and_verdicts(tmp_path):
    rows = [row(i, 0.6) for i in range(3)]
    db = AuditDB(tmp_path / "audit.sqlite")
    assert db.add_items(build_queue(rows, min_random=0, random_share=0)) == 3
    first = db.next_item()
    db.record(first["pair_id"], "agree")
    assert db.add_items(build_queue(rows + [row(9, 0.6)], min_random=0, random_share=0)) == 1
    assert db.item(first["pair_id"])["verdict"]["verdict"] == "agree"
    assert db.next_item()["pair_id"] != first["pair_id"]
    assert db.stats()["queued"] == 4 and db.stats()["reviewed"] == 1
