"""The clipped policy loss (paper eq. 1) and the clipped value loss (eqs. 4-5), token-level means.

Both are losses to *minimise*. Normalisation: ``loss = sum_t mask_t * loss_t / token_count``, with
``token_count`` the number of masked tokens by default. Pass the token count of the whole batch
(over all micro-batches and workers) and the losses of the pieces add up to the loss of the whole,
so gradient accumulation and data-parallel gradient sums stay exact.

Inputs that are constants of the objective (``old_log_probs``, ``advantages``, ``old_values``,
``returns``) are detached. Values under the mask are never read (``torch.where`` before any
arithmetic), so NaN/inf garbage there reaches neither the loss nor its gradient. Statistics are
detached 0-dim tensors, means over this call's masked tokens (``0`` for an empty mask).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from tppo.algorithms.aggregation import global_token_mean
from tppo.algorithms.stats import check_mask, float_dtype, masked_mean


class PolicyLossOutput(NamedTuple):
    """What :func:`policy_loss` returns; all but ``loss`` are detached 0-dim tensors."""

    loss: Tensor
    """The token-mean clipped surrogate loss (scalar, with grad)."""
    clipfrac: Tensor
    """Fraction of masked tokens where the clipped term was the active (larger-loss) one."""
    clipfrac_upper: Tensor
    """Fraction of masked tokens with ``ratio > 1 + clip_eps_high`` and ``A > 0``."""
    clipfrac_lower: Tensor
    """Fraction of masked tokens with ``ratio < 1 - clip_eps_low`` and ``A < 0``."""
    approx_kl: Tensor
    """Mean k3 estimate of ``KL(pi_old || pi_theta)``: ``(ratio - 1) - log(ratio)``."""
    ratio_mean: Tensor
    """Mean probability ratio ``pi_theta / pi_old``."""
    ratio_max: Tensor
    """Largest probability ratio (``0`` for an empty mask)."""
    dual_clipfrac: Tensor
    """Fraction of masked tokens capped by the dual clip (``0`` without one)."""


class ValueLossOutput(NamedTuple):
    """What :func:`value_loss` returns; all but ``loss`` are detached 0-dim tensors."""

    loss: Tensor
    """The token-mean clipped value loss (scalar, with grad)."""
    clipfrac: Tensor
    """Fraction of masked tokens where the clipped error is strictly larger (the clipped term wins)."""
    mean_abs_error: Tensor
    """Mean ``|values - returns|``."""
    values_mean: Tensor
    """Mean predicted value."""
    returns_mean: Tensor
    """Mean return (target)."""


def _check_inputs(mask: Tensor, mask_name: str, **tensors: Tensor) -> None:
    for name, tensor in tensors.items():
        check_mask(mask, tensor, name=mask_name, like_name=name)


def policy_loss(
    log_probs: Tensor,
    old_log_probs: Tensor,
    advantages: Tensor,
    policy_mask: Tensor,
    *,
    clip_eps_low: float,
    clip_eps_high: float,
    dual_clip: float | None = None,
    token_count: int | float | Tensor | None = None,
) -> PolicyLossOutput:
    """Clipped surrogate loss (paper eq. 1, negated), token-level mean over ``policy_mask``.

    Per token, with ``ratio_t = exp(log_probs_t - old_log_probs_t)`` and ``A_t = advantages_t``:

        loss_t = -min(ratio_t * A_t, clip(ratio_t, 1 - clip_eps_low, 1 + clip_eps_high) * A_t)
               = max(-ratio_t * A_t, -clip(ratio_t, ...) * A_t)

    Dual clip (``dual_clip = c > 1``, optional): for ``A_t < 0`` the loss is capped,
    ``loss_t = min(loss_t, -c * A_t)``, so a token whose ratio has grown far above ``c`` cannot
    dominate the batch (and gives no gradient). Then

        loss = sum_t policy_mask_t * loss_t / max(1, token_count)

    with ``token_count = sum_t policy_mask_t`` unless given (see the module docstring).

    Args:
        log_probs: ``Tensor[B, T]`` float, ``log pi_theta(a_t | s_t)`` (with grad).
        old_log_probs: ``Tensor[B, T]`` float, ``log pi_old(a_t | s_t)`` (detached here).
        advantages: ``Tensor[B, T]`` float, ``A_t`` (detached here).
        policy_mask: ``Tensor[B, T]`` bool, the tokens to train.
        clip_eps_low: ``epsilon_low`` in ``[0, 1)``; the paper uses 0.2.
        clip_eps_high: ``epsilon_high >= 0``; the paper uses 0.28.
        dual_clip: the dual-clip constant ``c > 1``, or None (default) for none.
        token_count: the denominator; default the number of masked tokens.

    Returns:
        :class:`PolicyLossOutput`. An empty mask gives a loss of 0 that still has a gradient graph.
    """
    _check_inputs(
        policy_mask, "policy_mask", log_probs=log_probs, old_log_probs=old_log_probs, advantages=advantages
    )
    if not (0.0 <= clip_eps_low < 1.0 and clip_eps_high >= 0.0):
        raise ValueError(
            f"need 0 <= clip_eps_low < 1 and clip_eps_high >= 0, got {clip_eps_low=}, {clip_eps_high=}"
        )
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (or None), got {dual_clip}")

    mask = policy_mask
    dtype = float_dtype(log_probs, old_log_probs, advantages)
    new_lp = torch.where(mask, log_probs.to(dtype), 0.0)  # [B, T]
    old_lp = torch.where(mask, old_log_probs.detach().to(dtype), 0.0)  # [B, T]
    adv = torch.where(mask, advantages.detach().to(dtype), 0.0)  # [B, T]
    log_ratio = new_lp - old_lp
    ratio = torch.exp(log_ratio)  # [B, T], 1 under the mask

    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_eps_low, 1.0 + clip_eps_high)
    clip_active = mask & (clipped > unclipped)
    per_token = torch.where(clip_active, clipped, unclipped)
    dual_active = torch.zeros_like(mask)
    if dual_clip is not None:
        cap = -dual_clip * adv  # > 0 where A < 0
        dual_active = mask & (adv < 0) & (per_token > cap)
        per_token = torch.where(dual_active, cap, per_token)
    loss = global_token_mean(per_token, mask, token_count)

    with torch.no_grad():
        ratio_max = torch.where(mask, ratio, 0.0).amax() if ratio.numel() else ratio.new_zeros(())
        return PolicyLossOutput(
            loss=loss,
            clipfrac=masked_mean(clip_active, mask),
            clipfrac_upper=masked_mean((ratio > 1.0 + clip_eps_high) & (adv > 0), mask),
            clipfrac_lower=masked_mean((ratio < 1.0 - clip_eps_low) & (adv < 0), mask),
            approx_kl=masked_mean((ratio - 1.0) - log_ratio, mask),
            ratio_mean=masked_mean(ratio, mask),
            ratio_max=ratio_max,
            dual_clipfrac=masked_mean(dual_active, mask),
        )


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    value_mask: Tensor,
    *,
    value_clip_low: float,
    value_clip_high: float,
    token_count: int | float | Tensor | None = None,
) -> ValueLossOutput:
    """Clipped value loss (paper eqs. 4-5), token-level mean over ``value_mask``.

    Per token, with ``V_t = values_t``, ``V_old_t = old_values_t`` and ``R_t = returns_t``:

        V_clip_t = clip(V_t, V_old_t - value_clip_low, V_old_t + value_clip_high)
        loss_t   = 0.5 * max((V_t - R_t)^2, (V_clip_t - R_t)^2)
        loss     = sum_t value_mask_t * loss_t / max(1, token_count)

    with ``token_count = sum_t value_mask_t`` unless given (see the module docstring). Where the
    clipped error wins, ``V_clip_t`` is at a clip bound and the token gives no gradient.

    Args:
        values: ``Tensor[B, T]`` float, ``V_phi(s_t)`` (with grad).
        old_values: ``Tensor[B, T]`` float, ``V_phi_old(s_t)`` (detached here).
        returns: ``Tensor[B, T]`` float, targets ``R_t`` (Monte-Carlo returns; detached here).
        value_mask: ``Tensor[B, T]`` bool, the tokens to train.
        value_clip_low: ``xi_low >= 0``; the paper uses 0.5.
        value_clip_high: ``xi_high >= 0``; the paper uses 0.6.
        token_count: the denominator; default the number of masked tokens.

    Returns:
        :class:`ValueLossOutput`. An empty mask gives a loss of 0 that still has a gradient graph.
    """
    _check_inputs(value_mask, "value_mask", values=values, old_values=old_values, returns=returns)
    if value_clip_low < 0 or value_clip_high < 0:
        raise ValueError(f"value clips must be >= 0, got {value_clip_low=}, {value_clip_high=}")

    mask = value_mask
    dtype = float_dtype(values, old_values, returns)
    v = torch.where(mask, values.to(dtype), 0.0)  # [B, T]
    v_old = torch.where(mask, old_values.detach().to(dtype), 0.0)  # [B, T]
    target = torch.where(mask, returns.detach().to(dtype), 0.0)  # [B, T]
    v_clip = torch.clamp(v, v_old - value_clip_low, v_old + value_clip_high)

    error = (v - target).square()
    error_clipped = (v_clip - target).square()
    clip_active = mask & (error_clipped > error)
    per_token = 0.5 * torch.where(clip_active, error_clipped, error)
    loss = global_token_mean(per_token, mask, token_count)

    with torch.no_grad():
        return ValueLossOutput(
            loss=loss,
            clipfrac=masked_mean(clip_active, mask),
            mean_abs_error=masked_mean((v - target).abs(), mask),
            values_mean=masked_mean(v, mask),
            returns_mean=masked_mean(target, mask),
        )


def positive_lm_loss(
    log_probs: Tensor,
    rewards: Tensor,
    response_mask: Tensor,
    *,
    token_count: int | float | Tensor | None = None,
) -> Tensor:
    """VAPO's positive-example language-model loss: the token-mean NLL of responses with reward 1.

    ``loss = -sum_{b, t} positive_b * response_mask_{b,t} * log_probs_{b,t} / max(1, token_count)``
    with ``positive_b = (rewards_b == 1)`` and ``token_count`` the number of response tokens of the
    positive rows unless given (pass the whole minibatch's count so that the pieces add up, as for
    :func:`policy_loss`). No positive response (or no token) gives a loss of 0 that still has a
    gradient graph. Log-probs outside the positive rows' tokens are never read.

    Args:
        log_probs: ``Tensor[B, T]`` float, ``log pi_theta(a_t | s_t)`` (with grad).
        rewards: ``Tensor[B]``, each response's outcome reward (1 = correct).
        response_mask: ``Tensor[B, T]`` bool, the response tokens.
        token_count: the denominator; default the number of positive rows' response tokens.

    Returns:
        A 0-dim tensor to add (times ``algorithm.positive_lm_coef``) to the policy loss.
    """
    check_mask(response_mask, log_probs, name="response_mask", like_name="log_probs")
    if rewards.shape != response_mask.shape[:1]:
        raise ValueError(
            f"rewards must have shape [B] = {tuple(response_mask.shape[:1])}, got {tuple(rewards.shape)}"
        )
    mask = response_mask & (rewards == 1)[:, None]  # [B, T]
    nll = -torch.where(mask, log_probs.to(float_dtype(log_probs)), 0.0)  # [B, T]
    return global_token_mean(nll, mask, token_count)


class DecoupledPolicyLossOutput(NamedTuple):
    """What :func:`decoupled_policy_loss` returns: :class:`PolicyLossOutput`'s fields (the ratio
    statistics are of ``pi_theta / pi_prox``) and the importance weight's; all but ``loss`` detached."""

    loss: Tensor
    clipfrac: Tensor
    clipfrac_upper: Tensor
    clipfrac_lower: Tensor
    approx_kl: Tensor
    ratio_mean: Tensor
    ratio_max: Tensor
    dual_clipfrac: Tensor
    is_weight_mean: Tensor
    """Mean importance weight ``pi_prox / pi_behaviour`` over the masked tokens, after the cap."""
    is_weight_capped_frac: Tensor
    """Fraction of masked tokens whose weight exceeded ``is_cap`` (``0`` without a cap)."""


