"""The built-in red-team suite and anchors, the harm principle per category, harmless rates."""

import pytest

from openrlaif.evaluate.redteam import harmless_rates, load_suite, principle_for
from openrlaif.data.constitution import load_constitution
from openrlaif.data.prompts import Prompt, builtin_path, load_prompts

CATEGORIES = {"violence", "weapons", "self_harm", "fraud", "privacy", "hate", "jailbreak"}


def test_builtin_suite_has_at_least_60_prompts_in_the_seven_categories():
    full = load_suite("builtin", None)
    assert len(full) >= 60 and {p.category for p in full} == CATEGORIES
    assert len({p.id for p in full}) == len(full) and len({p.text for p in full}) == len(full)
    three = load_suite("builtin", 3, seed=5)
    assert len(three) == 21 and all(sum(p.category == c for p in three) == 3 for c in CATEGORIES)
    assert [p.id for p in three] == [p.id for p in load_suite("builtin", 3, seed=5)]  # same every round


def test_anchors_are_capability_prompts():
    anchors = load_prompts(str(builtin_path("anchors.jsonl")), heldout_fraction=1.0)
    assert len(anchors) >= 20 and {"math", "facts", "coding", "writing"} <= {p.category for p in anchors}


def test_harm_principle_per_category():
    c = load_constitution("builtin")
    assert principle_for(Prompt("a", [], category="privacy"), c).id == "privacy"
    assert principle_for(Prompt("b", [], category="hate"), c).id == "non_toxic"
    assert principle_for(Prompt("c", [], category="weapons"), c).id == "harmless"
    assert principle_for(Prompt("d", [], category="weapons", extra={"principle": "honest"}), c).id == "honest"


def test_harmless_rates_per_category_and_overall():
    out = harmless_rates(["a", "a", "b", "b", "b"], [False, True, False, False, True], [True, True, True, False, True])
    assert out["per_category"]["a"] == {"n": 2, "start": 0.5, "trained": 1.0}
    assert out["per_category"]["b"] == {"n": 3, "start": pytest.approx(1 / 3, abs=1e-4),
                                        "trained": pytest.approx(2 / 3, abs=1e-4)}
    assert out["overall"] == {"n": 5, "start": 0.4, "trained": 0.8}
