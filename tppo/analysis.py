"""Statistics that separate methods: paired bootstrap CIs, time to a target, area under the curve.

Pure functions over plain Python numbers (no torch, no files), for the bench's comparison of each
method against PPO over seeds (issue: evidence that stands). Runs are *paired by seed*: seed ``i``
of a method and seed ``i`` of PPO start from the same base model and see the same prompt order,
so the per-seed difference removes what the two share, and the bootstrap resamples seeds, not runs.

Curves are evaluations on a wall-clock schedule: ``times[i]`` is the training time (seconds,
evaluation time excluded) at which accuracy ``accuracies[i]`` was measured; between two evaluations
the curve is the straight line through them.
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
from collections.abc import Callable, Sequence
from typing import NamedTuple


class BootstrapCI(NamedTuple):
    """A mean over seeds and its percentile bootstrap confidence interval."""

    mean: float
    """The mean of the per-seed statistic (difference or ratio) over the seeds given."""
    low: float
    """The lower end of the interval."""
    high: float
    """The upper end of the interval."""
    n: int
    """The number of seeds (pairs)."""
    confidence: float
    """The interval's nominal coverage, e.g. 0.95."""

    def as_dict(self) -> dict[str, float | list[float]]:
        """``{"mean": ..., "ci95": [low, high]}``, the shape ``summary.json`` keeps (key named by level)."""
        return {"mean": self.mean, f"ci{round(100 * self.confidence)}": [self.low, self.high]}


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (``0 <= q <= 1``) by linear interpolation between order statistics.

    Position ``q * (n - 1)`` in the sorted values (numpy's default, "linear").
    """
    position = q * (len(sorted_values) - 1)
    below = math.floor(position)
    above = min(below + 1, len(sorted_values) - 1)
    fraction = position - below
    return sorted_values[below] + fraction * (sorted_values[above] - sorted_values[below])


def _check_values(values: Sequence[float], name: str) -> list[float]:
    clean = [float(v) for v in values]
    if not clean:
        raise ValueError(f"{name}: need at least one value")
    if not all(math.isfinite(v) for v in clean):
        raise ValueError(f"{name}: every value must be finite, got {clean}")
    return clean


def bootstrap_mean_ci(
    values: Sequence[float], *, n_resamples: int = 10000, confidence: float = 0.95, seed: int = 0
) -> BootstrapCI:
    """The mean of ``values`` (one per seed) and its percentile bootstrap CI.

    Each of ``n_resamples`` resamples draws ``n`` values with replacement (``random.Random(seed)``,
    so the interval is reproducible) and takes their mean; the interval runs from the
    ``(1 - confidence) / 2`` to the ``(1 + confidence) / 2`` quantile of those means (linear
    interpolation). One value gives the interval ``[v, v]``: with a single seed nothing is known
    about the spread, and :func:`significant` of such an interval says nothing either.

    Raises:
        ValueError: no values, a value that is not finite, ``confidence`` outside ``(0, 1)`` or
        ``n_resamples < 1``.
    """
    clean = _check_values(values, "values")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    rng = random.Random(seed)
    n = len(clean)
    means = sorted(statistics.fmean(rng.choices(clean, k=n)) for _ in range(n_resamples))
    tail = (1.0 - confidence) / 2.0
    return BootstrapCI(
        mean=statistics.fmean(clean),
        low=_percentile(means, tail),
        high=_percentile(means, 1.0 - tail),
        n=n,
        confidence=confidence,
    )


def _check_pairs(a: Sequence[float], b: Sequence[float]) -> tuple[list[float], list[float]]:
    first, second = _check_values(a, "a"), _check_values(b, "b")
    if len(first) != len(second):
        raise ValueError(f"paired by seed: a has {len(first)} values, b has {len(second)}")
    return first, second


def paired_bootstrap_ci(
    a: Sequence[float],
    b: Sequence[float],
    *,
    n_resamples: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapCI:
    """Mean of the paired differences ``a_i - b_i`` and its percentile bootstrap CI.

    ``a[i]`` and ``b[i]`` belong to the same seed (e.g. a method's and PPO's held-out accuracy at the
    budget): the bootstrap resamples the pairs, so what the seed shares cancels. Resampling as in
    :func:`bootstrap_mean_ci`.

    Raises:
        ValueError: different lengths, no pairs, or a value that is not finite.
    """
    first, second = _check_pairs(a, b)
    differences = [x - y for x, y in zip(first, second, strict=True)]
    return bootstrap_mean_ci(differences, n_resamples=n_resamples, confidence=confidence, seed=seed)


def ratio_bootstrap_ci(
    numerator: Sequence[float],
    denominator: Sequence[float],
    *,
    n_resamples: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapCI:
    """Mean of the paired ratios ``numerator_i / denominator_i`` and its percentile bootstrap CI.

    For a speed-up: ``numerator`` = PPO's time to the target, ``denominator`` = the method's, seed by
    seed; a speed-up above 1 means the method got there first. The statistic is the mean of the
    per-seed ratios (the bench's ``speedup_to_target`` mean), resampled as in
    :func:`bootstrap_mean_ci`. Seeds that never reached the target have no time: leave both of the
    pair out before calling (and report how many were left out).

    Raises:
        ValueError: different lengths, no pairs, a value that is not finite, or a denominator that is
        not positive.
    """
    first, second = _check_pairs(numerator, denominator)
    if any(y <= 0 for y in second):
        raise ValueError(f"every denominator must be > 0, got {second}")
    ratios = [x / y for x, y in zip(first, second, strict=True)]
    return bootstrap_mean_ci(ratios, n_resamples=n_resamples, confidence=confidence, seed=seed)


def significant(ci: BootstrapCI | Sequence[float], null: float) -> bool:
    """True when the interval excludes ``null`` (0 for a difference, 1 for a ratio).

    ``ci``: a :class:`BootstrapCI` or a ``(low, high)`` pair. An interval that touches ``null`` at an
    end does not exclude it.
    """
    low, high = (ci.low, ci.high) if isinstance(ci, BootstrapCI) else (float(ci[0]), float(ci[1]))
    if low > high:
        raise ValueError(f"an interval needs low <= high, got [{low}, {high}]")
    return null < low or null > high


def _check_curve(times: Sequence[float], accuracies: Sequence[float]) -> tuple[list[float], list[float]]:
    t, acc = [float(x) for x in times], [float(x) for x in accuracies]
    if len(t) != len(acc):
        raise ValueError(f"times has {len(t)} entries, accuracies {len(acc)}")
    if not t:
        raise ValueError("need at least one evaluation")
    if any(later < earlier for earlier, later in itertools.pairwise(t)):
        raise ValueError(f"times must not decrease, got {t}")
    return t, acc


def time_to_target(times: Sequence[float], accuracies: Sequence[float], target: float) -> float | None:
    """The training time at which the accuracy curve first reaches ``target``; None if it never does.

    The curve is the evaluations joined by straight lines. If the first evaluation at or above
    ``target`` is evaluation ``i > 0``, the crossing is interpolated between evaluations ``i - 1``
    (below) and ``i``:

        t* = t_{i-1} + (target - acc_{i-1}) / (acc_i - acc_{i-1}) * (t_i - t_{i-1})

    If it is the first evaluation, ``times[0]``. Interpolating, rather than taking ``t_i``, keeps the
    answer from moving by a whole evaluation period when the crossing shifts slightly, so speed-ups
    do not jump with the evaluation schedule. Whether the base model's evaluation (at time 0) is in
    the schedule is the caller's choice; a target the base model already meets gives 0 and says
    nothing about training, so choose targets above it (the bench: one every PPO seed reaches).
    """
    t, acc = _check_curve(times, accuracies)
    for i, value in enumerate(acc):
        if value >= target:
            if i == 0:
                return t[0]
            fraction = (target - acc[i - 1]) / (value - acc[i - 1])
            return t[i - 1] + fraction * (t[i] - t[i - 1])
    return None


def area_under_curve(times: Sequence[float], accuracies: Sequence[float], *, budget: float) -> float:
    """The mean accuracy over training time ``[0, budget]``: the trapezoid area divided by ``budget``.

    The curve is the evaluations joined by straight lines, held at the first accuracy before the
    first evaluation and at the last accuracy after the last one, and cut at ``budget``
    (interpolated there). A constant accuracy ``a`` gives ``a``; a method that gets better sooner has
    a larger area at the same final accuracy.

    Raises:
        ValueError: ``budget <= 0``, a negative time, decreasing times, or mismatched lengths.
    """
    if not budget > 0:
        raise ValueError(f"budget must be > 0, got {budget}")
    t, acc = _check_curve(times, accuracies)
    if t[0] < 0:
        raise ValueError(f"times must be >= 0, got {t[0]}")
    points = [(0.0, acc[0]), *list(zip(t, acc, strict=True)), (max(t[-1], budget), acc[-1])]
    area = 0.0
    for (t0, a0), (t1, a1) in itertools.pairwise(points):
        if t0 >= budget or t1 <= t0:
            continue
        end = min(t1, budget)
        a_end = a0 + (a1 - a0) * (end - t0) / (t1 - t0)
        area += 0.5 * (a0 + a_end) * (end - t0)
    return area / budget


def vs_baseline(
    accuracy: Sequence[float],
    baseline_accuracy: Sequence[float],
    times_to_target: Sequence[float | None],
    baseline_times_to_target: Sequence[float | None],
    *,
    n_resamples: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, object]:
    """One method against the baseline (PPO), seed by seed: the ``vs_ppo`` entry of ``summary.json``.

    Args:
        accuracy, baseline_accuracy: held-out accuracy at the budget, one per seed, same seed order.
        times_to_target, baseline_times_to_target: seconds to the target (:func:`time_to_target`), None
            where the run never reached it.

    Returns:
        ``{"accuracy_diff_at_budget": {"mean", "ci95"}, "speedup_to_target": {"mean", "ci95"} or None,
        "significant": bool, "speedup_significant": bool, "speedup_pairs": int,
        "speedup_pairs_left_out": int}``. ``significant``: the accuracy difference's CI excludes 0;
        ``speedup_significant``: the speed-up's CI (``baseline_time / time``) excludes 1. The speed-up
        uses only the seeds where both runs reached the target; the others are counted in
        ``speedup_pairs_left_out`` (a method that misses the target on a seed where the baseline
        meets it is slower there, which the speed-up does not show: read the two together).
    """

    def resampled(ci: Callable[..., BootstrapCI], a: Sequence[float], b: Sequence[float]) -> BootstrapCI:
        return ci(a, b, n_resamples=n_resamples, confidence=confidence, seed=seed)

    accuracy_ci = resampled(paired_bootstrap_ci, accuracy, baseline_accuracy)
    if len(times_to_target) != len(baseline_times_to_target):
        raise ValueError("paired by seed: the two lists of times to target differ in length")
    pairs = [
        (float(base), float(mine))
        for mine, base in zip(times_to_target, baseline_times_to_target, strict=True)
        if mine is not None and base is not None
    ]
    speedup = resampled(ratio_bootstrap_ci, [b for b, _ in pairs], [m for _, m in pairs]) if pairs else None
    return {
        "accuracy_diff_at_budget": accuracy_ci.as_dict(),
        "speedup_to_target": speedup.as_dict() if speedup is not None else None,
        "significant": significant(accuracy_ci, 0.0),
        "speedup_significant": speedup is not None and significant(speedup, 1.0),
        "speedup_pairs": len(pairs),
        "speedup_pairs_left_out": len(times_to_target) - len(pairs),
    }