def decoupled_policy_loss(
    log_probs: Tensor,
    proximal_log_probs: Tensor,
    behaviour_log_probs: Tensor,
    advantages: Tensor,
    policy_mask: Tensor,
    *,
    clip_eps_low: float,
    clip_eps_high: float,
    is_cap: float | None = None,
    token_count: int | float | Tensor | None = None,
    dual_clip: float | None = None,
) -> DecoupledPolicyLossOutput:
    """The decoupled clipped objective (Hilton et al. 2022; AReaL): trust region around a proximal
    policy, importance correction for the policy that actually generated the tokens.

    Per token, with ``w_t = exp(proximal_t - behaviour_t)`` (capped at ``is_cap`` when given:
    truncated importance sampling) and ``r_t = exp(log_probs_t - proximal_t)``::

        loss_t = -w_t * min(r_t * A_t, clip(r_t, 1 - clip_eps_low, 1 + clip_eps_high) * A_t)
        loss   = sum_t policy_mask_t * loss_t / max(1, token_count)

    The gradient flows through ``log_probs`` only (``w`` is a constant). With ``w > 0`` this is
    :func:`policy_loss` around the proximal policy with advantages ``w * A``; so when
    ``proximal == behaviour`` (``w = 1``) it *equals* :func:`policy_loss`. ``dual_clip`` as there.

    Args:
        log_probs: ``Tensor[B, T]``, ``log pi_theta`` (with grad).
        proximal_log_probs: ``Tensor[B, T]``, ``log pi_prox`` (e.g. ``pi_old`` recomputed at the step).
        behaviour_log_probs: ``Tensor[B, T]``, ``log pi_behaviour``: the engine's, recorded when the
            token was generated.
        advantages: ``Tensor[B, T]``.
        policy_mask: ``Tensor[B, T]`` bool, the tokens to train.
        clip_eps_low, clip_eps_high: the clip range, as in :func:`policy_loss`.
        is_cap: the largest importance weight (``None``: uncapped); must be > 0.
        token_count: the denominator; default the number of masked tokens.

    Returns:
        :class:`DecoupledPolicyLossOutput`.
    """
    _check_inputs(
        policy_mask,
        "policy_mask",
        proximal_log_probs=proximal_log_probs,
        behaviour_log_probs=behaviour_log_probs,
        advantages=advantages,
    )
    if is_cap is not None and is_cap <= 0:
        raise ValueError(f"is_cap must be > 0 (or None), got {is_cap}")
    dtype = float_dtype(log_probs, proximal_log_probs, behaviour_log_probs, advantages)
    with torch.no_grad():
        log_w = torch.where(policy_mask, (proximal_log_probs - behaviour_log_probs).to(dtype), 0.0)
        raw = torch.exp(log_w)  # [B, T], 1 under the mask
        weight = raw if is_cap is None else raw.clamp(max=is_cap)
        capped = policy_mask & (raw > is_cap) if is_cap is not None else torch.zeros_like(policy_mask)
        weighted_advantages = torch.where(policy_mask, advantages.detach().to(dtype), 0.0) * weight
    out = policy_loss(
        log_probs,
        proximal_log_probs,
        weighted_advantages,
        policy_mask,
        clip_eps_low=clip_eps_low,
        clip_eps_high=clip_eps_high,
        dual_clip=dual_clip,
        token_count=token_count,
    )
    with torch.no_grad():
        return DecoupledPolicyLossOutput(
            *out,
            is_weight_mean=masked_mean(weight, policy_mask),
            is_weight_capped_frac=masked_mean(capped, policy_mask),
        )


def kl_k3(
    log_probs: Tensor,
    reference_log_probs: Tensor,
    mask: Tensor,
    *,
    token_count: int | float | Tensor | None = None,
) -> Tensor:
    """Token-mean k3 estimate of ``KL(pi_theta || pi_ref)`` (Schulman's unbiased, non-negative
    estimator, as GRPO's KL penalty): per token, with ``d_t = ref_t - log_probs_t``,
    ``k3_t = exp(d_t) - d_t - 1 >= 0``; the loss is ``sum_t mask_t * k3_t / max(1, token_count)``.

    Gradient through ``log_probs`` only; ``reference_log_probs`` are detached. Masked entries are
    never read. Add ``kl_coef *`` it to the policy loss.
    """
    _check_inputs(mask, "mask", log_probs=log_probs, reference_log_probs=reference_log_probs)
    dtype = float_dtype(log_probs, reference_log_probs)
    lp = torch.where(mask, log_probs.to(dtype), 0.0)
    ref = torch.where(mask, reference_log_probs.detach().to(dtype), 0.0)
    delta = ref - lp
    return global_token_mean(torch.exp(delta) - delta - 1.0, mask, token_count)
