"""PPO / RLOO maths against hand-computed values."""

import math

import pytest
import torch

from openrlaif.optimize.advantages import (
    AdaptiveKLController,
    FixedKLController,
    gae,
    kl_estimate,
    masked_mean,
    masked_var,
    rloo_advantages,
    token_rewards,
    whiten,
)
from openrlaif.optimize.losses import entropy_from_logits, ppo_policy_loss, ppo_value_loss


def test_masked_mean_var_and_whiten():
    x = torch.tensor([[1.0, 3.0, 100.0]])
    m = torch.tensor([[1, 1, 0]])
    assert masked_mean(x, m).item() == 2.0 and masked_var(x, m).item() == 1.0
    w = whiten(x, m)
    assert w.tolist()[0][:2] == pytest.approx([-1.0, 1.0], abs=1e-6) and w[0, 2].item() == 0.0
    assert whiten(x, m, shift_mean=False).tolist()[0][:2] == pytest.approx([1.0, 3.0], abs=1e-6)


def test_kl_estimators():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert kl_estimate(logp, ref, "k1").item() == pytest.approx(math.log(2))
    # k3 with q/p = 0.5: (0.5 - 1) - log 0.5 = -0.5 + 0.6931
    assert kl_estimate(logp, ref, "k3").item() == pytest.approx(-0.5 + math.log(2))
    assert kl_estimate(ref, ref, "k3").item() == 0.0
    with pytest.raises(ValueError):
        kl_estimate(logp, ref, "k2")


def test_token_rewards_put_the_score_on_the_last_real_token():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    r = token_rewards(torch.tensor([1.0, 2.0]), kl, mask, kl_coef=0.5)
    assert r[0].tolist() == pytest.approx([-0.05, -0.1, -0.15 + 1.0])
    assert r[1].tolist() == pytest.approx([-0.25 + 2.0, 0.0, 0.0])


def test_gae_by_hand():
    # One row, 3 tokens, gamma 1, lambda 0.5; the last token ends the episode.
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    mask = torch.ones(1, 3)
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    d2 = 1.0 - 0.7                 # 0.3
    d1 = 0.0 + 0.7 - 0.6           # 0.1
    d0 = 0.0 + 0.6 - 0.5           # 0.1
    a2, a1 = d2, d1 + 0.5 * d2
    a0 = d0 + 0.5 * a1
    assert adv.tolist()[0] == pytest.approx([a0, a1, a2])
    assert ret.tolist()[0] == pytest.approx([a0 + 0.5, a1 + 0.6, a2 + 0.7])


def test_gae_ignores_padding_after_the_end():
    rewards = torch.tensor([[0.0, 2.0, 9.0]])
    values = torch.tensor([[1.0, 1.0, 5.0]])
    mask = torch.tensor([[1, 1, 0]])
    adv, _ = gae(rewards, values, mask, gamma=0.9, lam=1.0)
    # token 1 ends: a1 = 2 - 1 = 1; a0 = 0 + 0.9 * 1 - 1 + 0.9 * 1 * 1 = 0.8
    assert adv.tolist()[0] == pytest.approx([0.8, 1.0, 0.0])


def test_rloo():
    r = torch.tensor([[1.0, 2.0, 6.0]])
    # each minus the mean of the other two: 1 - 4, 2 - 3.5, 6 - 1.5
    assert rloo_advantages(r).tolist() == [[-3.0, -1.5, 4.5]]
    with pytest.raises(ValueError):
        rloo_advantages(torch.tensor([[1.0]]))


def test_kl_controllers():
    fixed = FixedKLController(0.1)
    fixed.update(5.0, 10)
    assert fixed.value == 0.1
    c = AdaptiveKLController(0.1, target=6.0, horizon=100)
    c.update(12.0, 10)  # error clipped to +0.2: 0.1 * (1 + 0.2 * 10 / 100)
    assert c.value == pytest.approx(0.102)
    c.update(3.0, 50)   # error -0.5 clipped to -0.2: * (1 - 0.2 * 0.5)
    assert c.value == pytest.approx(0.102 * 0.9)


def test_ppo_policy_loss_clips():
    adv = torch.tensor([[1.0, -1.0]])
    mask = torch.ones(1, 2)
    old = torch.zeros(1, 2)
    new = torch.log(torch.tensor([[1.5, 1.5]]))  # ratio 1.5 on both tokens
    loss, clipfrac, approx_kl = ppo_policy_loss(new, old, adv, mask, clip=0.2)
    # token 0 (A=+1): max(-1.5, -1.2) = -1.2 (clipped); token 1 (A=-1): max(1.5, 1.2) = 1.5 (not clipped)
    assert loss.item() == pytest.approx((-1.2 + 1.5) / 2)
    assert clipfrac.item() == pytest.approx(0.5)
    assert approx_kl.item() == pytest.approx(0.5 * math.log(1.5) ** 2)


def test_ppo_value_loss_clips():
    returns = torch.tensor([[1.0]])
    old = torch.tensor([[0.0]])
    mask = torch.ones(1, 1)
    loss, frac = ppo_value_loss(torch.tensor([[0.5]]), old, returns, mask, clip=0.2)
    # unclipped (0.5 - 1)^2 = 0.25; clipped (0.2 - 1)^2 = 0.64 -> 0.5 * 0.64
    assert loss.item() == pytest.approx(0.32) and frac.item() == 1.0


def test_entropy():
    assert entropy_from_logits(torch.zeros(1, 4)).item() == pytest.approx(math.log(4))
    assert entropy_from_logits(torch.tensor([[100.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-6)


def test_last_token_index_finds_responses_that_start_mid_row():
    from openrlaif.optimize.advantages import last_token_index

    mask = torch.tensor([[0, 0, 1, 1, 0], [1, 1, 1, 1, 1], [0, 1, 0, 0, 0], [0, 0, 0, 0, 0]])
    assert last_token_index(mask).tolist() == [3, 4, 1, 0]


def test_token_rewards_put_the_score_on_the_last_response_token():
    kl = torch.tensor([[0.0, 0.5, 1.0, 0.0]])
    mask = torch.tensor([[0, 1, 1, 0]])
    out = token_rewards(torch.tensor([2.0]), kl, mask, kl_coef=0.1)
    assert out[0].tolist() == pytest.approx([0.0, -0.05, -0.1 + 2.0, 0.0])


def test_explained_variance_by_hand():
    from openrlaif.optimize.advantages import explained_variance

    returns = torch.tensor([[1.0, 2.0, 3.0, 99.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # values off by (0, 1, 0): Var(residual) = Var([0, 1, 0]) = 2/9; Var(returns) = 2/3 -> 1 - 1/3.
    values = torch.tensor([[1.0, 1.0, 3.0, 0.0]])
    assert explained_variance(values, returns, mask) == pytest.approx(2 / 3)
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert explained_variance(torch.zeros(1, 4), torch.zeros(1, 4), mask) == 0.0
