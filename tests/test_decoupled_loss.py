"""Tests for decoupled_policy_loss (truncated importance sampling around a proximal policy) and kl_k3."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from tppo.algorithms import decoupled_policy_loss, kl_k3, policy_loss

CLIP = {"clip_eps_low": 0.2, "clip_eps_high": 0.28}


def batch(seed: int = 0, rows: int = 5, columns: int = 6):
    gen = torch.Generator().manual_seed(seed)
    proximal = -torch.rand(rows, columns, generator=gen) * 3
    behaviour = proximal + 0.5 * torch.randn(rows, columns, generator=gen)
    log_probs = (proximal + 0.4 * torch.randn(rows, columns, generator=gen)).requires_grad_()
    advantages = torch.randn(rows, columns, generator=gen)
    mask = torch.rand(rows, columns, generator=gen) < 0.7
    mask[1] = False
    return log_probs, proximal, behaviour, advantages, mask


def test_hand_worked_token() -> None:
    # w = exp(-0.1 - (-0.5)) = e^0.4 ; r = exp(0.0 - (-0.1)) = e^0.1 < 1.28, A = 2: unclipped
    lp = torch.tensor([[0.0]], requires_grad=True)
    out = decoupled_policy_loss(
        lp,
        torch.tensor([[-0.1]]),
        torch.tensor([[-0.5]]),
        torch.tensor([[2.0]]),
        torch.tensor([[True]]),
        **CLIP,
    )
    assert_close(out.loss, torch.tensor(-math.exp(0.4) * math.exp(0.1) * 2.0))
    assert_close(out.is_weight_mean, torch.tensor(math.exp(0.4)))
    assert float(out.is_weight_capped_frac) == 0.0
    out.loss.backward()
    assert_close(lp.grad, torch.tensor([[-math.exp(0.4) * math.exp(0.1) * 2.0]]))


def test_is_cap_is_active() -> None:
    # w = e^1 > 2 is capped at 2; r = 1
    out = decoupled_policy_loss(
        torch.tensor([[0.0, 0.0]]),
        torch.tensor([[0.0, 0.0]]),
        torch.tensor([[-1.0, 0.0]]),
        torch.tensor([[1.0, 1.0]]),
        torch.tensor([[True, True]]),
        **CLIP,
        is_cap=2.0,
    )
    assert_close(out.loss, torch.tensor(-(2.0 + 1.0) / 2))
    assert_close(out.is_weight_capped_frac, torch.tensor(0.5))
    assert_close(out.is_weight_mean, torch.tensor(1.5))


def test_reduces_to_policy_loss_when_proximal_is_behaviour() -> None:
    log_probs, proximal, _, advantages, mask = batch()
    mine = decoupled_policy_loss(log_probs, proximal, proximal, advantages, mask, **CLIP, is_cap=2.0)
    theirs = policy_loss(log_probs, proximal, advantages, mask, **CLIP)
    for name in theirs._fields:
        assert torch.equal(getattr(mine, name), getattr(theirs, name)), name
    assert float(mine.is_weight_mean) == 1.0
    (g1,) = torch.autograd.grad(mine.loss, log_probs)
    (g2,) = torch.autograd.grad(theirs.loss, log_probs)
    assert torch.equal(g1, g2)


def test_gradient_flows_through_log_probs_only() -> None:
    log_probs, proximal, behaviour, advantages, mask = batch(1)
    proximal, behaviour = proximal.requires_grad_(), behaviour.requires_grad_()
    out = decoupled_policy_loss(log_probs, proximal, behaviour, advantages, mask, **CLIP)
    grads = torch.autograd.grad(out.loss, [log_probs, proximal, behaviour], allow_unused=True)
    assert grads[0] is not None and grads[0].abs().sum() > 0
    assert all(g is None or torch.count_nonzero(g) == 0 for g in grads[1:])


def test_mask_invariance_with_nan_under_the_mask() -> None:
    log_probs, proximal, behaviour, advantages, mask = batch(2)
    clean = decoupled_policy_loss(log_probs, proximal, behaviour, advantages, mask, **CLIP, is_cap=2.0)
    dirty = [t.detach().clone() for t in (log_probs, proximal, behaviour, advantages)]
    for t in dirty:
        t[~mask] = float("nan")
    dirty[0].requires_grad_()
    out = decoupled_policy_loss(*dirty, mask, **CLIP, is_cap=2.0)
    for a, b in zip(clean, out, strict=True):
        assert_close(a, b)
    (grad,) = torch.autograd.grad(out.loss, dirty[0])
    assert torch.isfinite(grad).all()


def test_split_invariance_over_micro_batches() -> None:
    log_probs, proximal, behaviour, advantages, mask = batch(3, rows=8)
    whole = decoupled_policy_loss(log_probs, proximal, behaviour, advantages, mask, **CLIP, is_cap=2.0)
    count = int(mask.sum())
    parts = sum(
        decoupled_policy_loss(
            log_probs[r],
            proximal[r],
            behaviour[r],
            advantages[r],
            mask[r],
            **CLIP,
            is_cap=2.0,
            token_count=count,
        ).loss
        for r in (slice(0, 3), slice(3, 8))
    )
    assert_close(parts, whole.loss)


def test_bad_cap_is_refused() -> None:
    log_probs, proximal, behaviour, advantages, mask = batch()
    with pytest.raises(ValueError, match="is_cap"):
        decoupled_policy_loss(log_probs, proximal, behaviour, advantages, mask, **CLIP, is_cap=0.0)


def test_kl_k3_hand_worked_and_zero_at_the_reference() -> None:
    lp = torch.tensor([[0.0, -1.0]], requires_grad=True)
    ref = torch.tensor([[math.log(0.5), float("nan")]])
    mask = torch.tensor([[True, False]])
    d = math.log(0.5)
    out = kl_k3(lp, ref, mask)
    assert_close(out, torch.tensor(math.exp(d) - d - 1.0))
    (grad,) = torch.autograd.grad(out, lp)
    assert_close(grad, torch.tensor([[-(math.exp(d) - 1.0), 0.0]]))
    assert float(kl_k3(lp.detach(), lp.detach(), mask)) == 0.0
