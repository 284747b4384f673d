"""``tppo bench``: the pure analysis, and a tiny real bench end to end."""

from __future__ import annotations

import json
import sys
import time

import pytest

from tppo.bench import BenchSpec, analyze, bench_command, methods, run_bench, write_report
from tppo.bench_report import expected_batch_max, ideal_generation_speedup, mean_and_spread, time_to_target
from tppo.cli import main
from tppo.metrics import read_metrics

TINY = [
    "rollout.num_slots=8",
    "rollout.max_response_length=32",
    "rollout.samples_per_prompt=2",
    "data.train_size=64",
    "data.eval_size=8",
    "trainer.total_steps=3",
    "trainer.eval_every=1",
    "trainer.progress=false",
    "trainer.tensorboard=false",
    "optim.actor_lr=1e-3",
    "optim.critic_lr=1e-3",
]


def test_time_to_target_is_the_first_evaluation_at_or_above_it() -> None:
    rows = [
        {"step": -1, "eval/accuracy": 0.2, "time/train_elapsed_s": 0.0},
        {"step": 0, "time/train_elapsed_s": 5.0},
        {"step": 1, "eval/accuracy": 0.4, "time/train_elapsed_s": 10.0},
        {"step": 2, "eval/accuracy": 0.6, "time/train_elapsed_s": 15.0},
    ]
    assert time_to_target(rows, 0.4) == (10.0, 2)
    assert time_to_target(rows, 0.5) == (15.0, 3)
    # the base model's evaluation (step -1) does not count, even when it meets the target
    assert time_to_target(rows, 0.1) == (10.0, 2)
    assert time_to_target(rows, 0.7) is None


def test_mean_and_spread() -> None:
    assert mean_and_spread([1.0, 3.0]) == {
        "mean": 2.0,
        "std": pytest.approx(2**0.5),
        "min": 1.0,
        "max": 3.0,
        "n": 2,
    }
    assert mean_and_spread([4.0])["std"] == 0.0
    assert mean_and_spread([])["mean"] is None


def test_ideal_generation_speedup_hand_worked() -> None:
    # every response as long as the window's multiple: nothing to gain
    assert ideal_generation_speedup([10, 10, 10], window=5, batch_size=4) == pytest.approx(1.0)
    # one short and one long response; large batches always contain the long one
    assert expected_batch_max([1, 100], 64) == pytest.approx(100.0)
    assert ideal_generation_speedup([1, 100], window=10, batch_size=64) == pytest.approx(100 / (10 * 5.5))
    # a batch of one waits only for itself: E[max] = E[L]
    assert expected_batch_max([2, 4], 1, draws=20000) == pytest.approx(3.0, abs=0.05)
    with pytest.raises(ValueError, match="no response lengths"):
        expected_batch_max([], 4)


def test_methods_default_windows_and_bad_windows() -> None:
    assert [(m.name, m.window, m.is_ppo) for m in methods(512, [])] == [
        ("ppo", 512, True),
        ("tppo_l64", 64, False),
        ("tppo_l128", 128, False),
        ("tppo_l256", 256, False),
    ]
    with pytest.raises(ValueError, match="--windows: 512 must be in"):
        methods(512, [512])


def _write_run(report_dir, method: str, seed: int, step_s: float, accuracies: list[float]) -> None:
    """A run's metrics.jsonl and config.yaml as the trainer writes them: the base model's evaluation
    at 0 s, then one step of ``step_s`` training seconds per accuracy, each evaluated."""
    run_dir = report_dir / "runs" / method / f"seed{seed}"
    run_dir.mkdir(parents=True)
    rows = [{"step": -1, "time/train_elapsed_s": 0.0, "eval/accuracy": 0.2}]
    for step, accuracy in enumerate(accuracies):
        rows.append(
            {
                "step": step,
                "time/step_s": step_s,
                "time/generate_s": step_s / 2,
                "time/train_elapsed_s": (step + 1) * step_s,
                "rollout/generated_tokens": 100,
                "rollout/decode_steps": 20,
                "rollout/finished": 4,
                "response_length/values": [10, 20, 30, 5],
                "eval/accuracy": accuracy,
            }
        )
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (run_dir / "config.yaml").write_text("rollout:\n  num_slots: 8\n")


