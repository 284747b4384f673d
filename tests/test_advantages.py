"""Tests for tppo.algorithms.advantages: EGAE, GAE, Monte-Carlo returns, outcome rewards, registry."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from tppo.algorithms import (
    ADVANTAGE_ESTIMATORS,
    egae,
    gae,
    get_advantage_estimator,
    monte_carlo_returns,
    outcome_rewards,
    register_advantage_estimator,
)

ATOL = 1e-6
GARBAGE = (float("nan"), float("inf"), float("-inf"), 1e30)


def prefix_mask(lengths: list[int], num_columns: int) -> torch.Tensor:
    """``Tensor[B, T]`` bool, True at columns ``0 .. length-1`` of each row."""
    return torch.arange(num_columns)[None, :] < torch.tensor(lengths)[:, None]


def with_garbage(x: torch.Tensor, mask: torch.Tensor, fill: float) -> torch.Tensor:
    return torch.where(mask, x, torch.full_like(x, fill))


def random_batch(seed: int = 0, lengths: tuple[int, ...] = (7, 3, 0, 5, 1, 7), num_columns: int = 8):
    gen = torch.Generator().manual_seed(seed)
    mask = prefix_mask(list(lengths), num_columns)
    rewards = torch.randn(len(lengths), num_columns, generator=gen)
    values = torch.randn(len(lengths), num_columns, generator=gen)
    is_finished = torch.tensor([i % 2 == 0 for i in range(len(lengths))])
    return rewards, values, mask, is_finished


def reference_egae(rewards, values, mask, is_finished, gamma, gae_lambda):
    """EGAE straight from the equations, one row and one term at a time (float64)."""
    out = torch.zeros(mask.shape, dtype=torch.float64)
    for i in range(mask.shape[0]):
        b = int(mask[i].sum())
        v = [float(values[i, t]) for t in range(b)]
        bootstrap = 0.0 if bool(is_finished[i]) else (v[-1] if b else 0.0)
        v_next = [*v[1:], bootstrap]
        deltas = [float(rewards[i, t]) + gamma * v_next[t] - v[t] for t in range(b)]
        for t in range(b):
            out[i, t] = sum((gamma * gae_lambda) ** k * deltas[t + k] for k in range(b - t))
    return out.float()


# --- EGAE: hand-worked examples ---------------------------------------------------------------


def test_egae_unfinished_row_by_hand():
    # gamma = 1, lambda = 0.5, V = [1, 2, 4], no rewards yet, unfinished (b = 3):
    #   delta_0 = 0 + 1*2 - 1 = 1
    #   delta_1 = 0 + 1*4 - 2 = 2
    #   delta_2 = 0 + (1 - 1)*4 = 0          (bootstrap V(s_3) := V(s_2) = 4)
    #   A_2 = 0;  A_1 = 2 + 0.5*0 = 2;  A_0 = 1 + 0.5*2 = 2
    values = torch.tensor([[1.0, 2.0, 4.0]])
    adv = egae(
        torch.zeros(1, 3), values, prefix_mask([3], 3), torch.tensor([False]), gamma=1.0, gae_lambda=0.5
    )
    assert_close(adv, torch.tensor([[2.0, 2.0, 0.0]]), atol=ATOL, rtol=0)


def test_egae_finished_row_by_hand():
    # gamma = 1, lambda = 0.5, V = [1, 2, 4], reward 3 on the last token, finished:
    #   delta_0 = 0 + 2 - 1 = 1;  delta_1 = 0 + 4 - 2 = 2;  delta_2 = 3 + 0 - 4 = -1  (V(s_3) = 0)
    #   A_2 = -1;  A_1 = 2 + 0.5*(-1) = 1.5;  A_0 = 1 + 0.5*1.5 = 1.75
    values = torch.tensor([[1.0, 2.0, 4.0]])
    rewards = torch.tensor([[0.0, 0.0, 3.0]])
    adv = egae(rewards, values, prefix_mask([3], 3), torch.tensor([True]), gamma=1.0, gae_lambda=0.5)
    assert_close(adv, torch.tensor([[1.75, 1.5, -1.0]]), atol=ATOL, rtol=0)


def test_egae_unfinished_row_gamma_below_one_shows_bootstrap_term():
    # gamma = 0.9, lambda = 0.5 (gamma*lambda = 0.45), V = [1, 2, 4], unfinished, no rewards:
    #   delta_0 = 0.9*2 - 1 = 0.8;  delta_1 = 0.9*4 - 2 = 1.6
    #   delta_2 = (0.9 - 1)*4 = -0.4                              (the (gamma-1) V(s_{b-1}) term)
    #   A_2 = -0.4;  A_1 = 1.6 + 0.45*(-0.4) = 1.42;  A_0 = 0.8 + 0.45*1.42 = 1.439
    values = torch.tensor([[1.0, 2.0, 4.0]])
    adv = egae(
        torch.zeros(1, 3), values, prefix_mask([3], 3), torch.tensor([False]), gamma=0.9, gae_lambda=0.5
    )
    assert_close(adv, torch.tensor([[1.439, 1.42, -0.4]]), atol=ATOL, rtol=0)


# A table like rlax's multistep_test: one batch, several lambdas. Rows:
#   0: finished,   V = [0.5, 0.5, 1.0, 0.5], r = [0, 0, 0, 1]
#   1: unfinished, V = [0.5, 0.5, 1.0, 0.5], r = 0
#   2: finished, 2 tokens, V = [2, 0], r = [0, 1], then padding
# gamma = 1:
#   row 0: delta = [0.5-0.5, 1-0.5, 0.5-1, 1-0.5] = [0, 0.5, -0.5, 0.5]
#   row 1: delta = [0, 0.5, -0.5, 0]          (last: (1-1)*0.5 = 0)
#   row 2: delta = [0-2, 1-0] = [-2, 1]
#   lambda 0: A = delta. lambda 1: A_t = (sum of remaining deltas): row 0 = [0.5, 0.5, 0, 0.5]
#   (= R - V), row 1 = [0, 0, -0.5, 0] (= V(s_3) - V(s_t)), row 2 = [-1, 1].
#   lambda 0.5: row 0: A_3 = 0.5, A_2 = -0.5 + 0.25 = -0.25, A_1 = 0.5 - 0.125 = 0.375,
#   A_0 = 0 + 0.1875 = 0.1875; row 1: A_3 = 0, A_2 = -0.5, A_1 = 0.5 - 0.25 = 0.25, A_0 = 0.125;
#   row 2: A_1 = 1, A_0 = -2 + 0.5 = -1.5.
# gamma = 0.5:
#   row 0: delta = [0.25-0.5, 0.5-0.5, 0.25-1, 1-0.5] = [-0.25, 0, -0.75, 0.5]
#   row 1: delta = [-0.25, 0, -0.75, (0.5-1)*0.5] = [-0.25, 0, -0.75, -0.25]
#   row 2: delta = [0.5*0-2, 1-0] = [-2, 1]
#   lambda 1 (gamma*lambda = 0.5): row 0: 0.5, -0.75+0.25 = -0.5, 0-0.25 = -0.25, -0.25-0.125 = -0.375
#     (= G - V with G = [0.125, 0.25, 0.5, 1]); row 1: -0.25, -0.75-0.125 = -0.875, -0.4375,
#     -0.25-0.21875 = -0.46875; row 2: 1, -2+0.5 = -1.5.
#   lambda 0.5 (gamma*lambda = 0.25): row 0: 0.5, -0.75+0.125 = -0.625, 0-0.15625 = -0.15625,
#     -0.25-0.0390625 = -0.2890625; row 1: -0.25, -0.75-0.0625 = -0.8125, -0.203125,
#     -0.25-0.05078125 = -0.30078125; row 2: 1, -2+0.25 = -1.75.
TABLE_VALUES = torch.tensor([[0.5, 0.5, 1.0, 0.5], [0.5, 0.5, 1.0, 0.5], [2.0, 0.0, 9.0, 9.0]])
TABLE_REWARDS = torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 9.0, 9.0]])
TABLE_MASK = prefix_mask([4, 4, 2], 4)
TABLE_FINISHED = torch.tensor([True, False, True])
EGAE_TABLE = [
    (1.0, 0.0, [[0.0, 0.5, -0.5, 0.5], [0.0, 0.5, -0.5, 0.0], [-2.0, 1.0, 0.0, 0.0]]),
    (1.0, 0.5, [[0.1875, 0.375, -0.25, 0.5], [0.125, 0.25, -0.5, 0.0], [-1.5, 1.0, 0.0, 0.0]]),
    (1.0, 1.0, [[0.5, 0.5, 0.0, 0.5], [0.0, 0.0, -0.5, 0.0], [-1.0, 1.0, 0.0, 0.0]]),
    (0.5, 0.0, [[-0.25, 0.0, -0.75, 0.5], [-0.25, 0.0, -0.75, -0.25], [-2.0, 1.0, 0.0, 0.0]]),
    (
        0.5,
        0.5,
        [[-0.2890625, -0.15625, -0.625, 0.5], [-0.30078125, -0.203125, -0.8125, -0.25], [-1.75, 1.0, 0, 0]],
    ),
    (0.5, 1.0, [[-0.375, -0.25, -0.5, 0.5], [-0.46875, -0.4375, -0.875, -0.25], [-1.5, 1.0, 0.0, 0.0]]),
]


@pytest.mark.parametrize(("gamma", "gae_lambda", "expected"), EGAE_TABLE)
def test_egae_table(gamma, gae_lambda, expected):
    adv = egae(TABLE_REWARDS, TABLE_VALUES, TABLE_MASK, TABLE_FINISHED, gamma=gamma, gae_lambda=gae_lambda)
    assert_close(adv, torch.tensor(expected), atol=ATOL, rtol=0)


@pytest.mark.parametrize(("gamma", "gae_lambda"), [(1.0, 0.95), (0.9, 0.5), (0.99, 1.0), (0.0, 0.3)])
def test_egae_matches_reference_on_random_batch(gamma, gae_lambda):
    rewards, values, mask, is_finished = random_batch(seed=1)
    expected = reference_egae(rewards, values, mask, is_finished, gamma, gae_lambda)
    adv = egae(rewards, values, mask, is_finished, gamma=gamma, gae_lambda=gae_lambda)
    assert_close(adv, expected, atol=1e-5, rtol=1e-5)


# --- EGAE: reduces-to -------------------------------------------------------------------------


def test_egae_with_every_row_finished_equals_gae_and_reference():
    rewards, values, mask, _ = random_batch(seed=2)
    all_finished = torch.ones(mask.shape[0], dtype=torch.bool)
    adv = egae(rewards, values, mask, all_finished, gamma=0.97, gae_lambda=0.9)
    assert_close(adv, gae(rewards, values, mask, gamma=0.97, gae_lambda=0.9), atol=0, rtol=0)
    assert_close(adv, reference_egae(rewards, values, mask, all_finished, 0.97, 0.9), atol=1e-5, rtol=1e-5)


def test_gae_with_lambda_one_gamma_one_zero_values_equals_monte_carlo_returns():
    rewards, _, mask, _ = random_batch(seed=3)
    adv = gae(rewards, torch.zeros_like(rewards), mask, gamma=1.0, gae_lambda=1.0)
    assert_close(adv, monte_carlo_returns(rewards, mask, gamma=1.0), atol=1e-5, rtol=0)


def test_gae_with_lambda_one_is_return_minus_value():
    # With lambda = 1 the deltas telescope: A_t = R_t - V(s_t) for any gamma.
    rewards, values, mask, _ = random_batch(seed=4)
    adv = gae(rewards, values, mask, gamma=0.9, gae_lambda=1.0)
    expected = torch.where(mask, monte_carlo_returns(rewards, mask, gamma=0.9) - values, 0.0)
    assert_close(adv, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("gamma", "gae_lambda"), [(1.0, 0.95), (0.9, 0.7)])
def test_egae_on_window_equals_egae_on_full_history_restricted_to_window(gamma, gae_lambda):
    # Full histories of 4 rows (lengths 9, 6, 4, 5); this step's window starts at column 5, 0, 3, 5.
    lengths, starts = [9, 6, 4, 5], [5, 0, 3, 5]
    _, values, history_mask, _ = random_batch(seed=5, lengths=tuple(lengths), num_columns=10)
    is_finished = torch.tensor([False, True, True, False])
    rewards = torch.zeros(4, 10)  # outcome rewards only, on the last token of finished rows
    rewards[1, 5], rewards[2, 3] = 1.0, -1.0
    full = egae(rewards, values, history_mask, is_finished, gamma=gamma, gae_lambda=gae_lambda)

    # The windows alone, shifted to start at column 0, padded with garbage.
    window_rewards = torch.full((4, 10), float("nan"))
    window_values = torch.full((4, 10), float("inf"))
    for i, (start, length) in enumerate(zip(starts, lengths, strict=True)):
        window_rewards[i, : length - start] = rewards[i, start:length]
        window_values[i, : length - start] = values[i, start:length]
    window_mask = prefix_mask([length - start for start, length in zip(starts, lengths, strict=True)], 10)
    windowed = egae(
        window_rewards, window_values, window_mask, is_finished, gamma=gamma, gae_lambda=gae_lambda
    )

    for i, (start, length) in enumerate(zip(starts, lengths, strict=True)):
        assert_close(windowed[i, : length - start], full[i, start:length], atol=ATOL, rtol=0)


# --- EGAE / GAE: edges, mask invariance, split invariance ---------------------------------------


def test_egae_zero_under_mask_and_empty_rows():
    rewards, values, mask, is_finished = random_batch(seed=6)
    adv = egae(rewards, values, mask, is_finished, gamma=1.0, gae_lambda=0.95)
    assert torch.all(adv[~mask] == 0)
    assert torch.all(adv[2] == 0)  # row 2 has an empty mask
    empty = egae(rewards, values, torch.zeros_like(mask), is_finished, gamma=1.0, gae_lambda=0.95)
    assert_close(empty, torch.zeros_like(rewards), atol=0, rtol=0)


def test_egae_on_an_empty_batch():
    empty_mask, empty_rows = torch.zeros(0, 5, dtype=torch.bool), torch.zeros(0, dtype=torch.bool)
    adv = egae(torch.zeros(0, 5), torch.zeros(0, 5), empty_mask, empty_rows, gamma=1.0, gae_lambda=0.95)
    assert adv.shape == (0, 5)


@pytest.mark.parametrize("fill", GARBAGE)
def test_egae_ignores_garbage_under_the_mask(fill):
    rewards, values, mask, is_finished = random_batch(seed=7)
    clean = egae(rewards, values, mask, is_finished, gamma=0.95, gae_lambda=0.9)
    dirty_values = with_garbage(values, mask, fill).requires_grad_()
    dirty_rewards = with_garbage(rewards, mask, fill).requires_grad_()
    dirty = egae(dirty_rewards, dirty_values, mask, is_finished, gamma=0.95, gae_lambda=0.9)
    assert_close(dirty, clean, atol=0, rtol=0)
    dirty.sum().backward()
    assert dirty_values.grad is not None and dirty_rewards.grad is not None
    assert torch.all(dirty_values.grad[~mask] == 0) and torch.all(dirty_rewards.grad[~mask] == 0)
    assert torch.isfinite(dirty_values.grad).all()


def test_egae_split_invariance():
    rewards, values, mask, is_finished = random_batch(seed=8)
    whole = egae(rewards, values, mask, is_finished, gamma=1.0, gae_lambda=0.95)
    pieces = [
        egae(rewards[rows], values[rows], mask[rows], is_finished[rows], gamma=1.0, gae_lambda=0.95)
        for rows in (slice(0, 1), slice(1, 4), slice(4, 6))
    ]
    assert_close(torch.cat(pieces), whole, atol=0, rtol=0)


def test_gae_split_invariance_and_ignores_garbage():
    rewards, values, mask, _ = random_batch(seed=9)
    whole = gae(rewards, values, mask, gamma=0.9, gae_lambda=0.8)
    pieces = [
        gae(rewards[r], values[r], mask[r], gamma=0.9, gae_lambda=0.8) for r in (slice(0, 2), slice(2, 6))
    ]
    assert_close(torch.cat(pieces), whole, atol=0, rtol=0)
    dirty = gae(with_garbage(rewards, mask, float("nan")), values, mask, gamma=0.9, gae_lambda=0.8)
    assert_close(dirty, whole, atol=0, rtol=0)


def test_egae_dtypes_and_inputs_untouched():
    rewards, values, mask, is_finished = random_batch(seed=10)
    before = (rewards.clone(), values.clone(), mask.clone(), is_finished.clone())
    egae(rewards, values, mask, is_finished, gamma=1.0, gae_lambda=0.95)
    for tensor, copy in zip((rewards, values, mask, is_finished), before, strict=True):
        assert torch.equal(tensor, copy)
    as64 = egae(rewards.double(), values.double(), mask, is_finished, gamma=1.0, gae_lambda=0.95)
    as16 = egae(rewards.bfloat16(), values.bfloat16(), mask, is_finished, gamma=1.0, gae_lambda=0.95)
    assert as64.dtype == torch.float64 and as16.dtype == torch.float32


@pytest.mark.parametrize("bad_row", [[False, True, True, False], [True, False, True, False]])
def test_egae_rejects_a_mask_that_is_not_a_prefix_run(bad_row):
    mask = torch.tensor([[True, True, False, False], bad_row])
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        egae(
            torch.zeros(2, 4), torch.zeros(2, 4), mask, torch.tensor([True, False]), gamma=1.0, gae_lambda=1.0
        )


def test_egae_rejects_bad_arguments():
    rewards, values, mask, is_finished = random_batch(seed=11)
    with pytest.raises(ValueError, match="gae_lambda"):
        egae(rewards, values, mask, is_finished, gamma=1.0, gae_lambda=1.5)
    with pytest.raises(ValueError, match="is_finished"):
        egae(rewards, values, mask, is_finished[:-1], gamma=1.0, gae_lambda=0.9)
    with pytest.raises(ValueError, match="values"):
        egae(rewards, values[:, :-1], mask, is_finished, gamma=1.0, gae_lambda=0.9)
    with pytest.raises(TypeError, match="bool"):
        egae(rewards, values, mask.float(), is_finished, gamma=1.0, gae_lambda=0.9)


# --- Monte-Carlo returns ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gamma", "expected"),
    [
        # r = [1, 0, 2]: R_2 = 2, R_1 = 0 + gamma*2, R_0 = 1 + gamma*R_1
        (0.0, [1.0, 0.0, 2.0, 0.0]),  # R_t = r_t
        (0.5, [1.5, 1.0, 2.0, 0.0]),  # R_1 = 1, R_0 = 1 + 0.5 = 1.5
        (1.0, [3.0, 2.0, 2.0, 0.0]),  # plain sums of the remaining rewards
    ],
)
def test_monte_carlo_returns_by_hand(gamma, expected):
    rewards = torch.tensor([[1.0, 0.0, 2.0, float("nan")]])
    returns = monte_carlo_returns(rewards, prefix_mask([3], 4), gamma=gamma)
    assert_close(returns, torch.tensor([expected]), atol=ATOL, rtol=0)


def test_monte_carlo_returns_of_outcome_reward_is_discounted_score():
    # DESIGN 1.8: R_t = gamma^(b-1-t) * R. Rows: b = 4, R = 1; b = 2, R = -2; b = 0.
    mask = prefix_mask([4, 2, 0], 5)
    returns = monte_carlo_returns(outcome_rewards(torch.tensor([1.0, -2.0, 5.0]), mask), mask, gamma=0.9)
    expected = torch.tensor(
        [[0.9**3, 0.9**2, 0.9, 1.0, 0.0], [-2.0 * 0.9, -2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]]
    )
    assert_close(returns, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("fill", GARBAGE)
def test_monte_carlo_returns_ignores_garbage_and_splits(fill):
    rewards, _, mask, _ = random_batch(seed=12)
    whole = monte_carlo_returns(rewards, mask, gamma=0.95)
    assert torch.all(whole[~mask] == 0)
    assert_close(
        monte_carlo_returns(with_garbage(rewards, mask, fill), mask, gamma=0.95), whole, atol=0, rtol=0
    )
    pieces = [monte_carlo_returns(rewards[r], mask[r], gamma=0.95) for r in (slice(0, 3), slice(3, 6))]
    assert_close(torch.cat(pieces), whole, atol=0, rtol=0)


# --- outcome rewards ----------------------------------------------------------------------------


def test_outcome_rewards_by_hand():
    # lengths 3, 1, 0: the score goes on column b-1 = 2, 0, and nowhere (its NaN score is never read)
    mask = prefix_mask([3, 1, 0], 4)
    rewards = outcome_rewards(torch.tensor([1.0, -0.5, float("nan")]), mask)
    expected = torch.tensor([[0.0, 0.0, 1.0, 0.0], [-0.5, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert_close(rewards, expected, atol=0, rtol=0)


def test_outcome_rewards_split_invariance_and_validation():
    mask = prefix_mask([3, 1, 0, 4], 4)
    scores = torch.tensor([1.0, -0.5, 2.0, 0.25])
    whole = outcome_rewards(scores, mask)
    assert_close(
        torch.cat([outcome_rewards(scores[:1], mask[:1]), outcome_rewards(scores[1:], mask[1:])]), whole
    )
    with pytest.raises(ValueError, match="scores"):
        outcome_rewards(scores[:2], mask)
    with pytest.raises(ValueError, match="contiguous run"):
        outcome_rewards(scores, torch.flip(mask, dims=[1]))


# --- registry -----------------------------------------------------------------------------------


def test_registry_holds_egae_and_gae_with_one_signature():
    rewards, values, mask, is_finished = random_batch(seed=13)
    assert get_advantage_estimator("egae") is egae
    for name in ("egae", "gae"):
        assert ADVANTAGE_ESTIMATORS[name] is get_advantage_estimator(name)
    via_egae = get_advantage_estimator("egae")(rewards, values, mask, is_finished, gamma=1.0, gae_lambda=0.9)
    via_gae = get_advantage_estimator("gae")(rewards, values, mask, is_finished, gamma=1.0, gae_lambda=0.9)
    assert_close(
        via_egae, egae(rewards, values, mask, is_finished, gamma=1.0, gae_lambda=0.9), atol=0, rtol=0
    )
    assert_close(via_gae, gae(rewards, values, mask, gamma=1.0, gae_lambda=0.9), atol=0, rtol=0)
    assert not torch.equal(via_egae, via_gae)  # the batch has unfinished rows: gae ignores is_finished


def test_registry_rejects_a_duplicate_name():
    with pytest.raises(ValueError, match="'egae' is already registered"):
        register_advantage_estimator("egae")(egae)
    assert ADVANTAGE_ESTIMATORS["egae"] is egae


def test_registry_registers_a_new_estimator():
    name = "test-zero-estimator"
    try:

        @register_advantage_estimator(name)
        def zero(rewards, values, response_mask, is_finished, *, gamma, gae_lambda):
            return torch.zeros_like(values)

        assert get_advantage_estimator(name) is zero
    finally:
        ADVANTAGE_ESTIMATORS.remove(name)


def test_registry_unknown_name_names_the_registered_ones():
    with pytest.raises(KeyError, match="'vtrace'") as error:
        get_advantage_estimator("vtrace")
    registered = str(error.value).split("registered:")[1]
    assert {"egae", "gae"} <= {name.strip(" '\"") for name in registered.split(",")}
