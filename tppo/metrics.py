"""Per-step metrics: ``metrics.jsonl`` (one JSON object per step), TensorBoard, phase timers."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PHASES = {  # metric key -> label, in the paper's Fig. 4 order
    "time/generate_s": "generation",
    "time/reward_s": "reward",
    "time/old_forward_s": "old log-probs + values",
    "time/actor_s": "actor update",
    "time/critic_s": "critic update",
}
"""The timed phases of a step that the bench compares (``PhaseTimer`` metric key -> label)."""


class PhaseTimer:
    """``with timer("generate"): ...`` accumulates wall-clock seconds per named phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def as_metrics(self) -> dict[str, float]:
        return {f"time/{phase}_s": seconds for phase, seconds in self.seconds.items()}


class MetricsLogger:
    """Appends one JSON line per step to ``metrics.jsonl`` and mirrors scalars to TensorBoard."""

    def __init__(self, output_dir: Path, *, tensorboard: bool = True, purge_step: int | None = None) -> None:
        """``purge_step``: a resumed run hides TensorBoard events from this step on (they are
        written again); ``metrics.jsonl`` is truncated by the resume itself."""
        output_dir.mkdir(parents=True, exist_ok=True)
        self.path = output_dir / "metrics.jsonl"
        self.rows = len(read_metrics(self.path)) if self.path.exists() else 0
        """Rows in ``metrics.jsonl`` (a checkpoint records it: its metrics position)."""
        self._file = self.path.open("a")
        self._writer: Any = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(output_dir / "tensorboard"), purge_step=purge_step)

    def log(self, metrics: dict[str, Any]) -> None:
        clean = {k: _jsonable(v) for k, v in metrics.items()}
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()
        self.rows += 1
        if self._writer is not None:
            step = int(metrics["step"])
            for key, value in clean.items():
                if key != "step" and isinstance(value, int | float) and value is not None:
                    self._writer.add_scalar(key, value, step)
            self._writer.flush()

    def sync(self) -> None:
        """Flush ``metrics.jsonl`` to disk (before a checkpoint counts its rows)."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()
        if self._writer is not None:
            self._writer.close()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` file."""
    with path.open() as handle:
        return [json.loads(line) for line in handle if line.strip()]
