"""Rounds: per-round overrides, which rounds' pairs train, and the stop rules (pure functions)."""

import pytest

from openrlaif.config import load_config
from openrlaif.core.errors import UserError
from openrlaif.data.preferences import select_rounds
from openrlaif.rounds import check_round_overrides, round_config, stop_reason


def cfg_with(*overrides):
    return load_config(None, list(overrides))


def test_round_config_applies_only_that_rounds_overrides():
    cfg = cfg_with("pipeline.rounds=3", "pipeline.overrides={2: ['train.learning_rate=1e-5', 'generate.n=6']}")
    assert round_config(cfg, 1) is cfg
    r2 = round_config(cfg, 2)
    assert r2.train.learning_rate == pytest.approx(1e-5) and r2.generate.n == 6
    assert round_config(cfg, 3).generate.n == cfg.generate.n == 4
    check_round_overrides(cfg)


@pytest.mark.parametrize("override, needle", [
    ("pipeline.overrides={2: ['model.policy=other']}", "'model.policy' cannot change between rounds"),
    ("pipeline.overrides={2: ['pipeline.rounds=5']}", "'pipeline.rounds' cannot change"),
    ("pipeline.overrides={2: ['train.nope=1']}", "pipeline.overrides[2]: unknown config key 'train.nope'"),
    ("pipeline.overrides={2: ['generate.n=zero']}", "pipeline.overrides[2]: field 'generate.n'"),
    ("pipeline.overrides={5: ['generate.n=2']}", "round 5 is not one of rounds 2..2"),
    ("pipeline.overrides={1: ['generate.n=2']}", "round 1 uses the config itself"),
])
def test_bad_round_overrides_are_one_clear_line(override, needle):
    cfg = cfg_with("pipeline.rounds=2", override)
    with pytest.raises(UserError) as err:
        check_round_overrides(cfg)
    assert needle in str(err.value) and "\n" not in str(err.value)


def rows(k, n):
    return [{"round": k, "i": i} for i in range(n)]


def test_select_rounds():
    by = {1: rows(1, 10), 2: rows(2, 6), 3: rows(3, 4)}
    assert select_rounds(by, 3, "newest", 0.5, 0) == by[3]
    assert select_rounds(by, 3, "all", 0.5, 0) == by[1] + by[2] + by[3]
    mixed = select_rounds(by, 3, "mix", 0.5, 0)
    assert mixed[:4] == by[3] and len(mixed) == 6  # round(0.5 * 4) = 2 earlier pairs
    assert all(r["round"] in (1, 2) for r in mixed[4:]) and len({(r["round"], r["i"]) for r in mixed[4:]}) == 2
    assert mixed == select_rounds(by, 3, "mix", 0.5, 0)  # seeded
    assert len(select_rounds(by, 3, "mix", 100.0, 0)) == 4 + 16  # capped at what there is
    assert select_rounds({1: rows(1, 3)}, 1, "all", 0.5, 0) == rows(1, 3)


def test_stop_rules_in_order():
    cfg = cfg_with("pipeline.stop_min_gain=0.05", "pipeline.stop_max_kl=2.0", "pipeline.stop_max_disagreement=0.3",
                   "pipeline.stop_min_audited=10")
    ok_eval = {"win_rate": 0.7, "win_rate_vs_previous": 0.6, "kl_to_start": 1.0}
    assert stop_reason(cfg, 2, ok_eval, {"monitor": {"alarm_step": None}}, None) is None
    assert "alarm" in stop_reason(cfg, 2, ok_eval, {"monitor": {"alarm_step": 6}}, None)
    assert "(update 6)" in stop_reason(cfg, 2, ok_eval, {"monitor": {"alarm_step": 6}}, None)
    no_alarm_rule = cfg_with("pipeline.stop_on_alarm=false")
    assert stop_reason(no_alarm_rule, 2, ok_eval, {"monitor": {"alarm_step": 6}}, None) is None
    assert "budget" in stop_reason(cfg, 2, ok_eval | {"kl_to_start": 2.5}, {}, None)
    # gain: round 2 reads the win rate against the previous round, 0.54 - 0.5 < 0.05
    assert "previous round 0.540" in stop_reason(cfg, 2, ok_eval | {"win_rate_vs_previous": 0.54}, {}, None)
    assert stop_reason(cfg, 2, ok_eval | {"win_rate_vs_previous": 0.56}, {}, None) is None
    # round 1 has no previous round: its win rate against the start
    assert "start 0.520" in stop_reason(cfg, 1, {"win_rate": 0.52, "kl_to_start": 0.1}, {}, None)
    # people: 40% disagreement on 12 random-slice pairs > 30%; too few audited pairs do not count
    assert "disagree with 40%" in stop_reason(cfg, 2, ok_eval, {}, {"random_slice_n": 12, "agreement": 0.6})
    assert stop_reason(cfg, 2, ok_eval, {}, {"random_slice_n": 9, "agreement": 0.0}) is None
    assert stop_reason(cfg, 2, ok_eval, {}, {"random_slice_n": 12, "agreement": 0.75}) is None
