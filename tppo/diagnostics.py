"""Truncation-bias diagnostics: what cutting rollouts into windows costs, measured every step.

T-PPO trains on partial responses. Three things can go wrong, and each has a number here:

* the EGAE bootstrap ``V(s_l) := V(s_{l-1})`` at a window edge can be far from what the response
  eventually earned (:func:`bootstrap_errors`);
* a response spans several policy versions, so the value model also trains on tokens an older
  policy generated (:func:`policy_versions`, :func:`stale_token_fraction`);
* the tokens just before a window edge lean hardest on the bootstrap; ``policy_skip_tail`` drops
  them, and :func:`tail_advantage_stats` compares their advantages with the rest.

All functions are pure; the trainer logs them under ``diagnostics/``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def bootstrap_errors(
    bootstraps: Sequence[tuple[int, float]], *, response_length: int, reward: float, gamma: float
) -> list[float]:
    """Signed errors ``V(s_{b-1}) - G_{b-1}`` of the bootstraps one finished response received.

    Args:
        bootstraps: ``(position, value)`` per window edge at which the response was unfinished:
            ``position`` is the index of the last token of that window (``b - 1``), ``value`` the
            value estimate used there as the bootstrap.
        response_length: the finished response's length ``T``.
        reward: its outcome reward (paid at its last token).
        gamma: the discount.

    Returns:
        One error per edge; the eventual return at position ``t`` is ``gamma ** (T - 1 - t) * reward``.
    """
    errors = []
    for position, value in bootstraps:
        if not 0 <= position < response_length:
            raise ValueError(f"bootstrap position {position} is outside a response of {response_length}")
        errors.append(value - gamma ** (response_length - 1 - position) * reward)
    return errors


def policy_versions(token_steps: Sequence[int]) -> int:
    """How many training steps (policy versions) generated the tokens of one response."""
    return len(set(token_steps))


def stale_token_fraction(token_steps: Tensor, mask: Tensor, *, step: int) -> float:
    """The fraction of the tokens under ``mask`` that a policy older than ``step`` generated
    (NaN if the mask is empty)."""
    count = int(mask.sum())
    if count == 0:
        return math.nan
    return int((mask & (token_steps < step)).sum()) / count


def token_staleness(token_steps: Tensor, *, step: int, ahead: bool) -> Tensor:
    """How many policy updates separate each token's generating weights from the ``pi_old`` of
    ``step``: ``step - s`` for a token of window ``s``, plus one for windows generated ahead
    (``rollout.overlap_generation``: window ``s > 0`` came from the weights of step ``s - 1``)."""
    lag = (token_steps > 0).long() if ahead else torch.zeros_like(token_steps)
    return step - token_steps + lag


def staleness_stats(staleness: Tensor, mask: Tensor) -> dict[str, float]:
    """``rollout/staleness_max`` and ``rollout/stale_token_frac`` (the share of tokens from older
    weights than ``pi_old``) over the tokens under ``mask`` (NaN when it is empty)."""
    count = int(mask.sum())
    if count == 0:
        return {"rollout/staleness_max": math.nan, "rollout/stale_token_frac": math.nan}
    return {
        "rollout/staleness_max": float(staleness[mask].max()),
        "rollout/stale_token_frac": int((mask & (staleness > 0)).sum()) / count,
    }


def tail_advantage_stats(
    advantages: Tensor, response_mask: Tensor, token_steps: Tensor, tail_mask: Tensor, *, step: int
) -> dict[str, float]:
    """Advantages of this step's tokens in ``tail_mask`` (the window-edge tails of unfinished
    responses) against the rest of this step's tokens: mean and mean absolute value of each (NaN
    where there are none)."""
    new = response_mask & (token_steps == step)
    tail = new & tail_mask
    out: dict[str, float] = {}
    for name, where in (("tail", tail), ("rest", new & ~tail)):
        values = advantages[where].double()
        empty = values.numel() == 0
        out[f"{name}_adv_mean"] = math.nan if empty else float(values.mean())
        out[f"{name}_adv_abs_mean"] = math.nan if empty else float(values.abs().mean())
    return out


def summarize_errors(errors: Sequence[float]) -> dict[str, float]:
    """Mean absolute and mean signed error (NaN if there are none)."""
    if not errors:
        return {"abs": math.nan, "signed": math.nan}
    tensor = torch.tensor(errors, dtype=torch.float64)
    return {"abs": float(tensor.abs().mean()), "signed": float(tensor.mean())}


def log_prob_gap(engine_log_probs: Tensor, trainer_log_probs: Tensor, mask: Tensor) -> float:
    """Mean ``|engine - trainer|`` log-prob over the tokens under ``mask`` (NaN if there are none).

    Both follow one log-prob contract (:mod:`tppo.engines.base`); on tokens the engine generated with
    the weights the trainer recomputes with, the gap is numerics alone (kernels, batch shapes, dtype).
    A large gap means ``recompute_old_log_probs: false`` would give a different PPO ratio.
    """
    count = int(mask.sum())
    if count == 0:
        return math.nan
    gap = (engine_log_probs.double() - trainer_log_probs.double()).abs()
    return float(torch.where(mask, gap, 0.0).sum() / count)
