"""Tests for VAPO's knobs: length-adaptive lambda, per-response lambda in the estimators, and the
positive-example LM loss."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from tppo.algorithms.advantages import egae, gae, get_advantage_estimator, length_adaptive_lambda
from tppo.algorithms.losses import positive_lm_loss

GARBAGE = (float("nan"), float("inf"), float("-inf"), 1e30)


# --- length_adaptive_lambda ---------------------------------------------------------------------


def test_length_adaptive_lambda_by_hand():
    # alpha = 0.05: 1 - 1 / (0.05 * l) = 1 - 20 / l.
    #   l = 0 -> 0 (by definition); l = 10 -> 1 - 2 = -1 -> clamped 0; l = 20 -> 0;
    #   l = 40 -> 0.5; l = 100 -> 0.8; l = 1000 -> 0.98.
    lengths = torch.tensor([0, 10, 20, 40, 100, 1000])
    lam = length_adaptive_lambda(lengths, alpha=0.05)
    assert lam.dtype == torch.float32
    assert_close(lam, torch.tensor([0.0, 0.0, 0.0, 0.5, 0.8, 0.98]))


def test_length_adaptive_lambda_with_huge_alpha_is_one():
    lam = length_adaptive_lambda(torch.tensor([0, 1, 7, 500]), alpha=1e30)
    assert lam.tolist() == [0.0, 1.0, 1.0, 1.0]


def test_length_adaptive_lambda_rejects_bad_input():
    with pytest.raises(ValueError, match="alpha"):
        length_adaptive_lambda(torch.tensor([3]), alpha=0.0)
    with pytest.raises(ValueError, match=">= 0"):
        length_adaptive_lambda(torch.tensor([-1]), alpha=0.05)
    with pytest.raises(ValueError, match="Tensor"):
        length_adaptive_lambda(torch.ones(2, 2), alpha=0.05)


# --- per-response lambda in the estimators -----------------------------------------------------------


def random_batch(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randn(4, 7, generator=gen)
    values = torch.randn(4, 7, generator=gen)
    lengths = torch.tensor([7, 4, 0, 6])
    mask = torch.arange(7)[None, :] < lengths[:, None]
    is_finished = torch.tensor([True, False, True, False])
    return rewards, values, mask, is_finished, lengths


@pytest.mark.parametrize("gae_lambda", [0.0, 0.37, 0.95, 1.0])
def test_a_lambda_tensor_of_one_value_gives_the_float_results(gae_lambda):
    """Bit-identical at gamma = 1; otherwise ``gamma * lambda`` rounds once in float32, not in float64."""
    rewards, values, mask, is_finished, _ = random_batch()
    tensor = torch.full((4,), gae_lambda)
    as_float = egae(rewards, values, mask, is_finished, gamma=1.0, gae_lambda=gae_lambda)
    assert torch.equal(egae(rewards, values, mask, is_finished, gamma=1.0, gae_lambda=tensor), as_float)
    as_float = egae(rewards, values, mask, is_finished, gamma=0.99, gae_lambda=gae_lambda)
    assert_close(egae(rewards, values, mask, is_finished, gamma=0.99, gae_lambda=tensor), as_float)


def test_per_response_lambda_equals_each_row_with_its_own_float():
    rewards, values, mask, is_finished, _ = random_batch(seed=1)
    lam = torch.tensor([0.1, 0.9, 0.5, 1.0])
    together = egae(rewards, values, mask, is_finished, gamma=0.99, gae_lambda=lam)
    for row in range(4):
        rows = slice(row, row + 1)
        alone = egae(
            rewards[rows], values[rows], mask[rows], is_finished[rows], gamma=0.99, gae_lambda=float(lam[row])
        )
        assert_close(together[rows], alone)


# One finished row, gamma = 1, values [0.5, 0.2], reward 1 on token 1, and one unfinished row
# (EGAE: V(s_2) := V(s_1)) with values [0.1, 0.3] and no reward.
#   row 0: d0 = 0.2 - 0.5 = -0.3, d1 = 1 - 0.2 = 0.8; lambda 0.5: A1 = 0.8, A0 = -0.3 + 0.5 * 0.8 = 0.1
#   row 1: d0 = 0.3 - 0.1 = 0.2, d1 = 0 + 0.3 - 0.3 = 0; lambda 0: A0 = 0.2, A1 = 0
def test_per_response_lambda_by_hand():
    rewards = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    values = torch.tensor([[0.5, 0.2], [0.1, 0.3]])
    mask = torch.ones(2, 2, dtype=torch.bool)
    out = egae(
        rewards, values, mask, torch.tensor([True, False]), gamma=1.0, gae_lambda=torch.tensor([0.5, 0.0])
    )
    assert_close(out, torch.tensor([[0.1, 0.8], [0.2, 0.0]]))


def test_length_adaptive_lambda_with_huge_alpha_gives_lambda_one_advantages():
    rewards, values, mask, is_finished, lengths = random_batch(seed=2)
    lam = length_adaptive_lambda(lengths, alpha=1e30)  # 1 for every row with tokens, 0 for the empty row
    ours = egae(rewards, values, mask, is_finished, gamma=1.0, gae_lambda=lam)
    assert torch.equal(ours, egae(rewards, values, mask, is_finished, gamma=1.0, gae_lambda=1.0))


def test_gae_and_the_registered_estimators_take_a_lambda_tensor():
    rewards, values, mask, is_finished, lengths = random_batch(seed=3)
    lam = length_adaptive_lambda(lengths, alpha=0.5)
    all_finished = torch.ones(4, dtype=torch.bool)
    expected = egae(rewards, values, mask, all_finished, gamma=0.9, gae_lambda=lam)
    assert_close(gae(rewards, values, mask, gamma=0.9, gae_lambda=lam), expected)
    registered = get_advantage_estimator("gae")(rewards, values, mask, is_finished, gamma=0.9, gae_lambda=lam)
    assert_close(registered, expected)
    registered_egae = get_advantage_estimator("egae")(
        rewards, values, mask, is_finished, gamma=0.9, gae_lambda=lam
    )
    assert_close(registered_egae, egae(rewards, values, mask, is_finished, gamma=0.9, gae_lambda=lam))


@pytest.mark.parametrize("garbage", GARBAGE)
def test_per_response_lambda_ignores_garbage_under_the_mask(garbage):
    rewards, values, mask, is_finished, lengths = random_batch(seed=4)
    lam = length_adaptive_lambda(lengths, alpha=0.3)
    clean = egae(rewards, values, mask, is_finished, gamma=0.9, gae_lambda=lam)
    dirty = egae(
        rewards.masked_fill(~mask, garbage), values.masked_fill(~mask, garbage), mask, is_finished,
        gamma=0.9, gae_lambda=lam,
    )  # fmt: skip
    assert_close(dirty, clean)


@pytest.mark.parametrize(
    "bad",
    [
        torch.tensor([0.5, 0.5]),
        torch.tensor([0.5, 0.5, 1.2, 0.0]),
        torch.tensor([1, 1, 1, 1]),
        torch.full((4,), math.nan),
    ],
)
def test_a_bad_lambda_tensor_is_an_error(bad):
    rewards, values, mask, is_finished, _ = random_batch()
    with pytest.raises(ValueError, match="gae_lambda"):
        egae(rewards, values, mask, is_finished, gamma=1.0, gae_lambda=bad)


# --- positive_lm_loss ---------------------------------------------------------------------------------


# Rows: reward 1 with log-probs [-1, -2] (2 tokens), reward 0 (not read), reward 1 with [-4] (1 token;
# column 1 masked). loss = (1 + 2 + 4) / 3 = 7 / 3; d loss / d log_probs = -1/3 on the positive tokens.
def test_positive_lm_loss_by_hand():
    log_probs = torch.tensor([[-1.0, -2.0], [-0.5, -0.5], [-4.0, float("nan")]], requires_grad=True)
    rewards = torch.tensor([1.0, 0.0, 1.0])
    mask = torch.tensor([[True, True], [True, True], [True, False]])
    loss = positive_lm_loss(log_probs, rewards, mask)
    assert loss.item() == pytest.approx(7 / 3)
    loss.backward()
    assert log_probs.grad is not None
    assert_close(log_probs.grad, torch.tensor([[-1 / 3, -1 / 3], [0.0, 0.0], [-1 / 3, 0.0]]))


@pytest.mark.parametrize("garbage", GARBAGE)
def test_positive_lm_loss_without_positives_is_zero_and_reads_no_garbage(garbage):
    log_probs = torch.full((2, 3), garbage, requires_grad=True)
    loss = positive_lm_loss(log_probs, torch.tensor([0.0, 0.5]), torch.ones(2, 3, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert log_probs.grad is not None and bool((log_probs.grad == 0).all())


def test_positive_lm_loss_pieces_add_up_with_the_global_token_count():
    gen = torch.Generator().manual_seed(0)
    log_probs = -torch.rand(5, 4, generator=gen)
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])
    mask = torch.arange(4)[None, :] < torch.tensor([4, 2, 3, 1, 4])[:, None]
    whole = positive_lm_loss(log_probs, rewards, mask)
    count = int((mask & (rewards == 1)[:, None]).sum())
    pieces = sum(
        positive_lm_loss(log_probs[rows], rewards[rows], mask[rows], token_count=count)
        for rows in (slice(0, 2), slice(2, 5))
    )
    assert_close(pieces, whole)


def test_positive_lm_loss_checks_shapes():
    with pytest.raises(ValueError, match="rewards"):
        positive_lm_loss(torch.zeros(2, 3), torch.ones(3), torch.ones(2, 3, dtype=torch.bool))
