"""Tests for tppo.algorithms.losses: the clipped policy loss (eq. 1) and value loss (eqs. 4-5)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from tppo.algorithms import masked_mean, policy_loss, value_loss

ATOL = 1e-6
CLIP = {"clip_eps_low": 0.2, "clip_eps_high": 0.28}
VCLIP = {"value_clip_low": 0.5, "value_clip_high": 0.6}
GARBAGE = (float("nan"), float("inf"), float("-inf"), 1e30)


def scalar(x: float) -> torch.Tensor:
    return torch.tensor(x)


def random_policy_batch(seed: int = 0, rows: int = 6, columns: int = 7):
    gen = torch.Generator().manual_seed(seed)
    old_log_probs = -torch.rand(rows, columns, generator=gen) * 3
    log_probs = old_log_probs + 0.4 * torch.randn(rows, columns, generator=gen)  # ratios ~ 0.5 .. 2
    advantages = torch.randn(rows, columns, generator=gen)
    mask = torch.rand(rows, columns, generator=gen) < 0.7  # policy masks need not be prefix runs
    mask[2] = False  # a row with nothing to train
    return log_probs, old_log_probs, advantages, mask


def random_value_batch(seed: int = 0, rows: int = 6, columns: int = 7):
    gen = torch.Generator().manual_seed(seed)
    old_values = torch.randn(rows, columns, generator=gen)
    values = old_values + torch.randn(rows, columns, generator=gen)  # often beyond the clip range
    returns = torch.randn(rows, columns, generator=gen)
    mask = torch.rand(rows, columns, generator=gen) < 0.7
    mask[3] = False
    return values, old_values, returns, mask


# --- policy loss: hand-worked -------------------------------------------------------------------

# clip range [1 - 0.2, 1 + 0.28] = [0.8, 1.28]; old log-prob -1 everywhere; column 5 is masked garbage.
#   token  ratio  A   ratio*A  clip(ratio)*A  min    loss_t  clipped?         d loss_t / d log_prob_t
#   0      1.1   +1   1.1      1.1            1.1    -1.1    no (inside)      -A*ratio = -1.1
#   1      1.5   +1   1.5      1.28           1.28   -1.28   yes (upper)      0
#   2      1.5   -1   -1.5     -1.28          -1.5   1.5     no               -A*ratio = 1.5
#   3      0.5   -1   -0.5     -0.8           -0.8   0.8     yes (lower)      0
#   4      0.5   +2   1.0      1.6            1.0    -1.0    no               -A*ratio = -1.0
# loss = (-1.1 - 1.28 + 1.5 + 0.8 - 1.0) / 5 = -1.08 / 5 = -0.216; gradients divided by 5 too.
# clipfrac = 2/5, clipfrac_upper = 1/5, clipfrac_lower = 1/5.
# ratio_mean = (1.1 + 1.5 + 1.5 + 0.5 + 0.5) / 5 = 1.02; ratio_max = 1.5.
# approx_kl = mean((r - 1) - ln r) = [(0.1 - ln 1.1) + 2 (0.5 - ln 1.5) + 2 (-0.5 - ln 0.5)] / 5.
HAND_RATIOS = [1.1, 1.5, 1.5, 0.5, 0.5]
HAND_ADVANTAGES = [1.0, 1.0, -1.0, -1.0, 2.0]


def hand_policy_inputs():
    log_ratio = torch.tensor([[math.log(r) for r in HAND_RATIOS] + [float("nan")]])
    old_log_probs = torch.full((1, 6), -1.0)
    log_probs = (old_log_probs + log_ratio).requires_grad_()
    advantages = torch.tensor([[*HAND_ADVANTAGES, float("inf")]])
    mask = torch.tensor([[True] * 5 + [False]])
    return log_probs, old_log_probs, advantages, mask


def test_policy_loss_by_hand():
    log_probs, old_log_probs, advantages, mask = hand_policy_inputs()
    out = policy_loss(log_probs, old_log_probs, advantages, mask, **CLIP)
    assert_close(out.loss, scalar(-0.216), atol=ATOL, rtol=0)
    assert_close(out.clipfrac, scalar(0.4), atol=ATOL, rtol=0)
    assert_close(out.clipfrac_upper, scalar(0.2), atol=ATOL, rtol=0)
    assert_close(out.clipfrac_lower, scalar(0.2), atol=ATOL, rtol=0)
    assert_close(out.ratio_mean, scalar(1.02), atol=ATOL, rtol=0)
    assert_close(out.ratio_max, scalar(1.5), atol=ATOL, rtol=0)
    kl = ((0.1 - math.log(1.1)) + 2 * (0.5 - math.log(1.5)) + 2 * (-0.5 - math.log(0.5))) / 5
    assert_close(out.approx_kl, scalar(kl), atol=ATOL, rtol=0)
    assert_close(out.dual_clipfrac, scalar(0.0), atol=0, rtol=0)
    out.loss.backward()
    assert log_probs.grad is not None
    assert_close(log_probs.grad, torch.tensor([[-1.1, 0.0, 1.5, 0.0, -1.0, 0.0]]) / 5, atol=ATOL, rtol=0)
    assert all(not stat.requires_grad for stat in out[1:])


def test_policy_loss_dual_clip_by_hand():
    # dual_clip c = 3, clip range [0.8, 1.28]:
    #   token  ratio  A   loss_t before dual clip          cap -c*A   after   dual-clipped?
    #   0      4.0   -1   max(4.0, 1.28) = 4.0             3          3.0     yes (no gradient)
    #   1      2.0   -1   max(2.0, 1.28) = 2.0             3          2.0     no
    #   2      4.0   +1   max(-4.0, -1.28) = -1.28         (A > 0)    -1.28   no (clipped upper)
    # loss = (3 + 2 - 1.28) / 3 = 1.24; dual_clipfrac = 1/3; clipfrac = 1/3 (token 2);
    # d loss / d log_prob = [0, -A*ratio = 2, 0] / 3.
    old_log_probs = torch.zeros(1, 3)
    log_probs = torch.log(torch.tensor([[4.0, 2.0, 4.0]])).requires_grad_()
    advantages = torch.tensor([[-1.0, -1.0, 1.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    out = policy_loss(log_probs, old_log_probs, advantages, mask, **CLIP, dual_clip=3.0)
    assert_close(out.loss, scalar(1.24), atol=ATOL, rtol=0)
    assert_close(out.dual_clipfrac, scalar(1 / 3), atol=ATOL, rtol=0)
    assert_close(out.clipfrac, scalar(1 / 3), atol=ATOL, rtol=0)
    out.loss.backward()
    assert log_probs.grad is not None
    assert_close(log_probs.grad, torch.tensor([[0.0, 2.0, 0.0]]) / 3, atol=ATOL, rtol=0)
    without = policy_loss(log_probs, old_log_probs, advantages, mask, **CLIP)
    assert_close(without.loss, scalar((4.0 + 2.0 - 1.28) / 3), atol=ATOL, rtol=0)


# --- policy loss: reduces-to and identities -----------------------------------------------------


def test_policy_loss_at_ratio_one_is_minus_mean_advantage():
    _, old_log_probs, advantages, mask = random_policy_batch(seed=1)
    log_probs = old_log_probs.clone().requires_grad_()
    out = policy_loss(log_probs, old_log_probs, advantages, mask, **CLIP, dual_clip=3.0)
    assert_close(out.loss, -masked_mean(advantages, mask), atol=ATOL, rtol=0)
    out.loss.backward()  # d/d log_prob of -ratio * A at ratio 1 is -A, over the token count
    assert log_probs.grad is not None
    assert_close(log_probs.grad, torch.where(mask, -advantages, 0.0) / mask.sum(), atol=ATOL, rtol=0)
    for stat in (out.clipfrac, out.approx_kl, out.dual_clipfrac):
        assert_close(stat, scalar(0.0), atol=ATOL, rtol=0)
    assert_close(out.ratio_mean, scalar(1.0), atol=ATOL, rtol=0)


def test_policy_clipfrac_is_upper_plus_lower():
    out = policy_loss(*random_policy_batch(seed=2), **CLIP)
    assert out.clipfrac > 0
    assert_close(out.clipfrac, out.clipfrac_upper + out.clipfrac_lower, atol=ATOL, rtol=0)


def test_policy_loss_with_wide_clip_is_plain_surrogate():
    log_probs, old_log_probs, advantages, mask = random_policy_batch(seed=3)
    out = policy_loss(log_probs, old_log_probs, advantages, mask, clip_eps_low=0.999, clip_eps_high=1e6)
    expected = masked_mean(-advantages * torch.exp(log_probs - old_log_probs), mask)
    assert_close(out.loss, expected, atol=ATOL, rtol=0)
    assert_close(out.clipfrac, scalar(0.0), atol=0, rtol=0)


# --- policy loss: edges, mask invariance, split invariance --------------------------------------


def test_policy_loss_empty_mask_is_zero_with_a_graph():
    log_probs, old_log_probs, advantages, _ = random_policy_batch(seed=4)
    log_probs.requires_grad_()
    out = policy_loss(
        log_probs, old_log_probs, advantages, torch.zeros_like(log_probs, dtype=torch.bool), **CLIP
    )
    assert out.loss.item() == 0.0 and out.loss.requires_grad
    out.loss.backward()
    assert log_probs.grad is not None and torch.all(log_probs.grad == 0)
    assert all(stat.item() == 0.0 for stat in out[1:])


@pytest.mark.parametrize("fill", GARBAGE)
def test_policy_loss_ignores_garbage_under_the_mask(fill):
    log_probs, old_log_probs, advantages, mask = random_policy_batch(seed=5)
    clean_lp = log_probs.clone().requires_grad_()
    clean = policy_loss(clean_lp, old_log_probs, advantages, mask, **CLIP, dual_clip=3.0)
    clean.loss.backward()
    dirty_lp = torch.where(mask, log_probs, fill).requires_grad_()
    dirty = policy_loss(
        dirty_lp,
        torch.where(mask, old_log_probs, fill),
        torch.where(mask, advantages, fill),
        mask,
        **CLIP,
        dual_clip=3.0,
    )
    dirty.loss.backward()
    for got, want in zip(dirty, clean, strict=True):
        assert_close(got, want, atol=0, rtol=0)
    assert dirty_lp.grad is not None and clean_lp.grad is not None
    assert_close(dirty_lp.grad, clean_lp.grad, atol=0, rtol=0)


@pytest.mark.parametrize("dual_clip", [None, 3.0])
def test_policy_loss_split_invariance_with_global_token_count(dual_clip):
    log_probs, old_log_probs, advantages, mask = random_policy_batch(seed=6)
    whole_lp = log_probs.clone().requires_grad_()
    whole = policy_loss(whole_lp, old_log_probs, advantages, mask, **CLIP, dual_clip=dual_clip)
    whole.loss.backward()

    pieces_lp = log_probs.clone().requires_grad_()
    token_count = mask.sum()
    total = torch.zeros(())
    for rows in (slice(0, 1), slice(1, 4), slice(4, 6)):  # micro-batches, as in gradient accumulation
        piece = policy_loss(
            pieces_lp[rows], old_log_probs[rows], advantages[rows], mask[rows],
            **CLIP, dual_clip=dual_clip, token_count=token_count,
        )  # fmt: skip
        piece.loss.backward()
        total = total + piece.loss.detach()
    assert_close(total, whole.loss.detach(), atol=ATOL, rtol=0)
    assert pieces_lp.grad is not None and whole_lp.grad is not None
    assert_close(pieces_lp.grad, whole_lp.grad, atol=ATOL, rtol=0)


def test_policy_loss_token_count_forms_agree_and_inputs_untouched():
    log_probs, old_log_probs, advantages, mask = random_policy_batch(seed=7)
    before = [t.clone() for t in (log_probs, old_log_probs, advantages, mask)]
    default = policy_loss(log_probs, old_log_probs, advantages, mask, **CLIP).loss
    for count in (int(mask.sum()), float(mask.sum()), mask.sum()):
        assert_close(
            policy_loss(log_probs, old_log_probs, advantages, mask, **CLIP, token_count=count).loss, default
        )
    doubled = policy_loss(log_probs, old_log_probs, advantages, mask, **CLIP, token_count=2 * int(mask.sum()))
    assert_close(doubled.loss, default / 2, atol=ATOL, rtol=0)
    for tensor, copy in zip((log_probs, old_log_probs, advantages, mask), before, strict=True):
        assert torch.equal(tensor, copy)


def test_policy_loss_computes_in_float32_for_bfloat16_inputs():
    log_probs, old_log_probs, advantages, mask = random_policy_batch(seed=8)
    out = policy_loss(log_probs.bfloat16(), old_log_probs.bfloat16(), advantages.bfloat16(), mask, **CLIP)
    assert out.loss.dtype == torch.float32


def test_policy_loss_rejects_bad_arguments():
    log_probs, old_log_probs, advantages, mask = random_policy_batch(seed=9)
    with pytest.raises(ValueError, match="dual_clip"):
        policy_loss(log_probs, old_log_probs, advantages, mask, **CLIP, dual_clip=1.0)
    with pytest.raises(ValueError, match="clip_eps_low"):
        policy_loss(log_probs, old_log_probs, advantages, mask, clip_eps_low=1.0, clip_eps_high=0.2)
    with pytest.raises(TypeError, match="bool"):
        policy_loss(log_probs, old_log_probs, advantages, mask.float(), **CLIP)
    with pytest.raises(ValueError, match="advantages"):
        policy_loss(log_probs, old_log_probs, advantages[:, :-1], mask, **CLIP)


# --- value loss ---------------------------------------------------------------------------------

# Clip range [V_old - 0.5, V_old + 0.6] = [0.5, 1.6] with V_old = 1 everywhere; column 5 is garbage.
#   token  V    R     V_clip  (V-R)^2  (V_clip-R)^2  loss_t = 0.5*max   clipped?   d loss_t / d V
#   0      2.0   3.0  1.6     1.0      1.96          0.98               yes        0
#   1      2.0   0.0  1.6     4.0      2.56          2.0                no         V - R = 2.0
#   2      1.2   0.0  1.2     1.44     1.44          0.72               no (tie)   V - R = 1.2
#   3      0.2   1.0  0.5     0.64     0.25          0.32               no         V - R = -0.8
#   4      0.2  -1.0  0.5     1.44     2.25          1.125              yes        0
# loss = (0.98 + 2.0 + 0.72 + 0.32 + 1.125) / 5 = 5.145 / 5 = 1.029; gradients divided by 5 too.
# clipfrac = 2/5; mean |V - R| = (1 + 2 + 1.2 + 0.8 + 1.2) / 5 = 1.24;
# values_mean = (2 + 2 + 1.2 + 0.2 + 0.2) / 5 = 1.12; returns_mean = (3 + 0 + 0 + 1 - 1) / 5 = 0.6.


def test_value_loss_by_hand():
    values = torch.tensor([[2.0, 2.0, 1.2, 0.2, 0.2, float("nan")]], requires_grad=True)
    old_values = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, float("inf")]])
    returns = torch.tensor([[3.0, 0.0, 0.0, 1.0, -1.0, float("-inf")]])
    mask = torch.tensor([[True] * 5 + [False]])
    out = value_loss(values, old_values, returns, mask, **VCLIP)
    assert_close(out.loss, scalar(1.029), atol=ATOL, rtol=0)
    assert_close(out.clipfrac, scalar(0.4), atol=ATOL, rtol=0)
    assert_close(out.mean_abs_error, scalar(1.24), atol=ATOL, rtol=0)
    assert_close(out.values_mean, scalar(1.12), atol=ATOL, rtol=0)
    assert_close(out.returns_mean, scalar(0.6), atol=ATOL, rtol=0)
    out.loss.backward()
    assert values.grad is not None
    assert_close(values.grad, torch.tensor([[0.0, 2.0, 1.2, -0.8, 0.0, 0.0]]) / 5, atol=ATOL, rtol=0)


def test_value_loss_inside_clip_range_is_half_mse():
    values, _, returns, mask = random_value_batch(seed=10)
    out = value_loss(values, values, returns, mask, **VCLIP)  # V = V_old: nothing can clip
    assert_close(out.loss, 0.5 * masked_mean((values - returns) ** 2, mask), atol=ATOL, rtol=0)
    assert_close(out.clipfrac, scalar(0.0), atol=0, rtol=0)


def test_value_loss_empty_mask_is_zero_with_a_graph():
    values, old_values, returns, _ = random_value_batch(seed=11)
    values.requires_grad_()
    out = value_loss(values, old_values, returns, torch.zeros_like(values, dtype=torch.bool), **VCLIP)
    assert out.loss.item() == 0.0 and out.loss.requires_grad
    out.loss.backward()
    assert values.grad is not None and torch.all(values.grad == 0)


@pytest.mark.parametrize("fill", GARBAGE)
def test_value_loss_ignores_garbage_under_the_mask(fill):
    values, old_values, returns, mask = random_value_batch(seed=12)
    clean_v = values.clone().requires_grad_()
    clean = value_loss(clean_v, old_values, returns, mask, **VCLIP)
    clean.loss.backward()
    dirty_v = torch.where(mask, values, fill).requires_grad_()
    dirty = value_loss(
        dirty_v, torch.where(mask, old_values, fill), torch.where(mask, returns, fill), mask, **VCLIP
    )
    dirty.loss.backward()
    for got, want in zip(dirty, clean, strict=True):
        assert_close(got, want, atol=0, rtol=0)
    assert dirty_v.grad is not None and clean_v.grad is not None
    assert_close(dirty_v.grad, clean_v.grad, atol=0, rtol=0)


def test_value_loss_split_invariance_with_global_token_count():
    values, old_values, returns, mask = random_value_batch(seed=13)
    assert value_loss(values, old_values, returns, mask, **VCLIP).clipfrac > 0
    whole_v = values.clone().requires_grad_()
    whole = value_loss(whole_v, old_values, returns, mask, **VCLIP)
    whole.loss.backward()
    pieces_v = values.clone().requires_grad_()
    total = torch.zeros(())
    for rows in (slice(0, 2), slice(2, 3), slice(3, 6)):
        piece = value_loss(
            pieces_v[rows], old_values[rows], returns[rows], mask[rows], **VCLIP, token_count=mask.sum()
        )
        piece.loss.backward()
        total = total + piece.loss.detach()
    assert_close(total, whole.loss.detach(), atol=ATOL, rtol=0)
    assert pieces_v.grad is not None and whole_v.grad is not None
    assert_close(pieces_v.grad, whole_v.grad, atol=ATOL, rtol=0)


def test_value_loss_rejects_bad_arguments():
    values, old_values, returns, mask = random_value_batch(seed=14)
    with pytest.raises(ValueError, match="value_clip_low"):
        value_loss(values, old_values, returns, mask, value_clip_low=-0.1, value_clip_high=0.6)
    with pytest.raises(ValueError, match="returns"):
        value_loss(values, old_values, returns[:, :-1], mask, **VCLIP)
