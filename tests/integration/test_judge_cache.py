"""The persistent judge cache: an interrupted `label` resumes without re-judging anything."""

import json

import pytest

from openrlaif import pipeline
from openrlaif.feedback import judges
from openrlaif.core.cache import JudgeCache, cache_key, cached_compute


def test_cache_roundtrip_and_partial_batches(tmp_path):
    cache = JudgeCache(tmp_path / "c.sqlite")
    keys = [cache_key("m", i) for i in range(5)]
    computed = []

    def compute(missing, on_batch):
        for i in missing:
            if i == 3:
                raise KeyboardInterrupt  # interrupted half-way
            computed.append(i)
            on_batch({i: [i * 1.5]})

    with pytest.raises(KeyboardInterrupt):
        cached_compute(cache, keys, compute)
    assert len(cache) == 3  # batches finished before the interrupt are stored
    cache.close()
    cache = JudgeCache(tmp_path / "c.sqlite")  # a new process opens the same file
    computed.clear()
    values = cached_compute(cache, keys, lambda missing, on_batch: on_batch({i: [i * 1.5] for i in missing}))
    assert values == [[0.0], [1.5], [3.0], [4.5], [6.0]]
    assert (cache.hits, cache.misses) == (3, 2)
    assert cache_key("a", [1, 2]) != cache_key("a", [2, 1])


@pytest.mark.parametrize("method", ["pairwise", "contrastive"])
def test_interrupted_label_rejudges_nothing(tiny_config, tmp_path, monkeypatch, method):
    cfg = tiny_config.model_copy(deep=True)
    cfg.feedback.method = method
    cfg.label.batch_size = 2
    store = pipeline.open_run(cfg, tmp_path / "run")
    pipeline.run_stage("generate", cfg, store)

    # 1. Interrupt the judge after two batches (the LM head runs once per sequence for the pairwise judge's next
    #    token, once per batch for the contrastive judge's reply positions).
    import openrlaif.models.logprobs as lp

    target = (lp, "decoder_and_head")
    real = getattr(*target)
    calls = {"n": 0}
    allowed = 4 if method == "pairwise" else 2

    def flaky(model):
        decoder, head = real(model)

        def counted(hidden):
            calls["n"] += 1
            if calls["n"] > allowed:
                raise KeyboardInterrupt
            return head(hidden)

        return decoder, counted

    monkeypatch.setattr(*target, flaky)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_stage("label", cfg, store)
    assert store.stage_status("label")["status"] == "failed"
    monkeypatch.setattr(*target, real)

    # 2. Run it again: the two finished batches come from the cache.
    pipeline.run_stage("label", cfg, store)
    stats = json.loads(store.path("judge_stats.json").read_text())
    assert stats["cache"]["hits"] == 4  # 2 batches x 2 sequences
    total = stats["cache"]["hits"] + stats["cache"]["misses"]

    # 3. A third run judges nothing at all and writes the same preferences.
    before = store.path("preferences.jsonl").read_text()
    def fail(*a, **k):
        pytest.fail("the judge ran although everything was cached")

    for module, name in ((lp, "prefix_hidden_states"), (lp, "batch_logprobs"), (judges, "last_position_logits")):
        monkeypatch.setattr(module, name, fail)
    pipeline.run_stage("label", cfg, store)
    stats = json.loads(store.path("judge_stats.json").read_text())
    assert (stats["cache"]["hits"], stats["cache"]["misses"]) == (total, 0)
    assert store.path("preferences.jsonl").read_text() == before
    assert (store.root / "judge_cache.sqlite").is_file()


@pytest.mark.parametrize("action", ["stop", "warn"])
def test_judge_gate(tiny_config, tmp_path, action):
    from openrlaif.core.errors import UserError

    cfg = tiny_config.model_copy(deep=True)
    cfg.feedback.method = "contrastive"
    cfg.feedback.min_agreement = 0.99  # a random tiny model cannot reach this
    cfg.feedback.gate_action = action
    cfg.feedback.gate_limit = 12
    store = pipeline.open_run(cfg, tmp_path / "run")
    pipeline.run_stage("generate", cfg, store)
    if action == "stop":
        with pytest.raises(UserError, match="min_agreement=0.99"):
            pipeline.run_stage("label", cfg, store)
        assert not store.path("preferences.jsonl").exists()
        assert store.stage_status("label")["status"] == "failed"
        return
    pipeline.run_stage("label", cfg, store)
    gate = json.loads(store.path("judge_stats.json").read_text())["gate"]
    assert gate["n"] == 12 and gate["passed"] is False and gate["action"] == "warn"
    assert 0.0 <= gate["agreement"] <= 1.0 and gate["min_agreement"] == 0.99


def test_gate_off_records_nothing(tiny_config, tmp_path):
    store = pipeline.open_run(tiny_config, tmp_path / "run")
    pipeline.run_stage("generate", tiny_config, store)
    pipeline.run_stage("label", tiny_config, store)
    assert json.loads(store.path("judge_stats.json").read_text())["gate"] is None


def test_the_gate_is_paid_once_per_judge(tiny_config, tmp_path, monkeypatch):
    """A second run with the same judge and pairs reads the gate from the user cache (same figures, no judge call);
    another pair set, another judge (new weights) or gate_cache=false measures again."""
    import openrlaif.evaluate.judge_eval as judge_eval
    from openrlaif.core.store import RunStore
    from openrlaif.report import write_report

    monkeypatch.setenv("OPENRLAIF_CACHE", str(tmp_path / "user-cache"))
    calls = {"n": 0}
    real = judge_eval.evaluate_judge

    def counted(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(judge_eval, "evaluate_judge", counted)

    def label(name, **feedback):
        cfg = tiny_config.model_copy(deep=True)
        cfg.feedback.method = "contrastive"
        cfg.feedback.min_agreement = 0.01
        cfg.feedback.gate_limit = 8
        for key, value in feedback.items():
            setattr(cfg.feedback, key, value)
        store = pipeline.open_run(cfg, tmp_path / name)
        pipeline.run_stage("generate", cfg, store)
        pipeline.run_stage("label", cfg, store)
        return json.loads(store.path("judge_stats.json").read_text())["gate"], store

    first, _ = label("first")
    assert calls["n"] == 1 and first["cached"] is None
    second, store = label("second")
    assert calls["n"] == 1 and second["cached"]  # read, not measured
    assert {k: second[k] for k in ("n", "agreement", "ece", "brier")} == {k: first[k] for k in ("n", "agreement", "ece", "brier")}
    write_report(RunStore(store.root))
    assert "read from the user cache" in (store.root / "report.md").read_text()
    other_pairs, _ = label("other-pairs", gate_limit=6)
    assert calls["n"] == 2 and other_pairs["cached"] is None and other_pairs["n"] == 6
    measured_again, _ = label("again", gate_cache=False)
    assert calls["n"] == 3 and measured_again["cached"] is None
    other_template, _ = label("other-temperature", temperature=0.5)  # a setting that changes verdicts
    assert calls["n"] == 4 and other_template["cached"] is None
