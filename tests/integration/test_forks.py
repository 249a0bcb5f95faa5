"""A DPO pair in one row (``collate_forks``): the prompt once, the chosen and the rejected reply after it, each
seeing only the prompt and itself. Log-probs and gradients must be those of the two sequences run apart."""

import pytest
import torch

from openrlaif.models.loading import load_causal_lm
from openrlaif.models.logprobs import (
    Encoded,
    SequenceLogprobs,
    batch_logprobs,
    collate_forks,
    encode_response,
    forks_supported,
    shared_length,
)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_causal_lm(str(tiny_model_dir))


def seqs_of(tok, prompt: str, replies: list[str], max_length: int = 96) -> list[Encoded]:
    return [encode_response(tok, [{"role": "user", "content": prompt}], r, max_length) for r in replies]


def test_shared_length_leaves_every_sequence_a_token():
    a = Encoded([1, 2, 3, 4], [0, 0, 1, 1])
    assert shared_length([a, Encoded([1, 2, 9], [0, 0, 1])]) == 2
    assert shared_length([a, Encoded([1, 2, 3, 4], [0, 0, 1, 1])]) == 3  # identical: the last token is each one's own
    assert shared_length([a, Encoded([7, 2], [0, 1])]) == 0
    assert shared_length([Encoded([1, 2, 3], [0, 1, 1]), Encoded([1, 2, 3, 5, 6], [0, 1, 1, 1, 1])]) == 2


def test_collate_forks_layout_by_hand():
    """Shared [5, 6], branches [7, 8] and [9]: positions restart after the shared part, branches never see each
    other, and the first token of each branch is read from the last shared position."""
    b = collate_forks([[Encoded([5, 6, 7, 8], [0, 0, 1, 1]), Encoded([5, 6, 9], [0, 0, 1])]], pad_id=0)
    assert b.input_ids.tolist() == [[5, 6, 7, 8, 9]]
    assert b.position_ids.tolist() == [[0, 1, 2, 3, 2]]
    m = b.mask[0, 0].int().tolist()
    assert m == [[1, 0, 0, 0, 0],
                 [1, 1, 0, 0, 0],
                 [1, 1, 1, 0, 0],
                 [1, 1, 1, 1, 0],
                 [1, 1, 0, 0, 1]]
    assert b.source.tolist() == [1, 2, 1] and b.target.tolist() == [7, 8, 9] and b.owner.tolist() == [0, 0, 1]
    assert b.sequences == 2


def test_forked_logprobs_equal_separate_ones(tiny):
    """Pairs with a shared prompt, a reply that begins like the other (response tokens in the shared part),
    identical replies, a pair whose prompts were cut differently, and rows of different widths (padding)."""
    tok, model = tiny.tokenizer, tiny.model
    long_prompt = "tell me about the sea " * 12
    groups = [
        seqs_of(tok, "hi there", ["hello friend", "go away now please"]),
        seqs_of(tok, "hi there", ["sure, here it is", "sure, no"]),
        seqs_of(tok, "same", ["twin", "twin"]),
        seqs_of(tok, long_prompt, ["a", "b " * 30], max_length=64),  # the longer reply cuts the prompt more
        seqs_of(tok, "three of them", ["one", "two two", "three three three"]),
    ]
    assert shared_length(groups[1]) > groups[1][0].response_mask.index(1)
    assert shared_length(groups[3]) < groups[3][0].response_mask.index(1)
    flat = [s for g in groups for s in g]
    model.eval()
    with torch.no_grad():
        apart = batch_logprobs(model, flat, tok.pad_token_id)
        together = SequenceLogprobs(model)(collate_forks(groups, tok.pad_token_id))
    assert forks_supported(model)
    torch.testing.assert_close(together, apart, atol=1e-5, rtol=1e-5)
    assert together.shape == (len(flat),) and bool((together < 0).all())


def test_forked_gradients_equal_separate_ones(tiny_model_dir):
    """The DPO step sees the same gradient through the forked row as through the two sequences."""
    grads = []
    for forked in (False, True):
        model = load_causal_lm(str(tiny_model_dir)).model
        tok = load_causal_lm(str(tiny_model_dir)).tokenizer
        groups = [seqs_of(tok, "hi there", ["hello friend", "go away"]), seqs_of(tok, "why?", ["because", "no"])]
        logps = (SequenceLogprobs(model)(collate_forks(groups, tok.pad_token_id)) if forked
                 else batch_logprobs(model, [s for g in groups for s in g], tok.pad_token_id))
        (logps[0] - logps[1] + 0.5 * logps[2] - logps[3]).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)


def train_losses(tmp_path, tiny_model_dir, name: str, *extra: str) -> list[float]:
    """The train stage's per-step losses (and the label stage before it for DPO), in float32 on the tiny model."""
    from conftest import tiny_overrides
    from openrlaif.config import load_config
    from openrlaif.pipeline import open_run, run_stage

    cfg = load_config(None, tiny_overrides(tiny_model_dir) + list(extra))
    store = open_run(cfg, tmp_path / name)
    if cfg.train.algo == "dpo":
        run_stage("generate", cfg, store)
        run_stage("label", cfg, store)
    run_stage("train", cfg, store)
    return [m["loss"] for m in store.read_metrics() if m.get("stage") == "train" and "loss" in m]


@pytest.mark.parametrize("algo", [
    ("dpo", "data.max_train_prompts=6", "train.batch_size=3", "train.epochs=2"),
    ("online_dpo", "feedback.method=rule", "feedback.rule=test_online_dpo:more_e", "rl.steps=3", "rl.k=3",
     "rl.prompts_per_step=2", "rl.max_new_tokens=8"),
], ids=["dpo", "online_dpo"])
def test_forked_pairs_take_the_same_steps(tmp_path, tiny_model_dir, algo):
    """train.fork_pairs on and off: the same losses step after step (float32), so the same adapter."""
    name, *extra = algo
    on = train_losses(tmp_path, tiny_model_dir, "on", f"train.algo={name}", *extra)
    off = train_losses(tmp_path, tiny_model_dir, "off", f"train.algo={name}", "train.fork_pairs=false", *extra)
    assert len(on) == len(off) >= 3
    assert on == pytest.approx(off, abs=2e-5)
    assert len(set(on)) > 1  # the steps moved the policy: the comparison is not of constants
