"""Plots of training runs: held-out accuracy and reward against wall-clock seconds."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from tppo.metrics import PHASES, read_metrics
from tppo.roofline import ACCELERATORS, Accelerator, attainable_flops, ridge_intensity


def _series(
    rows: list[dict], key: str, x_key: str = "time/train_elapsed_s"
) -> tuple[list[float], list[float]]:
    points = [(r[x_key], r[key]) for r in rows if r.get(key) is not None and r.get(x_key) is not None]
    points = [(x, y) for x, y in points if not (isinstance(y, float) and math.isnan(y))]
    return [p[0] for p in points], [p[1] for p in points]


def _smooth(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_runs(run_dirs: Sequence[Path], output: Path, labels: Sequence[str] | None = None) -> Path:
    """Held-out accuracy and mean reward (smoothed over 10 steps) vs training wall-clock seconds."""
    labels = list(labels) if labels else [Path(d).name for d in run_dirs]
    fig, (acc_ax, reward_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for run_dir, label in zip(run_dirs, labels, strict=True):
        rows = read_metrics(Path(run_dir) / "metrics.jsonl")
        xs, ys = _series(rows, "eval/accuracy")
        acc_ax.plot(xs, ys, marker="o", label=label)
        xs, ys = _series(rows, "reward/mean")
        reward_ax.plot(xs, _smooth(ys, 10), label=label)
    acc_ax.set(xlabel="training wall-clock (s)", ylabel="held-out accuracy", title="Held-out accuracy")
    reward_ax.set(xlabel="training wall-clock (s)", ylabel="mean reward (finished)", title="Training reward")
    for ax in (acc_ax, reward_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output


def _bench_rows(report_dir: Path, summary: dict) -> dict[str, list[list[dict]]]:
    out: dict[str, list[list[dict]]] = {}
    for name, method in summary["methods"].items():
        out[name] = [
            read_metrics(report_dir / "runs" / name / f"seed{seed}" / "metrics.jsonl")
            for seed in method["runs"]
        ]
    return out


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_bench(report_dir: Path, summary: dict) -> list[Path]:
    """The bench's figures: accuracy and reward vs time and step, phase times, lengths, diagnostics."""
    runs = _bench_rows(report_dir, summary)
    style = _Style(
        colors={name: f"C{i}" for i, name in enumerate(summary["methods"])},
        labels={name: method["label"] for name, method in summary["methods"].items()},
    )
    return [
        _plot_accuracy(runs, summary["target_accuracy"], style, report_dir / "accuracy.png"),
        _plot_phases(summary, style, report_dir / "phases.png"),
        _plot_lengths(runs, style, report_dir / "lengths.png"),
        _plot_diagnostics(runs, style, report_dir / "diagnostics.png"),
        _plot_forest(summary, style, report_dir / "forest.png"),
        *_plot_roofline(summary, style, report_dir / "roofline.png", report_dir / CPU_ROOF_FILE),
    ]


CPU_ROOF_FILE = "cpu_roof.json"
"""In a bench's report directory: this CPU's roof (``benchmarks/roofline_cpu.py --json``), drawn
beside the named accelerators' in ``roofline.png`` when present."""


