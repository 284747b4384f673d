"""Tests for tppo.algorithms.masks.select_tokens: which tokens train the policy and the value model."""

from __future__ import annotations

import pytest
import torch

from tppo.algorithms import TokenMasks, select_tokens

PAD = -7  # stands for whatever sits in token_steps under the response mask


def rows_to_tensors(rows: list[list[int]], num_columns: int = 6, pad: int = PAD):
    """Per-row token steps -> (token_steps [B, T] padded with ``pad``, response_mask [B, T])."""
    token_steps = torch.full((len(rows), num_columns), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), num_columns, dtype=torch.bool)
    for i, row in enumerate(rows):
        token_steps[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = True
    return token_steps, mask


def as_bool(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool)


# Step 3, policy_skip_tail = 2. Rows (token steps of the response so far), finished?:
#   0: [1, 1, 2, 3, 3, 3]  unfinished: new = cols 3, 4, 5; skip the last 2 -> policy col 3; no value
#   1: [2, 2, 3, 3]        finished:   new = cols 2, 3, kept whole (no skip) -> policy cols 2, 3;
#                                      value = every token, all steps -> cols 0..3
#   2: [3]                 unfinished: 1 new token <= 2 skipped -> no policy token; no value
#   3: [1, 2]              unfinished: no token from step 3 -> nothing
#   4: []                  an empty slot -> nothing
#   5: [3, 3, 3]           unfinished: 3 new tokens, skip 2 -> policy col 0
STEPS = [[1, 1, 2, 3, 3, 3], [2, 2, 3, 3], [3], [1, 2], [], [3, 3, 3]]
FINISHED = torch.tensor([False, True, False, False, False, False])


def test_select_tokens_by_hand_with_skip_tail():
    token_steps, mask = rows_to_tensors(STEPS)
    masks = select_tokens(token_steps, mask, FINISHED, step=3, policy_skip_tail=2)
    assert isinstance(masks, TokenMasks)
    assert torch.equal(
        masks.policy_mask,
        as_bool([
            [0, 0, 0, 1, 0, 0],
            [0, 0, 1, 1, 0, 0],
            [0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0],
            [1, 0, 0, 0, 0, 0],
        ]),
    )  # fmt: skip
    expected_value = torch.zeros(6, 6, dtype=torch.bool)
    expected_value[1, :4] = True
    assert torch.equal(masks.value_mask, expected_value)


def test_select_tokens_without_skip_tail_trains_every_new_token():
    token_steps, mask = rows_to_tensors(STEPS)
    masks = select_tokens(token_steps, mask, FINISHED, step=3)
    assert torch.equal(masks.policy_mask, mask & (token_steps == 3))
    # Row 2 (one new token) now trains it; rows 3 and 4 still have nothing from step 3.
    assert masks.policy_mask.sum(dim=-1).tolist() == [3, 2, 1, 0, 0, 3]


@pytest.mark.parametrize(("skip", "kept"), [(0, 3), (1, 2), (2, 1), (3, 0), (10, 0)])
def test_skip_tail_counts_from_the_end_of_this_steps_tokens(skip, kept):
    # Unfinished row [1, 1, 2, 3, 3, 3]: skipping `skip` of the 3 new tokens keeps the first 3 - skip.
    token_steps, mask = rows_to_tensors([[1, 1, 2, 3, 3, 3]])
    policy = select_tokens(
        token_steps, mask, torch.tensor([False]), step=3, policy_skip_tail=skip
    ).policy_mask
    assert policy[0].tolist() == [False, False, False] + [True] * kept + [False] * (3 - kept)


def test_finished_rows_keep_their_tail_and_value_mask_spans_all_steps():
    token_steps, mask = rows_to_tensors([[0, 1, 2, 3, 3], [0, 1, 2, 3, 3]])
    masks = select_tokens(token_steps, mask, torch.tensor([True, False]), step=3, policy_skip_tail=5)
    assert masks.policy_mask[0].tolist() == [False, False, False, True, True, False]
    assert not masks.policy_mask[1].any()  # the same row, unfinished, loses both new tokens
    assert masks.value_mask[0].tolist() == [True] * 5 + [False]  # tokens from steps 0..3
    assert not masks.value_mask[1].any()


def test_vanilla_ppo_trains_every_response_token_for_both_models():
    # Reduces-to: window = max length, so every response is generated in this step and finishes.
    token_steps, mask = rows_to_tensors([[5, 5, 5], [5], [5, 5, 5, 5, 5, 5]])
    masks = select_tokens(token_steps, mask, torch.ones(3, dtype=torch.bool), step=5, policy_skip_tail=8)
    assert torch.equal(masks.policy_mask, mask) and torch.equal(masks.value_mask, mask)


@pytest.mark.parametrize("pad", [3, 0, -1, 2**40])
def test_select_tokens_never_reads_token_steps_under_the_mask(pad):
    clean = select_tokens(*rows_to_tensors(STEPS), FINISHED, step=3, policy_skip_tail=1)
    dirty = select_tokens(*rows_to_tensors(STEPS, pad=pad), FINISHED, step=3, policy_skip_tail=1)
    assert torch.equal(dirty.policy_mask, clean.policy_mask) and torch.equal(
        dirty.value_mask, clean.value_mask
    )


def test_select_tokens_split_invariance_and_inputs_untouched():
    token_steps, mask = rows_to_tensors(STEPS)
    before = (token_steps.clone(), mask.clone(), FINISHED.clone())
    whole = select_tokens(token_steps, mask, FINISHED, step=3, policy_skip_tail=1)
    pieces = [
        select_tokens(token_steps[r], mask[r], FINISHED[r], step=3, policy_skip_tail=1)
        for r in (slice(0, 2), slice(2, 3), slice(3, 6))
    ]
    assert torch.equal(torch.cat([p.policy_mask for p in pieces]), whole.policy_mask)
    assert torch.equal(torch.cat([p.value_mask for p in pieces]), whole.value_mask)
    for tensor, copy in zip((token_steps, mask, FINISHED), before, strict=True):
        assert torch.equal(tensor, copy)


def test_select_tokens_rejects_bad_arguments():
    token_steps, mask = rows_to_tensors(STEPS)
    with pytest.raises(ValueError, match="policy_skip_tail"):
        select_tokens(token_steps, mask, FINISHED, step=3, policy_skip_tail=-1)
    holed = mask.clone()
    holed[1, 1] = False  # row 1: [T, F, T, T, F, F]
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        select_tokens(token_steps, holed, FINISHED, step=3)
    with pytest.raises(TypeError, match="integer"):
        select_tokens(token_steps.float(), mask, FINISHED, step=3)
    with pytest.raises(ValueError, match="is_finished"):
        select_tokens(token_steps, mask, FINISHED[:3], step=3)
