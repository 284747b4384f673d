"""``tppo`` command line: train, eval, sft, bench, bench-engines, plot."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: on a small CPU shared with anything else, spinning
# threads made matrix products 50-100x slower. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from tppo.config import ConfigError, load_config
from tppo.config_checks import check_config
from tppo.config_loader import require
from tppo.eval_cli import add_arguments as eval_cli_arguments
from tppo.faults import WorkerLost
from tppo.sources import DataError


def _train(args: argparse.Namespace) -> int:
    output_dir = Path(args.output_dir or Path("runs") / (Path(args.config).stem if args.config else "tppo"))
    if args.overwrite and output_dir.exists():
        check_config(load_config(args.config, args.overrides))  # a bad config deletes nothing
        shutil.rmtree(output_dir)
    from tppo.checkpoint import latest_checkpoint

    checkpoint = latest_checkpoint(output_dir / "checkpoints")
    holds_run = (output_dir / "metrics.jsonl").exists() or checkpoint is not None
    config_path = args.config
    if config_path is None and holds_run and (output_dir / "config.yaml").is_file():
        config_path = output_dir / "config.yaml"  # continuing a run: its own config, plus overrides
    config = load_config(config_path, args.overrides)  # refused here, before anything loads
    check_config(config)
    if holds_run and checkpoint is None and not args.resume:
        raise ConfigError(
            f"output directory {str(output_dir)!r} already holds a run (metrics.jsonl) but no usable "
            "checkpoint; pass --resume to run it again from step 0 there, --overwrite to replace it, "
            "or choose another --output-dir"
        )
    if checkpoint is not None:
        from tppo.resume import check_resumable

        check_resumable(checkpoint, config)
        print(f"resuming from {checkpoint}", file=sys.stderr)
    from tppo.plotting import plot_runs
    from tppo.trainer import Trainer, TrainingError

    trainer = Trainer(config, output_dir)
    try:
        if holds_run:
            trainer.resume(checkpoint)
        history = trainer.train()
    except (TrainingError, WorkerLost) as error:
        print(f"tppo: training stopped: {error}", file=sys.stderr)
        return 1
    finally:
        trainer.close()
    if trainer.stop_signal is not None:
        print(
            f"stopped by signal {trainer.stop_signal} at step {trainer.step}; checkpoint in "
            f"{output_dir / 'checkpoints'}; run the same command to continue",
            file=sys.stderr,
        )
        return 128 + trainer.stop_signal
    plot = plot_runs([output_dir], output_dir / "plot.png")
    evals = [row["eval/accuracy"] for row in history if "eval/accuracy" in row]
    if evals:
        steps = trainer.step
        print(f"held-out accuracy: {evals[0]:.3f} before training -> {evals[-1]:.3f} after {steps} steps")
    seconds = history[-1].get("time/train_elapsed_s", 0.0) if history else 0.0
    print(f"training wall-clock: {seconds:.0f} s; metrics: {output_dir / 'metrics.jsonl'}")
    print(f"plot of accuracy and reward vs wall-clock: {plot}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from tppo import eval_cli

    summary = eval_cli.run(args)
    k = summary["k"]
    print(
        f"avg@{k} {summary['avg_at_k']:.4f}  pass@{k} {summary['pass_at_k']:.4f}  "
        f"on {summary['problems']} problems; {summary['samples_per_s']:.2f} samples/s; "
        f"results in {args.output_dir}"
    )
    return 0


def _bench(args: argparse.Namespace) -> int:
    from tppo.bench import BenchSpec, run_bench
    from tppo.bench_plan import dry_run, read_plan

    plan = read_plan(args.config)  # the file's bench: section; each option given overrides its key
    seeds = plan.seeds if args.seeds is None else args.seeds
    first_seed = plan.first_seed if args.first_seed is None else args.first_seed
    budget_s = plan.budget_s if args.budget_s is None else args.budget_s
    target = plan.target if args.target is None else args.target
    every = plan.eval_every_seconds if args.eval_every_seconds is None else args.eval_every_seconds
    require(seeds >= 1, "--seeds", f"must be >= 1, got {seeds}")
    require(args.jobs >= 1, "--jobs", f"must be >= 1, got {args.jobs}")
    require(first_seed >= 0, "--first-seed", f"must be >= 0, got {first_seed}")
    require(budget_s is None or budget_s > 0, "--budget-s", f"must be > 0, got {budget_s}")
    require(target is None or target >= 0, "--target", f"must be >= 0, got {target}")
    if every is not None:  # checked with the config: trainer.eval_every_seconds
        args.overrides = [*args.overrides, f"trainer.eval_every_seconds={every}"]
    check_config(load_config(args.config, args.overrides, validate=False))  # each run sets its window
    spec = BenchSpec(
        config=args.config,
        overrides=args.overrides,
        output_dir=Path(args.output_dir),
        seeds=list(range(first_seed, first_seed + seeds)),
        windows=plan.windows if args.windows is None else args.windows,
        methods=plan.methods if args.methods is None else args.methods,
        budget_s=budget_s,
        target_accuracy=target,
        jobs=args.jobs,
    )
    if args.dry_run:
        dry_run(spec, plan)
        return 0
    summary = run_bench(spec)  # refuses a bad config before anything trains
    for name, speedup in summary["speedup_to_target"].items():
        label = summary["methods"][name]["label"]
        mean = speedup["mean"]
        shown = "not reached" if mean is None else f"{mean:.2f}x (std {speedup['std']:.2f}, n={speedup['n']})"
        print(f"{label}: speed-up to accuracy {summary['target_accuracy']:.3f} over PPO: {shown}")
    print(f"report: {spec.output_dir / 'report.md'}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from tppo.plotting import plot_runs

    for run_dir in args.run_dirs:
        if not (Path(run_dir) / "metrics.jsonl").is_file():
            raise DataError(f"run directory {run_dir!r} holds no metrics.jsonl (not a tppo run)")
    require(
        args.labels is None or len(args.labels) == len(args.run_dirs),
        "--labels",
        f"needs one label per run directory ({len(args.run_dirs)}), got {len(args.labels or [])}",
    )
    out = plot_runs([Path(d) for d in args.run_dirs], Path(args.output), labels=args.labels)
    print(f"plot: {out}")
    return 0


def _bench_engines(args: argparse.Namespace) -> int:
    require(args.repeats >= 1, "--repeats", f"must be >= 1, got {args.repeats}")
    config = load_config(args.config, args.overrides)
    check_config(config)
    from tppo.bench_engines import run_benchmark

    run_benchmark(config, repeats=args.repeats, skip_hf=args.skip_hf)
    return 0


def _bench_arguments(bench: argparse.ArgumentParser) -> None:
    """The options of ``tppo bench``."""
    bench.add_argument("--config", help="YAML file every run starts from")
    bench.add_argument(
        "--output-dir", default="runs/bench", help="report directory (resumes a bench cut short)"
    )
    bench.add_argument(
        "--seeds", type=int, help="how many seeds, each method once per seed (default: bench.seeds, 3)"
    )
    bench.add_argument(
        "--first-seed",
        type=int,
        help="the seeds are first..first+N-1 (default 0): extend a bench, or split one over processes",
    )
    bench.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at a time, each a process pinned to a core of its own (default 1: one after another)",
    )
    bench.add_argument(
        "--dry-run",
        action="store_true",
        help="check every run's config, print the plan (methods, seeds, budget, device time), train nothing",
    )
    bench.add_argument("--windows", type=int, nargs="*", help="T-PPO windows l (default L/8 L/4 L/2)")
    bench.add_argument(
        "--methods",
        nargs="*",
        help=(
            "methods beside PPO: tppo@l, grpo, dapo, partial_rollout@l, ppo_ewma, geppo, vapo, each "
            "optionally +refill and/or +overlap (default: T-PPO at --windows)"
        ),
    )
    bench.add_argument("--budget-s", type=float, help="training wall-clock per run (default: the config's)")
    bench.add_argument(
        "--eval-every-seconds",
        type=float,
        help="evaluate every N seconds of training time (trainer.eval_every_seconds; default: the config's)",
    )
    bench.add_argument(
        "--target", type=float, help="target accuracy (default: the highest every run reached)"
    )
    bench.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every run")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tppo", description="Truncated PPO for reasoning language models")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train with T-PPO (or PPO: window_length = max_response_length)")
    train.add_argument("--config", help="YAML file overriding the defaults (see tppo/config.py)")
    train.add_argument("--output-dir", help="where metrics, TensorBoard files and checkpoints go")
    train.add_argument("--overwrite", action="store_true", help="replace an existing run in --output-dir")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --output-dir from its newest valid checkpoint (automatic when it has "
        "one; without one, run it again from step 0 there). Its config.yaml is used unless --config is given",
    )
    train.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. rollout.window_length=64")
    train.set_defaults(func=_train)

    evaluate = sub.add_parser(
        "eval", help="avg@k and pass@k of a model on a data file (the paper's protocol)"
    )
    eval_cli_arguments(evaluate)
    evaluate.set_defaults(func=_eval)

    # Listed for `tppo --help`; `main` hands `tppo sft ...` to tppo.sft's own parser.
    sub.add_parser("sft", help="supervised warm-up of the demo base model (tppo sft --help)")

    bench = sub.add_parser("bench", help="T-PPO at several windows vs PPO, over seeds: report and figures")
    _bench_arguments(bench)
    bench.set_defaults(func=_bench)

    engines = sub.add_parser(
        "bench-engines",
        help="generated tokens/s of the HF engine, the vLLM engine and raw vLLM LLM.generate, same prompts",
    )
    engines.add_argument("--config", help="YAML file overriding the defaults (see tppo/config.py)")
    engines.add_argument("--repeats", type=int, default=3, help="timed rounds per engine, after one warm-up")
    engines.add_argument("--skip-hf", action="store_true", help="time only the two vLLM paths")
    engines.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. rollout.num_slots=64")
    engines.set_defaults(func=_bench_engines)

    plot = sub.add_parser("plot", help="plot accuracy and reward vs wall-clock of one or more runs")
    plot.add_argument("run_dirs", nargs="+")
    plot.add_argument("--output", default="plot.png")
    plot.add_argument("--labels", nargs="*")
    plot.set_defaults(func=_plot)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["sft"]:  # its own flags (--help included) belong to tppo.sft's parser
            from tppo import sft

            return sft.main(argv[1:])
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except ConfigError as error:
        print(f"tppo: config error: {error}", file=sys.stderr)
        return 2
    except DataError as error:
        print(f"tppo: data error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
