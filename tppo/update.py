"""The update phase: minibatch gradient steps of one model on one step's tokens.

Actor and critic share this loop; each brings a loss function ``(model, sub_batch, token_count)
-> (loss, stats)``. Within a minibatch the loss is normalised by the minibatch's *global* token
count, so splitting it into micro-batches (or workers) changes nothing but memory.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.distributed.tensor import DTensor
from transformers import PreTrainedModel

from tppo.algorithms import decoupled_policy_loss, kl_k3, policy_loss, value_loss
from tppo.algorithms.losses import positive_lm_loss
from tppo.engines.types import SamplingParams
from tppo.models import response_log_probs, response_values
from tppo.rollout.batch import RolloutBatch, shard_packs

LossFn = Callable[[PreTrainedModel, RolloutBatch, float], tuple[torch.Tensor, dict[str, float]]]


@dataclass(frozen=True)
class UpdateSchedule:
    """How one model's update phase walks over the rows.

    Attributes:
        epochs: passes over the rows.
        num_minibatches: optimizer steps per pass (rows split evenly, shuffled per pass).
        micro_batch_tokens: token budget of one forward/backward (see :func:`pack_rows`).
        max_grad_norm: gradient-norm clip (``None``: off).
    """

    epochs: int = 1
    num_minibatches: int = 1
    micro_batch_tokens: int | None = None
    max_grad_norm: float | None = None


@dataclass(frozen=True)
class Shard:
    """Which piece of every minibatch this process trains on: rank ``rank`` of ``world_size``
    data-parallel training processes (``0`` of ``1`` in single-process mode).

    Every rank sees the whole batch and draws the same shuffles; it trains on its
    :func:`~tppo.algorithms.shard_rows` piece of each minibatch, and gradients are summed over ranks.
    """

    rank: int = 0
    world_size: int = 1


def run_update(
    model: PreTrainedModel,
    optimizer: torch.optim.Optimizer,
    batch: RolloutBatch,
    *,
    mask_key: str,
    loss_fn: LossFn,
    schedule: UpdateSchedule,
    generator: torch.Generator,
    shard: Shard = Shard(),
    weight_key: str | None = None,
    on_step: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Train ``model`` on the rows of ``batch`` that have tokens in ``batch.per_token[mask_key]``.

    Returns the mean of each statistic over minibatches, plus ``grad_norm``, ``updates`` (optimizer
    steps attempted) and ``skipped_updates`` (of those, skipped: a non-finite loss or gradient); the
    same on every rank: statistics are summed over ranks. ``weight_key``: a ``per_token`` tensor of
    token weights; the minibatch's denominator is then the weights' sum over its masked tokens.
    ``on_step``: called after every optimizer step taken (PPO-EWMA's average).
    """
    mask = batch.per_token[mask_key]
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    totals: dict[str, list[float]] = defaultdict(list)
    if len(rows) == 0:
        return {"updates": 0.0}
    model.train()
    for _ in range(schedule.epochs):
        shuffled = rows[torch.randperm(len(rows), generator=generator).to(rows.device)]
        for minibatch in torch.tensor_split(shuffled, min(schedule.num_minibatches, len(rows))):
            stats = _minibatch_step(
                model, optimizer, batch, minibatch, (mask_key, weight_key), loss_fn, schedule, shard
            )
            if on_step is not None and not stats["skipped_nonfinite"]:
                on_step()
            for key, value in stats.items():
                totals[key].append(value)
    out = {key: sum(values) / len(values) for key, values in totals.items()}
    out["updates"] = float(len(totals["grad_norm"]))
    out["skipped_updates"] = float(sum(totals["skipped_nonfinite"]))
    return out


