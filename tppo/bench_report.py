"""The bench's analysis of its runs, pure functions of their metrics rows: each run's figures
(:func:`run_summary`: accuracy, time to target, generation, phases, diagnostics, the rollout
roofline), the ideal generation speed-up, the paired comparison against PPO (accuracy curves, the
analysis budget, ``summary.json``'s ``vs_ppo``) and the Markdown of the report's tables.

The statistics are :mod:`tppo.bench_stats`; :mod:`tppo.bench` trains the runs and assembles the
summary.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from tppo.bench_stats import Curve, accuracy_at_budget, area_under_curve, compare_to_baseline
from tppo.metrics import PHASES

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


def roofline_lines(summary: Mapping[str, Any]) -> list[str]:
    """The report's rollout-roofline table (paper Figure 5): live rows per decode step and FLOPs per
    byte of generation per method, when the runs logged them (``rollout/decode_flops``)."""
    methods = summary["methods"]
    if not any((m.get("flops_per_byte") or {}).get("mean") for m in methods.values()):
        return []
    lines = [
        "",
        "## Rollout roofline",
        "",
        "Arithmetic intensity of generation: FLOPs over bytes moved (weights once per decode step, "
        "KV cache read and written) summed over every decode step, from the logged live rows and "
        "context lengths and the policy's config (`tppo.roofline`); `roofline.png` puts them on the "
        "H200's and H800's roofs (and this CPU's, with `cpu_roof.json` from "
        "`benchmarks/roofline_cpu.py --json`).",
        "",
        "| method | live rows per decode step | FLOPs / byte |",
        "|---|---|---|",
    ]
    for method in methods.values():
        live, intensity = fmt_spread(method["live_rows_mean"], 1), fmt_spread(method["flops_per_byte"], 1)
        lines.append(f"| {method['label']} | {live} | {intensity} |")
    return lines


def fmt_spread(stats: Mapping[str, Any] | None, digits: int) -> str:
    """``mean ± std [min, max]`` of :func:`tppo.bench.mean_and_spread`'s figures (the mean alone
    for one value; ``n/a`` for none)."""
    if not stats or stats.get("mean") is None:
        return "n/a"
    if stats.get("n", 1) <= 1:
        return f"{stats['mean']:.{digits}f}"
    mean, std, low, high = (f"{stats[k]:.{digits}f}" for k in ("mean", "std", "min", "max"))
    return f"{mean} ± {std} [{low}, {high}]"


def fmt_number(value: float | None, digits: int) -> str:
    """``value`` to ``digits`` decimals, ``n/a`` for ``None``."""
    return "n/a" if value is None else f"{value:.{digits}f}"


# ---------------------------------------------------------------------------- pure analysis
def trained_evals(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The evaluations made after training began (the base model's, at step -1, left out)."""
    return [r for r in rows if r.get("eval/accuracy") is not None and r.get("step", -1) >= 0]


def time_to_target(rows: Sequence[dict[str, Any]], target: float) -> tuple[float, int] | None:
    """Training seconds and steps to the first evaluation after training began at or above
    ``target`` (None: never). The base model's own evaluation does not count: a target it already
    meets says nothing about the speed of training."""
    for row in trained_evals(rows):
        if row["eval/accuracy"] >= target:
            return float(row.get("time/train_elapsed_s", 0.0)), int(row["step"]) + 1
    return None


def mean_and_spread(values: Sequence[float]) -> dict[str, float | int | None]:
    """Mean, sample standard deviation, min and max (None where there are no values)."""
    clean = [v for v in values if v is not None and not math.isnan(v)]
    if not clean:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {
        "mean": statistics.fmean(clean),
        "std": statistics.stdev(clean) if len(clean) > 1 else 0.0,
        "min": min(clean),
        "max": max(clean),
        "n": len(clean),
    }


def expected_batch_max(lengths: Sequence[int], batch_size: int, *, draws: int = 4000, seed: int = 0) -> float:
    """``E[max of batch_size lengths]``, by resampling the measured lengths."""
    if not lengths:
        raise ValueError("no response lengths to estimate E[max] from")
    rng = random.Random(seed)
    return statistics.fmean(max(rng.choices(lengths, k=batch_size)) for _ in range(draws))


