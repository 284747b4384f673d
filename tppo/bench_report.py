"""The bench's paired comparison against PPO: accuracy curves from metrics rows, the analysis
budget, ``summary.json``'s ``vs_ppo`` and its table in ``report.md``.

The statistics are :mod:`tppo.bench_stats`; this module turns a bench's runs (metrics rows by
``(method, seed)``) into their curves and the summary into Markdown.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tppo.bench_stats import Curve, accuracy_at_budget, area_under_curve, compare_to_baseline

BUDGET_RULE = (
    "the latest final evaluation among the runs (a run stops after the step that crosses "
    "trainer.max_wall_seconds, so every run's final evaluation counts; a run that stopped earlier "
    "is held at its last accuracy)"
)

Runs = Mapping[tuple[str, int], Sequence[dict[str, Any]]]
"""Metrics rows by ``(method name, seed)``."""


def accuracy_curve(rows: Sequence[dict[str, Any]]) -> Curve:
    """A run's held-out accuracy against training seconds (``time/train_elapsed_s``; the base
    model's evaluation, logged before the first step, is at 0)."""
    evals = [r for r in rows if r.get("eval/accuracy") is not None]
    return [float(r.get("time/train_elapsed_s", 0.0)) for r in evals], [
        float(r["eval/accuracy"]) for r in evals
    ]


def analysis_budget(curves: Mapping[Any, Curve]) -> float | None:
    """The time at which runs are compared: see :data:`BUDGET_RULE` (``None``: no run was evaluated
    after training began)."""
    ends = [times[-1] for times, _ in curves.values() if times and times[-1] > 0]
    return max(ends) if ends else None


def curve_figures(curve: Curve, budget_s: float | None) -> dict[str, float | None]:
    """One run's ``accuracy_at_budget`` and ``auc`` (average accuracy over ``[0, budget_s]``)."""
    if budget_s is None or not curve[0]:
        return {"accuracy_at_budget": None, "auc": None}
    return {
        "accuracy_at_budget": accuracy_at_budget(*curve, budget_s),
        "auc": area_under_curve(*curve, budget_s=budget_s),
    }


def vs_baseline(
    rows: Runs, names: Sequence[str], *, baseline: str, target: float | None
) -> tuple[dict[str, Any], dict[tuple[str, int], dict[str, float | None]]]:
    """The top-level keys the comparison adds to ``summary.json`` (``budget_s``, ``budget_rule``,
    ``vs_ppo``: :func:`tppo.bench_stats.compare_to_baseline` for each method of ``names`` but the
    baseline) and each run's :func:`curve_figures`.

    ``target``: the accuracy whose time-to-reach is compared (``None``: the highest that every
    baseline seed reaches after training began). Without a baseline run evaluated after training
    began, ``vs_ppo`` is empty."""
    curves = {key: accuracy_curve(value) for key, value in rows.items()}
    budget = analysis_budget(curves)
    figures = {key: curve_figures(curve, budget) for key, curve in curves.items()}
    by_method: dict[str, dict[int, Curve]] = {name: {} for name in names}
    for (name, seed), curve in curves.items():
        if curve[0]:
            by_method[name][seed] = curve
    baseline_trained = any(t > 0 for times, _ in by_method.get(baseline, {}).values() for t in times)
    vs: dict[str, Any] = {}
    if budget is not None and baseline_trained:
        vs = compare_to_baseline(by_method, baseline=baseline, budget_s=budget, target=target)
    return {"budget_s": budget, "budget_rule": BUDGET_RULE, "vs_ppo": vs}, figures


# ---------------------------------------------------------------------------- report.md
def _interval(stats: Mapping[str, Any] | None, digits: int, *, signed: bool = False) -> str:
    if not stats or stats.get("mean") is None:
        return "n/a"
    sign = "+" if signed else ""
    mean = f"{stats['mean']:{sign}.{digits}f}"
    low, high = stats["ci95"]
    return f"{mean} [{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]"


def vs_ppo_lines(summary: Mapping[str, Any]) -> list[str]:
    """The ``report.md`` section of ``summary["vs_ppo"]``: each method's paired differences and
    speed-up with their 95% bootstrap intervals, and whether it is significant."""
    vs = summary.get("vs_ppo") or {}
    budget = summary.get("budget_s")
    lines = [
        "## Against PPO, paired by seed (95% bootstrap intervals)",
        "",
        f"Compared at {budget:.0f} s of training: {summary.get('budget_rule', '')}."
        if budget is not None
        else "No run was evaluated after training began: nothing to compare.",
        "",
    ]
    if not vs:
        return lines
    target = next(iter(vs.values()))["target"]
    lines += [
        f"Target for the speed-up: accuracy {target:.3f}. Accuracy and AUC are differences from PPO on "
        "the same seed (AUC: the average accuracy over the budget); the speed-up is PPO's mean time to "
        "the target over the method's (0: some seed never reached it). Significant: the accuracy "
        "interval excludes 0, or the speed-up interval excludes 1 (never with fewer than 2 seeds).",
        "",
        "| method | seeds | accuracy diff. at budget | speed-up to target | reached target "
        "| AUC diff. | significant |",
        "|---|---|---|---|---|---|---|",
    ]
    methods = summary.get("methods", {})
    for name, entry in vs.items():
        label, seeds = methods.get(name, {}).get("label", name), len(entry["seeds"])
        lines.append(
            f"| {label} | {seeds} | {_interval(entry['accuracy_diff_at_budget'], 3, signed=True)} "
            f"| {_interval(entry['speedup_to_target'], 2)} | {entry['reached_target']}/{seeds} "
            f"| {_interval(entry['auc'], 3, signed=True)} "
            f"| {'significant' if entry['significant'] else 'not significant'} |"
        )
    return lines
