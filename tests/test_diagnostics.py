import math

import pytest
import torch

from tppo.algorithms import select_tokens
from tppo.diagnostics import (
    bootstrap_errors,
    policy_versions,
    stale_token_fraction,
    summarize_errors,
    tail_advantage_stats,
)


def test_bootstrap_errors_hand_worked() -> None:
    # a 10-token response paid 1.0 at its end; bootstrapped at the ends of windows 0-3 and 4-7
    errors = bootstrap_errors([(3, 0.25), (7, 0.9)], response_length=10, reward=1.0, gamma=0.5)
    assert errors == pytest.approx([0.25 - 0.5**6, 0.9 - 0.5**2])
    assert bootstrap_errors([(3, 0.25)], response_length=10, reward=1.0, gamma=1.0) == [-0.75]
    assert bootstrap_errors([], response_length=10, reward=1.0, gamma=1.0) == []


def test_bootstrap_position_outside_the_response_is_refused() -> None:
    with pytest.raises(ValueError, match="position 10 is outside a response of 10"):
        bootstrap_errors([(10, 0.0)], response_length=10, reward=1.0, gamma=1.0)


def test_summarize_errors() -> None:
    assert summarize_errors([0.5, -1.5]) == {"abs": 1.0, "signed": -0.5}
    empty = summarize_errors([])
    assert math.isnan(empty["abs"]) and math.isnan(empty["signed"])


def test_policy_versions_counts_distinct_steps() -> None:
    assert policy_versions([3, 3, 3]) == 1
    assert policy_versions([1, 1, 2, 2, 4]) == 3


def test_stale_token_fraction() -> None:
    steps = torch.tensor([[0, 0, 1, 2], [2, 2, -1, -1]])
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    assert stale_token_fraction(steps, mask, step=2) == pytest.approx(3 / 6)
    assert stale_token_fraction(steps, mask, step=0) == 0.0
    assert math.isnan(stale_token_fraction(steps, torch.zeros_like(mask), step=2))


def test_tail_advantage_stats_split_this_steps_tokens_at_the_window_edge() -> None:
    steps = torch.tensor([[1, 1, 1, 1], [0, 1, 1, -1]])
    response = torch.tensor([[True, True, True, True], [True, True, True, False]])
    finished = torch.tensor([False, True])
    masks = select_tokens(steps, response, finished, step=1, policy_skip_tail=2)
    adv = torch.tensor([[1.0, 2.0, -3.0, 5.0], [7.0, -1.0, 4.0, 99.0]])
    tail = response & (steps == 1) & ~masks.policy_mask
    stats = tail_advantage_stats(adv, response, steps, tail, step=1)
    # row 0 (unfinished) has its last two tokens (-3, 5) in the tail; row 1's old token (7) is no one's
    assert stats["tail_adv_mean"] == pytest.approx(1.0)
    assert stats["tail_adv_abs_mean"] == pytest.approx(4.0)
    assert stats["rest_adv_mean"] == pytest.approx((1 + 2 - 1 + 4) / 4)
    assert stats["rest_adv_abs_mean"] == pytest.approx((1 + 2 + 1 + 4) / 4)
    no_tail = tail_advantage_stats(adv, response, steps, torch.zeros_like(response), step=1)
    assert math.isnan(no_tail["tail_adv_mean"])
    assert no_tail["rest_adv_mean"] == pytest.approx((1 + 2 - 3 + 5 - 1 + 4) / 6)


def test_log_prob_gap_is_the_mean_absolute_difference_under_the_mask():
    from tppo.diagnostics import log_prob_gap

    engine = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -9.0, -9.0]])
    trainer = torch.tensor([[-1.5, -2.0, -2.0], [-0.25, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    assert log_prob_gap(engine, trainer, mask) == pytest.approx((0.5 + 0.0 + 1.0 + 0.25) / 4)
    assert math.isnan(log_prob_gap(engine, trainer, torch.zeros_like(mask)))
