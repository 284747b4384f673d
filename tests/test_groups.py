"""Tests for tppo.algorithms.groups: GRPO advantages, DAPO's overlong penalty and degenerate groups."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from tppo.algorithms import degenerate_groups, group_advantages, overlong_penalty, sequence_token_weights


def test_group_advantages_hand_worked() -> None:
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.5])
    groups = torch.tensor([7, 7, 7, 3, 3, 9])  # ids need not be sorted or contiguous
    # group 7: mean 1/3, unbiased std sqrt(((2/3)^2 + 2 (1/3)^2) / 2) = sqrt(1/3)
    std = math.sqrt(1 / 3)
    expected = torch.tensor(
        [(2 / 3) / (std + 1e-6), (-1 / 3) / (std + 1e-6), (-1 / 3) / (std + 1e-6), 0.0, 0.0, 0.0]
    )
    assert_close(group_advantages(scores, groups), expected)


def test_group_of_one_and_all_equal_group_get_zero() -> None:
    scores = torch.tensor([0.3, 1.0, 1.0, 1.0])
    groups = torch.tensor([0, 1, 1, 1])
    assert torch.equal(group_advantages(scores, groups), torch.zeros(4))
    assert torch.equal(group_advantages(scores, groups, scale_by_std=False), torch.zeros(4))


def test_dr_grpo_is_unscaled_centring() -> None:
    scores = torch.tensor([2.0, 0.0, 5.0, 1.0, 3.0])
    groups = torch.tensor([0, 0, 1, 1, 1])
    assert_close(
        group_advantages(scores, groups, scale_by_std=False), torch.tensor([1.0, -1.0, 2.0, -2.0, 0.0])
    )


def test_group_advantages_are_invariant_to_order_and_keep_float64() -> None:
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(12, generator=gen, dtype=torch.float64)
    groups = torch.arange(12) // 4
    perm = torch.randperm(12, generator=gen)
    whole = group_advantages(scores, groups)
    assert whole.dtype == torch.float64
    assert_close(group_advantages(scores[perm], groups[perm]), whole[perm])
    # each group's advantages: mean 0, unbiased std 1 (up to eps)
    for g in range(3):
        part = whole[groups == g]
        assert abs(float(part.mean())) < 1e-12
        assert abs(float(part.std()) - 1.0) < 1e-4


def test_group_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match="group_ids has shape"):
        group_advantages(torch.zeros(3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        group_advantages(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="1-d"):
        group_advantages(torch.zeros(3, 2), torch.zeros(3, 2, dtype=torch.long))
    assert group_advantages(torch.zeros(0), torch.zeros(0, dtype=torch.long)).shape == (0,)


def test_degenerate_groups() -> None:
    scores = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.7])
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 3])
    expected = torch.tensor([True, True, False, False, True, True, True])
    assert torch.equal(degenerate_groups(scores, groups), expected)


@pytest.mark.parametrize(
    ("length", "expected"),
    [(0, 0.0), (12, 0.0), (13, -0.25), (14, -0.5), (16, -1.0), (17, -1.0), (100, -1.0)],
)
def test_overlong_penalty_edges(length: int, expected: float) -> None:
    # L = 16, L_cache = 4: the soft band is (12, 16]
    out = overlong_penalty(torch.tensor([length]), max_length=16, cache_length=4)
    assert out.dtype == torch.float32
    assert_close(out, torch.tensor([expected]))


def test_overlong_penalty_checks_its_band() -> None:
    with pytest.raises(ValueError, match="cache_length"):
        overlong_penalty(torch.tensor([1]), max_length=8, cache_length=0)
    with pytest.raises(ValueError, match="cache_length"):
        overlong_penalty(torch.tensor([1]), max_length=8, cache_length=9)


def test_sequence_token_weights_make_a_sequence_mean() -> None:
    mask = torch.tensor([[True, True, True, False], [True, False, False, False], [False] * 4])
    weights = sequence_token_weights(mask)
    assert_close(weights.sum(dim=1), torch.tensor([1.0, 1.0, 0.0]))
    losses = torch.tensor([[3.0, 6.0, 9.0, float("nan")], [1.0, float("nan"), 0.0, 0.0], [float("inf")] * 4])
    weighted = torch.where(mask, losses * weights, 0.0).sum() / weights.sum()
    assert_close(weighted, torch.tensor((6.0 + 1.0) / 2))  # the mean of the two rows' token means
