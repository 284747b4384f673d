"""``tppo bench``: T-PPO against synchronous PPO on the same task, base model and seeds.

One invocation trains PPO (``l = L``) and T-PPO at several windows, each for the same wall-clock
budget, over several seeds, then writes a report directory::

    report.md        the tables: methods, against PPO with 95% CIs and significance, the ideal vs
                     measured generation speed-up, the diagnostics
    summary.json     machine-readable: ``seeds``, ``methods`` (name -> figures, mean and spread over
                     seeds), ``vs_ppo`` (name -> paired differences and speed-up with bootstrap CIs and
                     ``significant``, :func:`tppo.bench_stats.compare_to_baseline`), speed-up to target
                     per window (mean and spread), S_gen, ...
    accuracy.png     held-out accuracy and reward vs wall-clock and vs step (paper Fig. 1)
    phases.png       per-step time by phase (paper Fig. 4)
    lengths.png      finished response length over training (paper Fig. 6)
    diagnostics.png  truncation-bias diagnostics of the T-PPO runs
    runs/<method>/seed<k>/   every run's own output (metrics.jsonl, config.yaml, checkpoints)

Runs that already finished are not run again, so a killed bench resumes where it stopped.
The analysis is a pure function of the runs' ``metrics.jsonl`` files (:func:`analyze`).
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tppo.bench_jobs import Job, run_pinned, usable_cores
from tppo.bench_report import fmt_number as _num
from tppo.bench_report import fmt_spread as _fmt
from tppo.bench_report import (
    ideal_generation_speedup,
    mean_and_spread,
    response_lengths,
    roofline_lines,
    run_summary,
    trained_evals,
    vs_baseline,
    vs_ppo_lines,
)
from tppo.config import ConfigError, TPPOConfig, load_config, save_config
from tppo.config_checks import check_names
from tppo.metrics import PHASES, read_metrics

DONE_MARKER = "bench_done.json"
DEFAULT_TARGET_RULE = "the highest accuracy every PPO seed reached after training began"


@dataclass
class BenchSpec:
    """What ``tppo bench`` runs.

    Attributes:
        config: the YAML file every run starts from (``None``: the defaults).
        overrides: ``key=value`` overrides applied to every run.
        output_dir: the report directory.
        seeds: the seeds; every method runs once per seed.
        windows: the T-PPO windows ``l`` (PPO, ``l = L``, always runs too); empty: L/8, L/4, L/2.
        methods: ``--methods`` (see :func:`parse_methods`); when given, ``windows`` is not used.
        budget_s: training wall-clock per run (``trainer.max_wall_seconds``; ``None``: the config's).
        target_accuracy: the accuracy whose time-to-reach is compared (``None``: the highest
            accuracy that every run reached).
        jobs: runs at a time, each a ``tppo train`` process pinned to a core of its own
            (:mod:`tppo.bench_jobs`); 1: one after another, in this process.
    """

    config: str | None
    overrides: list[str] = field(default_factory=list)
    output_dir: Path = Path("runs/bench")
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    windows: list[int] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    budget_s: float | None = None
    target_accuracy: float | None = None
    jobs: int = 1


@dataclass
class Method:
    """One method of the bench: a registered ``algorithm.name`` at a window ``l``, with rollout options.

    Attributes:
        name: the run's name (its directory and key in ``summary.json``).
        window: ``rollout.window_length``.
        is_ppo: the baseline (PPO, ``l = L``, no rollout option).
        algorithm: ``algorithm.name``.
        options: names from :data:`ROLLOUT_OPTIONS` (``+refill`` in a ``--methods`` spec).
    """

    name: str
    window: int
    is_ppo: bool
    algorithm: str = "ppo"
    options: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        extra = "".join(f", {option}" for option in self.options)
        if self.algorithm != "ppo":
            return f"{self.algorithm} (l = {self.window}{extra})"
        if self.is_ppo or self.name.startswith("ppo"):
            return f"PPO (l = L = {self.window}{extra})"
        return f"T-PPO (l = {self.window}{extra})"


ROLLOUT_OPTIONS: dict[str, list[str]] = {
    "refill": ["rollout.refill_within_step=true"],
    "overlap": ["rollout.overlap_generation=true"],
}
"""``--methods`` suffixes (``tppo@128+refill``): the overrides each rollout option adds to a run."""


GROUP_SAMPLES = 4
"""Samples per prompt of a critic-free group method in the bench when the base config has one."""


def parse_methods(specs: Sequence[str], max_response_length: int) -> list[Method]:
    """``--methods``: ``ppo``, ``tppo@l``, a registered method name (``grpo``, ``dapo``, ``vapo``:
    ``l = L``) or ``name@l`` (``partial_rollout@128``; a bare ``partial_rollout`` takes ``l = L / 4``),
    each optionally followed by rollout options (``tppo@128+refill``, :data:`ROLLOUT_OPTIONS`).
    PPO comes first, added when absent: it is every comparison's baseline."""
    from tppo.methods import METHODS

    out = [Method("ppo", max_response_length, True)]
    for spec in specs:
        head, *options = spec.split("+")
        name, _, window_text = head.partition("@")
        algorithm = "ppo" if name == "tppo" else name
        if algorithm not in METHODS:
            raise ConfigError(f"--methods: {spec!r}: {METHODS.unknown_message(algorithm)} (or tppo@l)")
        for option in options:
            if option not in ROLLOUT_OPTIONS:
                raise ConfigError(
                    f"--methods: {spec!r}: unknown rollout option {option!r} "
                    f"(known: {', '.join(sorted(ROLLOUT_OPTIONS))})"
                )
        default = max_response_length // 4 if name in ("tppo", "partial_rollout") else max_response_length
        try:
            window = int(window_text) if window_text else default
        except ValueError:
            raise ConfigError(f"--methods: {spec!r}: the window after '@' must be an integer") from None
        if not 0 < window <= max_response_length:
            raise ConfigError(f"--methods: {spec!r}: window {window} must be in [1, {max_response_length}]")
        if name == "ppo" and window == max_response_length and not options:
            continue  # the baseline, already first
        label = name if window == max_response_length and name != "tppo" else f"{name}_l{window}"
        label += "".join(f"_{option}" for option in options)
        out.append(Method(label, window, False, algorithm, tuple(options)))
    return out


def methods(max_response_length: int, windows: Sequence[int]) -> list[Method]:
    """PPO first, then T-PPO at each window (default L/8, L/4, L/2), shortest window first."""
    chosen = sorted(set(windows)) or [max_response_length // d for d in (8, 4, 2)]
    for window in chosen:
        if not 0 < window < max_response_length:
            raise ConfigError(
                f"--windows: {window} must be in [1, {max_response_length - 1}] (L = {max_response_length})"
            )
    return [Method("ppo", max_response_length, True)] + [Method(f"tppo_l{w}", w, False) for w in chosen]


def run_config(spec: BenchSpec, method: Method, seed: int) -> TPPOConfig:
    overrides = [*spec.overrides, f"rollout.window_length={method.window}", f"trainer.seed={seed}"]
    overrides += [o for option in method.options for o in ROLLOUT_OPTIONS[option]]
    if method.algorithm != "ppo":
        overrides.append(f"algorithm.name={method.algorithm}")
        from tppo.methods import get_method

        grouped = not get_method(method.algorithm).needs_critic
        if (
            grouped
            and load_config(spec.config, spec.overrides, validate=False).rollout.samples_per_prompt < 2
        ):
            overrides.append(f"rollout.samples_per_prompt={GROUP_SAMPLES}")
    if spec.budget_s is not None:
        overrides.append(f"trainer.max_wall_seconds={spec.budget_s}")
    return load_config(spec.config, overrides)


def checked_methods(spec: BenchSpec) -> list[Method]:
    """The bench's methods (PPO first), every run's config built and checked: a bad one is refused
    before the first run trains."""
    base = load_config(spec.config, spec.overrides, validate=False)  # each method sets its window
    L = base.rollout.max_response_length
    chosen = parse_methods(spec.methods, L) if spec.methods else methods(L, spec.windows)
    for method in chosen:
        check_names(run_config(spec, method, spec.seeds[0]))
    return chosen


def run_bench(spec: BenchSpec) -> dict[str, Any]:
    """Train every (method, seed) not already done (``spec.jobs`` at a time), then analyze and
    write the report."""
    chosen = checked_methods(spec)
    todo = pending_runs(spec, chosen)
    if spec.jobs > 1:
        _train_pinned(spec, todo)
    else:
        _train_here(spec, todo)
    summary = analyze(spec.output_dir, chosen, spec.seeds, target_accuracy=spec.target_accuracy)
    write_report(spec, summary)
    return summary


@dataclass(frozen=True)
class PendingRun:
    """A (method, seed) still to train: its place in the bench (``[index/total]``) and directory."""

    index: int
    total: int
    method: Method
    seed: int
    run_dir: Path

    @property
    def label(self) -> str:
        return f"[{self.index}/{self.total}] {self.method.label}, seed {self.seed}"

    def mark_done(self) -> None:
        (self.run_dir / DONE_MARKER).write_text(json.dumps({"method": self.method.name, "seed": self.seed}))


def pending_runs(spec: BenchSpec, chosen: Sequence[Method]) -> list[PendingRun]:
    """The runs not done yet, seed-major (a bench cut short still compares every method); a run
    cut short is removed, to restart from scratch; finished ones are kept (and said so)."""
    out, total = [], len(chosen) * len(spec.seeds)
    for index, (seed, method) in enumerate(((s, m) for s in spec.seeds for m in chosen), start=1):
        run = PendingRun(index, total, method, seed, spec.output_dir / "runs" / method.name / f"seed{seed}")
        if (run.run_dir / DONE_MARKER).exists():
            print(f"{run.label}: done before, kept", flush=True)
            continue
        if run.run_dir.exists():
            shutil.rmtree(run.run_dir)
        out.append(run)
    return out


def _train_here(spec: BenchSpec, todo: Sequence[PendingRun]) -> None:
    from tppo.trainer import Trainer  # heavy imports only when training

    started = time.perf_counter()
    for run in todo:
        config = run_config(spec, run.method, run.seed)
        print(f"{run.label} (bench so far {time.perf_counter() - started:.0f} s)", flush=True)
        trainer = Trainer(config, run.run_dir)
        try:
            trainer.train()
        finally:
            trainer.close()  # remote workers (distributed.*) go with their run
        run.mark_done()


def _train_pinned(spec: BenchSpec, todo: Sequence[PendingRun]) -> None:
    """Each run as ``tppo train`` in a process of its own, pinned to a core (:mod:`tppo.bench_jobs`);
    its config is written to ``configs/`` and its output to ``logs/`` under the report directory."""
    jobs, runs = [], {}
    for run in todo:
        config = run_config(spec, run.method, run.seed)
        path = spec.output_dir / "configs" / f"{run.method.name}_seed{run.seed}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_config(config, path)
        argv = [sys.executable, "-c", "from tppo.cli import main; raise SystemExit(main())", "train"]
        argv += ["--config", str(path), "--output-dir", str(run.run_dir), "--overwrite"]
        log = spec.output_dir / "logs" / f"{run.method.name}_seed{run.seed}.log"
        jobs.append(Job(run.label, argv, log, {"OMP_NUM_THREADS": str(config.trainer.num_threads)}))
        runs[run.label] = run
    started = time.perf_counter()

    def done(job: Job) -> None:
        runs[job.label].mark_done()
        print(f"{job.label}: done (bench so far {time.perf_counter() - started:.0f} s)", flush=True)

    run_pinned(jobs, usable_cores(spec.jobs), done)


METHOD_FIGURES = (
    "time_to_target_s",
    "final_accuracy",
    "accuracy_at_budget",
    "auc",
    "peak_accuracy",
    "generated_tokens_per_s",
    "slot_utilization",
    "step_s_mean",
    "finished_responses",
    "generate_s_per_finished",
    "bootstrap_error_abs",
    "bootstrap_error_signed",
    "policy_versions_mean",
    "stale_value_token_frac",
    "tail_adv_abs_mean",
    "rest_adv_abs_mean",
    "live_rows_mean",
    "flops_per_byte",
)
"""Per-run figures a method's summary gives as mean and spread over its seeds."""


def analyze(
    report_dir: Path, chosen: Sequence[Method], seeds: Sequence[int], *, target_accuracy: float | None = None
) -> dict[str, Any]:
    """Read every run's metrics and compute the bench's summary (see the module docstring)."""
    rows, slots = _read_runs(report_dir, chosen, seeds)
    # the default target is PPO's (as in vs_ppo): a method that falls below the base model must not
    # pull it down to an accuracy every run "reaches" at its first evaluation
    baseline_rows = [value for (name, _), value in rows.items() if name == chosen[0].name]
    peaks = [max(r["eval/accuracy"] for r in evals) for evals in map(trained_evals, baseline_rows) if evals]
    if target_accuracy is None and not peaks:
        raise ValueError("the PPO runs logged no eval/accuracy; set an evaluation schedule or give a target")
    target = target_accuracy if target_accuracy is not None else min(peaks)
    runs = {key: run_summary(value, slots[key], target) for key, value in rows.items()}
    names = [method.name for method in chosen]
    comparison, figures = vs_baseline(rows, names, baseline=chosen[0].name, target=target_accuracy)
    for key, extra in figures.items():
        runs[key].update(extra)  # accuracy_at_budget and auc, at the comparison's budget_s

    ppo = chosen[0]
    ppo_lengths = [length for seed in seeds for length in response_lengths(rows.get((ppo.name, seed), []))]
    ppo_slots = next((slots[ppo.name, s] for s in seeds if (ppo.name, s) in slots), None)
    out: dict[str, Any] = {
        "seeds": list(seeds),
        "target_accuracy": target,
        "target_rule": "given" if target_accuracy is not None else DEFAULT_TARGET_RULE,
        "max_response_length": ppo.window,
        "methods": {},
        "speedup_to_target": {},
        "s_gen": {},
        "s_gen_fraction": {},
        "measured_generation_speedup": {},
        **comparison,
    }
    for method in chosen:
        per_seed = {seed: runs[method.name, seed] for seed in seeds if (method.name, seed) in runs}
        out["methods"][method.name] = method_summary(method, per_seed)
        if method.is_ppo:
            continue
        pairs = [
            (runs[ppo.name, s], runs[method.name, s])
            for s in seeds
            if (ppo.name, s) in runs and s in per_seed
        ]
        out["speedup_to_target"][method.name] = mean_and_spread(_ratios(pairs, "time_to_target_s"))
        measured = mean_and_spread(_ratios(pairs, "decode_steps_per_finished"))
        out["measured_generation_speedup"][method.name] = measured
        if ppo_lengths and ppo_slots:
            s_gen = ideal_generation_speedup(ppo_lengths, window=method.window, batch_size=ppo_slots)
            out["s_gen"][method.name] = s_gen
            out["s_gen_fraction"][method.name] = (
                measured["mean"] / s_gen if measured["mean"] is not None else None
            )
    (report_dir / "summary.json").write_text(json.dumps(out, indent=2))
    return out


def _read_runs(
    report_dir: Path, chosen: Sequence[Method], seeds: Sequence[int]
) -> tuple[dict[tuple[str, int], list[dict[str, Any]]], dict[tuple[str, int], int]]:
    """The metrics rows and the slot count of every run under ``report_dir`` that has metrics."""
    rows: dict[tuple[str, int], list[dict[str, Any]]] = {}
    slots: dict[tuple[str, int], int] = {}
    for method in chosen:
        for seed in seeds:
            run_dir = report_dir / "runs" / method.name / f"seed{seed}"
            if (run_dir / "metrics.jsonl").exists():
                rows[method.name, seed] = read_metrics(run_dir / "metrics.jsonl")
                slots[method.name, seed] = _num_slots(run_dir)
    if not rows:
        raise FileNotFoundError(f"no finished runs under {report_dir / 'runs'}")
    return rows, slots


def method_summary(method: Method, per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """One method's runs (``per_seed``: :func:`run_summary` by seed): each of
    :data:`METHOD_FIGURES` as mean and spread over seeds, the mean phase shares, and how many runs
    reached the target."""
    return {
        "label": method.label,
        "window": method.window,
        "runs": {str(s): r for s, r in per_seed.items()},
        **{
            key: mean_and_spread([r[key] for r in per_seed.values() if r[key] is not None])
            for key in METHOD_FIGURES
        },
        "phase_share": {
            label: statistics.fmean(r["phase_share"][label] or 0.0 for r in per_seed.values())
            for label in PHASES.values()
        }
        if per_seed
        else {},
        "reached_target": sum(r["time_to_target_s"] is not None for r in per_seed.values()),
    }


def _ratios(pairs: Sequence[tuple[dict[str, Any], dict[str, Any]]], key: str) -> list[float]:
    """``baseline[key] / run[key]`` for each ``(baseline, run)`` pair of the same seed where both
    are known and non-zero."""
    return [base[key] / ours[key] for base, ours in pairs if base[key] and ours[key]]


def _num_slots(run_dir: Path) -> int:
    import yaml

    with (run_dir / "config.yaml").open() as handle:
        return int(yaml.safe_load(handle)["rollout"]["num_slots"])


# ---------------------------------------------------------------------------- report
def write_report(spec: BenchSpec, summary: dict[str, Any]) -> Path:
    """Figures and ``report.md`` in ``spec.output_dir``."""
    out = spec.output_dir
    try:
        from tppo.plotting import plot_bench
    except ImportError as error:  # a machine without matplotlib (the GPU plan): tables only
        print(f"figures skipped: {error}", flush=True)
        figures: list[Path] = []
    else:
        figures = plot_bench(out, summary)
    lines = [
        "# Methods against PPO, same wall-clock budget",
        "",
        "Command: `" + bench_command(spec) + "`",
        "",
        f"Seeds: {', '.join(map(str, summary['seeds']))}. "
        f"Target accuracy: **{summary['target_accuracy']:.3f}** "
        f"({summary['target_rule']}). Times are training wall-clock (evaluation excluded); spreads are "
        "sample standard deviations over seeds, with [min, max].",
        "",
        "| method | time to target (s) | speed-up over PPO | reached | final acc. | peak acc. "
        "| finished responses | gen. s per finished | gen. tokens/s "
        "| slot util. | step (s) | " + " | ".join(f"{p} share" for p in PHASES.values()) + " |",
        "|---" * (11 + len(PHASES)) + "|",
    ]
    for name, method in summary["methods"].items():
        speedup = summary["speedup_to_target"].get(name)
        lines.append(
            f"| {method['label']} | {_fmt(method['time_to_target_s'], 0)} | "
            f"{_fmt(speedup, 2) if speedup else '1 (baseline)'} | "
            f"{method['reached_target']}/{len(method['runs'])} | "
            f"{_fmt(method['final_accuracy'], 3)} | {_fmt(method['peak_accuracy'], 3)} | "
            f"{_fmt(method['finished_responses'], 0)} | {_fmt(method['generate_s_per_finished'], 3)} | "
            f"{_fmt(method['generated_tokens_per_s'], 0)} | {_fmt(method['slot_utilization'], 2)} | "
            f"{_fmt(method['step_s_mean'], 1)} | "
            + " | ".join(f"{100 * share:.0f}%" for share in method["phase_share"].values())
            + " |"
        )
    lines += ["", *vs_ppo_lines(summary)]
    lines += [
        "",
        "## Generation speed-up: ideal and measured",
        "",
        "`S_gen = E[max over a batch of L] / (l * E[ceil(L/l)])` from the PPO runs' finished "
        "response lengths "
        "(synchronous slots wait for the longest response; in successive batching each response occupies "
        "ceil(L/l) windows). Measured: PPO's decode steps per finished response over T-PPO's.",
        "",
        "| method | S_gen (ideal) | measured | measured / ideal |",
        "|---|---|---|---|",
    ]
    for name in summary["s_gen"]:
        lines.append(
            f"| {summary['methods'][name]['label']} | {summary['s_gen'][name]:.2f} | "
            f"{_fmt(summary['measured_generation_speedup'][name], 2)} | "
            f"{_num(summary['s_gen_fraction'][name], 2)} |"
        )
    lines += roofline_lines(summary)
    lines += [
        "",
        "## Truncation-bias diagnostics (T-PPO runs, means over steps and seeds)",
        "",
        "| method | bootstrap error, abs | bootstrap error, signed | policy versions per response "
        "| value tokens from an older policy | window-edge tail adv., mean abs | other adv., mean abs |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, method in summary["methods"].items():
        if name == "ppo":
            continue
        lines.append(
            f"| {method['label']} | {_fmt(method['bootstrap_error_abs'], 3)} | "
            f"{_fmt(method['bootstrap_error_signed'], 3)} "
            f"| {_fmt(method['policy_versions_mean'], 2)} | {_fmt(method['stale_value_token_frac'], 2)} "
            f"| {_fmt(method['tail_adv_abs_mean'], 3)} | {_fmt(method['rest_adv_abs_mean'], 3)} |"
        )
    lines += ["", "## Figures", ""] + [f"![{p.stem}]({p.name})" for p in figures] + [""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def bench_command(spec: BenchSpec) -> str:
    parts = ["tppo bench", *spec.overrides]  # before the options: --windows takes a list
    if spec.config:
        parts += ["--config", spec.config]
    parts += ["--output-dir", str(spec.output_dir), "--seeds", str(len(spec.seeds))]
    if spec.seeds and spec.seeds[0] != 0:
        parts += ["--first-seed", str(spec.seeds[0])]
    if spec.windows:
        parts += ["--windows", *map(str, spec.windows)]
    if spec.methods:
        parts += ["--methods", *spec.methods]
    if spec.budget_s is not None:
        parts += ["--budget-s", f"{spec.budget_s:g}"]
    if spec.target_accuracy is not None:
        parts += ["--target", f"{spec.target_accuracy:g}"]
    return " ".join(parts)
