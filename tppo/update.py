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
from transformers import PreTrainedModel

from tppo.algorithms import policy_loss, value_loss
from tppo.models import response_log_probs, response_values
from tppo.rollout.batch import RolloutBatch, pack_rows

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


def run_update(
    model: PreTrainedModel,
    optimizer: torch.optim.Optimizer,
    batch: RolloutBatch,
    *,
    mask_key: str,
    loss_fn: LossFn,
    schedule: UpdateSchedule,
    generator: torch.Generator,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> dict[str, float]:
    """Train ``model`` on the rows of ``batch`` that have tokens in ``batch.per_token[mask_key]``.

    Returns the mean of each statistic over minibatches, plus ``grad_norm``, ``updates`` (optimizer
    steps attempted) and ``skipped_updates`` (of those, skipped: a non-finite loss or gradient).
    """
    mask = batch.per_token[mask_key]
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    totals: dict[str, list[float]] = defaultdict(list)
    if len(rows) == 0:
        return {"updates": 0.0}
    model.train()
    for _ in range(schedule.epochs):
        shuffled = rows[torch.randperm(len(rows), generator=generator)]
        for minibatch in torch.tensor_split(shuffled, min(schedule.num_minibatches, len(rows))):
            stats = _minibatch_step(model, optimizer, batch, minibatch, mask_key, loss_fn, schedule)
            for key, value in stats.items():
                totals[key].append(value)
            if scheduler is not None:
                scheduler.step()
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
) -> dict[str, float]:
    token_count = float(batch.per_token[mask_key][rows].sum())
    optimizer.zero_grad(set_to_none=True)
    weighted: dict[str, float] = defaultdict(float)
    finite_loss = True
    for micro_rows in pack_rows(rows, batch.lengths, max_tokens=schedule.micro_batch_tokens):
        sub = batch.select(micro_rows)
        loss, stats = loss_fn(model, sub, token_count)
        finite_loss = finite_loss and bool(torch.isfinite(loss.detach()).all())
        loss.backward()
        share = float(sub.per_token[mask_key].sum()) / token_count
        for key, value in stats.items():
            weighted[key] += share * value
    params = [p for p in model.parameters() if p.grad is not None]
    max_norm = schedule.max_grad_norm if schedule.max_grad_norm is not None else math.inf
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    ok = finite_loss and math.isfinite(grad_norm)
    if ok:  # a non-finite loss or gradient would poison the weights (and Adam's moments): skip
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    weighted["grad_norm"] = grad_norm
    weighted["skipped_nonfinite"] = float(not ok)
    return dict(weighted)


def actor_loss_fn(
    *, temperature: float, clip_eps_low: float, clip_eps_high: float, dual_clip: float | None
) -> LossFn:
    """The clipped policy objective (paper eq. 1) on ``per_token['policy_mask']``."""

    def loss_fn(model: PreTrainedModel, sub: RolloutBatch, token_count: float) -> tuple[torch.Tensor, dict]:
        log_probs, entropy = response_log_probs(model, sub, temperature=temperature)
        mask = sub.per_token["policy_mask"]
        # Absent when the trainer skipped the recompute: with one epoch and one minibatch, this
        # forward pass runs on exactly the weights that generated, so pi_old == pi_theta here.
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
            "ratio_max": float(out.ratio_max),
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
        }
        return out.loss, stats

    return loss_fn
