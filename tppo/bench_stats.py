"""Paired comparisons over seeds: bootstrap confidence intervals and accuracy-vs-time figures.

Every method of a bench runs once per seed from the same base model and prompt order, so the run
of a method and the baseline's run of the same seed form a pair, and what varies between seeds is
noise the pairing cancels. The functions here are pure (numbers in, numbers out):

* :func:`time_to_target`, :func:`accuracy_at_budget`, :func:`area_under_curve`: figures of one
  run's held-out accuracy curve, given as evaluation times (training wall-clock seconds, the
  evaluation itself excluded) and the accuracy each evaluation measured;
* :func:`paired_bootstrap_ci`, :func:`ratio_bootstrap_ci`: percentile bootstrap intervals over
  seeds, of a mean paired difference and of a ratio of means;
* :func:`compare_to_baseline`: all of them for every method against the baseline (PPO).

A curve is a pair of sequences ``(times, accuracies)`` of the same length, times strictly
increasing and accuracies finite; anything else raises :class:`ValueError` naming the argument.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

Curve = tuple[Sequence[float], Sequence[float]]
"""``(times, accuracies)``: evaluation times in training seconds and the accuracies measured."""

MIN_SEEDS_FOR_SIGNIFICANCE = 2
"""A comparison over fewer paired seeds is never ``significant``: one pair has no spread."""


# ---------------------------------------------------------------------------- bootstrap intervals
def _check_resampling(confidence: float, num_resamples: int) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: must be in (0, 1), got {confidence}")
    if num_resamples < 1:
        raise ValueError(f"num_resamples: must be >= 1, got {num_resamples}")


def _finite_array(name: str, values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{name}: must be a flat sequence of numbers")
    if array.size == 0:
        raise ValueError(f"{name}: is empty; need at least one value")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ValueError(f"{name}[{bad[0]}]: must be a finite number, got {array[bad[0]]}")
    return array


def _resample_indices(n: int, num_resamples: int, seed: int) -> np.ndarray:
    """``num_resamples`` rows of ``n`` indices drawn with replacement (seeds resampled as pairs)."""
    return np.random.default_rng(seed).integers(0, n, size=(num_resamples, n))


def _percentiles(statistics: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(statistics, [tail, 1.0 - tail])
    return float(low), float(high)


def paired_bootstrap_ci(
    differences: Sequence[float], *, confidence: float = 0.95, num_resamples: int = 10000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of per-seed paired differences with a percentile bootstrap interval: ``(mean, lo, hi)``.

    The seeds are resampled with replacement ``num_resamples`` times (a NumPy generator seeded
    with ``seed``: the same inputs give the same interval); ``lo`` and ``hi`` are the
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the resampled means (linear
    interpolation between order statistics). With one seed there is nothing to resample:
    ``lo = hi = mean``. The percentile bootstrap is narrow for few seeds (with two it spans at most
    the two differences), so read it with the number of seeds.

    Raises:
        ValueError: ``differences`` is empty or holds a non-finite value; ``confidence`` is not in
            (0, 1); ``num_resamples`` < 1.
    """
    _check_resampling(confidence, num_resamples)
    values = _finite_array("differences", differences)
    mean = float(values.mean())
    if values.size == 1:
        return mean, mean, mean
    means = values[_resample_indices(values.size, num_resamples, seed)].mean(axis=1)
    low, high = _percentiles(means, confidence)
    return mean, low, high


def _times(name: str, values: Sequence[float | None]) -> np.ndarray:
    """Positive times, ``None`` or ``inf`` (never reached) as ``inf``."""
    out = np.array([math.inf if v is None else float(v) for v in values], dtype=float)
    bad = np.flatnonzero(np.isnan(out) | (out <= 0))
    if bad.size:
        raise ValueError(f"{name}[{bad[0]}]: must be > 0, None or inf, got {values[bad[0]]}")
    return out


def ratio_bootstrap_ci(
    numerators: Sequence[float | None],
    denominators: Sequence[float | None],
    *,
    confidence: float = 0.95,
    num_resamples: int = 10000,
    seed: int = 0,
) -> tuple[float, float, float] | None:
    """``mean(numerators) / mean(denominators)`` with a paired percentile bootstrap interval.

    For a speed-up, ``numerators[i]`` is the baseline's time to the target on seed ``i`` and
    ``denominators[i]`` the method's on the same seed; each resample draws seeds with replacement
    and keeps the pairs together. Returns ``(ratio, lo, hi)`` (one pair: ``lo = hi = ratio``), or
    ``None`` when no pair is left.

    A run that never reaches the target gives ``None`` (or ``inf``):

    * baseline never reached (numerator): the pair is left out; a target the baseline does not
      reach says nothing about how fast it gets there;
    * method never reached (denominator): its time is infinite, so the ratio of any resample that
      draws that seed is 0 (the method is infinitely slower), and so is the point estimate.

    Raises:
        ValueError: lengths differ, a time is <= 0 or NaN, or the resampling arguments are bad
            (as in :func:`paired_bootstrap_ci`).
    """
    _check_resampling(confidence, num_resamples)
    if len(numerators) != len(denominators):
        raise ValueError(
            f"numerators and denominators: lengths differ ({len(numerators)} vs {len(denominators)})"
        )
    top, bottom = _times("numerators", numerators), _times("denominators", denominators)
    kept = np.isfinite(top)
    top, bottom = top[kept], bottom[kept]
    if top.size == 0:
        return None
    ratio = float(top.mean() / bottom.mean())
    if top.size == 1:
        return ratio, ratio, ratio
    indices = _resample_indices(top.size, num_resamples, seed)
    ratios = top[indices].mean(axis=1) / bottom[indices].mean(axis=1)
    low, high = _percentiles(ratios, confidence)
    return ratio, low, high


