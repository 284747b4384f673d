"""Plots of training runs: held-out accuracy and reward against wall-clock seconds."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from tppo.metrics import read_metrics


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
