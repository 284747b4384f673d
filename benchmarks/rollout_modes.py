"""The rollout that never idles, measured: synchronous T-PPO, with refill within the step, with
generation overlapped with training, with both, and PPO (``l = L``), side by side.

Each mode is one ``tppo train`` run of the same config and seed (default the demo,
``configs/demo_tppo.yaml``: K = 64, l = 128, L = 512, 30 steps), run one after the other so that
each has the whole machine (overlap needs a second core for its generation thread). A run already
finished in ``--output-dir`` is not run again. Printed per mode, from each run's ``metrics.jsonl``:

* slot utilisation (generated tokens / (K x decode steps)), mean over steps 1.. (step 0 starts
  with every slot empty in every mode);
* decode steps and generation seconds per finished response (``time/engine_generate_s``: the engine's
  own clock, also when it ran in the background);
* mean step time and its phases (what the training loop waited for; with overlap, generation is
  hidden behind the update except for ``wait_rollout``);
* finished responses per minute of training wall-clock, and held-out accuracy at the end and
  against wall-clock (``accuracy.png``).

Run (prints the command that reproduces it)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/rollout_modes.py
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tppo.config import load_config
from tppo.plotting import plot_runs

MODES: dict[str, list[str]] = {
    "tppo": [],
    "tppo+refill": ["rollout.refill_within_step=true"],
    "tppo+overlap": ["rollout.overlap_generation=true"],
    "tppo+refill+overlap": ["rollout.refill_within_step=true", "rollout.overlap_generation=true"],
    "ppo": ["rollout.window_length={L}"],
}
"""Mode -> the overrides it adds (``{L}``: ``rollout.max_response_length``)."""

PHASES = ("fill", "sync", "generate", "wait_rollout", "reward", "old_forward", "estimate", "actor", "critic")


def run(mode: str, config: str, out: Path, overrides: list[str], max_len: int) -> float:
    """Train one mode (unless already done); returns the seconds it took (0 if it was done)."""
    metrics = out / "metrics.jsonl"
    if (out / "final").exists() and metrics.exists():
        return 0.0
    extra = [o.format(L=max_len) for o in MODES[mode]]
    cmd = [sys.executable, "-m", "tppo.cli", "train", "--config", config, "--output-dir", str(out)]
    cmd += ["--resume", "trainer.progress=false", "trainer.tensorboard=false", *overrides, *extra]
    print(f"[{mode}] {shlex.join(cmd)}", flush=True)
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def mean(values: list[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def summarize(out: Path) -> dict[str, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r.get("step", -1) >= 0]
    later = [r for r in steps if r["step"] >= 1]
    finished = sum(r["rollout/finished"] for r in steps)
    evals = [r for r in rows if r.get("eval/accuracy") is not None]
    elapsed = steps[-1]["time/train_elapsed_s"]
    summary = {
        "steps": len(steps),
        "slot_utilization": mean([r["rollout/slot_utilization"] for r in later]),
        "decode_steps_per_finished": sum(r["rollout/decode_steps"] for r in steps) / max(finished, 1),
        "generate_s_per_finished": sum(r.get("time/engine_generate_s", math.nan) for r in steps)
        / max(finished, 1),
        "step_s": mean([r["time/step_s"] for r in steps]),
        "finished_per_minute": finished / (elapsed / 60),
        "train_s": elapsed,
        "accuracy_start": evals[0]["eval/accuracy"] if evals else math.nan,
        "accuracy_end": evals[-1]["eval/accuracy"] if evals else math.nan,
    }
    for phase in PHASES:
        summary[f"{phase}_s"] = mean([r.get(f"time/{phase}_s", 0.0) for r in steps])
    return summary


def table(summaries: dict[str, dict[str, float]]) -> str:
    base = summaries.get("tppo", {}).get("step_s", math.nan)
    head = (
        "| mode | slot util. | decode steps / finished | gen. s / finished | step s (x sync T-PPO) | "
        + " | ".join(PHASES)
        + " | finished / min | accuracy start -> end |"
    )
    lines = [head, "|" + "---|" * (7 + len(PHASES))]
    for mode, s in summaries.items():
        phases = " | ".join(f"{s[f'{p}_s']:.2f}" for p in PHASES)
        lines.append(
            f"| {mode} | {s['slot_utilization']:.3f} | {s['decode_steps_per_finished']:.2f} | "
            f"{s['generate_s_per_finished']:.3f} | {s['step_s']:.2f} ({s['step_s'] / base:.2f}x) | "
            f"{phases} | "
            f"{s['finished_per_minute']:.1f} | {s['accuracy_start']:.3f} -> {s['accuracy_end']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/demo_tppo.yaml")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/rollout_modes"))
    parser.add_argument("--modes", nargs="*", default=list(MODES), choices=list(MODES))
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every mode")
    args = parser.parse_args(argv)
    max_len = load_config(args.config, args.overrides).rollout.max_response_length
    summaries = {}
    for mode in args.modes:
        out = args.output_dir / mode.replace("+", "_")
        run(mode, args.config, out, args.overrides, max_len)
        summaries[mode] = summarize(out)
    print(table(summaries))
    (args.output_dir / "summary.json").write_text(json.dumps(summaries, indent=2))
    dirs = [args.output_dir / m.replace("+", "_") for m in args.modes]
    print(f"plot: {plot_runs(dirs, args.output_dir / 'accuracy.png', labels=list(args.modes))}")
    here = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/rollout_modes.py"
    print(f"reproduce: {here} {shlex.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