def _minibatch_step(
    model: PreTrainedModel,
    optimizer: torch.optim.Optimizer,
    batch: RolloutBatch,
    rows: torch.Tensor,
    keys: tuple[str, str | None],
    loss_fn: LossFn,
    schedule: UpdateSchedule,
    shard: Shard,
) -> dict[str, float]:
    mask_key, weight_key = keys
    token_count = _token_count(batch, rows, mask_key, weight_key)  # the whole minibatch's, all ranks
    optimizer.zero_grad(set_to_none=True)
    weighted: dict[str, float] = defaultdict(float)
    nonfinite_loss = False
    packs, padding = shard_packs(
        rows,
        batch.lengths,
        max_tokens=schedule.micro_batch_tokens,
        rank=shard.rank,
        world_size=shard.world_size,
    )
    for micro_rows in packs:
        sub = batch.select(micro_rows)
        loss, stats = loss_fn(model, sub, token_count)
        nonfinite_loss = nonfinite_loss or not bool(torch.isfinite(loss.detach()).all())
        loss.backward()
        share = _token_count(sub, None, mask_key, weight_key) / token_count
        for key, value in stats.items():
            weighted[key] += share * value
    for _ in range(padding):  # an empty pass: keeps this rank's collectives in step with the others
        loss, stats = loss_fn(model, batch.select(rows[:1]), token_count)
        (loss * 0.0).backward()
        for key in stats:
            weighted[key] += 0.0
    weighted["nonfinite_loss"] = float(nonfinite_loss)
    if shard.world_size > 1:  # (every rank then takes the same decision below)
        weighted = _sum_over_ranks(weighted, device=batch.input_ids.device)
    grad_norm = clip_gradients(model, schedule.max_grad_norm)
    ok = weighted.pop("nonfinite_loss") == 0 and math.isfinite(grad_norm)
    if ok:  # a non-finite loss or gradient would poison the weights (and Adam's moments): skip
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    weighted["grad_norm"] = grad_norm
    weighted["skipped_nonfinite"] = float(not ok)
    return dict(weighted)


def _token_count(
    batch: RolloutBatch, rows: torch.Tensor | None, mask_key: str, weight_key: str | None
) -> float:
    """Masked tokens of ``rows`` (all rows: ``None``), or their summed weights with ``weight_key``."""
    mask = batch.per_token[mask_key] if rows is None else batch.per_token[mask_key][rows]
    if weight_key is None:
        return float(mask.sum())
    weights = batch.per_token[weight_key] if rows is None else batch.per_token[weight_key][rows]
    return float(torch.where(mask, weights, 0.0).sum())


