"""Group-relative rewards: GRPO's advantages, DAPO's overlong punishment and its degenerate groups.

A *group* is the ``samples_per_prompt`` responses to one prompt draw. Functions here take a
response-level tensor ``Tensor[B]`` (one entry per response) and ``group_ids`` (``Tensor[B]`` of
integers: responses with the same id form a group; ids need not be contiguous or sorted). They are
pure: inputs are never modified, and the results are in ``float32`` or the scores' wider float dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tppo.algorithms.stats import float_dtype


def _check_groups(scores: Tensor, group_ids: Tensor) -> None:
    if scores.dim() != 1:
        raise ValueError(
            f"scores must be a 1-d Tensor[B] (one per response), got shape {tuple(scores.shape)}"
        )
    if group_ids.shape != scores.shape:
        raise ValueError(f"group_ids has shape {tuple(group_ids.shape)} but scores has {tuple(scores.shape)}")
    if group_ids.is_floating_point() or group_ids.dtype == torch.bool:
        raise TypeError(f"group_ids must be an integer tensor, got {group_ids.dtype}")


def _group_stats(scores: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per response: its group's size, mean score and sum of squared deviations (all ``Tensor[B]``)."""
    dtype = float_dtype(scores)
    x = scores.to(dtype)
    _, inverse = torch.unique(group_ids, return_inverse=True)
    num_groups = int(inverse.max()) + 1 if len(inverse) else 0
    counts = torch.zeros(num_groups, dtype=dtype, device=x.device).index_add_(0, inverse, torch.ones_like(x))
    sums = torch.zeros(num_groups, dtype=dtype, device=x.device).index_add_(0, inverse, x)
    means = sums / counts
    deviations = (x - means[inverse]).square()
    squares = torch.zeros(num_groups, dtype=dtype, device=x.device).index_add_(0, inverse, deviations)
    return counts[inverse], means[inverse], squares[inverse]


def group_advantages(
    scores: Tensor, group_ids: Tensor, *, scale_by_std: bool = True, eps: float = 1e-6
) -> Tensor:
    """GRPO's group-relative advantage of each response.

    For response ``i`` in group ``g`` of ``n_g`` responses with scores ``r``::

        A_i = (r_i - mean_g) / (std_g + eps)     std_g = sqrt(sum_j (r_j - mean_g)^2 / (n_g - 1))

    ``std_g`` is the sample (unbiased) standard deviation. A group of one gets 0 (nothing to compare
    with); a group whose scores are all equal gets 0 everywhere. ``scale_by_std=False`` gives the
    unscaled ``r_i - mean_g`` (Dr. GRPO, which drops the per-group scaling as a bias towards easy and
    hard prompts). The response's advantage applies to each of its tokens (broadcast it with
    ``advantages[:, None]`` under the response mask).

    Args:
        scores: ``Tensor[B]`` float, each response's reward.
        group_ids: ``Tensor[B]`` integer, the group of each response.
        scale_by_std: divide by ``std_g + eps`` (GRPO, default) or not (Dr. GRPO).
        eps: added to the standard deviation; must be > 0 when scaling.

    Returns:
        ``Tensor[B]``, in the scores' float dtype (at least ``float32``).
    """
    _check_groups(scores, group_ids)
    if scale_by_std and eps <= 0:
        raise ValueError(f"eps must be > 0 when scale_by_std=True, got {eps}")
    if len(scores) == 0:
        return scores.to(float_dtype(scores))
    counts, means, squares = _group_stats(scores, group_ids)
    centred = scores.to(means.dtype) - means
    if scale_by_std:
        std = torch.sqrt(squares / (counts - 1).clamp(min=1))
        centred = centred / (std + eps)
    return torch.where(counts > 1, centred, 0.0)


def degenerate_groups(scores: Tensor, group_ids: Tensor) -> Tensor:
    """``Tensor[B]`` bool: True for each response whose group's scores are all equal.

    Such a group has a group-relative advantage of 0 on every token, so it carries no learning
    signal; DAPO's dynamic sampling drops it and draws more prompts instead. A group of one is
    degenerate.
    """
    _check_groups(scores, group_ids)
    if len(scores) == 0:
        return torch.zeros(0, dtype=torch.bool, device=scores.device)
    x = scores.to(float_dtype(scores))
    _, inverse = torch.unique(group_ids, return_inverse=True)
    num_groups = int(inverse.max()) + 1
    high = torch.full((num_groups,), -torch.inf, dtype=x.dtype, device=x.device).scatter_reduce(
        0, inverse, x, reduce="amax"
    )
    low = torch.full((num_groups,), torch.inf, dtype=x.dtype, device=x.device).scatter_reduce(
        0, inverse, x, reduce="amin"
    )
    return (high == low)[inverse]


def overlong_penalty(response_lengths: Tensor, *, max_length: int, cache_length: int) -> Tensor:
    """DAPO's soft overlong punishment, to add to each response's reward.

    With ``L = max_length``, ``L_cache = cache_length`` and ``|y|`` the response length::

        0                               if |y| <= L - L_cache
        ((L - L_cache) - |y|) / L_cache  if L - L_cache < |y| <= L     (falls linearly from 0 to -1)
        -1                              if |y| > L

    Args:
        response_lengths: ``Tensor[B]`` integer or float, ``|y|`` per response.
        max_length: ``L``, the longest response the run allows (``rollout.max_response_length``).
        cache_length: ``L_cache``, the length of the soft band before ``L``; ``1 <= L_cache <= L``.

    Returns:
        ``Tensor[B]`` float32, each entry in ``[-1, 0]``.
    """
    if not 1 <= cache_length <= max_length:
        raise ValueError(f"need 1 <= cache_length <= max_length, got {cache_length=}, {max_length=}")
    if response_lengths.dim() != 1:
        raise ValueError(
            f"response_lengths must be a 1-d Tensor[B], got shape {tuple(response_lengths.shape)}"
        )
    lengths = response_lengths.to(float_dtype(response_lengths))
    soft_edge = max_length - cache_length
    penalty = (soft_edge - lengths) / cache_length
    penalty = torch.where(lengths <= soft_edge, 0.0, penalty)
    return torch.where(lengths > max_length, -1.0, penalty)
