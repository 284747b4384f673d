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

import torch
from torch.distributed.tensor import DTensor
from transformers import PreTrainedModel

from tppo.algorithms import policy_loss, value_loss
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
) -> dict[str, float]:
    """Train ``model`` on the rows of ``batch`` that have tokens in ``batch.per_token[mask_key]``.

    Returns the mean of each statistic over minibatches, plus ``grad_norm``, ``updates`` (optimizer
    steps attempted) and ``skipped_updates`` (of those, skipped: a non-finite loss or gradient); the
    same on every rank: statistics are summed over ranks.
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
            stats = _minibatch_step(model, optimizer, batch, minibatch, mask_key, loss_fn, schedule, shard)
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
    mask_key: str,
    loss_fn: LossFn,
    schedule: UpdateSchedule,
    shard: Shard,
) -> dict[str, float]:
    token_count = float(batch.per_token[mask_key][rows].sum())  # the whole minibatch's, all ranks
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
        share = float(sub.per_token[mask_key].sum()) / token_count
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


def actor_loss_fn(
    *, sampling: SamplingParams, clip_eps_low: float, clip_eps_high: float, dual_clip: float | None
) -> LossFn:
    """The clipped policy objective (paper eq. 1) on ``per_token['policy_mask']``, with log-probs
    under the rollout's sampling distribution ``sampling`` (the engines' log-prob contract)."""

    def loss_fn(model: PreTrainedModel, sub: RolloutBatch, token_count: float) -> tuple[torch.Tensor, dict]:
        log_probs, entropy = response_log_probs(model, sub, sampling=sampling)
        mask = sub.per_token["policy_mask"]
        # Absent only when old_forward skipped the recompute (recompute on, one epoch, one
        # minibatch): this forward pass then runs on exactly the weights that generated.
        old_log_probs = sub.per_token.get("old_log_probs", log_probs.detach())
        out = policy_loss(
            log_probs,
            old_log_probs,
            sub.per_token["advantages"],
            mask,
            clip_eps_low=clip_eps_low,
            clip_eps_high=clip_eps_high,
            dual_clip=dual_clip,
            token_count=token_count,
        )
        with torch.no_grad():
            ent = float(torch.where(mask, entropy, 0.0).sum() / mask.sum().clamp(min=1))
        stats = {
            "loss": float(out.loss.detach()) * token_count / max(float(mask.sum()), 1.0),
            "clipfrac": float(out.clipfrac),
            "clipfrac_upper": float(out.clipfrac_upper),
            "clipfrac_lower": float(out.clipfrac_lower),
            "approx_kl": float(out.approx_kl),
            "ratio_mean": float(out.ratio_mean),
            "ratio_max": float(out.ratio_max),
            "dual_clipfrac": float(out.dual_clipfrac),
            "entropy": ent,
        }
        return out.loss, stats

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
