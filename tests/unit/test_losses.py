"""dpo_loss and sequence_logprobs against values computed by hand."""

import math

import pytest
import torch

from openrlaif.optimize.losses import dpo_loss, gathered_logprobs, sequence_logprobs, sft_loss


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def test_dpo_loss_hand_computed():
    # z = beta * ((pi_c - ref_c) - (pi_r - ref_r)) = 0.5 * ((-1 + 1.5) - (-2 + 1.5)) = 0.5
    loss, r_c, r_r = dpo_loss(t(-1.0), t(-2.0), t(-1.5), t(-1.5), beta=0.5)
    assert loss.shape == (1,)
    assert loss.item() == pytest.approx(-log_sigmoid(0.5), abs=1e-9)
    assert loss.item() == pytest.approx(0.474077, abs=1e-6)
    # implicit rewards beta * (pi - ref)
    assert r_c.item() == pytest.approx(0.5 * 0.5)
    assert r_r.item() == pytest.approx(0.5 * -0.5)


def test_dpo_loss_label_smoothing_scalar():
    loss, _, _ = dpo_loss(t(-1.0), t(-2.0), t(-1.5), t(-1.5), beta=0.5, label_smoothing=0.2)
    expected = -(0.8 * log_sigmoid(0.5) + 0.2 * log_sigmoid(-0.5))
    assert loss.item() == pytest.approx(expected, abs=1e-9)
    # log(1 + e^0.5) = 0.5 + log(1 + e^-0.5), so the smoothed loss is 0.474077 + 0.2 * 0.5
    assert loss.item() == pytest.approx(0.574077, abs=1e-6)


def test_dpo_loss_per_example_smoothing_tensor():
    # Example 0: z = 1 * ((0 - 0) - (-1 - 0)) = 1, e = 0; example 1: z = 1 * ((-3 - -1) - (-1 - -1)) = -2, e = 0.5
    loss, r_c, r_r = dpo_loss(t(0.0, -3.0), t(-1.0, -1.0), t(0.0, -1.0), t(0.0, -1.0), beta=1.0,
                              label_smoothing=t(0.0, 0.5))
    assert loss.shape == (2,)
    assert loss[0].item() == pytest.approx(-log_sigmoid(1.0), abs=1e-9)
    assert loss[1].item() == pytest.approx(-(0.5 * log_sigmoid(-2.0) + 0.5 * log_sigmoid(2.0)), abs=1e-9)
    assert r_c.tolist() == pytest.approx([0.0, -2.0])
    assert r_r.tolist() == pytest.approx([-1.0, 0.0])


def test_dpo_loss_zero_margin_is_log2():
    loss, _, _ = dpo_loss(t(-4.0), t(-7.0), t(-4.0), t(-7.0), beta=0.1)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-9)


def test_dpo_loss_gradient_sign_and_detached_rewards():
    pc = torch.tensor([-1.0], requires_grad=True)
    pr = torch.tensor([-2.0], requires_grad=True)
    loss, r_c, r_r = dpo_loss(pc, pr, torch.tensor([-1.5]), torch.tensor([-1.5]), beta=0.5)
    loss.sum().backward()
    # d loss / d pi_c = -beta * sigmoid(-z) < 0: raising the chosen log-prob lowers the loss.
    assert pc.grad.item() == pytest.approx(-0.5 * (1 / (1 + math.exp(0.5))), abs=1e-6)
    assert pc.grad.item() < 0
    assert pr.grad.item() > 0
    assert not r_c.requires_grad and not r_r.requires_grad
    # And numerically: a higher chosen log-prob gives a lower loss.
    higher, _, _ = dpo_loss(t(-0.5), t(-2.0), t(-1.5), t(-1.5), beta=0.5)
    assert higher.item() < loss.item()