def test_analysis_of_synthetic_runs_compares_every_method_to_ppo(tmp_path) -> None:
    # PPO: 10 s steps; T-PPO: 5 s steps reaching higher accuracies sooner
    _write_run(tmp_path, "ppo", 0, 10.0, [0.3, 0.4, 0.5, 0.6])
    _write_run(tmp_path, "ppo", 1, 10.0, [0.3, 0.45, 0.5, 0.55])
    _write_run(tmp_path, "tppo_l8", 0, 5.0, [0.35, 0.5, 0.6, 0.7])
    _write_run(tmp_path, "tppo_l8", 1, 5.0, [0.3, 0.5, 0.55, 0.65])
    chosen = methods(32, [8])
    summary = analyze(tmp_path, chosen, [0, 1])
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    # today's keys stay
    for key in ("seeds", "target_accuracy", "target_rule", "max_response_length", "methods"):
        assert key in summary, key
    for key in ("speedup_to_target", "s_gen", "s_gen_fraction", "measured_generation_speedup"):
        assert set(summary[key]) == {"tppo_l8"}, key
    assert summary["seeds"] == [0, 1] and set(summary["methods"]) == {"ppo", "tppo_l8"}
    # compared at the latest final evaluation (PPO's, 40 s): T-PPO is held at its last accuracy
    assert summary["budget_s"] == 40.0
    tppo = summary["methods"]["tppo_l8"]
    assert tppo["accuracy_at_budget"]["mean"] == pytest.approx(0.675)
    assert tppo["runs"]["0"]["accuracy_at_budget"] == 0.7
    # seed 0 AUC over 40 s: 5 * (0.2 + 0.35) / 2 + 5 * 0.425 + 5 * 0.55 + 5 * 0.65 + 20 * 0.7 = 23.5
    assert tppo["runs"]["0"]["auc"] == pytest.approx(23.5 / 40)
    assert summary["methods"]["ppo"]["auc"]["n"] == 2
    vs = summary["vs_ppo"]
    assert set(vs) == {"tppo_l8"}
    entry = vs["tppo_l8"]
    assert entry["seeds"] == [0, 1]
    # + 0.1 at 40 s on both seeds
    assert entry["accuracy_diff_at_budget"]["mean"] == pytest.approx(0.1)
    assert entry["accuracy_diff_at_budget"]["ci95"] == pytest.approx([0.1, 0.1])
    # target 0.55 (every PPO seed reaches it): PPO at 40 s, T-PPO at 15 s on both seeds
    assert entry["target"] == 0.55 == summary["target_accuracy"]
    assert entry["speedup_to_target"]["mean"] == pytest.approx(40 / 15)
    assert entry["speedup_to_target"]["ci95"] == pytest.approx([40 / 15, 40 / 15])
    assert entry["significant"] is True and entry["reached_target"] == 2

    spec = BenchSpec(config=None, output_dir=tmp_path, seeds=[0, 1], windows=[8])
    report = write_report(spec, summary).read_text()
    assert "## Against PPO, paired by seed (95% bootstrap intervals)" in report
    assert "| T-PPO (l = 8) | 2 | +0.100 [+0.100, +0.100] | 2.67 [2.67, 2.67] | 2/2 " in report
    row = next(line for line in report.splitlines() if line.startswith("| T-PPO (l = 8) | 2 |"))
    assert row.endswith("| significant |")


def test_the_default_target_is_the_one_every_ppo_seed_reached(tmp_path) -> None:
    # a method that falls below the base model does not pull the target down to its own peak
    _write_run(tmp_path, "ppo", 0, 10.0, [0.3, 0.4, 0.5])
    _write_run(tmp_path, "tppo_l8", 0, 5.0, [0.3, 0.2, 0.25])
    summary = analyze(tmp_path, methods(32, [8]), [0])
    assert summary["target_accuracy"] == 0.5 == summary["vs_ppo"]["tppo_l8"]["target"]
    assert summary["target_rule"] == "the highest accuracy every PPO seed reached after training began"
    assert summary["methods"]["tppo_l8"]["reached_target"] == 0


