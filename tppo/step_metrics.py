"""The metrics of one training step, as pure functions of what the step produced.

The trainer runs a step's phases and hands the results here: the collated batch (with its
per-token tensors), the slots retired at the end of the step, the scores, the engine's counters
and the two updates' statistics. Nothing here reads a trainer, a config or a clock.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from tppo.algorithms import explained_variance, masked_mean, select_tokens
from tppo.diagnostics import (
    bootstrap_errors,
    log_prob_gap,
    policy_versions,
    stale_token_fraction,
    staleness_stats,
    summarize_errors,
    tail_advantage_stats,
    token_staleness,
)
from tppo.engines.types import LENGTH, EngineStats
from tppo.rollout.batch import RolloutBatch
from tppo.rollout.slot_pool import Slot
from tppo.roofline import ModelShape, rollout_roofline_metrics

DIAGNOSTIC_TAIL = 8
"""Tokens at each window edge whose advantages ``diagnostics/tail_adv_*`` report when
``algorithm.policy_skip_tail`` is 0 (with it set, the tail is what it skips)."""


def step_metrics(
    batch: RolloutBatch | None,
    retired: Sequence[Slot],
    *,
    finished: torch.Tensor,
    active_scores: torch.Tensor,
    step: int,
    new_prompts: int,
    prompts_consumed: int,
    num_slots: int,
    engine: EngineStats,
    actor: dict[str, float],
    critic: dict[str, float],
    gamma: float,
    policy_skip_tail: int,
    recomputed_old_log_probs: bool = True,
    refilled: int = 0,
    ahead: bool = False,
    decode_shape: ModelShape | None = None,
) -> dict[str, Any]:
    """Step ``step``'s rollout, token, reward, length, advantage and value figures, the updates'
    statistics (``actor/*``, ``critic/*``) and the truncation diagnostics (``diagnostics/*``).

    Args:
        batch: the step's training batch (``None``: nothing trained), ``per_token`` holding
            ``policy_mask`` and ``raw_advantages``, and with a critic ``value_mask``, ``returns``
            and ``old_values``.
        retired: the slots that finished in this step, in slot order, each with its ``score``.
        finished: ``Tensor[A]`` bool, which of the step's ``A`` responses finished (the slots
            occupied after the fill, then the refills).
        active_scores: ``Tensor[A]`` their outcome rewards (0 for unfinished ones).
        new_prompts: prompts the step's fill took.
        prompts_consumed: the prompt stream's position after the step.
        num_slots: ``K``.
        engine: the rollout engine's counters of this step.
        actor, critic: the two updates' statistics (``critic`` empty without a value model).
        gamma: the discount (bootstrap errors compare with discounted rewards).
        policy_skip_tail: ``algorithm.policy_skip_tail`` (the diagnosed window-edge tail).
        recomputed_old_log_probs: whether ``old_log_probs`` were recomputed by the trainer (then
            ``rollout/logprob_gap_abs_mean`` compares them with the engine's on this step's tokens).
        refilled: prompts that entered a slot within the step (``rollout.refill_within_step``).
        ahead: windows are generated ahead, one policy version stale (``rollout.overlap_generation``).
        decode_shape: the policy's shape: with it, the rollout's roofline figures
            (``rollout/decode_flops``, ``rollout/decode_bytes``, ``rollout/flops_per_byte``).
    """
    lengths = [len(s.response_ids) for s in retired]
    metrics: dict[str, Any] = {
        "step": step,
        "rollout/new_prompts": new_prompts,
        "rollout/carried": len(finished) - new_prompts - refilled,
        "rollout/refilled": refilled,
        "rollout/finished": int(finished.sum()),
        "rollout/truncated": sum(s.finish == LENGTH for s in retired),
        "rollout/generated_tokens": engine.generated_tokens,
        "rollout/decode_steps": engine.decode_steps,
        "rollout/slot_utilization": engine.generated_tokens / max(num_slots * engine.decode_steps, 1),
        "rollout/context_tokens": engine.extra.get("context_tokens", math.nan),
        # the engine's own clock: the window's generation, in the step or ahead of it (overlap)
        "time/engine_generate_s": engine.extra.get("generate_s", math.nan),
        "rollout/prompts_consumed": prompts_consumed,
        "reward/mean": float(active_scores[finished.to(active_scores.device)].mean())
        if finished.any()
        else math.nan,
        "response_length/mean": sum(lengths) / len(lengths) if lengths else math.nan,
        "response_length/max": max(lengths) if lengths else math.nan,
        "response_length/values": lengths,
    }
    metrics.update({k: v for k, v in engine.extra.items() if k.startswith("faults/")})
    if decode_shape is not None:
        metrics.update(
            rollout_roofline_metrics(
                decode_shape,
                decode_steps=engine.decode_steps,
                row_steps=engine.generated_tokens,
                context_tokens=engine.extra.get("context_tokens", math.nan),
            )
        )
    metrics.update(
        training_metrics(batch, retired, step=step, gamma=gamma, policy_skip_tail=policy_skip_tail)
    )
    metrics.update({f"actor/{k}": v for k, v in actor.items()})
    metrics.update({f"critic/{k}": v for k, v in critic.items()})
    if batch is not None:
        staleness = token_staleness(batch.token_steps, step=step, ahead=ahead)
        metrics.update(staleness_stats(staleness, batch.per_token["policy_mask"]))
    if batch is not None and recomputed_old_log_probs and "old_log_probs" in batch.per_token:
        # this step's tokens: the engine sampled them with the weights old_forward used
        this_step = batch.response_mask & (batch.token_steps == step)
        metrics["rollout/logprob_gap_abs_mean"] = log_prob_gap(
            batch.engine_log_probs, batch.per_token["old_log_probs"], this_step
        )
    return metrics


def training_metrics(
    batch: RolloutBatch | None,
    retired: Sequence[Slot],
    *,
    step: int,
    gamma: float,
    policy_skip_tail: int,
) -> dict[str, Any]:
    """Token counts, advantages, and (with a critic) explained variance and truncation diagnostics
    of the step's training batch; without a critic, the trained responses' policy versions."""
    if batch is None:
        return {"tokens/policy": 0, "tokens/value": 0}
    per_token = batch.per_token
    out: dict[str, Any] = {
        "tokens/policy": int(per_token["policy_mask"].sum()),
        "tokens/value": int(per_token["value_mask"].sum()) if "value_mask" in per_token else 0,
        "advantages/raw_mean": float(masked_mean(per_token["raw_advantages"], per_token["policy_mask"])),
    }
    if "value_mask" not in per_token:  # no critic: a response trains on all its tokens, once
        versions = [float(v) for v in policy_versions_per_row(batch)]
        out["diagnostics/policy_versions_mean"] = sum(versions) / len(versions)
        out["diagnostics/stale_policy_token_frac"] = stale_token_fraction(
            batch.token_steps, per_token["policy_mask"], step=step
        )
        return out
    out["critic/explained_variance"] = (
        float(explained_variance(per_token["old_values"], per_token["returns"], per_token["value_mask"]))
        if batch.is_finished.any()
        else math.nan
    )
    out.update(
        truncation_diagnostics(batch, retired, step=step, gamma=gamma, policy_skip_tail=policy_skip_tail)
    )
    return out


def policy_versions_per_row(batch: RolloutBatch) -> list[int]:
    """Distinct generating steps of each row's response tokens."""
    return [policy_versions([int(t) for t in row[row >= 0]]) for row in batch.token_steps]


def truncation_diagnostics(
    batch: RolloutBatch,
    retired: Sequence[Slot],
    *,
    step: int,
    gamma: float,
    policy_skip_tail: int,
) -> dict[str, float]:
    """Truncation-bias diagnostics of step ``step`` (see :mod:`tppo.diagnostics`): the bootstrap
    errors of the responses that finished (each against its ``score``), their policy versions, the
    stale share of the value tokens, and the advantages of the window-edge tails against the rest."""
    per_token = batch.per_token
    errors: list[float] = []
    for slot in retired:
        if slot.score is None:
            raise ValueError(f"prompt draw {slot.prompt.uid}: a finished response without a score")
        errors += bootstrap_errors(
            list(zip(slot.bootstrap_positions, slot.bootstrap_values, strict=True)),
            response_length=len(slot.response_ids),
            reward=slot.score,
            gamma=gamma,
        )
    summary = summarize_errors(errors)
    versions = [policy_versions(s.token_steps) for s in retired]
    out = {
        "diagnostics/bootstrap_error_abs": summary["abs"],
        "diagnostics/bootstrap_error_signed": summary["signed"],
        "diagnostics/bootstrap_edges": float(len(errors)),
        "diagnostics/policy_versions_mean": sum(versions) / len(versions) if versions else math.nan,
        "diagnostics/stale_value_token_frac": stale_token_fraction(
            batch.token_steps, per_token["value_mask"], step=step
        ),
    }
    # the tail: the tokens policy_skip_tail leaves out (the last DIAGNOSTIC_TAIL when it is 0)
    tail = ~select_tokens(
        batch.token_steps,
        batch.response_mask,
        batch.is_finished,
        step=step,
        policy_skip_tail=policy_skip_tail or DIAGNOSTIC_TAIL,
    ).policy_mask
    tails = tail_advantage_stats(
        per_token["raw_advantages"], batch.response_mask, batch.token_steps, tail, step=step
    )
    out.update({f"diagnostics/{k}": v for k, v in tails.items()})
    return out


def worker_metrics(owners: Sequence[int], active: Sequence[Slot], step: int) -> dict[str, int]:
    """With several rollout workers (``owners[i]``: the worker that continued ``active[i]``): how
    many carried-over responses each one continued in step ``step``; nothing with one worker."""
    if max(owners, default=0) == 0:
        return {}
    carried = [0] * (max(owners) + 1)
    for owner, slot in zip(owners, active, strict=True):
        carried[owner] += slot.start_step < step
    return {f"rollout/carried_worker{i}": n for i, n in enumerate(carried)}


def headline(metrics: dict[str, Any], last_eval: float | None) -> dict[str, str]:
    """The progress bar's figures: the step's reward, carried responses, seconds, last accuracy."""
    out = {
        "reward": f"{metrics['reward/mean']:.3f}",
        "carried": str(metrics["rollout/carried"]),
        "step_s": f"{metrics['time/step_s']:.1f}",
    }
    if last_eval is not None:
        out["eval_acc"] = f"{last_eval:.3f}"
    return out
