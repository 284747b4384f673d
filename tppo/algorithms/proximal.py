"""Off-policy PPO variants' maths: GePPO's generalized clip and sample reuse, PPO-EWMA's average.

- :func:`geppo_policy_loss`, :func:`geppo_clip_eps`: GePPO (Queeney, Paschalidis, Cassandras 2021,
  "Generalized Proximal Policy Optimization with Sample Reuse", arXiv 2111.00072), which trains on
  the tokens of the last ``M`` policies with a trust region centred on the current policy ``pi_k``.
- :func:`truncated_importance_weights`, :func:`vtrace_egae`: the advantages of reused tokens, from
  the current critic with V-trace-style truncated importance weights (as GePPO does, after Espeholt
  et al. 2018), on EGAE's bootstrapping of unfinished responses (paper eq. 6).
- :func:`ewma_update`: PPO-EWMA's proximal policy (Hilton, Cobbe, Schulman 2022, "Batch
  size-invariance for policy optimization"), ``theta_prox <- beta * theta_prox + (1 - beta) * theta``.

Vocabulary (DESIGN.md sec. 5): **behaviour** = the policy that generated a token (``pi_{k-i}``),
**current** = the policy at the start of this update (``pi_k``, the trust region's centre),
``log_probs`` = the weights being trained. Loss functions follow :mod:`tppo.algorithms.losses`:
token-level means over ``policy_mask`` with an optional global ``token_count``, constants detached,
garbage under the mask never read.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from tppo.algorithms.advantages import _response_lambda, _reverse_discounted_cumsum, egae_deltas
from tppo.algorithms.aggregation import global_token_mean
from tppo.algorithms.losses import PolicyLossOutput, _check_inputs
from tppo.algorithms.stats import check_mask, float_dtype, masked_mean


def geppo_clip_eps(clip_eps: float, reuse_steps: int) -> float:
    """GePPO's clipping parameter for uniform weights over ``M = reuse_steps`` policies.

    ``epsilon_GePPO = 2 * epsilon_PPO / (M + 1)``. GePPO's policy-improvement bound (arXiv
    2111.00072, sec. 5) charges each sample the total-variation distance between the new policy and
    the policy that generated it; a sample from ``pi_{k-i}`` is ``i + 1`` updates away, so with
    uniform weights ``nu_i = 1 / M`` over ``i = 0 .. M - 1`` the expected distance is ``(M + 1) / 2``
    updates of size ``epsilon / 2``. Scaling ``epsilon`` by ``2 / (M + 1)`` gives the same
    worst-case bound as PPO with ``epsilon_PPO`` (the authors' code, ``jqueeney/geppo``,
    ``init_polweights``: ``eps_mult = 2 / (M + 1)`` for uniform weights). ``M = 1`` is PPO.

    Args:
        clip_eps: PPO's ``epsilon >= 0``.
        reuse_steps: ``M >= 1``, the number of policies whose tokens train (this step's included).
    """
    if reuse_steps < 1:
        raise ValueError(f"reuse_steps must be >= 1, got {reuse_steps}")
    if clip_eps < 0:
        raise ValueError(f"clip_eps must be >= 0, got {clip_eps}")
    return 2.0 * clip_eps / (reuse_steps + 1)


def geppo_policy_loss(
    log_probs: Tensor,
    current_log_probs: Tensor,
    behaviour_log_probs: Tensor,
    advantages: Tensor,
    policy_mask: Tensor,
    *,
    clip_eps: float,
    token_count: int | float | Tensor | None = None,
) -> PolicyLossOutput:
    """GePPO's generalized clipped surrogate (arXiv 2111.00072, sec. 5; negated), token-level mean.

    Per token, with ``r_t = exp(log_probs_t - behaviour_t)`` (``pi_theta / pi_{k-i}``) and the
    centre ``c_t = exp(current_t - behaviour_t)`` (``pi_k / pi_{k-i}``):

        loss_t = -min(r_t * A_t, clip(r_t, c_t - clip_eps, c_t + clip_eps) * A_t)
        loss   = sum_t policy_mask_t * loss_t / max(1, token_count)

    The trust region is centred on ``pi_k`` whatever policy generated the token; a token of this
    step (``behaviour == current``, ``c_t = 1``) gets PPO's clip, so with ``M = 1`` this is
    :func:`tppo.algorithms.losses.policy_loss` with ``clip_eps_low = clip_eps_high = clip_eps``.
    Uniform weights over the ``M`` policies are the token mean itself (each step contributes its
    tokens); pass ``clip_eps = geppo_clip_eps(ppo_clip_eps, M)``.

    Args:
        log_probs: ``Tensor[B, T]`` float, ``log pi_theta`` (with grad).
        current_log_probs: ``Tensor[B, T]`` float, ``log pi_k`` (detached here).
        behaviour_log_probs: ``Tensor[B, T]`` float, ``log pi_{k-i}`` of each token (detached here).
        advantages: ``Tensor[B, T]`` float (detached here).
        policy_mask: ``Tensor[B, T]`` bool, the tokens to train.
        clip_eps: ``epsilon >= 0``, the half-width of the trust region around ``c_t``.
        token_count: the denominator; default the number of masked tokens.

    Returns:
        :class:`~tppo.algorithms.losses.PolicyLossOutput` with the fields measured against the
        centre: ``clipfrac_upper`` (``r > c + eps``, ``A > 0``), ``clipfrac_lower`` (``r < c - eps``,
        ``A < 0``), ``approx_kl``, ``ratio_mean`` and ``ratio_max`` of ``r / c = pi_theta / pi_k``;
        ``dual_clipfrac`` is 0. Each equals :func:`policy_loss`'s when behaviour is current.
    """
    _check_inputs(
        policy_mask,
        "policy_mask",
        log_probs=log_probs,
        current_log_probs=current_log_probs,
        behaviour_log_probs=behaviour_log_probs,
        advantages=advantages,
    )
    if clip_eps < 0:
        raise ValueError(f"clip_eps must be >= 0, got {clip_eps}")
    mask = policy_mask
    dtype = float_dtype(log_probs, current_log_probs, behaviour_log_probs, advantages)
    new_lp = torch.where(mask, log_probs.to(dtype), 0.0)  # [B, T]
    cur_lp = torch.where(mask, current_log_probs.detach().to(dtype), 0.0)  # [B, T]
    beh_lp = torch.where(mask, behaviour_log_probs.detach().to(dtype), 0.0)  # [B, T]
    adv = torch.where(mask, advantages.detach().to(dtype), 0.0)  # [B, T]
    ratio = torch.exp(new_lp - beh_lp)  # [B, T], r_t; 1 under the mask
    centre = torch.exp(cur_lp - beh_lp)  # [B, T], c_t; 1 under the mask

    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, centre - clip_eps, centre + clip_eps)
    clip_active = mask & (clipped > unclipped)
    per_token = torch.where(clip_active, clipped, unclipped)
    loss = global_token_mean(per_token, mask, token_count)

    with torch.no_grad():
        log_trust = new_lp - cur_lp  # log(pi_theta / pi_k)
        trust = torch.exp(log_trust)
        trust_max = torch.where(mask, trust, 0.0).amax() if trust.numel() else trust.new_zeros(())
        return PolicyLossOutput(
            loss=loss,
            clipfrac=masked_mean(clip_active, mask),
            clipfrac_upper=masked_mean((ratio > centre + clip_eps) & (adv > 0), mask),
            clipfrac_lower=masked_mean((ratio < centre - clip_eps) & (adv < 0), mask),
            approx_kl=masked_mean((trust - 1.0) - log_trust, mask),
            ratio_mean=masked_mean(trust, mask),
            ratio_max=trust_max,
            dual_clipfrac=torch.zeros((), dtype=dtype, device=mask.device),
        )


def truncated_importance_weights(log_ratios: Tensor, mask: Tensor, *, cap: float = 1.0) -> Tensor:
    """V-trace's truncated importance weights ``c_t = min(exp(log_ratios_t), cap)``, ``0`` under the mask.

    Args:
        log_ratios: ``Tensor[B, T]`` float, ``log pi_k(a_t) - log pi_behaviour(a_t)`` per token.
        mask: ``Tensor[B, T]`` bool; entries outside it are never read.
        cap: the truncation level ``c_bar > 0`` (V-trace and GePPO: 1).

    Returns:
        ``Tensor[B, T]`` in ``[0, cap]`` (float32 or the input's wider float dtype), detached.
    """
    check_mask(mask, log_ratios, like_name="log_ratios")
    if not cap > 0:
        raise ValueError(f"cap must be > 0, got {cap}")
    safe = torch.where(mask, log_ratios.detach().to(float_dtype(log_ratios)), 0.0)
    return torch.where(mask, torch.exp(safe).clamp(max=cap), 0.0)


def vtrace_egae(
    rewards: Tensor,
    values: Tensor,
    response_mask: Tensor,
    is_finished: Tensor,
    log_ratios: Tensor,
    *,
    gamma: float,
    gae_lambda: float | Tensor,
    cap: float = 1.0,
) -> Tensor:
    """EGAE with V-trace-style truncated importance weights, for tokens of earlier policies (GePPO).

    With ``c_t = min(pi_k(a_t) / pi_behaviour(a_t), cap)`` (:func:`truncated_importance_weights`) and
    EGAE's residuals ``delta_t`` (:func:`~tppo.algorithms.advantages.egae_deltas`), for ``t < b``:

        A_t = delta_t + gamma * lambda * c_{t+1} * A_{t+1},   A_b = 0
            = sum_{k=0}^{b-1-t} (gamma * lambda)^k * (prod_{j=t+1}^{t+k} c_j) * delta_{t+k}

    as in GePPO's off-policy GAE (the authors' ``gae_vtrace``). ``c_t`` of token ``t`` itself is not
    in ``A_t``: its importance weight is the loss's ratio. With every token on-policy
    (``log_ratios = 0``) and ``cap >= 1`` this is :func:`~tppo.algorithms.advantages.egae`.

    Sequences (a choice GePPO, written for fixed-length trajectories, leaves open): call this on
    each response's whole token history as it stands now, every token with the log-ratio of the
    policy that generated it (0 for this step's tokens). A reused token of a response that has since
    continued or finished then gets the advantage of everything now known, not the one computed when
    it was generated; a response that is still unfinished is bootstrapped at its last token with
    ``V(s_b) := V(s_{b-1})`` (EGAE), whatever policy generated that token. Because ``A_t`` reads only
    columns ``t ..``, a window's columns of a history's advantages equal those of the window alone
    when the window ends the history.

    Args:
        rewards, values, response_mask, is_finished: as :func:`~tppo.algorithms.advantages.egae`.
        log_ratios: ``Tensor[B, T]`` float, ``log pi_k - log pi_behaviour`` per token.
        gamma: discount in ``[0, 1]``.
        gae_lambda: a float in ``[0, 1]`` or a ``Tensor[B]`` of one per response.
        cap: truncation level ``c_bar > 0`` (default 1).

    Returns:
        ``Tensor[B, T]`` raw advantages, ``0`` where ``response_mask`` is False (garbage there unread).
    """
    deltas = egae_deltas(rewards, values, response_mask, is_finished, gamma=gamma)  # [B, T]
    weights = truncated_importance_weights(log_ratios, response_mask, cap=cap).to(deltas.dtype)
    lam = _response_lambda(gae_lambda, response_mask, deltas.dtype)  # float or [B]
    lam_rows = lam[:, None] if isinstance(lam, Tensor) else lam  # [B, 1] or float
    next_weights = torch.cat([weights[:, 1:], weights.new_zeros(weights.shape[0], 1)], dim=1)
    discount = gamma * lam_rows * next_weights  # [B, T], gamma * lambda * c_{t+1} at column t
    lengths = response_mask.sum(-1)
    max_length = int(lengths.max()) if lengths.numel() else 0
    return _reverse_discounted_cumsum(deltas, discount, max_length)


def _tensors(params: nn.Module | Iterable[Tensor]) -> list[Tensor]:
    return list(params.parameters()) if isinstance(params, nn.Module) else list(params)


@torch.no_grad()
def ewma_update(
    proximal_params: nn.Module | Iterable[Tensor], params: nn.Module | Iterable[Tensor], *, decay: float
) -> None:
    """PPO-EWMA's proximal policy, in place: ``theta_prox <- decay * theta_prox + (1 - decay) * theta``.

    Called after every optimizer step (Hilton, Cobbe, Schulman 2022, ``beta = decay``). ``decay = 0``
    copies the policy (PPO's ``pi_old`` after the step); ``decay = 1`` leaves the proximal policy as
    it is. Each proximal tensor keeps its dtype (the policy's values are cast to it). A module
    contributes its ``parameters()`` (in registration order, tied weights once); buffers are not
    averaged (they are not trained: rotary tables and the like are the same in both models).

    Args:
        proximal_params: the EWMA model (or its parameter tensors), modified in place.
        params: the policy (or its tensors), in the same order and shapes; not modified.
        decay: ``beta`` in ``[0, 1]``.

    Raises:
        ValueError: ``decay`` outside ``[0, 1]``, or the two hold different numbers or shapes of
        tensors.
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must be in [0, 1], got {decay}")
    proximal, policy = _tensors(proximal_params), _tensors(params)
    if len(proximal) != len(policy):
        raise ValueError(f"the proximal policy has {len(proximal)} tensors, the policy {len(policy)}")
    for index, (prox, theta) in enumerate(zip(proximal, policy, strict=True)):
        if prox.shape != theta.shape:
            raise ValueError(
                f"tensor {index}: proximal shape {tuple(prox.shape)} != policy shape {tuple(theta.shape)}"
            )
    for prox, theta in zip(proximal, policy, strict=True):
        if decay == 0.0:
            prox.copy_(theta)
        else:
            prox.mul_(decay).add_(theta.to(prox.dtype), alpha=1.0 - decay)
