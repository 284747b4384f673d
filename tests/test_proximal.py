"""Tests for tppo.algorithms.proximal: GePPO's loss, clip and V-trace advantages; PPO-EWMA's update."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from tppo.algorithms.advantages import egae
from tppo.algorithms.losses import policy_loss
from tppo.algorithms.proximal import (
    ewma_update,
    geppo_clip_eps,
    geppo_policy_loss,
    truncated_importance_weights,
    vtrace_egae,
)

GARBAGE = (float("nan"), float("inf"), float("-inf"), 1e30)


def random_geppo_batch(seed: int = 0, rows: int = 5, columns: int = 6):
    gen = torch.Generator().manual_seed(seed)
    behaviour = -torch.rand(rows, columns, generator=gen) * 3
    current = behaviour + 0.3 * torch.randn(rows, columns, generator=gen)
    log_probs = current + 0.3 * torch.randn(rows, columns, generator=gen)
    advantages = torch.randn(rows, columns, generator=gen)
    mask = torch.rand(rows, columns, generator=gen) < 0.7
    mask[1] = False
    return log_probs, current, behaviour, advantages, mask


# --- geppo_clip_eps -------------------------------------------------------------------------------


def test_geppo_clip_eps_by_hand():
    # 2 * eps / (M + 1): M = 1 -> 0.2 (PPO); M = 3 -> 0.4 / 4 = 0.1; M = 4 -> 0.4 / 5 = 0.08.
    assert geppo_clip_eps(0.2, 1) == pytest.approx(0.2)
    assert geppo_clip_eps(0.2, 3) == pytest.approx(0.1)
    assert geppo_clip_eps(0.2, 4) == pytest.approx(0.08)


@pytest.mark.parametrize(("eps", "steps"), [(0.2, 0), (-0.1, 2)])
def test_geppo_clip_eps_rejects_bad_arguments(eps, steps):
    with pytest.raises(ValueError):
        geppo_clip_eps(eps, steps)


# --- geppo_policy_loss: hand-worked -----------------------------------------------------------------


# behaviour log-prob 0 everywhere (so r = exp(log_probs), c = exp(current)); clip_eps = 0.1.
#   token  r    c    A    range [c-0.1, c+0.1]  r*A    clip(r)*A   min     loss_t  clipped?
#   0      1.0  0.5  +1   [0.4, 0.6]            1.0    0.6         0.6     -0.6    yes (upper)
#   1      0.3  0.5  -1   [0.4, 0.6]            -0.3   -0.4        -0.4    0.4     yes (lower)
#   2      0.55 0.5  +2   [0.4, 0.6]            1.1    1.1         1.1     -1.1    no (inside)
#   3      1.0  0.5  -1   [0.4, 0.6]            -1.0   -0.6        -1.0    1.0     no (pessimistic)
# loss = (-0.6 + 0.4 - 1.1 + 1.0) / 4 = -0.3 / 4 = -0.075. Gradient d loss / d log_probs_t:
# token 2: -A * r / 4 = -2 * 0.55 / 4 = -0.275; token 3: -A * r / 4 = 0.25; clipped tokens 0.
# clipfrac = 2/4; clipfrac_upper (r > 0.6, A > 0) = 1/4; clipfrac_lower (r < 0.4, A < 0) = 1/4.
# ratio_mean of r / c = (2 + 0.6 + 1.1 + 2) / 4 = 1.425; ratio_max = 2.
def test_geppo_policy_loss_by_hand():
    r = torch.tensor([[1.0, 0.3, 0.55, 1.0]])
    log_probs = r.log().requires_grad_(True)
    current = torch.full((1, 4), math.log(0.5))
    behaviour = torch.zeros(1, 4)
    advantages = torch.tensor([[1.0, -1.0, 2.0, -1.0]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    out = geppo_policy_loss(log_probs, current, behaviour, advantages, mask, clip_eps=0.1)
    assert out.loss.item() == pytest.approx(-0.075, abs=1e-6)
    out.loss.backward()
    assert log_probs.grad is not None
    assert_close(log_probs.grad, torch.tensor([[0.0, 0.0, -0.275, 0.25]]))
    assert out.clipfrac.item() == pytest.approx(0.5)
    assert out.clipfrac_upper.item() == pytest.approx(0.25)
    assert out.clipfrac_lower.item() == pytest.approx(0.25)
    assert out.ratio_mean.item() == pytest.approx(1.425, abs=1e-6)
    assert out.ratio_max.item() == pytest.approx(2.0, abs=1e-6)
    assert out.dual_clipfrac.item() == 0.0


def test_geppo_with_one_policy_is_ppo():
    """M = 1: every token is this step's (behaviour == current), so the loss is PPO's, symmetric clip."""
    log_probs, current, _, advantages, mask = random_geppo_batch()
    eps = geppo_clip_eps(0.2, 1)
    ours = geppo_policy_loss(log_probs, current, current, advantages, mask, clip_eps=eps)
    ppo = policy_loss(log_probs, current, advantages, mask, clip_eps_low=0.2, clip_eps_high=0.2)
    for name, value in ppo._asdict().items():
        assert_close(getattr(ours, name), value, msg=name)


def test_geppo_policy_loss_gradient_matches_ppo_with_one_policy():
    log_probs, current, _, advantages, mask = random_geppo_batch(seed=3)
    a = log_probs.clone().requires_grad_(True)
    b = log_probs.clone().requires_grad_(True)
    geppo_policy_loss(a, current, current, advantages, mask, clip_eps=0.2).loss.backward()
    policy_loss(b, current, advantages, mask, clip_eps_low=0.2, clip_eps_high=0.2).loss.backward()
    assert_close(a.grad, b.grad)


@pytest.mark.parametrize("garbage", GARBAGE)
def test_geppo_policy_loss_ignores_garbage_under_the_mask(garbage):
    log_probs, current, behaviour, advantages, mask = random_geppo_batch(seed=1)
    clean_lp = log_probs.clone().requires_grad_(True)
    clean = geppo_policy_loss(clean_lp, current, behaviour, advantages, mask, clip_eps=0.1)
    clean.loss.backward()
    dirty_inputs = [t.masked_fill(~mask, garbage) for t in (log_probs, current, behaviour, advantages)]
    dirty_lp = dirty_inputs[0].clone().requires_grad_(True)
    dirty = geppo_policy_loss(dirty_lp, *dirty_inputs[1:], mask, clip_eps=0.1)
    dirty.loss.backward()
    for name, value in clean._asdict().items():
        assert_close(getattr(dirty, name), value, msg=name)
    assert clean_lp.grad is not None and dirty_lp.grad is not None
    assert_close(dirty_lp.grad, clean_lp.grad)
    assert bool(torch.isfinite(dirty_lp.grad).all())


def test_geppo_policy_loss_pieces_add_up_with_the_global_token_count():
    log_probs, current, behaviour, advantages, mask = random_geppo_batch(seed=2)
    whole = geppo_policy_loss(log_probs, current, behaviour, advantages, mask, clip_eps=0.1).loss
    count = int(mask.sum())
    pieces = sum(
        geppo_policy_loss(
            log_probs[rows], current[rows], behaviour[rows], advantages[rows], mask[rows],
            clip_eps=0.1, token_count=count,
        ).loss
        for rows in (slice(0, 2), slice(2, 5))
    )  # fmt: skip
    assert_close(pieces, whole)


def test_geppo_policy_loss_empty_mask_is_zero_with_a_graph():
    log_probs, current, behaviour, advantages, mask = random_geppo_batch()
    lp = log_probs.clone().requires_grad_(True)
    out = geppo_policy_loss(lp, current, behaviour, advantages, torch.zeros_like(mask), clip_eps=0.1)
    assert out.loss.item() == 0.0
    out.loss.backward()
    assert lp.grad is not None and bool((lp.grad == 0).all())


def test_geppo_policy_loss_rejects_negative_clip_and_bad_masks():
    log_probs, current, behaviour, advantages, mask = random_geppo_batch()
    with pytest.raises(ValueError):
        geppo_policy_loss(log_probs, current, behaviour, advantages, mask, clip_eps=-0.1)
    with pytest.raises(TypeError):
        geppo_policy_loss(log_probs, current, behaviour, advantages, mask.float(), clip_eps=0.1)


# --- truncated importance weights and V-trace EGAE ---------------------------------------------------


def test_truncated_importance_weights_by_hand():
    # exp(log 2) = 2 -> capped at 1; exp(log 0.5) = 0.5; exp(0) = 1; masked -> 0 (garbage unread).
    log_ratios = torch.tensor([[math.log(2.0), math.log(0.5), 0.0, float("nan")]])
    mask = torch.tensor([[True, True, True, False]])
    assert_close(truncated_importance_weights(log_ratios, mask), torch.tensor([[1.0, 0.5, 1.0, 0.0]]))
    # cap 1.5: 2 -> 1.5.
    capped = truncated_importance_weights(log_ratios, mask, cap=1.5)
    assert_close(capped, torch.tensor([[1.5, 0.5, 1.0, 0.0]]))
    with pytest.raises(ValueError):
        truncated_importance_weights(log_ratios, mask, cap=0.0)


# One finished row of 3 tokens, gamma = 1, lambda = 1, values [0.5, 0.2, 0.4], reward 1 on token 2.
#   deltas: d0 = 0 + 0.2 - 0.5 = -0.3; d1 = 0 + 0.4 - 0.2 = 0.2; d2 = 1 + 0 - 0.4 = 0.6.
#   weights c = [1, 0.5, 1] (token 1 generated by a policy pi_k gives half its probability).
#   A2 = 0.6; A1 = d1 + c2 * A2 = 0.2 + 0.6 = 0.8; A0 = d0 + c1 * A1 = -0.3 + 0.5 * 0.8 = 0.1.
# Plain EGAE would give A0 = -0.3 + 0.2 + 0.6 = 0.5: the off-policy token 1 cuts the trace after it.
# Unfinished (EGAE bootstrap V(s_3) := V(s_2)): d2 = 1 + 0.4 - 0.4 = 1; A2 = 1; A1 = 1.2; A0 = 0.3.
def test_vtrace_egae_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.2, 0.4]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    log_ratios = torch.tensor([[0.0, math.log(0.5), 0.0]])
    kwargs = {"gamma": 1.0, "gae_lambda": 1.0}
    finished = vtrace_egae(rewards, values, mask, torch.tensor([True]), log_ratios, **kwargs)
    assert_close(finished, torch.tensor([[0.1, 0.8, 0.6]]))
    unfinished = vtrace_egae(rewards, values, mask, torch.tensor([False]), log_ratios, **kwargs)
    assert_close(unfinished, torch.tensor([[0.3, 1.2, 1.0]]))


def random_advantage_batch(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randn(4, 6, generator=gen)
    values = torch.randn(4, 6, generator=gen)
    lengths = torch.tensor([6, 3, 0, 5])
    mask = torch.arange(6)[None, :] < lengths[:, None]
    is_finished = torch.tensor([True, False, True, False])
    log_ratios = 0.5 * torch.randn(4, 6, generator=gen)
    return rewards, values, mask, is_finished, log_ratios


@pytest.mark.parametrize("gae_lambda", [0.0, 0.7, 1.0])
def test_vtrace_egae_on_policy_is_egae(gae_lambda):
    rewards, values, mask, is_finished, _ = random_advantage_batch()
    kwargs = {"gamma": 0.9, "gae_lambda": gae_lambda}
    on_policy = torch.zeros_like(rewards)
    ours = vtrace_egae(rewards, values, mask, is_finished, on_policy, **kwargs)
    assert_close(ours, egae(rewards, values, mask, is_finished, **kwargs))


def test_vtrace_egae_with_per_response_lambda_matches_row_by_row():
    rewards, values, mask, is_finished, log_ratios = random_advantage_batch(seed=4)
    lam = torch.tensor([0.2, 0.9, 0.0, 1.0])
    together = vtrace_egae(rewards, values, mask, is_finished, log_ratios, gamma=0.95, gae_lambda=lam)
    for row in range(4):
        rows = slice(row, row + 1)
        alone = vtrace_egae(
            rewards[rows], values[rows], mask[rows], is_finished[rows], log_ratios[rows],
            gamma=0.95, gae_lambda=float(lam[row]),
        )  # fmt: skip
        assert_close(together[rows], alone)


@pytest.mark.parametrize("garbage", GARBAGE)
def test_vtrace_egae_ignores_garbage_under_the_mask(garbage):
    rewards, values, mask, is_finished, log_ratios = random_advantage_batch(seed=5)
    kwargs = {"gamma": 0.9, "gae_lambda": 0.8}
    clean = vtrace_egae(rewards, values, mask, is_finished, log_ratios, **kwargs)
    dirty = vtrace_egae(
        *(t.masked_fill(~mask, garbage) for t in (rewards, values)),
        mask, is_finished, log_ratios.masked_fill(~mask, garbage), **kwargs,
    )  # fmt: skip
    assert_close(dirty, clean)
    assert bool((clean[~mask] == 0).all())


def test_vtrace_egae_window_of_a_history_equals_the_window_alone():
    """Advantages read the future only: the last window's columns of a history equal that window's."""
    rewards, values, mask, is_finished, log_ratios = random_advantage_batch(seed=6)
    rows = torch.tensor([0, 3])  # lengths 6 and 5
    kwargs = {"gamma": 0.9, "gae_lambda": 0.8}
    history = vtrace_egae(
        rewards[rows], values[rows], mask[rows], is_finished[rows], log_ratios[rows], **kwargs
    )
    start = 2
    window = vtrace_egae(
        rewards[rows, start:], values[rows, start:], mask[rows, start:], is_finished[rows],
        log_ratios[rows, start:], **kwargs,
    )  # fmt: skip
    assert_close(history[:, start:], window)


# --- ewma_update ----------------------------------------------------------------------------------


def two_parameter_model(a: float, b: float) -> nn.Module:
    model = nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(a)
        model.bias.fill_(b)
    return model


def test_ewma_update_by_hand_on_a_two_parameter_model():
    # decay 0.9: w = 0.9 * 1.0 + 0.1 * 3.0 = 1.2; b = 0.9 * (-2.0) + 0.1 * 4.0 = -1.4.
    # A second update toward the same policy: w = 0.9 * 1.2 + 0.1 * 3 = 1.38; b = -1.26 + 0.4 = -0.86.
    proximal, policy = two_parameter_model(1.0, -2.0), two_parameter_model(3.0, 4.0)
    ewma_update(proximal, policy, decay=0.9)
    assert proximal.weight.item() == pytest.approx(1.2, abs=1e-6)
    assert proximal.bias.item() == pytest.approx(-1.4, abs=1e-6)
    ewma_update(proximal, policy, decay=0.9)
    assert proximal.weight.item() == pytest.approx(1.38, abs=1e-6)
    assert proximal.bias.item() == pytest.approx(-0.86, abs=1e-6)
    assert policy.weight.item() == 3.0 and policy.bias.item() == 4.0  # the policy is not modified


def test_ewma_with_decay_zero_is_the_policy_and_one_keeps_the_proximal():
    proximal, policy = two_parameter_model(1.0, -2.0), two_parameter_model(0.3, 0.7)
    ewma_update(proximal, policy, decay=1.0)
    assert (proximal.weight.item(), proximal.bias.item()) == (1.0, -2.0)
    ewma_update(proximal, policy, decay=0.0)
    assert torch.equal(proximal.weight, policy.weight) and torch.equal(proximal.bias, policy.bias)


def test_ewma_update_on_tensor_lists_keeps_the_proximal_dtype():
    proximal = [torch.tensor([2.0, 4.0], dtype=torch.float64)]
    policy = [torch.tensor([0.0, 8.0])]
    ewma_update(proximal, policy, decay=0.5)  # 0.5 * 2 + 0.5 * 0 = 1; 0.5 * 4 + 0.5 * 8 = 6
    assert proximal[0].dtype == torch.float64
    assert proximal[0].tolist() == [1.0, 6.0]


def test_ewma_update_rejects_bad_decay_and_mismatched_models():
    proximal, policy = two_parameter_model(1.0, 1.0), two_parameter_model(2.0, 2.0)
    for decay in (-0.1, 1.5):
        with pytest.raises(ValueError, match="decay"):
            ewma_update(proximal, policy, decay=decay)
    with pytest.raises(ValueError, match="tensors"):
        ewma_update(proximal, [policy.weight], decay=0.5)
    with pytest.raises(ValueError, match="shape"):
        ewma_update(proximal, nn.Linear(2, 1), decay=0.5)