def test_analysis_says_not_significant_when_the_seeds_disagree(tmp_path) -> None:
    _write_run(tmp_path, "ppo", 0, 10.0, [0.3, 0.5])
    _write_run(tmp_path, "ppo", 1, 10.0, [0.3, 0.5])
    _write_run(tmp_path, "tppo_l8", 0, 10.0, [0.4, 0.6])  # better on seed 0
    _write_run(tmp_path, "tppo_l8", 1, 10.0, [0.3, 0.4])  # worse on seed 1, never at 0.5
    summary = analyze(tmp_path, methods(32, [8]), [0, 1])
    entry = summary["vs_ppo"]["tppo_l8"]
    assert entry["accuracy_diff_at_budget"]["ci95"] == pytest.approx([-0.1, 0.1])
    assert entry["reached_target"] == 1 and entry["speedup_to_target"]["ci95"][0] == 0.0
    assert entry["significant"] is False
    report = write_report(BenchSpec(config=None, output_dir=tmp_path), summary).read_text()
    assert "| not significant |" in report


@pytest.mark.slow
def test_tiny_bench_writes_every_file_and_resumes(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["bench", *TINY, "--output-dir", str(out), "--seeds", "2", "--windows", "8", "16"]
    assert main([*argv, "--jobs", "2"]) == 0  # two runs at a time, each a process pinned to a core
    printed = capsys.readouterr().out
    assert "T-PPO (l = 8): speed-up to accuracy" in printed and "report:" in printed
    assert "[1/6] PPO (l = L = 32), seed 0: started on core" in printed
    assert (out / "logs" / "tppo_l8_seed1.log").exists() and (out / "configs" / "ppo_seed0.yaml").exists()
    for name in (
        "report.md",
        "summary.json",
        "accuracy.png",
        "phases.png",
        "lengths.png",
        "diagnostics.png",
        "forest.png",
        "roofline.png",
    ):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0, 1]
    assert set(summary["speedup_to_target"]) == {"tppo_l8", "tppo_l16"}
    assert set(summary["s_gen"]) == {"tppo_l8", "tppo_l16"} == set(summary["s_gen_fraction"])
    assert all(value > 0 for value in summary["s_gen"].values())
    # the default target is reached by every run, so every seed has a speed-up
    assert all(s["n"] == 2 for s in summary["speedup_to_target"].values())
    assert set(summary["vs_ppo"]) == {"tppo_l8", "tppo_l16"} and summary["budget_s"] > 0
    for entry in summary["vs_ppo"].values():
        assert entry["seeds"] == [0, 1] and isinstance(entry["significant"], bool)
        for key in ("accuracy_diff_at_budget", "speedup_to_target", "auc"):
            low, high = entry[key]["ci95"]  # two seeds: the mean lies within [min, max] of the pairs
            assert low <= entry[key]["mean"] <= high, key
    ppo = summary["methods"]["ppo"]
    assert ppo["reached_target"] == 2 and len(ppo["runs"]) == 2
    # the rollout roofline: every run logged its decode FLOPs and bytes
    for method in summary["methods"].values():
        assert method["flops_per_byte"]["n"] == 2 and method["flops_per_byte"]["mean"] > 0
        assert 0 < method["live_rows_mean"]["mean"] <= 8
    run = ppo["runs"]["0"]
    assert run["steps"] == 3 and 0 < run["slot_utilization"] <= 1
    assert sum(share for share in run["phase_share"].values()) <= 1.0
    tppo = summary["methods"]["tppo_l8"]["runs"]["0"]
    # PPO generates every response within one step: one policy version each; T-PPO's is the mean
    # over its steps of what each step logged
    assert run["policy_versions_mean"] == 1.0
    logged = [
        row["diagnostics/policy_versions_mean"]
        for row in read_metrics(out / "runs" / "tppo_l8" / "seed0" / "metrics.jsonl")
        if row.get("diagnostics/policy_versions_mean") is not None
    ]
    assert logged and tppo["policy_versions_mean"] == pytest.approx(sum(logged) / len(logged))
    # nothing is skipped (policy_skip_tail = 0), yet the window-edge tails are measured
    assert tppo["tail_adv_abs_mean"] is not None and tppo["rest_adv_abs_mean"] is not None
    report = (out / "report.md").read_text()
    assert (
        "tppo bench rollout.num_slots=8" in report
        and "--windows 8 16" in report
        and "S_gen" in report
        and "![accuracy](accuracy.png)" in report
        and "## Against PPO, paired by seed" in report
        and "## Rollout roofline" in report
    )

    # a second call keeps finished runs and only re-analyzes (here with an unreachable target)
    metrics = out / "runs" / "ppo" / "seed0" / "metrics.jsonl"
    before = metrics.stat().st_mtime_ns
    assert main([*argv, "--target", "2.0"]) == 0
    assert "done before, kept" in capsys.readouterr().out
    assert metrics.stat().st_mtime_ns == before
    summary = json.loads((out / "summary.json").read_text())
    assert summary["target_accuracy"] == 2.0 and summary["target_rule"] == "given"
    assert all(s["mean"] is None for s in summary["speedup_to_target"].values())


