"""Tests for tppo.algorithms.stats: masked sums, means, variances, whitening, explained variance."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from tppo.algorithms import explained_variance, masked_mean, masked_sum, masked_var, masked_whiten

ATOL = 1e-6
GARBAGE = (float("nan"), float("inf"), float("-inf"), 1e30)
NAN = float("nan")

# Row 0 selects [1, 3, 5] (and hides a NaN), row 1 selects [2] (hides an inf), row 2 selects nothing.
X = torch.tensor([[1.0, 3.0, 5.0, NAN], [2.0, float("inf"), 0.0, 0.0], [NAN, NAN, NAN, NAN]])
MASK = torch.tensor([[True, True, True, False], [True, False, False, False], [False, False, False, False]])


def scalar(x: float) -> torch.Tensor:
    return torch.tensor(x)


def random_masked(seed: int, rows: int = 5, columns: int = 6):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, columns, generator=gen) * 2 + 1
    mask = torch.rand(rows, columns, generator=gen) < 0.6
    return x, mask


# --- hand-worked ---------------------------------------------------------------------------------


def test_masked_sum_and_mean_by_hand():
    # all: 1 + 3 + 5 + 2 = 11 over 4 entries -> mean 2.75
    # per row: sums [9, 2, 0], counts [3, 1, 0] -> means [3, 2, 0] (an empty row's mean is 0)
    assert_close(masked_sum(X, MASK), scalar(11.0), atol=0, rtol=0)
    assert_close(masked_mean(X, MASK), scalar(2.75), atol=0, rtol=0)
    assert_close(masked_sum(X, MASK, dim=-1), torch.tensor([9.0, 2.0, 0.0]), atol=0, rtol=0)
    assert_close(masked_mean(X, MASK, dim=-1), torch.tensor([3.0, 2.0, 0.0]), atol=0, rtol=0)
    # per column: [1 + 2, 3, 5, nothing] over counts [2, 1, 1, 0]
    assert_close(masked_mean(X, MASK, dim=0), torch.tensor([1.5, 3.0, 5.0, 0.0]), atol=0, rtol=0)


def test_masked_var_by_hand():
    # Row 0 selects [1, 3, 5]: mean 3, squared deviations [4, 0, 4], sum 8.
    # unbiased: 8 / (3 - 1) = 4;  biased: 8 / 3
    row0 = MASK & torch.tensor([[True], [False], [False]])
    assert_close(masked_var(X, row0), scalar(4.0), atol=ATOL, rtol=0)
    assert_close(masked_var(X, row0, unbiased=False), scalar(8 / 3), atol=ATOL, rtol=0)
    # One entry: unbiased needs two -> 0; biased -> 0 (no spread). Nothing selected -> 0.
    row1 = MASK & torch.tensor([[False], [True], [False]])
    assert masked_var(X, row1).item() == 0.0 and masked_var(X, row1, unbiased=False).item() == 0.0
    assert masked_var(X, torch.zeros_like(MASK)).item() == 0.0


def test_masked_whiten_by_hand():
    # [1, 3, 5]: mean 3, unbiased var 4, std 2 -> [-1, 0, 1]; with shift_mean=False add 3 back -> [2, 3, 4].
    row0 = MASK & torch.tensor([[True], [False], [False]])
    expected = torch.zeros(3, 4)
    expected[0, :3] = torch.tensor([-1.0, 0.0, 1.0])
    assert_close(masked_whiten(X, row0), expected, atol=ATOL, rtol=0)
    expected[0, :3] = torch.tensor([2.0, 3.0, 4.0])
    assert_close(masked_whiten(X, row0, shift_mean=False), expected, atol=ATOL, rtol=0)


def test_explained_variance_by_hand():
    # returns [1, 2, 3], values [1, 2, 2]: residual [0, 0, 1] has (biased) var 2/9, returns have 2/3;
    # 1 - (2/9) / (2/3) = 1 - 1/3 = 2/3. (Biased or unbiased: the n/(n-1) factors cancel.)
    returns = torch.tensor([[1.0, 2.0, 3.0, NAN]])
    values = torch.tensor([[1.0, 2.0, 2.0, float("inf")]])
    mask = torch.tensor([[True, True, True, False]])
    assert_close(explained_variance(values, returns, mask), scalar(2 / 3), atol=ATOL, rtol=0)
    assert_close(explained_variance(returns, returns, mask), scalar(1.0), atol=ATOL, rtol=0)  # perfect


# --- reduces-to / properties ---------------------------------------------------------------------


def test_masked_mean_and_var_with_full_mask_match_torch():
    x, _ = random_masked(seed=1)
    full = torch.ones_like(x, dtype=torch.bool)
    assert_close(masked_mean(x, full), x.mean(), atol=ATOL, rtol=0)
    assert_close(masked_mean(x, full, dim=1), x.mean(dim=1), atol=ATOL, rtol=0)
    assert_close(masked_var(x, full), x.var(), atol=1e-5, rtol=0)
    assert_close(masked_var(x, full, unbiased=False), x.var(unbiased=False), atol=1e-5, rtol=0)


def test_masked_whiten_gives_zero_mean_unit_variance():
    x, mask = random_masked(seed=2)
    whitened = masked_whiten(x, mask)
    assert_close(masked_mean(whitened, mask), scalar(0.0), atol=ATOL, rtol=0)
    assert_close(masked_var(whitened, mask), scalar(1.0), atol=1e-5, rtol=0)
    assert torch.all(whitened[~mask] == 0)
    kept_mean = masked_whiten(x, mask, shift_mean=False)
    assert_close(masked_mean(kept_mean, mask), masked_mean(x, mask), atol=1e-5, rtol=0)


def test_masked_whiten_edges():
    one = torch.tensor([[False, True, False]])
    assert_close(masked_whiten(torch.tensor([[NAN, 7.0, NAN]]), one), torch.zeros(1, 3), atol=0, rtol=0)
    kept = masked_whiten(torch.tensor([[NAN, 7.0, NAN]]), one, shift_mean=False)
    assert_close(kept, torch.tensor([[0.0, 7.0, 0.0]]), atol=0, rtol=0)
    assert_close(masked_whiten(X, torch.zeros_like(MASK)), torch.zeros(3, 4), atol=0, rtol=0)


def test_explained_variance_degenerate_cases_are_zero():
    mask = torch.tensor([[True, True, True]])
    # Constant returns whose float32 mean is off by rounding: Var[R] ~ 4e-15 rather than 0.
    constant, seven = torch.full((1, 7), 0.7), torch.ones(1, 7, dtype=torch.bool)
    assert explained_variance(torch.arange(7.0)[None], constant, seven).item() == 0.0
    assert explained_variance(torch.zeros(1, 3), torch.ones(1, 3), mask).item() == 0.0
    assert explained_variance(torch.zeros(1, 3), torch.ones(1, 3), torch.zeros_like(mask)).item() == 0.0
    one = torch.tensor([[False, True, False]])
    assert explained_variance(torch.zeros(1, 3), torch.tensor([[NAN, 5.0, NAN]]), one).item() == 0.0
    # A constant prediction at the mean of the returns explains nothing: 1 - Var[R] / Var[R] = 0.
    returns = torch.tensor([[1.0, 2.0, 6.0]])
    assert_close(explained_variance(torch.full((1, 3), 3.0), returns, mask), scalar(0.0), atol=ATOL, rtol=0)


# --- mask invariance, split invariance, dtypes ---------------------------------------------------


@pytest.mark.parametrize("fill", GARBAGE)
def test_stats_ignore_garbage_under_the_mask(fill):
    x, mask = random_masked(seed=3)
    values, _ = random_masked(seed=4)
    dirty = torch.where(mask, x, fill)
    assert_close(masked_sum(dirty, mask), masked_sum(x, mask), atol=0, rtol=0)
    assert_close(masked_mean(dirty, mask, dim=1), masked_mean(x, mask, dim=1), atol=0, rtol=0)
    assert_close(masked_var(dirty, mask), masked_var(x, mask), atol=0, rtol=0)
    assert_close(masked_whiten(dirty, mask), masked_whiten(x, mask), atol=0, rtol=0)
    assert_close(
        explained_variance(torch.where(mask, values, fill), dirty, mask),
        explained_variance(values, x, mask),
        atol=0,
        rtol=0,
    )


@pytest.mark.parametrize("fill", GARBAGE)
def test_gradients_ignore_garbage_under_the_mask(fill):
    x, mask = random_masked(seed=5)
    clean = x.clone().requires_grad_()
    dirty = torch.where(mask, x, fill).requires_grad_()
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(6))
    for leaf in (clean, dirty):
        (
            masked_var(leaf, mask) + (masked_whiten(leaf, mask) * weights).sum() + masked_mean(leaf, mask)
        ).backward()
    assert dirty.grad is not None and clean.grad is not None
    assert torch.isfinite(dirty.grad).all() and torch.all(dirty.grad[~mask] == 0)
    assert_close(dirty.grad, clean.grad, atol=0, rtol=0)


def test_stats_split_invariance():
    x, mask = random_masked(seed=7)
    pieces = (slice(0, 2), slice(2, 5))
    assert_close(torch.cat([masked_sum(x[r], mask[r], dim=1) for r in pieces]), masked_sum(x, mask, dim=1))
    assert_close(torch.cat([masked_mean(x[r], mask[r], dim=1) for r in pieces]), masked_mean(x, mask, dim=1))
    assert_close(sum(masked_sum(x[r], mask[r]) for r in pieces), masked_sum(x, mask), atol=1e-5, rtol=0)
    # The whole mean is the count-weighted mean of the pieces' means.
    weighted = sum(masked_mean(x[r], mask[r]) * mask[r].sum() for r in pieces) / mask.sum()
    assert_close(weighted, masked_mean(x, mask), atol=ATOL, rtol=0)


def test_stats_dtypes_and_inputs_untouched():
    x, mask = random_masked(seed=8)
    before = (x.clone(), mask.clone())
    assert masked_mean(x.double(), mask).dtype == torch.float64
    assert masked_whiten(x.double(), mask).dtype == torch.float64
    assert masked_mean(x.bfloat16(), mask).dtype == torch.float32
    assert_close(masked_mean(mask, mask), scalar(1.0))  # bool inputs are counted as 0/1 in float32
    masked_whiten(x, mask)
    explained_variance(x, x, mask)
    assert torch.equal(x, before[0]) and torch.equal(mask, before[1])


def test_stats_reject_a_bad_mask():
    with pytest.raises(TypeError, match="bool"):
        masked_mean(X, MASK.float())
    with pytest.raises(ValueError, match="shape"):
        masked_sum(X, MASK[:, :2])
