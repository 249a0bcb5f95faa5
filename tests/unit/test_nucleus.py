"""Nucleus sampling: the same kept tokens as transformers' top-p warper, and draws at the right frequencies."""

import math

import pytest
import torch
from transformers.generation.logits_process import TopPLogitsWarper

from openrlaif.optimize.losses import gathered_logprobs
from openrlaif.sampling.nucleus import (
    NucleusSampler,
    nucleus_groups,
    nucleus_keep,
    nucleus_logits,
    row_seed,
    sample_nucleus,
)


def test_keep_is_the_smallest_set_reaching_top_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    # mass before each token: 0, 0.5, 0.8, 0.95
    assert nucleus_keep(probs, 0.8).tolist() == [[True, True, False, False]]
    assert nucleus_keep(probs, 0.81).tolist() == [[True, True, True, False]]
    assert nucleus_keep(probs, 0.1).tolist() == [[True, False, False, False]]  # the top token always stays


@pytest.mark.parametrize("scale", [0.5, 3.0, 12.0])
def test_kept_tokens_match_the_transformers_warper(scale):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 3000, generator=gen) * scale
    # candidates=64: flat rows (scale 0.5) need more than 64 tokens and take the full-sort path
    for top_p in (0.5, 0.9, 0.95):
        values, ids = nucleus_logits(logits, top_p, candidates=64)
        ours = [set(i[torch.isfinite(v)].tolist()) for v, i in zip(values, ids)]
        reference = TopPLogitsWarper(top_p)(None, logits.clone())
        theirs = [set(torch.isfinite(row).nonzero().squeeze(-1).tolist()) for row in reference]
        assert ours == theirs


def mixed_rows() -> torch.Tensor:
    """Rows whose top-p=0.9 nucleus is small (peaked), middling and wide (flat): 3 of each, interleaved."""
    gen = torch.Generator().manual_seed(3)
    return torch.cat([torch.randn(3, 500, generator=gen) * s for s in (12.0, 3.0, 0.2)])[torch.tensor([0, 3, 6, 1, 4, 7, 2, 5, 8])]


def test_staged_partial_sorts_keep_the_warpers_tokens_row_by_row():
    logits = mixed_rows()
    groups = nucleus_groups(logits, 0.9, candidates=(8, 64))
    widths = {w: sorted(r.tolist()) for r, v, _ in groups for w in [v.shape[-1]]}
    assert set(widths) == {8, 64, 500}  # peaked rows stop at 8, middling at 64, flat ones are sorted whole
    assert sorted(r for rows in widths.values() for r in rows) == list(range(9))  # each row exactly once
    reference = TopPLogitsWarper(0.9)(None, logits.clone())
    for rows, values, ids in groups:
        for r, v, i in zip(rows.tolist(), values, ids):
            assert set(i[torch.isfinite(v)].tolist()) == set(torch.isfinite(reference[r]).nonzero().squeeze(-1).tolist())
    # the padded (B, K) view keeps the same tokens
    values, ids = nucleus_logits(logits, 0.9, candidates=(8, 64))
    assert values.shape == (9, 500)
    for r in range(9):
        assert set(ids[r][torch.isfinite(values[r])].tolist()) == set(torch.isfinite(reference[r]).nonzero().squeeze(-1).tolist())


def test_a_row_draws_the_same_token_alone_or_in_any_batch():
    logits = mixed_rows()
    seeds = list(range(100, 109))
    together = sample_nucleus(logits, 0.8, 0.9, (8, 64), [torch.Generator().manual_seed(s) for s in seeds])
    alone = [sample_nucleus(logits[r : r + 1], 0.8, 0.9, (8, 64), [torch.Generator().manual_seed(seeds[r])]).item()
             for r in range(9)]
    assert together.tolist() == alone
    # and a wide row's draw does not change the narrow rows' (their groups draw apart)
    swapped = logits.clone()
    swapped[8] = logits[0] * 0.01
    again = sample_nucleus(swapped, 0.8, 0.9, (8, 64), [torch.Generator().manual_seed(s) for s in seeds])
    assert again[:8].tolist() == together[:8].tolist()


