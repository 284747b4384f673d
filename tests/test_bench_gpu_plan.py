"""The GPU bench plan (configs/bench_gpu.yaml): the bench: section, --dry-run, and the plan run on
the CPU as the lent machine would run it (no matplotlib, vLLM, math-verify, tensorboard, pyarrow,
gguf or ray importable)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tppo.bench_plan import BenchPlan, estimated_device_seconds, evaluations_per_run, read_plan
from tppo.cli import main
from tppo.config import load_config

ROOT = Path(__file__).resolve().parent.parent
GPU_PLAN = str(ROOT / "configs" / "bench_gpu.yaml")
ABSENT_ON_THE_GPU_MACHINE = ["matplotlib", "vllm", "math_verify", "tensorboard", "pyarrow", "gguf", "ray"]


def test_evaluations_and_device_time_by_hand():
    # 40 s on a 20 s schedule: before training, at 20 s, at 40 s (the end)
    assert evaluations_per_run(40, 20, 0) == 3
    assert evaluations_per_run(45, 20, 0) == 4  # 0, 20, 40 and the end at 45
    assert evaluations_per_run(40, None, 5) is None and evaluations_per_run(40, None, 0) == 0
    # 6 runs of (20 s start + 40 s + 3 x 6 s)
    assert estimated_device_seconds(6, 40, 3, start_s=20, eval_s=6) == 468
    # two at a time: 3 rounds; 5 runs two at a time: 3 rounds too
    assert estimated_device_seconds(6, 40, 3, start_s=20, eval_s=6, jobs=2) == 234
    assert estimated_device_seconds(5, 40, 3, start_s=20, eval_s=6, jobs=2) == 234


def test_the_plan_section_is_read_and_left_out_of_the_training_config():
    plan = read_plan(GPU_PLAN)
    assert plan.methods == ["tppo@128", "grpo"] and plan.seeds == 2 and plan.budget_s == 40
    assert read_plan(None) == BenchPlan()
    config = load_config(GPU_PLAN)  # tppo train --config configs/bench_gpu.yaml reads it too
    assert config.rollout.num_slots == 256 and config.data.eval_size >= 512


def test_a_misspelt_plan_key_is_refused_with_its_name(tmp_path, capsys):
    bad = tmp_path / "plan.yaml"
    bad.write_text("bench:\n  seedz: 3\n")
    assert main(["bench", "--config", str(bad), "--dry-run"]) == 2
    assert "bench.seedz" in capsys.readouterr().err


def test_dry_run_prints_a_plan_that_fits_one_eight_minute_command_and_trains_nothing(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--config", GPU_PLAN, "--output-dir", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "methods (3): PPO (l = L = 512), T-PPO (l = 128), grpo (l = 512)" in printed
    assert "seeds (2): 0, 1" in printed and "budget: 40 s of training per run" in printed
    estimate = float(printed.split("estimated device time: ")[1].split(" s")[0])
    assert 0 < estimate <= 8 * 60
    assert not out.exists()
    # an option overrides its plan key
    assert main(["bench", "--config", GPU_PLAN, "--seeds", "5", "--dry-run"]) == 0
    assert "seeds (5): 0, 1, 2, 3, 4" in capsys.readouterr().out


@pytest.mark.slow
def test_the_gpu_plan_runs_on_the_cpu_without_the_packages_that_machine_lacks(tmp_path):
    blocker = tmp_path / "site"
    blocker.mkdir()
    # a None in sys.modules is how Python marks a module absent: imports fail, find_spec gives None
    (blocker / "sitecustomize.py").write_text(
        f"import sys\nsys.modules.update(dict.fromkeys({ABSENT_ON_THE_GPU_MACHINE!r}))\n"
    )
    out = tmp_path / "bench"
    command = [
        sys.executable, "-c", "from tppo.cli import main; raise SystemExit(main())",
        "bench", "model.device=cpu", "rollout.num_slots=8", "data.eval_size=8", "trainer.num_threads=1",
        "--config", GPU_PLAN, "--output-dir", str(out), "--seeds", "1", "--budget-s", "2",
        "--eval-every-seconds", "2",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(ROOT)])}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "figures skipped" in done.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["vs_ppo"]) == {"tppo_l128", "grpo"}
    for name, method in summary["methods"].items():
        assert method["flops_per_byte"]["mean"] > 0, name
    report = (out / "report.md").read_text()
    assert "## Rollout roofline" in report and "## Against PPO, paired by seed" in report
    assert not list(out.glob("*.png"))


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("bench_*.yaml")))
def test_every_shipped_bench_plan_passes_its_dry_run(config, capsys):
    assert main(["bench", "--config", str(ROOT / "configs" / config), "--dry-run"]) == 0
    assert "estimated device time" in capsys.readouterr().out