# ---------------------------------------------------------------------------- one run's curve
def _curve(times: Sequence[float], accuracies: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    t, a = np.asarray(times, dtype=float), np.asarray(accuracies, dtype=float)
    if t.ndim != 1 or a.ndim != 1 or t.size != a.size:
        raise ValueError(f"times and accuracies: must be flat and of one length ({t.size} vs {a.size})")
    for name, values in (("times", t), ("accuracies", a)):
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise ValueError(f"{name}[{bad[0]}]: must be a finite number, got {values[bad[0]]}")
    if t.size and t[0] < 0:
        raise ValueError(f"times[0]: must be >= 0, got {t[0]}")
    back = np.flatnonzero(np.diff(t) <= 0)
    if back.size:
        i = back[0] + 1
        raise ValueError(f"times[{i}]: must be after times[{i - 1}] ({t[i]} <= {t[i - 1]})")
    return t, a


def _check_budget(budget_s: float) -> None:
    if not (math.isfinite(budget_s) and budget_s > 0):
        raise ValueError(f"budget_s: must be a finite number > 0, got {budget_s}")


def time_to_target(times: Sequence[float], accuracies: Sequence[float], target: float) -> float | None:
    """The time of the first evaluation whose accuracy is ``>= target``; ``None`` if none is.

    Accuracy is known only where it was measured: a curve that crosses the target between two
    evaluations reaches it at the later one (no interpolation)."""
    t, a = _curve(times, accuracies)
    hits = np.flatnonzero(a >= target)
    return float(t[hits[0]]) if hits.size else None


def accuracy_at_budget(times: Sequence[float], accuracies: Sequence[float], budget_s: float) -> float | None:
    """The accuracy of the last evaluation at or before ``budget_s``; ``None`` if none is."""
    _check_budget(budget_s)
    t, a = _curve(times, accuracies)
    before = np.flatnonzero(t <= budget_s)
    return float(a[before[-1]]) if before.size else None


def area_under_curve(times: Sequence[float], accuracies: Sequence[float], *, budget_s: float) -> float:
    """Average accuracy over ``[0, budget_s]``: the trapezoid area under the curve over the budget.

    Between evaluations the curve is linear; before the first one it is held at the first accuracy
    and after the last one at the last accuracy; an evaluation after the budget only sets the
    curve's value at the budget (by linear interpolation). A curve that is constant at ``c`` gives
    ``c``.

    Raises:
        ValueError: no evaluation, a bad curve, or ``budget_s`` not > 0.
    """
    _check_budget(budget_s)
    t, a = _curve(times, accuracies)
    if t.size == 0:
        raise ValueError("times and accuracies: are empty; need at least one evaluation")
    grid = np.concatenate(([0.0], t[(t > 0) & (t < budget_s)], [budget_s]))
    values = np.interp(grid, t, a)  # held constant outside [t[0], t[-1]]
    area = float(np.sum((values[1:] + values[:-1]) / 2.0 * np.diff(grid)))
    return area / budget_s


# ---------------------------------------------------------------------------- methods vs baseline
def trained_part(curve: Curve) -> Curve:
    """The evaluations after training began (time > 0): the base model's, at time 0, left out."""
    pairs = [(t, a) for t, a in zip(*curve, strict=True) if t > 0]
    return [t for t, _ in pairs], [a for _, a in pairs]


def default_target(baseline_runs: Mapping[int, Curve]) -> float:
    """The highest accuracy that every baseline seed reaches after training began: the minimum over
    seeds of each seed's peak at time > 0 (the base model's evaluation does not count)."""
    peaks = []
    for seed, curve in baseline_runs.items():
        _, accuracies = trained_part(curve)
        if not accuracies:
            raise ValueError(f"baseline seed {seed}: no evaluation after training began")
        peaks.append(max(accuracies))
    if not peaks:
        raise ValueError("baseline: no runs")
    return min(peaks)


def _interval(result: tuple[float, float, float] | None, n: int) -> dict[str, Any]:
    if result is None:
        return {"mean": None, "ci95": None, "n": n}
    return {"mean": result[0], "ci95": [result[1], result[2]], "n": n}


def _excludes(interval: dict[str, Any], value: float) -> bool:
    """The interval has enough seeds and lies wholly on one side of ``value``."""
    ci = interval["ci95"]
    if ci is None or interval["n"] < MIN_SEEDS_FOR_SIGNIFICANCE:
        return False
    return ci[0] > value or ci[1] < value


def compare_pair(
    method: Mapping[int, Curve],
    baseline: Mapping[int, Curve],
    *,
    budget_s: float,
    target: float,
    bootstrap: Mapping[str, Any],
) -> dict[str, Any]:
    """One method against the baseline over the seeds both ran (see :func:`compare_to_baseline`)."""
    seeds = sorted(set(method) & set(baseline))
    diffs, aucs, ppo_times, our_times = [], [], [], []
    for seed in seeds:
        ours, base = method[seed], baseline[seed]
        ours_at, base_at = accuracy_at_budget(*ours, budget_s), accuracy_at_budget(*base, budget_s)
        if ours_at is not None and base_at is not None:
            diffs.append(ours_at - base_at)
        if len(ours[0]) and len(base[0]):
            ours_auc = area_under_curve(*ours, budget_s=budget_s)
            aucs.append(ours_auc - area_under_curve(*base, budget_s=budget_s))
        ppo_times.append(time_to_target(*trained_part(base), target))
        our_times.append(time_to_target(*trained_part(ours), target))
    accuracy = _interval(paired_bootstrap_ci(diffs, **bootstrap) if diffs else None, len(diffs))
    speedup = _interval(
        ratio_bootstrap_ci(ppo_times, our_times, **bootstrap) if seeds else None,
        sum(t is not None for t in ppo_times),
    )
    return {
        "seeds": seeds,
        "accuracy_diff_at_budget": accuracy,
        "speedup_to_target": speedup,
        "auc": _interval(paired_bootstrap_ci(aucs, **bootstrap) if aucs else None, len(aucs)),
        "reached_target": sum(t is not None for t in our_times),
        "target": target,
        "budget_s": budget_s,
        "significant": _excludes(accuracy, 0.0) or _excludes(speedup, 1.0),
    }


def compare_to_baseline(
    runs_by_method: Mapping[str, Mapping[int, Curve]],
    *,
    baseline: str = "ppo",
    budget_s: float,
    target: float | None = None,
    confidence: float = 0.95,
    num_resamples: int = 10000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Every method of ``runs_by_method`` (name -> seed -> curve) against ``baseline``, paired by seed.

    Only the seeds that both the method and the baseline ran are compared. For each method other
    than the baseline::

        {"seeds": [...],                       # the paired seeds
         "accuracy_diff_at_budget": {"mean", "ci95": [lo, hi], "n"},
             # method - baseline, accuracy_at_budget; a seed without an evaluation by then is left out
         "speedup_to_target": {"mean", "ci95": [lo, hi], "n"},
             # ratio_bootstrap_ci(baseline's times, method's times): > 1 is faster; n: the seeds
             # whose baseline reached the target; mean and ci95 None when there are none
         "auc": {"mean", "ci95": [lo, hi], "n"},
             # method - baseline, area_under_curve over [0, budget_s] (an average accuracy)
         "reached_target": int,                # the method's seeds that reached it
         "target": float, "budget_s": float,
         "significant": bool}

    Times to the target count only evaluations after training began (time > 0), as does the default
    ``target``: :func:`default_target`, the highest accuracy every baseline seed reaches.
    ``significant`` is true when either part holds: (1) the accuracy-difference interval excludes 0,
    or (2) the speed-up interval exists and excludes 1; an interval over fewer than
    :data:`MIN_SEEDS_FOR_SIGNIFICANCE` seeds never counts (one pair has no spread). The intervals
    are at ``confidence`` (the key is ``ci95`` whatever it is), from ``num_resamples`` resamples
    drawn with ``seed``.

    Raises:
        ValueError: ``baseline`` is not among the methods, ``budget_s`` not > 0, a bad curve, or no
            default target (a baseline seed without an evaluation after training began).
    """
    if baseline not in runs_by_method:
        raise ValueError(f"baseline: {baseline!r} is not among the methods {sorted(runs_by_method)}")
    _check_budget(budget_s)
    _check_resampling(confidence, num_resamples)
    base = runs_by_method[baseline]
    chosen = default_target(base) if target is None else float(target)
    bootstrap = {"confidence": confidence, "num_resamples": num_resamples, "seed": seed}
    return {
        name: compare_pair(runs, base, budget_s=budget_s, target=chosen, bootstrap=bootstrap)
        for name, runs in runs_by_method.items()
        if name != baseline
    }