@pytest.mark.parametrize("row_seeds", [False, True])
def test_draws_follow_the_renormalised_nucleus(row_seeds):
    """With torch's global generator, and with a generator per row (the generate stage's and eval's rows, each
    seeded by where it is): the same distribution."""
    torch.manual_seed(0)
    row = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -1.0, -2.0, -3.0] + [-6.0] * 40)
    temperature, top_p = 0.8, 0.9
    expected = torch.softmax(TopPLogitsWarper(top_p)(None, (row / temperature).unsqueeze(0)), -1)[0]
    generators = [torch.Generator().manual_seed(row_seed(5, i, 0)) for i in range(40_000)] if row_seeds else None
    draws = sample_nucleus(row.repeat(40_000, 1), temperature, top_p, candidates=8, generators=generators)
    freq = torch.bincount(draws, minlength=row.numel()).float() / draws.numel()
    assert set(draws.unique().tolist()) <= set(expected.nonzero().squeeze(-1).tolist())  # never outside the nucleus
    tv = 0.5 * (freq - expected).abs().sum().item()
    assert tv < 0.015, tv  # total variation of 40k draws from the right distribution: ~0.005
    # and a wrong temperature would be caught
    wrong = torch.softmax(TopPLogitsWarper(top_p)(None, (row / 1.2).unsqueeze(0)), -1)[0]
    assert 0.5 * (freq - wrong).abs().sum().item() > 0.03


def test_top_p_one_is_plain_sampling():
    torch.manual_seed(1)
    row = torch.tensor([1.0, 0.0, -1.0])
    draws = sample_nucleus(row.repeat(30_000, 1), 1.0, 1.0)
    freq = torch.bincount(draws, minlength=3).float() / draws.numel()
    assert torch.allclose(freq, torch.softmax(row, -1), atol=0.01)


def test_processor_leaves_only_the_drawn_token_finite():
    torch.manual_seed(2)
    scores = torch.randn(5, 100)
    out = NucleusSampler(0.7, 0.9)(None, scores)
    finite = torch.isfinite(out)
    assert finite.sum(-1).tolist() == [1] * 5 and (out[finite] == 0).all()
    chosen = out.argmax(-1)
    kept = TopPLogitsWarper(0.9)(None, scores / 0.7)
    assert all(math.isfinite(kept[r, c].item()) for r, c in enumerate(chosen.tolist()))


def test_drawn_logprobs_are_the_raw_distribution_s():
    # row 0: logits log(1), log(3) -> probabilities 1/4, 3/4; row 1: three equal logits -> 1/3 each
    scores = torch.tensor([[0.0, math.log(3.0), -math.inf], [2.0, 2.0, 2.0]])
    got = gathered_logprobs(scores, torch.tensor([1, 2]))
    assert got.tolist() == pytest.approx([math.log(0.75), math.log(1 / 3)], abs=1e-6)
    sampler = NucleusSampler(1.0, 1.0, record=True)  # bf16 scores are recorded in float32
    sampler(None, scores.to(torch.bfloat16))
    assert sampler.logprobs[0].dtype == torch.float32


def test_the_sampler_records_what_it_drew_at_any_temperature():
    """With record, each step's log-probabilities are those of the drawn tokens under the untempered scores (the
    model's own distribution), whatever temperature and nucleus the draw used."""
    gen = torch.Generator().manual_seed(1)
    scores = torch.randn(4, 50, generator=gen) * 3
    sampler = NucleusSampler(0.5, 0.8, row_seeds=[1, 2, 3, 4], record=True)
    out = sampler(None, scores.clone())
    tokens = out.argmax(-1)
    assert len(sampler.logprobs) == 1
    assert sampler.logprobs[0].tolist() == pytest.approx(
        torch.log_softmax(scores, -1).gather(-1, tokens[:, None]).squeeze(-1).tolist(), abs=1e-5)
    assert NucleusSampler(0.5, 0.8).logprobs is None  # nothing kept unless asked