def test_first_seed_shifts_the_seeds_and_the_command_says_so(tmp_path, monkeypatch):
    seen: list[BenchSpec] = []

    def fake_run_bench(spec: BenchSpec) -> dict:
        seen.append(spec)
        return {"speedup_to_target": {}}

    monkeypatch.setattr("tppo.bench.run_bench", fake_run_bench)
    main(["bench", *TINY, "--output-dir", str(tmp_path), "--seeds", "2", "--first-seed", "3"])
    assert seen[0].seeds == [3, 4]
    assert "--seeds 2 --first-seed 3" in bench_command(seen[0])
    assert "--first-seed" not in bench_command(BenchSpec(config=None, seeds=[0, 1]))


def test_bench_spec_refuses_bad_config_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"rollout\.window_lenght"):
        run_bench(BenchSpec(config=None, overrides=["rollout.window_lenght=3"], output_dir=tmp_path))


def test_pinned_jobs_run_side_by_side_each_on_its_own_core(tmp_path):
    from tppo.bench_jobs import Job, JobFailed, run_pinned, usable_cores

    cores = usable_cores(2)
    script = (
        "import json, os, time; start = time.time(); time.sleep(3.0); "
        "print(json.dumps([sorted(os.sched_getaffinity(0)), start, time.time(), os.environ['TAG']]))"
    )
    jobs = [
        Job(f"job{i}", [sys.executable, "-c", script], tmp_path / f"job{i}.log", {"TAG": f"t{i}"})
        for i in range(len(cores))
    ]
    finished: list[str] = []
    run_pinned(jobs, cores, lambda job: finished.append(job.label), poll_s=0.05)
    assert sorted(finished) == [job.label for job in jobs]
    seen = [json.loads(job.log.read_text()) for job in jobs]
    # each job ran on exactly the core it was given, with its own environment
    assert [affinity for affinity, *_ in seen] == [[core] for core in cores]
    assert [tag for *_, tag in seen] == [f"t{i}" for i in range(len(cores))]
    if len(cores) < 2:
        pytest.skip("one usable core: nothing runs side by side")
    (_, start_a, end_a, _), (_, start_b, end_b, _) = seen
    assert start_b < end_a and start_a < end_b  # side by side: the two sleeps overlap

    failing = Job("bad", [sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "bad.log", {})
    slow = Job("slow", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "slow.log", {})
    started = time.perf_counter()
    with pytest.raises(JobFailed, match=r"bad exited with code 3; its log: .*bad\.log"):
        run_pinned([slow, failing], cores, lambda job: None, poll_s=0.05)
    assert time.perf_counter() - started < 50  # the slow one was killed, not waited for