def _plot_roofline(summary: dict, style: _Style, path: Path, cpu_file: Path) -> list[Path]:
    """Paper Figure 5: each method's rollout arithmetic intensity (``flops_per_byte``) on the roofs of
    the H200, the H800 and (when measured) this CPU; nothing when no run logged it."""
    points = {
        name: method["flops_per_byte"]["mean"]
        for name, method in summary["methods"].items()
        if (method.get("flops_per_byte") or {}).get("mean")
    }
    if not points:
        return []
    roofs = [ACCELERATORS.get("H200"), ACCELERATORS.get("H800")]
    if cpu_file.exists():
        cpu = json.loads(cpu_file.read_text())
        roofs.append(
            Accelerator("this CPU", cpu["matmul_gflops"] * 1e9, cpu["copy_gb_s"] * 1e9, cpu["command"])
        )
    low = min(min(points.values()), *(ridge_intensity(r) for r in roofs)) / 4
    high = max(max(points.values()), *(ridge_intensity(r) for r in roofs)) * 4
    grid = [low * (high / low) ** (i / 200) for i in range(201)]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for roof, dash in zip(roofs, ("-", "--", ":"), strict=False):
        ax.plot(grid, [attainable_flops(x, roof) for x in grid], color="grey", ls=dash, label=roof.name)
        for name, x in points.items():
            ax.plot([x], [attainable_flops(x, roof)], "o", color=style.colors[name])
    for name, x in points.items():
        ax.axvline(x, color=style.colors[name], lw=1, alpha=0.6, label=f"{style.labels[name]}: {x:.0f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("rollout arithmetic intensity (FLOPs / byte)")
    ax.set_ylabel("attainable FLOP/s")
    ax.set_title("rollout roofline (decode steps, from the logged live rows and contexts)")
    ax.legend(fontsize=7)
    return [_save(fig, path)]


def _plot_forest(summary: dict, style: _Style, path: Path) -> Path:
    """Each method's paired difference from PPO (accuracy at the budget, speed-up to the target)
    with its 95% bootstrap interval: the forest plot of ``summary['vs_ppo']``."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.6 * max(len(summary.get("vs_ppo", {})), 1) + 1.6))
    panels = (
        ("accuracy_diff_at_budget", "accuracy - PPO's, at the budget", 0.0),
        ("speedup_to_target", "speed-up to target vs PPO", 1.0),
    )
    for ax, (key, title, null) in zip(axes, panels, strict=True):
        for row, (name, figures) in enumerate(summary.get("vs_ppo", {}).items()):
            figure = figures.get(key) or {}
            mean, ci = figure.get("mean"), figure.get("ci95")
            if mean is None or not ci or None in ci:
                continue
            ax.errorbar(
                [mean],
                [row],
                xerr=[[mean - ci[0]], [ci[1] - mean]],
                fmt="o",
                capsize=4,
                color=style.colors.get(name, "k"),
            )
        names = list(summary.get("vs_ppo", {}))
        ax.set_yticks(range(len(names)), [style.labels.get(n, n) for n in names])
        ax.axvline(null, color="grey", ls="--", lw=1)
        ax.locator_params(axis="x", nbins=5)
        ax.set_title(title)
    return _save(fig, path)


@dataclass(frozen=True)
class _Style:
    """One colour and one label per method, the same in every figure."""

    colors: dict[str, str]
    labels: dict[str, str]

    def line(
        self, ax: Any, name: str, seed_index: int, xs: list[float], ys: list[float], **kwargs: Any
    ) -> None:
        """One seed's line; only a method's first seed puts its label in the legend."""
        label = self.labels[name] if seed_index == 0 else None
        ax.plot(xs, ys, color=self.colors[name], lw=1.2, label=label, **kwargs)


def _plot_accuracy(runs: dict[str, list[list[dict]]], target: float, style: _Style, path: Path) -> Path:
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    panels = [
        (axes[0][0], "eval/accuracy", "time/train_elapsed_s", "held-out accuracy", 1),
        (axes[0][1], "eval/accuracy", "step", "held-out accuracy", 1),
        (axes[1][0], "reward/mean", "time/train_elapsed_s", "training reward (smoothed)", 10),
        (axes[1][1], "reward/mean", "step", "training reward (smoothed)", 10),
    ]
    _accuracy_bands(axes[0][0], runs, style)
    for ax, key, x_key, _, window in panels[1:]:
        for name, seeds in runs.items():
            for i, rows in enumerate(seeds):
                xs, ys = _series(rows, key, x_key)
                marker = "o" if window == 1 else None
                style.line(ax, name, i, xs, _smooth(ys, window), alpha=0.8, marker=marker, ms=3)
    for ax, _, x_key, ylabel, _ in panels:
        if ylabel == "held-out accuracy":
            ax.axhline(target, color="grey", ls="--", lw=1, label="target")
        ax.set(xlabel="training wall-clock (s)" if x_key != "step" else "step", ylabel=ylabel)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    axes[0][0].set_title("mean over seeds, band: min to max", fontsize=9)
    axes[0][1].set_title("every seed, one line each", fontsize=9)
    fig.suptitle("Held-out accuracy and training reward, every method")
    return _save(fig, path)


def _accuracy_bands(ax: Any, runs: dict[str, list[list[dict]]], style: _Style) -> None:
    """Held-out accuracy against training wall-clock per method: the mean over seeds and a band
    from the lowest to the highest seed, each seed's curve interpolated between its evaluations
    (and held at its last one) on a common grid."""
    curves = {
        name: [_series(rows, "eval/accuracy", "time/train_elapsed_s") for rows in seeds]
        for name, seeds in runs.items()
    }
    end = max((xs[-1] for seeds in curves.values() for xs, _ in seeds if xs), default=0.0)
    grid = np.linspace(0.0, end, 200)
    for name, seeds in curves.items():
        values = np.array([np.interp(grid, xs, ys) for xs, ys in seeds if xs])
        if not len(values):
            continue
        ax.plot(grid, values.mean(axis=0), color=style.colors[name], lw=1.6, label=style.labels[name])
        ax.fill_between(grid, values.min(axis=0), values.max(axis=0), color=style.colors[name], alpha=0.15)


def _plot_phases(summary: dict, style: _Style, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(9, 4.5))
    names = list(summary["methods"])
    bottoms = [0.0] * len(names)
    for j, phase in enumerate(PHASES.values()):
        heights = [
            _mean([r["phase_s_mean"][phase] or 0.0 for r in summary["methods"][n]["runs"].values()])
            for n in names
        ]
        ax.bar([style.labels[n] for n in names], heights, bottom=bottoms, label=phase, color=f"C{j}")
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    ax.set(ylabel="seconds per step (mean)", title="Where a step's time goes")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def _plot_lengths(runs: dict[str, list[list[dict]]], style: _Style, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name, seeds in runs.items():
        for i, rows in enumerate(seeds):
            xs, ys = _series(rows, "response_length/mean", "step")
            style.line(ax, name, i, xs, _smooth(ys, 5))
    ax.set(xlabel="step", ylabel="finished response length (tokens, smoothed)", title="Response length")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _plot_diagnostics(runs: dict[str, list[list[dict]]], style: _Style, path: Path) -> Path:
    fig, (err_ax, stale_ax) = plt.subplots(1, 2, figsize=(12, 4.2))
    for name, seeds in runs.items():
        if name == "ppo":
            continue
        for i, rows in enumerate(seeds):
            for ax, key in (
                (err_ax, "diagnostics/bootstrap_error_signed"),
                (stale_ax, "diagnostics/stale_value_token_frac"),
            ):
                xs, ys = _series(rows, key, "step")
                style.line(ax, name, i, xs, _smooth(ys, 5))
    err_ax.axhline(0.0, color="grey", lw=1)
    err_ax.set(xlabel="step", ylabel="V(s_b-1) - eventual return", title="Bootstrap error at window edges")
    stale_ax.set(xlabel="step", ylabel="fraction", title="Value tokens generated by an older policy")
    for ax in (err_ax, stale_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
