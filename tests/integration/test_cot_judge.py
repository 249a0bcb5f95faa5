"""Chain-of-thought judge on the tiny model: the rationale is generated and stored, the verdict is read
from the letter log-probs after our own 'Therefore...' line, and a second pass is served from the cache."""

import pytest
import torch

from openrlaif.data.constitution import Principle
from openrlaif.core.cache import JudgeCache
from openrlaif.feedback.judges import last_position_logits
from openrlaif.feedback.methods import COT_VERDICT, ChainOfThoughtJudge, clean_rationale
from openrlaif.feedback.scoring import prob_first_slot
from openrlaif.feedback.types import Comparison
from openrlaif.models.loading import load_causal_lm

PRINCIPLE = Principle("kind", "Which response is kinder?", 1.0)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_causal_lm(str(tiny_model_dir))


def test_clean_rationale_drops_the_judges_own_verdict():
    assert clean_rationale(" A is polite. Therefore, the better response is Response A.") == "A is polite."
    assert clean_rationale("Both are fine; Response B is better because...") == "Both are fine;"
    assert clean_rationale("no verdict here") == "no verdict here"


def test_cot_verdict_comes_from_logprobs_after_the_rationale(tiny, tmp_path):
    cache = JudgeCache(tmp_path / "cache.sqlite")
    judge = ChainOfThoughtJudge(tiny.model, tiny.tokenizer, batch_size=2, max_new_tokens=12, cache=cache)
    items = [Comparison("Say hello.", "Hello there, friend.", "Go away.", PRINCIPLE),
             Comparison("Name a planet.", "Mars.", "The sea is wide.", PRINCIPLE)]
    verdicts = judge.compare(items)
    for it, v in zip(items, verdicts):
        assert isinstance(v.rationale, str) and isinstance(v.raw["rationale_ba"], str)
        assert 0.0 <= v.p_first <= 1.0 and v.p_first == pytest.approx((v.score_ab + v.score_ba) / 2)
        # Recompute the AB reading by hand from the stored rationale.
        text = judge.render(it.prompt, it.first, it.second, it.principle.text) + " " + v.rationale + COT_VERDICT
        ids = tiny.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            logp = torch.log_softmax(last_position_logits(tiny.model, ids, torch.ones_like(ids))[0], -1)
        expected = prob_first_slot(logp[judge.ids_a].tolist(), logp[judge.ids_b].tolist())
        assert v.score_ab == pytest.approx(expected, abs=1e-5)
    # Everything (rationales and verdicts) is cached: a second pass computes nothing.
    cache.hits = cache.misses = 0
    again = ChainOfThoughtJudge(tiny.model, tiny.tokenizer, batch_size=2, max_new_tokens=12, cache=cache).compare(items)
    assert cache.misses == 0 and cache.hits == 8
    assert [v.p_first for v in again] == [v.p_first for v in verdicts]
