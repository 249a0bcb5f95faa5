"""GRPO / Dr.GRPO maths and online DPO's label smoothing against hand-computed values."""

import math

import pytest
import torch

from openrlaif.optimize.advantages import group_advantages
from openrlaif.optimize.losses import clipped_surrogate, grpo_loss, ppo_policy_loss
from openrlaif.stages.online_dpo import label_smoothing


def test_group_advantages_scale_by_the_groups_sample_std():
    # group 1: mean 2, sample std 1 -> [-1, 0, 1]; group 2: all equal -> 0 (no signal, no division by zero)
    adv = group_advantages(torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]]), eps=0.0 + 1e-12)
    assert adv.tolist()[0] == pytest.approx([-1.0, 0.0, 1.0], abs=1e-6)
    assert adv.tolist()[1] == [0.0, 0.0, 0.0]
    # [0, 0, 4, 4]: mean 2, sample std sqrt(16 / 3) = 2.3094 -> +-0.8660
    adv = group_advantages(torch.tensor([[0.0, 0.0, 4.0, 4.0]]), eps=0.0)
    assert adv.tolist()[0] == pytest.approx([-math.sqrt(3) / 2] * 2 + [math.sqrt(3) / 2] * 2, abs=1e-6)


def test_dr_grpo_keeps_the_centred_scores():
    adv = group_advantages(torch.tensor([[1.0, 2.0, 6.0]]), scale=False)
    assert adv.tolist()[0] == pytest.approx([-2.0, -1.0, 3.0])


def test_group_advantages_need_two_samples():
    with pytest.raises(ValueError):
        group_advantages(torch.tensor([[1.0], [2.0]]))


def test_clipped_surrogate_per_token():
    # ratios e^0 = 1, e^0.5 = 1.6487 (clipped to 1.2 for A > 0: the min of the gains), e^-0.5 = 0.6065
    logp = torch.tensor([[0.0, 0.5, -0.5]])
    old = torch.zeros(1, 3)
    loss, clipped = clipped_surrogate(logp, old, torch.tensor([[1.0]]), clip=0.2)
    assert loss.tolist()[0] == pytest.approx([-1.0, -1.2, -math.exp(-0.5)], abs=1e-6)
    assert clipped.tolist()[0] == [0.0, 1.0, 0.0]
    # A < 0: the ratio below 1 - eps is clipped (0.8), the one above is not
    loss, clipped = clipped_surrogate(logp, old, torch.tensor([[-1.0]]), clip=0.2)
    assert loss.tolist()[0] == pytest.approx([1.0, math.exp(0.5), 0.8], abs=1e-6)
    assert clipped.tolist()[0] == [0.0, 0.0, 1.0]


def test_ppo_policy_loss_is_the_masked_mean_of_the_surrogate():
    logp = torch.tensor([[0.0, 0.5, -0.5]])
    loss, clipfrac, approx_kl = ppo_policy_loss(logp, torch.zeros(1, 3), torch.ones(1, 3), torch.tensor([[1, 1, 0]]))
    assert loss.item() == pytest.approx((-1.0 - 1.2) / 2) and clipfrac.item() == pytest.approx(0.5)
    assert approx_kl.item() == pytest.approx(0.5 * 0.25 / 2)


def test_grpo_loss_sequence_and_token_aggregation():
    # two sequences: 2 tokens and 1 token; ratio 1 everywhere (on-policy), so the surrogate is -A per token
    logp = torch.tensor([[-1.0, -1.0], [-2.0, 0.0]])
    ref = torch.tensor([[-1.0, -1.0 + math.log(2.0)], [-2.0, 0.0]])  # token (0, 1): ref/p = 2
    mask = torch.tensor([[1, 1], [1, 0]])
    adv = torch.tensor([1.0, -1.0])
    k3 = 2.0 - math.log(2.0) - 1.0  # (q/p - 1) - log(q/p) with q/p = 2
    # GRPO: mean over each sequence's tokens, then over sequences
    loss, st = grpo_loss(logp, logp, ref, adv, mask, clip=0.2, kl_coef=0.1)
    seq0 = (-1.0 + (-1.0 + 0.1 * k3)) / 2
    seq1 = 1.0
    assert loss.item() == pytest.approx((seq0 + seq1) / 2, abs=1e-6)
    assert st["kl"].item() == pytest.approx(k3 / 3, abs=1e-6) and st["clipfrac"].item() == 0.0
    # Dr.GRPO: every token's loss summed, divided by 2 sequences x a budget of 4 tokens
    loss, _ = grpo_loss(logp, logp, ref, adv, mask, clip=0.2, kl_coef=0.1, token_budget=4)
    assert loss.item() == pytest.approx((-1.0 + (-1.0 + 0.1 * k3) + 1.0) / 8, abs=1e-6)


def test_grpo_loss_gradient_pushes_up_positive_advantages():
    logp = torch.tensor([[-1.0, -1.0], [-1.0, -1.0]], requires_grad=True)
    loss, _ = grpo_loss(logp, logp.detach(), logp.detach(), torch.tensor([1.0, -1.0]), torch.ones(2, 2),
                        clip=0.2, kl_coef=0.0)
    loss.backward()
    # d/dlogp of -A * exp(logp - old) at ratio 1 is -A, / 2 tokens / 2 sequences
    assert logp.grad.flatten().tolist() == pytest.approx([-0.25, -0.25, 0.25, 0.25])


def test_online_dpo_label_smoothing():
    p = torch.tensor([0.9, 0.5, 0.3])
    assert label_smoothing(p, True, 0.0).tolist() == pytest.approx([0.1, 0.5, 0.5])
    assert label_smoothing(p, False, 0.05).tolist() == pytest.approx([0.05] * 3)
