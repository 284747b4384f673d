"""Which tokens train what: the policy and value token masks of one T-PPO step (paper sec. 3.2).

Also the shared check that a ``response_mask`` is a prefix run (a response's tokens occupy
columns ``0 .. b-1`` of its row), which the advantage estimators rely on.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from tppo.algorithms.stats import check_mask


class TokenMasks(NamedTuple):
    """The training tokens of one step; both ``Tensor[B, T]`` bool, True = train on this token."""

    policy_mask: Tensor
    """Tokens for the policy loss: generated in this step (minus the skipped tail of unfinished rows)."""
    value_mask: Tensor
    """Tokens for the value loss: every response token of the rows that finished in this step."""


def prefix_lengths(response_mask: Tensor, *, name: str = "response_mask") -> Tensor:
    """Each row's length ``b``, checking that its True entries are exactly columns ``0 .. b-1``.

    Args:
        response_mask: ``Tensor[B, T]`` bool.
        name: the argument's name, for error messages.

    Returns:
        ``Tensor[B]`` long, ``b = response_mask.sum(-1)``.

    Raises:
        TypeError: if the mask is not bool. ValueError: if it is not 2-D, or a row has a hole or
        does not start at column 0 (the message names the first offending rows).
    """
    if response_mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a torch.bool tensor, got {response_mask.dtype}")
    if response_mask.dim() != 2:
        raise ValueError(f"{name} must have shape [B, T], got {tuple(response_mask.shape)}")
    lengths = response_mask.sum(dim=-1)
    columns = torch.arange(response_mask.shape[1], device=response_mask.device)
    prefix = columns < lengths[:, None]
    if not torch.equal(prefix, response_mask):
        bad_rows = (prefix != response_mask).any(dim=-1).nonzero().flatten()[:8].tolist()
        raise ValueError(
            f"{name} must be a contiguous run of True starting at column 0 in every row "
            f"(a response's tokens, then padding); rows {bad_rows} are not"
        )
    return lengths


def check_is_finished(is_finished: Tensor, batch_size: int) -> None:
    """Raise unless ``is_finished`` is a ``Tensor[B]`` bool with ``B = batch_size``."""
    if is_finished.dtype != torch.bool:
        raise TypeError(f"is_finished must be a torch.bool tensor, got {is_finished.dtype}")
    if is_finished.shape != (batch_size,):
        raise ValueError(f"is_finished must have shape [B] = ({batch_size},), got {tuple(is_finished.shape)}")


def select_tokens(
    token_steps: Tensor,
    response_mask: Tensor,
    is_finished: Tensor,
    *,
    step: int,
    policy_skip_tail: int = 0,
) -> TokenMasks:
    """The policy and value tokens of training step ``step`` (paper sec. 3.2, DESIGN 1.8).

    With ``new[i, t] = response_mask[i, t] and token_steps[i, t] == step`` (tokens generated in this
    step) and ``n_after[i, t] = sum_{u >= t} new[i, u]`` (this step's tokens at or after ``t``):

        policy_mask[i, t] = new[i, t] and (is_finished[i] or n_after[i, t] > policy_skip_tail)
        value_mask[i, t]  = response_mask[i, t] and is_finished[i]

    So an unfinished row drops the last ``policy_skip_tail`` of its new tokens (their EGAE
    advantages lean most on the ``V(s_b) := V(s_{b-1})`` bootstrap); if it generated no more than
    that this step, none of its tokens train the policy. Finished rows keep all their new tokens.
    The value model trains, Monte-Carlo style, on every token (from every step) of finished rows.

    Args:
        token_steps: ``Tensor[B, T]`` integer, the training step that generated each response token;
            never read where ``response_mask`` is False.
        response_mask: ``Tensor[B, T]`` bool, every response token so far (a prefix run per row).
        is_finished: ``Tensor[B]`` bool, the row finished (EOS or max length) in this step.
        step: the current training step.
        policy_skip_tail: tokens to drop from the end of unfinished rows' new tokens (>= 0).

    Returns:
        :class:`TokenMasks` of ``Tensor[B, T]`` bool masks (a row with no new tokens this step has
        an empty policy mask).
    """
    prefix_lengths(response_mask)
    check_mask(response_mask, token_steps, name="response_mask", like_name="token_steps")
    if token_steps.is_floating_point() or token_steps.dtype == torch.bool:
        raise TypeError(f"token_steps must be an integer tensor, got {token_steps.dtype}")
    check_is_finished(is_finished, response_mask.shape[0])
    if policy_skip_tail < 0:
        raise ValueError(f"policy_skip_tail must be >= 0, got {policy_skip_tail}")

    new = torch.where(response_mask, token_steps == step, False)  # [B, T]
    finished = is_finished[:, None]  # [B, 1]
    policy_mask = new
    if policy_skip_tail > 0:
        n_after = new.flip(-1).cumsum(dim=-1).flip(-1)  # [B, T] this step's tokens at columns >= t
        policy_mask = new & (finished | (n_after > policy_skip_tail))
    return TokenMasks(policy_mask=policy_mask, value_mask=response_mask & finished)
