"""Advantage estimators and returns: EGAE (paper eq. 6), GAE (eqs. 2-3), Monte-Carlo returns.

Indexing (for one row, dropping the batch index): the response has ``b`` valid tokens at columns
``0 .. b-1`` (``response_mask`` is a prefix run); ``values[t] = V(s_t)`` is the value of the state
*before* token ``t`` is generated; ``rewards[t] = r_t`` is the reward for token ``t``.

Every estimator returns *raw* advantages: whitening is a separate, explicit call
(:func:`tppo.algorithms.stats.masked_whiten`). Estimators are registered by name in
:data:`ADVANTAGE_ESTIMATORS` with one call signature (see :class:`AdvantageEstimator`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

import torch
from torch import Tensor

from tppo.algorithms.masks import check_is_finished, prefix_lengths
from tppo.algorithms.stats import float_dtype
from tppo.registry import Registry


class AdvantageEstimator(Protocol):
    """The call signature every registered estimator has: returns ``Tensor[B, T]`` advantages."""

    def __call__(
        self,
        rewards: Tensor,
        values: Tensor,
        response_mask: Tensor,
        is_finished: Tensor,
        *,
        gamma: float,
        gae_lambda: float | Tensor,
    ) -> Tensor: ...


EstimatorT = TypeVar("EstimatorT", bound=AdvantageEstimator)

ADVANTAGE_ESTIMATORS: Registry[AdvantageEstimator] = Registry("advantage estimator")
"""Advantage estimators by name; add one with :func:`register_advantage_estimator`."""


def register_advantage_estimator(name: str) -> Callable[[EstimatorT], EstimatorT]:
    """Decorator: register an estimator under ``name``; raises ValueError if the name is taken."""
    return ADVANTAGE_ESTIMATORS.register(name)


def get_advantage_estimator(name: str) -> AdvantageEstimator:
    """The estimator registered under ``name``; raises KeyError naming the registered ones."""
    return ADVANTAGE_ESTIMATORS.get(name)


def _check_discount(**factors: float) -> None:
    for name, factor in factors.items():
        if not 0.0 <= factor <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {factor}")


def _response_lambda(gae_lambda: float | Tensor, response_mask: Tensor, dtype: torch.dtype) -> float | Tensor:
    """A float lambda checked and returned as is; a per-response ``Tensor[B]`` checked, in ``dtype``."""
    if not isinstance(gae_lambda, Tensor):
        _check_discount(gae_lambda=gae_lambda)
        return gae_lambda
    if gae_lambda.shape != response_mask.shape[:1] or not gae_lambda.is_floating_point():
        raise ValueError(
            f"gae_lambda must be a float or a float Tensor[B] with B = {response_mask.shape[0]}, "
            f"got {gae_lambda.dtype} of shape {tuple(gae_lambda.shape)}"
        )
    if not bool(((gae_lambda >= 0) & (gae_lambda <= 1)).all()):
        raise ValueError("every per-response gae_lambda must be in [0, 1]")
    return gae_lambda.detach().to(dtype)


def _check_same_shape(reference: Tensor, **tensors: Tensor) -> None:
    for name, tensor in tensors.items():
        if tensor.shape != reference.shape:
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)}, expected {tuple(reference.shape)} "
                "(the shape of response_mask)"
            )


def _reverse_discounted_cumsum(x: Tensor, discount: float | Tensor, length: int) -> Tensor:
    """``y_t = x_t + discount * y_{t+1}`` for ``t < length`` (``y_length = 0``), zeros after.

    ``x: Tensor[B, T]``; a reverse loop over the ``length`` columns, vectorised over rows.
    ``discount``: a float, a ``Tensor[B]`` (one per row) or a ``Tensor[B, T]`` (column ``t`` uses
    ``discount[:, t]``: ``y_t = x_t + discount_t * y_{t+1}``).
    """
    batch_size, num_columns = x.shape
    running = x.new_zeros(batch_size)  # [B]
    columns = []
    per_column = isinstance(discount, Tensor) and discount.dim() == 2
    for t in range(length - 1, -1, -1):
        factor = discount[:, t] if per_column else discount  # type: ignore[index]
        running = x[:, t] + factor * running
        columns.append(running)
    columns.reverse()
    head = torch.stack(columns, dim=1) if columns else x.new_zeros(batch_size, 0)  # [B, length]
    return torch.cat([head, x.new_zeros(batch_size, num_columns - length)], dim=1)  # [B, T]


@register_advantage_estimator("egae")
def egae(
    rewards: Tensor,
    values: Tensor,
    response_mask: Tensor,
    is_finished: Tensor,
    *,
    gamma: float,
    gae_lambda: float | Tensor,
) -> Tensor:
    """Extended GAE (paper eq. 6): GAE that bootstraps truncated responses with ``V(s_b) := V(s_{b-1})``.

    For a row with ``b`` valid tokens and ``t = 0 .. b-1``:

        delta_t = r_t + gamma * V(s_{t+1}) - V(s_t)
        A_t     = sum_{k=0}^{b-1-t} (gamma * gae_lambda)^k * delta_{t+k}

    where ``V(s_{t+1}) = values[t+1]`` for ``t < b-1``, and at the last valid token ``t = b-1``:

    - finished row (EOS or max length; terminal): ``V(s_b) = 0``, so ``delta_{b-1} = r_{b-1} - V(s_{b-1})``;
    - unfinished row (truncated by the window): ``V(s_b) := V(s_{b-1})``, so
      ``delta_{b-1} = r_{b-1} + (gamma - 1) * V(s_{b-1})`` (just ``r_{b-1}`` at ``gamma = 1``).

    With every row finished this is GAE. ``A_t`` reads only ``delta_t .. delta_{b-1}`` (the future),
    so calling ``egae`` on a response's whole token history and keeping the current window's
    columns gives the same advantages as calling it on the window alone (its columns shifted to
    start at 0): the trainer relies on this to run EGAE over full histories.

    Args:
        rewards: ``Tensor[B, T]`` float, ``r_t`` (outcome rewards sit on the last valid token).
        values: ``Tensor[B, T]`` float, ``V(s_t)``.
        response_mask: ``Tensor[B, T]`` bool, a prefix run per row (True at columns ``0 .. b-1``).
        is_finished: ``Tensor[B]`` bool, the row is terminal at its last valid token.
        gamma: discount in ``[0, 1]``.
        gae_lambda: GAE lambda in ``[0, 1]``: a float for every row, or a ``Tensor[B]`` float of
            one lambda per response (e.g. :func:`length_adaptive_lambda`). A float gives exactly
            the results it always gave; a tensor of that same value gives the same numbers.

    Returns:
        ``Tensor[B, T]`` raw advantages (float32, or the inputs' wider float dtype), exactly ``0``
        where ``response_mask`` is False (rows with an empty mask are all zeros). ``rewards`` and
        ``values`` are never read there: NaN/inf garbage under the mask changes nothing.

    Raises:
        ValueError: a row of ``response_mask`` is not a prefix run, shapes disagree, or ``gamma`` /
        ``gae_lambda`` lie outside ``[0, 1]``. TypeError: a mask is not bool.
    """
    deltas = egae_deltas(rewards, values, response_mask, is_finished, gamma=gamma)  # [B, T]
    lam = _response_lambda(gae_lambda, response_mask, deltas.dtype)  # float or [B]
    lengths = response_mask.sum(-1)  # [B], a prefix run (checked by egae_deltas)
    max_length = int(lengths.max()) if lengths.numel() else 0
    return _reverse_discounted_cumsum(deltas, gamma * lam, max_length)


def egae_deltas(
    rewards: Tensor, values: Tensor, response_mask: Tensor, is_finished: Tensor, *, gamma: float
) -> Tensor:
    """The TD residuals of :func:`egae`: ``delta_t = r_t + gamma * V(s_{t+1}) - V(s_t)``.

    ``V(s_b) = 0`` for a finished row, ``V(s_b) := V(s_{b-1})`` for an unfinished one (paper eq. 6);
    ``Tensor[B, T]``, ``0`` where ``response_mask`` is False (garbage there is never read). Checks
    its inputs as :func:`egae` does.
    """
    _check_discount(gamma=gamma)
    lengths = prefix_lengths(response_mask)  # [B]
    _check_same_shape(response_mask, rewards=rewards, values=values)
    check_is_finished(is_finished, response_mask.shape[0])

    dtype = float_dtype(rewards, values)
    r = torch.where(response_mask, rewards.to(dtype), 0.0)  # [B, T]
    v = torch.where(response_mask, values.to(dtype), 0.0)  # [B, T], V(s_t)
    columns = torch.arange(v.shape[1], device=v.device)
    is_last = columns == (lengths - 1)[:, None]  # [B, T], True at t = b-1
    bootstrap = torch.where(is_finished[:, None], 0.0, v)  # V(s_b) as seen from t = b-1
    next_v = torch.cat([v[:, 1:], v.new_zeros(v.shape[0], 1)], dim=1)  # [B, T], values[t+1]
    next_v = torch.where(is_last, bootstrap, next_v)  # [B, T], V(s_{t+1})
    return torch.where(response_mask, r + gamma * next_v - v, 0.0)  # [B, T]


def gae(
    rewards: Tensor,
    values: Tensor,
    response_mask: Tensor,
    *,
    gamma: float,
    gae_lambda: float | Tensor,
) -> Tensor:
    """GAE (paper eqs. 2-3), every row terminal at its last valid token: :func:`egae` with all finished.

    ``delta_t = r_t + gamma * V(s_{t+1}) - V(s_t)`` with ``V(s_b) = 0``;
    ``A_t = sum_{k=0}^{b-1-t} (gamma * gae_lambda)^k * delta_{t+k}``. With ``gamma = gae_lambda = 1``,
    ``A_t = R_t - V(s_t)`` where ``R_t`` is the reward-to-go. ``gae_lambda``: a float or one per
    response (``Tensor[B]``). Shapes, dtype and edge cases as :func:`egae`.
    """
    is_finished = torch.ones(response_mask.shape[:1], dtype=torch.bool, device=response_mask.device)
    return egae(rewards, values, response_mask, is_finished, gamma=gamma, gae_lambda=gae_lambda)


def monte_carlo_returns(rewards: Tensor, response_mask: Tensor, *, gamma: float) -> Tensor:
    """Discounted reward-to-go: ``R_t = sum_{k=t}^{b-1} gamma^(k-t) * r_k`` for ``t = 0 .. b-1``.

    The value target of the paper (sec. 2.4): with an outcome reward ``R`` on the last token,
    ``R_t = gamma^(b-1-t) * R``. Never bootstrapped: an unfinished row's returns miss its future
    rewards, which is why only finished rows train the value model.

    Args:
        rewards: ``Tensor[B, T]`` float, ``r_t``.
        response_mask: ``Tensor[B, T]`` bool, a prefix run per row.
        gamma: discount in ``[0, 1]``.

    Returns:
        ``Tensor[B, T]``, ``0`` where ``response_mask`` is False; rewards there are never read.
    """
    _check_discount(gamma=gamma)
    lengths = prefix_lengths(response_mask)
    _check_same_shape(response_mask, rewards=rewards)
    r = torch.where(response_mask, rewards.to(float_dtype(rewards)), 0.0)  # [B, T]
    max_length = int(lengths.max()) if lengths.numel() else 0
    return _reverse_discounted_cumsum(r, gamma, max_length)


def outcome_rewards(scores: Tensor, response_mask: Tensor) -> Tensor:
    """Token rewards from one scalar score per response: ``r_{b-1} = score``, ``r_t = 0`` otherwise.

    Args:
        scores: ``Tensor[B]`` float, each response's outcome score.
        response_mask: ``Tensor[B, T]`` bool, a prefix run per row (``b`` valid tokens).

    Returns:
        ``Tensor[B, T]`` (float32 or the scores' wider float dtype) with the score on each row's
        last valid token; rows with an empty mask are all zeros (their score is not read).
    """
    lengths = prefix_lengths(response_mask)  # [B]
    if scores.shape != lengths.shape:
        raise ValueError(f"scores must have shape [B] = {tuple(lengths.shape)}, got {tuple(scores.shape)}")
    columns = torch.arange(response_mask.shape[1], device=response_mask.device)
    is_last = columns == (lengths - 1)[:, None]  # [B, T]
    return torch.where(is_last, scores.to(float_dtype(scores))[:, None], 0.0)


@register_advantage_estimator("gae")
def _gae_estimator(
    rewards: Tensor,
    values: Tensor,
    response_mask: Tensor,
    is_finished: Tensor,
    *,
    gamma: float,
    gae_lambda: float | Tensor,
) -> Tensor:
    """:func:`gae`; ``is_finished`` is ignored (every row is treated as terminal)."""
    del is_finished
    return gae(rewards, values, response_mask, gamma=gamma, gae_lambda=gae_lambda)


def length_adaptive_lambda(response_lengths: Tensor, *, alpha: float) -> Tensor:
    """VAPO's length-adaptive GAE lambda for the policy: ``clamp(1 - 1 / (alpha * length), 0, 1)``.

    VAPO (Yue et al. 2025) sets the policy's lambda per response so that ``sum_t lambda^t``, the
    effective horizon ``1 / (1 - lambda)``, grows with the response: ``1 / (1 - lambda) = alpha *
    length`` (VAPO: ``alpha = 0.05``). Short responses get a small lambda (low variance), long ones
    a lambda near 1 (low bias). A length of 0 gives 0 (a row with no tokens has no advantages).
    For an *unfinished* response (truncated by the window), ``length`` is its length so far: the
    tokens generated up to this step, not the length it will have. The value target stays
    Monte-Carlo (lambda 1), as in VAPO; this lambda is for the policy's advantages only.

    Args:
        response_lengths: ``Tensor[B]``, integer or float, each response's number of tokens.
        alpha: ``> 0``.

    Returns:
        ``Tensor[B]`` float32 (float64 for float64 lengths) in ``[0, 1]``, to pass as ``gae_lambda``
        to :func:`egae` or :func:`gae`.
    """
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if response_lengths.dim() != 1:
        raise ValueError(f"response_lengths must be a Tensor[B], got shape {tuple(response_lengths.shape)}")
    lengths = response_lengths.to(float_dtype(response_lengths))  # [B]
    if bool((lengths < 0).any()):
        raise ValueError("response_lengths must be >= 0")
    positive = lengths > 0
    safe = torch.where(positive, lengths, 1.0)  # no division by 0 where the length is 0
    lam = (1.0 - 1.0 / (alpha * safe)).clamp(0.0, 1.0)
    return torch.where(positive, lam, 0.0)