def ideal_generation_speedup(lengths: Sequence[int], *, window: int, batch_size: int) -> float:
    """``S_gen = E[max over a batch of L] / (l * E[ceil(L / l)])``, from measured lengths ``L``.

    Synchronous batching spends the batch's longest response in decode steps for every ``batch_size``
    responses; successive batching spends ``l`` decode steps per window and each response occupies
    ``ceil(L / l)`` windows of its slot.
    """
    windows_per_response = statistics.fmean(math.ceil(max(length, 1) / window) for length in lengths)
    return expected_batch_max(lengths, batch_size) / (window * windows_per_response)


def run_summary(rows: Sequence[dict[str, Any]], num_slots: int, target: float | None) -> dict[str, Any]:
    """Per-run figures from its metrics rows."""
    steps = [r for r in rows if r.get("step", -1) >= 0 and "time/step_s" in r]
    evals = [r["eval/accuracy"] for r in rows if r.get("eval/accuracy") is not None]
    total = {key: sum(r.get(key) or 0.0 for r in steps) for key in (*PHASES, "time/step_s")}
    # generation seconds by the engine's clock (also when it ran ahead, overlapped), else the phase's
    engine_s = sum(r.get("time/engine_generate_s", r.get("time/generate_s")) or 0.0 for r in steps)
    generated = sum(r.get("rollout/generated_tokens", 0) for r in steps)
    decode_steps = sum(r.get("rollout/decode_steps", 0) for r in steps)
    finished = sum(r.get("rollout/finished", 0) for r in steps)
    reached = time_to_target(rows, target) if target is not None else None
    step_time = total["time/step_s"]
    return {
        "steps": len(steps),
        "train_seconds": float(steps[-1].get("time/train_elapsed_s", step_time)) if steps else 0.0,
        "base_accuracy": evals[0] if evals else None,
        "final_accuracy": evals[-1] if evals else None,
        "peak_accuracy": max(evals) if evals else None,
        "time_to_target_s": reached[0] if reached else None,
        "steps_to_target": reached[1] if reached else None,
        "finished_responses": finished,
        "generated_tokens_per_s": generated / engine_s if engine_s else None,
        "slot_utilization": generated / (num_slots * decode_steps) if decode_steps else None,
        "decode_steps_per_finished": decode_steps / finished if finished else None,
        "generate_s_per_finished": engine_s / finished if finished else None,
        "step_s_mean": step_time / len(steps) if steps else None,
        "phase_share": {
            label: total[key] / step_time if step_time else None for key, label in PHASES.items()
        },
        "phase_s_mean": {label: total[key] / len(steps) if steps else None for key, label in PHASES.items()},
        "bootstrap_error_abs": _mean_of(steps, "diagnostics/bootstrap_error_abs"),
        "bootstrap_error_signed": _mean_of(steps, "diagnostics/bootstrap_error_signed"),
        "policy_versions_mean": _mean_of(steps, "diagnostics/policy_versions_mean"),
        "stale_value_token_frac": _mean_of(steps, "diagnostics/stale_value_token_frac"),
        "tail_adv_abs_mean": _mean_of(steps, "diagnostics/tail_adv_abs_mean"),
        "rest_adv_abs_mean": _mean_of(steps, "diagnostics/rest_adv_abs_mean"),
        "live_rows_mean": generated / decode_steps if decode_steps else None,
        "flops_per_byte": _ratio_of_sums(steps, "rollout/decode_flops", "rollout/decode_bytes"),
    }


def _ratio_of_sums(rows: Sequence[dict[str, Any]], top: str, bottom: str) -> float | None:
    """``sum(top) / sum(bottom)`` over the rows that logged both (finite); ``None`` when none did."""
    pairs = [(r[top], r[bottom]) for r in rows if _finite(r.get(top)) and _finite(r.get(bottom))]
    denominator = sum(b for _, b in pairs)
    return sum(t for t, _ in pairs) / denominator if denominator else None


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _mean_of(rows: Sequence[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None and not math.isnan(r[key])]
    return statistics.fmean(values) if values else None


def response_lengths(rows: Sequence[dict[str, Any]]) -> list[int]:
    """Every finished response's length a run logged (``response_length/values``)."""
    return [length for r in rows for length in r.get("response_length/values") or []]