def _sum_over_ranks(stats: dict[str, float], device: torch.device) -> dict[str, float]:
    """Each statistic summed over the ranks of the default process group (same keys on every rank)."""
    keys = sorted(stats)
    values = torch.tensor([stats[k] for k in keys], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(values)
    return dict(zip(keys, values.tolist(), strict=True))


def clip_gradients(model: torch.nn.Module, max_norm: float | None) -> float:
    """Scale the gradients to a total 2-norm of at most ``max_norm`` (``None``: only measure it).

    Returns the norm before clipping, over *all* the model's gradients: with parameters sharded by
    FSDP (``DTensor`` gradients) the shards' norms are combined across ranks first.
    """
    params = [p for p in model.parameters() if p.grad is not None]
    total = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    if isinstance(total, DTensor):
        total = total.full_tensor()
    if max_norm is not None:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return float(total)


Surrogate = Callable[[torch.Tensor, RolloutBatch, float], Any]
"""A policy objective ``(log_probs, sub_batch, token_count) -> PolicyLossOutput``-like NamedTuple
(``loss`` first, then detached statistics) on ``sub_batch.per_token['policy_mask']``."""


def weighted_advantages(sub: RolloutBatch) -> torch.Tensor:
    """The batch's advantages, times ``per_token['token_weights']`` when present. The clipped
    objectives are positively homogeneous in ``A``, so this weighs each token's loss by its weight
    (the loss aggregation of :func:`~tppo.algorithms.sequence_token_weights`)."""
    advantages = sub.per_token["advantages"]
    weights = sub.per_token.get("token_weights")
    return advantages if weights is None else advantages * weights


def old_log_probs_of(sub: RolloutBatch, log_probs: torch.Tensor) -> torch.Tensor:
    """``old_log_probs``; absent only when old_forward skipped the recompute (one epoch, one
    minibatch): this forward pass then runs on exactly the weights ``pi_old``."""
    return sub.per_token.get("old_log_probs", log_probs.detach())


def clipped_surrogate(*, clip_eps_low: float, clip_eps_high: float, dual_clip: float | None) -> Surrogate:
    """The clipped objective (paper eq. 1) around ``pi_old``: :func:`~tppo.algorithms.policy_loss`."""

    def surrogate(log_probs: torch.Tensor, sub: RolloutBatch, token_count: float) -> Any:
        return policy_loss(
            log_probs,
            old_log_probs_of(sub, log_probs),
            weighted_advantages(sub),
            sub.per_token["policy_mask"],
            clip_eps_low=clip_eps_low,
            clip_eps_high=clip_eps_high,
            dual_clip=dual_clip,
            token_count=token_count,
        )

    return surrogate


LogProbSource = Callable[[RolloutBatch, torch.Tensor], torch.Tensor]
"""Where a surrogate takes a policy's log-probs from: ``(sub_batch, log_probs) -> Tensor[B, T]``."""


def engine_log_probs_of(sub: RolloutBatch, log_probs: torch.Tensor) -> torch.Tensor:
    """The engine's log-prob of each token, recorded at the step that generated it."""
    return sub.engine_log_probs


def ewma_log_probs_of(sub: RolloutBatch, log_probs: torch.Tensor) -> torch.Tensor:
    """PPO-EWMA's proximal log-probs (``per_token['proximal_log_probs']``, computed once at the
    step's start)."""
    return sub.per_token["proximal_log_probs"]


def decoupled_surrogate(
    *,
    clip_eps_low: float,
    clip_eps_high: float,
    dual_clip: float | None,
    is_cap: float | None,
    proximal: LogProbSource = old_log_probs_of,
    behaviour: LogProbSource = engine_log_probs_of,
) -> Surrogate:
    """:func:`~tppo.algorithms.decoupled_policy_loss` with the proximal and behaviour log-probs
    taken from ``proximal`` and ``behaviour``. The defaults are partial rollout's: behaviour = the
    engine's log-probs, proximal = ``pi_old`` at the training step. PPO-EWMA passes
    ``proximal=ewma_log_probs_of, behaviour=old_log_probs_of`` (synchronous generation: the tokens
    come from ``pi_old``)."""

    def surrogate(log_probs: torch.Tensor, sub: RolloutBatch, token_count: float) -> Any:
        return decoupled_policy_loss(
            log_probs,
            proximal(sub, log_probs),
            behaviour(sub, log_probs),
            weighted_advantages(sub),
            sub.per_token["policy_mask"],
            clip_eps_low=clip_eps_low,
            clip_eps_high=clip_eps_high,
            is_cap=is_cap,
            dual_clip=dual_clip,
            token_count=token_count,
        )

    return surrogate


def actor_loss_fn(
    *, sampling: SamplingParams, surrogate: Surrogate, kl_coef: float = 0.0, positive_lm_coef: float = 0.0
) -> LossFn:
    """The method's policy objective ``surrogate`` on ``per_token['policy_mask']``, with log-probs
    under the rollout's sampling distribution ``sampling`` (the engines' log-prob contract); plus
    ``kl_coef`` times the k3 KL to the reference policy when ``reference_log_probs`` are present,
    and ``positive_lm_coef`` times VAPO's positive-example NLL on ``per_token['positive_mask']``."""

    def loss_fn(model: PreTrainedModel, sub: RolloutBatch, token_count: float) -> tuple[torch.Tensor, dict]:
        log_probs, entropy = response_log_probs(model, sub, sampling=sampling)
        mask = sub.per_token["policy_mask"]
        out = surrogate(log_probs, sub, token_count)
        loss = out.loss
        to_piece_mean = token_count / max(float(mask.sum()), 1.0)  # this piece's own token mean
        stats = {"loss": float(out.loss.detach()) * to_piece_mean}
        stats.update({k: float(v) for k, v in out._asdict().items() if k != "loss"})
        if kl_coef > 0 and "reference_log_probs" in sub.per_token:
            kl = kl_k3(log_probs, sub.per_token["reference_log_probs"], mask, token_count=token_count)
            loss = loss + kl_coef * kl
            stats["kl_ref"] = float(kl.detach()) * to_piece_mean
        if positive_lm_coef > 0 and "positive_mask" in sub.per_token:
            positive = sub.per_token["positive_mask"]
            lm = positive_lm_loss(log_probs, positive.any(dim=1).float(), positive, token_count=token_count)
            loss = loss + positive_lm_coef * lm
            stats["positive_lm_loss"] = float(lm.detach()) * to_piece_mean
        with torch.no_grad():
            stats["entropy"] = float(torch.where(mask, entropy, 0.0).sum() / mask.sum().clamp(min=1))
        return loss, stats

    return loss_fn


def critic_loss_fn(*, value_clip_low: float, value_clip_high: float) -> LossFn:
    """The clipped Monte-Carlo value loss (paper eqs. 4-5) on ``per_token['value_mask']``."""

    def loss_fn(model: PreTrainedModel, sub: RolloutBatch, token_count: float) -> tuple[torch.Tensor, dict]:
        values = response_values(model, sub)
        mask = sub.per_token["value_mask"]
        out = value_loss(
            values,
            sub.per_token["old_values"],
            sub.per_token["returns"],
            mask,
            value_clip_low=value_clip_low,
            value_clip_high=value_clip_high,
            token_count=token_count,
        )
        stats = {
            "loss": float(out.loss.detach()) * token_count / max(float(mask.sum()), 1.0),
            "clipfrac": float(out.clipfrac),
            "mean_abs_error": float(out.mean_abs_error),
            "values_mean": float(out.values_mean),
            "returns_mean": float(out.returns_mean),
        }
        return out.loss, stats

    return loss_fn
