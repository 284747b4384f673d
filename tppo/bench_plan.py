"""The plan of a ``tppo bench``: the ``bench:`` section of its config file, and ``--dry-run``.

A config file may carry, beside the training config, what the bench runs::

    bench:
      methods: [tppo@128, grpo]   # PPO always runs too
      seeds: 2
      budget_s: 40                # training wall-clock per run
      eval_every_seconds: 20

Command-line options override these keys one by one. ``tppo bench --config FILE --dry-run`` prints
the plan (methods, seeds, budget, evaluations, estimated device time) after checking every run's
config, and trains nothing: the way to size a run for a machine lent for a few minutes
(``configs/bench_gpu.yaml``, ``benchmarks/README.md``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from tppo.bench import BenchSpec, checked_methods, run_config
from tppo.config import TPPOConfig
from tppo.config_loader import (
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    check_fields,
    from_dict,
    read_yaml,
)
from tppo.models import resolve_device


@dataclass
class BenchPlan:
    """The ``bench:`` section of a config file (every key optional; a command-line option wins).

    Attributes:
        methods: as ``--methods`` (``tppo@128``, ``grpo``, ``partial_rollout@128+refill``, ...);
            PPO always runs too. Empty: T-PPO at ``windows``.
        windows: as ``--windows``: the T-PPO windows when ``methods`` is empty (empty: L/8, L/4, L/2).
        seeds: how many seeds (``--seeds``).
        first_seed: the seeds are ``first_seed .. first_seed + seeds - 1`` (``--first-seed``).
        budget_s: training wall-clock per run (``--budget-s``; ``None``: ``trainer.max_wall_seconds``).
        eval_every_seconds: evaluate every this many seconds of training time
            (``--eval-every-seconds``; ``None``: the training config's schedule).
        target: the accuracy whose time-to-reach is compared (``--target``; ``None``: the highest
            accuracy every PPO seed reached).
        assumed_start_s: for the dry run's estimate only: seconds a run takes to start (imports,
            model load, the first step's warm-up) on the machine the plan is for.
        assumed_eval_s: for the estimate only: seconds one evaluation takes there.
    """

    methods: list[str] = field(default_factory=list)
    windows: list[int] = field(default_factory=list)
    seeds: PositiveInt = 3
    first_seed: NonNegativeInt = 0
    budget_s: PositiveFloat | None = None
    eval_every_seconds: PositiveFloat | None = None
    target: NonNegativeFloat | None = None
    assumed_start_s: NonNegativeFloat = 20.0
    assumed_eval_s: NonNegativeFloat = 10.0


def read_plan(path: str | Path | None) -> BenchPlan:
    """The ``bench:`` section of the config file at ``path`` (defaults without one)."""
    section = read_yaml(path).get("bench") if path is not None else None
    plan = from_dict(BenchPlan, section or {}, prefix="bench.")
    check_fields(plan, prefix="bench.")
    return plan


def evaluations_per_run(budget_s: float, every_s: float | None, every_steps: int) -> int | None:
    """Evaluations a run of ``budget_s`` training seconds makes on a schedule of ``every_s`` seconds:
    one before training, one every ``every_s`` seconds, the last at the end (``1 + ceil(budget /
    every)``); ``None`` when only a step schedule is set (its count depends on the step time); 0 with
    no schedule."""
    if every_s is not None:
        return 1 + math.ceil(budget_s / every_s)
    return None if every_steps else 0


def estimated_device_seconds(
    runs: int, budget_s: float, evaluations: int, *, start_s: float, eval_s: float, jobs: int = 1
) -> float:
    """``jobs`` runs at a time: ``ceil(runs / jobs) * (start_s + budget_s + evaluations * eval_s)``."""
    return math.ceil(runs / jobs) * (start_s + budget_s + evaluations * eval_s)


def plan_lines(
    labels: list[str],
    seeds: list[int],
    config: TPPOConfig,
    plan: BenchPlan,
    budget_s: float | None,
    jobs: int = 1,
) -> tuple[list[str], float | None]:
    """What ``--dry-run`` prints, and the estimated device seconds (``None``: no wall-clock budget,
    or evaluations on a step schedule, so no estimate)."""
    t = config.trainer
    runs = len(labels) * len(seeds)
    lines = [
        f"methods ({len(labels)}): {', '.join(labels)}",
        f"seeds ({len(seeds)}): {', '.join(map(str, seeds))}",
        f"runs: {runs}, {'one after another' if jobs == 1 else f'{jobs} at a time'}, "
        f"model.device={config.model.device} "
        f"({resolve_device(config.model.device)} here)",
    ]
    if budget_s is None:
        lines.append(f"budget: {t.total_steps} steps per run, no wall-clock budget: no time estimate")
        return lines, None
    lines.append(f"budget: {budget_s:g} s of training per run ({runs * budget_s:g} s of training in all)")
    evaluations = evaluations_per_run(budget_s, t.eval_every_seconds, t.eval_every)
    if evaluations is None:
        lines.append(f"evaluations: every {t.eval_every} steps (a count the step time decides): no estimate")
        return lines, None
    lines.append(
        f"evaluations: {evaluations} per run on {config.data.eval_size} held-out prompts "
        f"(every {t.eval_every_seconds:g} s of training time, before and at the end)"
        if t.eval_every_seconds is not None
        else "evaluations: none"
    )
    estimate = estimated_device_seconds(
        runs, budget_s, evaluations, start_s=plan.assumed_start_s, eval_s=plan.assumed_eval_s, jobs=jobs
    )
    lines.append(
        f"estimated device time: {estimate:.0f} s = {math.ceil(runs / jobs)} x "
        f"({plan.assumed_start_s:g} s start + "
        f"{budget_s:g} s training + {evaluations} x {plan.assumed_eval_s:g} s evaluation), "
        "the start and evaluation seconds assumed (bench.assumed_start_s, bench.assumed_eval_s)"
    )
    return lines, estimate


def dry_run(spec: BenchSpec, plan: BenchPlan) -> float | None:
    """``tppo bench --dry-run``: check every run's config, print the plan, train nothing; returns
    the estimated device seconds (``None``: no estimate)."""
    chosen = checked_methods(spec)
    config = run_config(spec, chosen[0], spec.seeds[0])
    budget = spec.budget_s if spec.budget_s is not None else config.trainer.max_wall_seconds
    lines, estimate = plan_lines([m.label for m in chosen], spec.seeds, config, plan, budget, spec.jobs)
    print(f"plan of tppo bench --config {spec.config} (nothing is trained: --dry-run)")
    for line in lines:
        print(f"  {line}")
    return estimate
