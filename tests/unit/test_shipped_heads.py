"""The preference heads shipped as package data (feedback.heads: builtin) load, and say what they are."""

from openrlaif.feedback.fitted import ANY_PRINCIPLE, BUILTIN_HEADS, HEAD_FORMAT, heads_directory, load_heads


def test_the_shipped_heads_load_with_their_cards_and_held_out_figures():
    card, heads = load_heads(BUILTIN_HEADS)
    assert card["format"] == HEAD_FORMAT and card["judge"] == "embedded" and len(card["judge_fingerprint"]) == 32
    assert set(heads) == {"harmless", "helpful", ANY_PRINCIPLE}
    for key, head in heads.items():
        assert head.w.shape == head.standardizer.mean.shape == (576,)  # SmolLM2-135M's hidden size
        meta = card["heads"][key]
        assert meta["pairs"] >= 200 and 0.5 < meta["cv_agreement"] < 1 and meta["heldout"]
        for figures in meta["heldout"].values():  # measured on pairs the head never saw, by bench/ship_heads.py
            assert figures["n"] >= 100 and 0 <= figures["agreement"] <= 1 and "never fitted on" in figures["pairs"]
    assert "bench/ship_heads.py" in card["made_by"]["command"]
    assert sum(f.stat().st_size for f in heads_directory(BUILTIN_HEADS).iterdir()) < 64_000  # a few KB


def test_the_shipped_injection_probe_loads_with_its_figures():
    from openrlaif.feedback.injection import load_probe

    probe = load_probe(heads_directory(BUILTIN_HEADS))
    assert probe is not None and probe.w.shape == (577,) and 0.5 <= probe.threshold < 1
    measured = probe.card["measured"]  # bench/injection_probe.py: kinds and pairs the probe never saw
    assert set(measured) >= {"leave_one_kind_out_recall", "written_after_patterns_recall",
                             "heldout_clean_false_positive_rate"}
    assert probe.card["judge_fingerprint"] == load_heads(BUILTIN_HEADS)[0]["judge_fingerprint"]
