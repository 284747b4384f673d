"""Tests for tppo.algorithms.aggregation: the loss normalisation that makes worker counts irrelevant."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from tppo.algorithms import global_token_mean, masked_mean, shard_rows

NAN = float("nan")


def test_global_token_mean_by_hand_and_against_the_mean_of_means():
    # Worker 0 holds row 0: tokens [1, 2, 3] (3 tokens), worker 1 holds row 1: [10] (1 token).
    # Global token mean: (1 + 2 + 3 + 10) / 4 = 4.0; the shares are 6/4 = 1.5 and 10/4 = 2.5.
    # The mean of per-worker means would be (2 + 10) / 2 = 6.0: it over-weighs the short worker.
    x = torch.tensor([[1.0, 2.0, 3.0], [10.0, NAN, NAN]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    shares = [global_token_mean(x[i : i + 1], mask[i : i + 1], token_count=4) for i in range(2)]
    assert_close(shares[0], torch.tensor(1.5), atol=0, rtol=0)
    assert_close(shares[1], torch.tensor(2.5), atol=0, rtol=0)
    assert_close(shares[0] + shares[1], torch.tensor(4.0), atol=0, rtol=0)
    per_worker_means = [masked_mean(x[i : i + 1], mask[i : i + 1]) for i in range(2)]
    assert float(sum(per_worker_means)) / 2 == 6.0
    # without token_count: this piece's own mean
    assert_close(global_token_mean(x, mask), torch.tensor(4.0), atol=0, rtol=0)
    # an empty piece contributes 0, not NaN
    assert_close(global_token_mean(x[1:, 1:], mask[1:, 1:], token_count=4), torch.tensor(0.0))


@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
def test_shares_and_their_gradients_add_up_to_the_whole_for_any_worker_count(world_size):
    gen = torch.Generator().manual_seed(world_size)
    x = torch.randn(7, 6, generator=gen, dtype=torch.float64).requires_grad_()
    mask = torch.rand(7, 6, generator=gen) < 0.5
    whole = global_token_mean(x, mask)
    (whole_grad,) = torch.autograd.grad(whole, x)
    count = int(mask.sum())
    pieces = shard_rows(torch.arange(7), world_size)
    total = sum(global_token_mean(x[rows], mask[rows], token_count=count) for rows in pieces)
    (split_grad,) = torch.autograd.grad(total, x)
    assert_close(total, whole, rtol=1e-12, atol=1e-12)
    assert_close(split_grad, whole_grad, rtol=1e-12, atol=1e-12)


def test_shard_rows_is_contiguous_balanced_and_covers_every_row():
    pieces = shard_rows(torch.tensor([4, 9, 1, 7, 3]), 2)
    assert [p.tolist() for p in pieces] == [[4, 9, 1], [7, 3]]
    pieces = shard_rows(torch.tensor([5]), 3)
    assert [p.tolist() for p in pieces] == [[5], [], []]
    with pytest.raises(ValueError, match="world_size"):
        shard_rows(torch.arange(3), 0)


def test_shard_packs_pad_every_rank_to_the_same_number_of_passes():
    from tppo.rollout.batch import shard_packs

    # rank 0 gets rows [0, 1, 2] (lengths 10, 3, 8): one row per pass under 10 tokens -> 3 passes;
    # rank 1 gets rows [3, 4] (lengths 2, 9) -> 2 passes, plus 1 empty pass to keep in step.
    rows, lengths = torch.arange(5), torch.tensor([10, 3, 8, 2, 9])
    packs0, pad0 = shard_packs(rows, lengths, max_tokens=10, rank=0, world_size=2)
    packs1, pad1 = shard_packs(rows, lengths, max_tokens=10, rank=1, world_size=2)
    assert [p.tolist() for p in packs0] == [[0], [2], [1]] and pad0 == 0
    assert [p.tolist() for p in packs1] == [[4], [3]] and pad1 == 1
    whole, pad = shard_packs(rows, lengths, max_tokens=None, rank=0, world_size=1)
    assert [p.tolist() for p in whole] == [[0, 1, 2, 3, 4]] and pad == 0