def test_sequence_logprobs_hand_built():
    # B=2, T=3, V=3. logits[:, t] predicts input_ids[:, t+1].
    logits = torch.tensor(
        [
            [[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [9.0, 9.0, 9.0]],
            [[0.0, math.log(2.0), math.log(5.0)], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]],
        ],
        dtype=torch.float64,
    )
    ids = torch.tensor([[0, 2, 1], [1, 2, 0]])
    resp_full = torch.tensor([[0, 1, 1], [0, 1, 1]])
    resp_last = torch.tensor([[0, 0, 1], [0, 0, 1]])

    lse1 = math.log(math.e + math.e**2 + math.e**3)
    # seq 0: token 2 from uniform -> log(1/3); token 1 from [1,2,3] -> 2 - lse1
    seq0_t1, seq0_t2 = math.log(1 / 3), 2.0 - lse1
    # seq 1: token 2 from probs [1,2,5]/8 -> log(5/8); token 0 from uniform -> log(1/3)
    seq1_t1, seq1_t2 = math.log(5 / 8), math.log(1 / 3)

    got = sequence_logprobs(logits, ids, resp_full)
    assert got.shape == (2,)
    assert got.tolist() == pytest.approx([seq0_t1 + seq0_t2, seq1_t1 + seq1_t2], abs=1e-9)

    got_last = sequence_logprobs(logits, ids, resp_last)
    assert got_last.tolist() == pytest.approx([seq0_t2, seq1_t2], abs=1e-9)

    # The mask of the first position is ignored (nothing predicts it), so marking it changes nothing.
    got_first = sequence_logprobs(logits, ids, torch.tensor([[1, 0, 0], [1, 0, 0]]))
    assert got_first.tolist() == pytest.approx([0.0, 0.0])


def test_sequence_logprobs_matches_log_softmax_random():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 11, generator=g, dtype=torch.float64)
    ids = torch.randint(0, 11, (3, 6), generator=g)
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1]])
    logp = torch.log_softmax(logits, dim=-1)
    expected = []
    for b in range(3):
        s = 0.0
        for pos in range(1, 6):
            if mask[b, pos]:
                s += logp[b, pos - 1, ids[b, pos]].item()
        expected.append(s)
    assert sequence_logprobs(logits, ids, mask).tolist() == pytest.approx(expected, abs=1e-9)


def test_ipo_loss_hand_computed():
    from openrlaif.optimize.losses import ipo_loss

    # h = (-1 - -1.5) - (-2 - -1.5) = 0.5 + 0.5 = 1; beta 0.25 -> target 2; loss (1 - 2)^2 = 1
    loss, r_c, r_r = ipo_loss(t(-1.0), t(-2.0), t(-1.5), t(-1.5), beta=0.25)
    assert loss.item() == pytest.approx(1.0)
    assert r_c.item() == pytest.approx(0.125) and r_r.item() == pytest.approx(-0.125)
    # at the target gap the loss is zero (IPO does not push further)
    assert ipo_loss(t(0.0), t(-2.0), t(0.0), t(0.0), beta=0.25)[0].item() == pytest.approx(0.0)


def test_sft_loss_is_the_mean_nll_per_trained_token():
    # sequence 1: 3 trained tokens with log-probs summing to -1.5; sequence 2: 1 token, -2.5
    # loss = (1.5 + 2.5) / 4 = 1.0 (a per-sequence mean would give (0.5 + 2.5) / 2 = 1.5)
    loss = sft_loss(torch.tensor([-1.5, -2.5]), torch.tensor([3, 1]))
    assert loss.item() == pytest.approx(1.0)
    # no trained tokens: zero, not a division by zero
    assert sft_loss(torch.tensor([0.0]), torch.tensor([0])).item() == 0.0


def test_gathered_logprobs_hand_computed_and_gradient():
    # row 0: logits (0, ln 3) -> p = (1/4, 3/4); row 1: three equal logits -> p = 1/3 each
    logits = torch.tensor([[0.0, math.log(3.0), -math.inf], [2.0, 2.0, 2.0]], requires_grad=True)
    targets = torch.tensor([1, 2])
    logp = gathered_logprobs(logits, targets)
    assert torch.allclose(logp, torch.tensor([math.log(0.75), math.log(1 / 3)]), atol=1e-6)
    logp.sum().backward()
    # d log p(t) / d z = onehot(t) - softmax(z)
    expected = torch.tensor([[-0.25, 0.25, 0.0], [-1 / 3, -1 / 3, 2 / 3]])
    assert torch.allclose(logits.grad, expected, atol=1e-6)


def test_gathered_logprobs_matches_log_softmax_on_a_wide_vocabulary():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 49152, generator=g) * 4
    targets = torch.randint(0, 49152, (64,), generator=g)
    reference = torch.log_softmax(logits.double(), -1).gather(1, targets[:, None]).squeeze(1)
    assert torch.allclose(gathered_logprobs(logits, targets).double(), reference, atol=1e-4)
