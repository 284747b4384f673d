"""Learning-rate schedules as pure functions of the step and of the progress through the run."""

from __future__ import annotations

import math
from typing import Literal

LRSchedule = Literal["constant", "linear", "cosine"]


def lr_multiplier(
    step: int,
    *,
    warmup_steps: int,
    progress: float,
    schedule: LRSchedule = "cosine",
    min_ratio: float = 0.0,
) -> float:
    """The factor on the base learning rate at ``step`` (0-based).

    A linear warm-up from ``1 / warmup_steps`` to 1 over the first ``warmup_steps`` steps, then
    ``schedule`` from 1 down to ``min_ratio`` as ``progress`` (the fraction of the run after the
    warm-up, clamped to [0, 1]) goes from 0 to 1.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    p = min(1.0, max(0.0, progress))
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return min_ratio + (1.0 - min_ratio) * (1.0 - p)
    if schedule == "cosine":
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))
    raise ValueError(f"unknown learning-rate schedule {schedule!r}; use constant, linear or cosine")


def run_progress(
    step: int,
    *,
    warmup_steps: int,
    total_steps: int | None,
    elapsed_s: float = 0.0,
    max_seconds: float | None = None,
) -> float:
    """How far a run is after its warm-up: the larger of its step and wall-clock fractions."""
    fractions = [0.0]
    if total_steps is not None:
        fractions.append((step - warmup_steps) / max(1, total_steps - warmup_steps))
    if max_seconds is not None:
        fractions.append(elapsed_s / max_seconds)
    return min(1.0, max(fractions))


def expected_total_steps(step: int, *, total_steps: int, elapsed_s: float, max_seconds: float | None) -> int:
    """The step count a run will reach: ``total_steps``, or fewer if the wall-clock budget ends it
    first at the pace so far (for the progress bar's length and its time estimate)."""
    if max_seconds is None or step <= 0 or elapsed_s <= 0:
        return total_steps
    return max(step, min(total_steps, math.ceil(step * max_seconds / elapsed_s)))


def eval_due(
    step: int,
    elapsed_s: float,
    last_eval_elapsed_s: float | None,
    every_steps: int,
    every_seconds: float | None,
    final: bool,
) -> bool:
    """Whether to evaluate after ``step`` steps and ``elapsed_s`` training seconds (evaluation time
    excluded), the last evaluation made at ``last_eval_elapsed_s`` (``None``: none yet).

    Due at the end (``final``) when any schedule is on, every ``every_steps`` steps (0: off), and
    whenever at least ``every_seconds`` training seconds passed since the last evaluation (``None``:
    off; with no evaluation yet, at once). The two schedules work side by side."""
    if not every_steps and every_seconds is None:
        return False
    if final or (every_steps and step % every_steps == 0):
        return True
    if every_seconds is None:
        return False
    return last_eval_elapsed_s is None or elapsed_s - last_eval_elapsed_s >= every_seconds
