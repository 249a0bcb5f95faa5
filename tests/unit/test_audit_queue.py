"""Audit queue priorities, the random slice, Wilson intervals and human overrides, on hand-made rows."""

import pytest

from openrlaif.audit.db import AuditDB, apply_human_verdicts, token_digest
from openrlaif.audit.queue import (agreement, build_queue, doubt, human_agreement, pair_id, reviews_needed,
                                   shows_swapped, wilson_interval)


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
    assert counts == {"agree": 1, "flip": 1, "flag": 1, "disputed": 0} and len(out) == 3
    assert out[0]["source"] == "human" and out[0]["p_chosen"] == 1.0 and out[0]["chosen"] == rows[0]["chosen"]
    assert out[1]["chosen"] == rows[1]["rejected"] and out[1]["rejected"] == rows[1]["chosen"]
    assert out[1]["ai_p_chosen"] == 0.6 and out[2] is rows[3]
    assert apply_human_verdicts(rows, tmp_path / "missing.sqlite") == (rows, {"agree": 0, "flip": 0, "flag": 0,
                                                                               "disputed": 0})


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


def test_human_human_agreement_compares_the_first_two_deciders_by_name():
    by_pair = {
        "p1": {"bob": "agree", "alice": "agree"},  # same
        "p2": {"alice": "agree", "bob": "flip", "carol": "agree"},  # alice vs bob: different (carol is third)
        "p3": {"alice": "flag", "bob": "flip", "carol": "flip"},  # alice did not decide: bob vs carol, same
        "p4": {"alice": "agree"},  # one reviewer: not counted
        "p5": {"alice": "flag", "bob": "agree"},  # one decision: not counted
    }
    out = human_agreement(by_pair)
    assert out["n"] == 3 and out["agreement"] == pytest.approx(2 / 3)
    lo, hi = wilson_interval(2, 3)
    assert out["ci95"] == [lo, hi]
    assert human_agreement({}) == {"n": 0, "agreement": None, "ci95": None}


def test_overlap_items_come_from_the_random_slice_at_the_asked_share():
    pairs = [f"pair-{i}" for i in range(4000)]
    in_slice = [i % 5 == 0 for i in range(4000)]  # a 20% slice
    needed = [reviews_needed(p, s, overlap=0.1, slice_share=0.2) for p, s in zip(pairs, in_slice)]
    assert all(n == 1 for n, s in zip(needed, in_slice) if not s)
    assert sum(n == 2 for n in needed) / 4000 == pytest.approx(0.1, abs=0.015)  # half the slice, 10% of the queue
    assert all(reviews_needed(p, True, overlap=0.5, slice_share=0.2) == 2 for p in pairs[:50])  # more than the slice
    assert reviews_needed("x", True, overlap=0.0, slice_share=0.2) == 1
    assert needed == [reviews_needed(p, s, 0.1, 0.2) for p, s in zip(pairs, in_slice)]  # deterministic


def test_blind_sides_are_fixed_per_reviewer_and_balanced():
    draws = [shows_swapped(f"pair-{i}", "alice") for i in range(2000)]
    assert sum(draws) / 2000 == pytest.approx(0.5, abs=0.04)
    assert draws == [shows_swapped(f"pair-{i}", "alice") for i in range(2000)]
    assert draws != [shows_swapped(f"pair-{i}", "bob") for i in range(2000)]


def test_a_team_reviews_each_item_once_or_twice_and_disagreement_is_disputed(tmp_path):
    rows = [row(i, 0.6) for i in range(10)]
    db = AuditDB(tmp_path / "audit.sqlite")
    db.add_items(build_queue(rows, random_share=0.5, min_random=0, seed=3))
    assert db.set_overlap(1.0) == 5  # every random-slice item goes to two people
    token = db.add_reviewer("alice")
    db.add_reviewer("bob")
    stored = db.conn.execute("SELECT token_sha256 FROM reviewers WHERE name = 'alice'").fetchone()[0]
    assert stored == token_digest(token) and token not in stored  # only the hash is kept
    assert db.reviewer_for(token) == "alice" and db.reviewer_for("guess") is None
    with pytest.raises(ValueError, match="exists already"):
        db.add_reviewer("alice")
    with pytest.raises(ValueError, match="reviewer name"):
        db.add_reviewer("no spaces please")
    # Alice works through the queue: she sees every item once.
    seen = []
    while (item := db.next_item(seen[-1] if seen else None, "alice")) is not None:
        seen.append(item["pair_id"])
        db.record(item["pair_id"], "agree", reviewer="alice")
    assert len(seen) == 10
    # Bob is shown only the five items that need a second reviewer.
    doubled = {p for (p,) in db.conn.execute("SELECT pair_id FROM items WHERE reviews_needed = 2")}
    bob = []
    while (item := db.next_item(bob[-1] if bob else None, "bob")) is not None:
        bob.append(item["pair_id"])
        db.record(item["pair_id"], "flip" if len(bob) == 1 else "agree", reviewer="bob")
    assert set(bob) == doubled
    stats = db.stats()
    assert stats["human_human"]["n"] == 5 and stats["human_human"]["agreement"] == pytest.approx(4 / 5)
    assert stats["reviewers"] == 2 and stats["verdicts"] == 15 and stats["disputed"] == 1
    assert db.latest_verdicts()[bob[0]] == "disputed" and db.latest(bob[0], "alice")["verdict"] == "agree"
    assert db.remove_reviewer("bob") and db.reviewer_for(token) == "alice" and not db.remove_reviewer("bob")
    db.close()
    out, counts = apply_human_verdicts(rows, tmp_path / "audit.sqlite")
    assert counts == {"agree": 9, "flip": 0, "flag": 0, "disputed": 1} and len(out) == 9


def test_an_audit_database_from_before_reviewers_opens_and_keeps_its_verdicts(tmp_path):
    import sqlite3

    path = tmp_path / "audit.sqlite"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE items (pair_id TEXT PRIMARY KEY, position INTEGER NOT NULL, round INTEGER, row TEXT NOT NULL,
                            priority REAL NOT NULL, reasons TEXT NOT NULL, random_slice INTEGER NOT NULL);
        CREATE TABLE verdicts (id INTEGER PRIMARY KEY AUTOINCREMENT, pair_id TEXT NOT NULL, verdict TEXT NOT NULL,
                               note TEXT NOT NULL DEFAULT '', reviewer TEXT NOT NULL DEFAULT '', created TEXT NOT NULL);
        INSERT INTO items VALUES ('p1', 0, 1, '{"prompt": "q"}', 1.0, '[]', 1);
        INSERT INTO verdicts (pair_id, verdict, created) VALUES ('p1', 'flip', '2026-01-01');
    """)
    old.commit()
    old.close()
    db = AuditDB(path)
    assert db.item("p1")["reviews_needed"] == 1 and db.latest("p1")["verdict"] == "flip"
    assert db.latest("p1")["blind"] is False and db.stats()["random_slice_n"] == 1
    db.close()
