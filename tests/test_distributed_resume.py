"""Kill -9 a run with 2 rollout and 2 FSDP2 training workers (the controller's process, a real
SIGKILL) after its third step and resume it with ``tppo train --resume``: every step is logged once
and the metrics (apart from times), weights and optimizer states equal an uninterrupted run's
(CPU, gloo, one thread per worker: the same worker counts compute the same sums in the same
order). The training workers' optimizer states come from their sharded DCP checkpoints; resuming
the same checkpoint with one training worker reshards them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("ray")

from tppo.checkpoint import list_checkpoints, verify_checkpoint
from tppo.distributed.sharded_checkpoint import read_sharded

pytestmark = pytest.mark.slow

STEPS = 4
ARGS = [
    "rollout.num_slots=8",
    "rollout.window_length=8",
    "rollout.max_response_length=32",
    "rollout.samples_per_prompt=2",
    "data.train_size=8",
    "data.eval_size=0",
    "trainer.eval_every=0",
    "trainer.progress=false",
    "trainer.tensorboard=false",
    f"trainer.total_steps={STEPS}",
    "trainer.checkpoint_every=1",
    "trainer.keep_checkpoints=0",
    "trainer.num_threads=1",
    "optim.actor_lr=1e-3",
    "optim.critic_lr=1e-3",
    "distributed.rollout_workers=2",
    "distributed.train_workers=2",
    "distributed.rollout.num_cpus=1",
    "distributed.train.num_cpus=1",
]


def start(out: Path, *extra: str, crash_at: str | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("TPPO_CRASH_AT", "RAY_ADDRESS")}
    if crash_at:
        env["TPPO_CRASH_AT"] = crash_at
    cmd = [sys.executable, "-m", "tppo.cli", "train", "--output-dir", str(out), "--resume", *ARGS, *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> tuple[int, str]:
    _, err = process.communicate(timeout=600)
    return process.returncode, err


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def without_times(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in metrics]


def assert_same(a, b, path=""):
    """Nested dicts / lists of tensors and plain values, equal bit for bit."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    else:
        assert a == b, path


def checkpoint_state(checkpoint: Path) -> dict:
    manifest = verify_checkpoint(checkpoint)["files"]
    trainer_state = json.loads((checkpoint / "trainer_state.json").read_text())
    return {
        "pool": trainer_state["pool"],
        "metrics_rows": trainer_state["metrics_rows"],
        "weights": {k: v["sha256"] for k, v in manifest.items() if k.endswith(".safetensors")},
        "rng": torch.load(checkpoint / "rng.pt", weights_only=False),
    }


def test_kill_9_after_the_third_step_then_resume_equals_the_uninterrupted_run(tmp_path):
    reference_dir, crashed_dir, resharded_dir = tmp_path / "reference", tmp_path / "crashed", tmp_path / "one"
    reference = start(reference_dir)  # runs beside the crashing one
    # after the third step's metrics row, before its checkpoint: step 2 is done again, logged once
    code, err = finish(start(crashed_dir, crash_at="logged@2"))
    assert code == -signal.SIGKILL, err[-3000:]
    assert [r["step"] for r in rows(crashed_dir)] == [0, 1, 2]
    # step 0's checkpoint: what a rebuilt training group would start from (trainer.max_restarts)
    assert [s for s, _ in list_checkpoints(crashed_dir / "checkpoints")] == [0, 1, 2]
    shutil.copytree(crashed_dir, resharded_dir)
    resumed = start(crashed_dir)
    resharded = start(resharded_dir, "distributed.train_workers=1")  # DCP reshards 2 -> 1
    for process in (resumed, reference, resharded):
        code, err = finish(process)
        assert code == 0, err[-3000:]
        assert "resuming from" in err or process is reference

    crashed, expected = rows(crashed_dir), rows(reference_dir)
    assert [r["step"] for r in crashed] == list(range(STEPS))
    assert without_times(crashed) == without_times(expected)
    steps = [s for s, _ in list_checkpoints(crashed_dir / "checkpoints")]
    assert steps == [s for s, _ in list_checkpoints(reference_dir / "checkpoints")]
    assert steps == list(range(STEPS + 1))
    for step in steps:
        name = f"step_{step:08d}"
        a, b = crashed_dir / "checkpoints" / name, reference_dir / "checkpoints" / name
        assert (a / "sharded" / ".metadata").is_file() and not (a / "optimizers.pt").exists()
        assert_same(checkpoint_state(a), checkpoint_state(b), name)
        # weights, both optimizers' AdamW moments and steps, the update shuffles: from the shards
        assert_same(read_sharded(a), read_sharded(b), name)
    assert "value_optim" in read_sharded(crashed_dir / "checkpoints" / f"step_{STEPS:08d}")

    # one training worker from the same checkpoint: every step logged once, the prompts and slots of
    # the resumed steps the same (its sums run in another order: equal up to float32 rounding)
    one = rows(resharded_dir)
    assert [r["step"] for r in one] == list(range(STEPS))
    assert without_times(one[:2]) == without_times(expected[:2])
    for got, want in zip(one[2:], expected[2:], strict=True):
        assert got.keys() == want.keys()
        for key in ("rollout/new_prompts", "rollout/prompts_consumed", "rollout/finished", "critic/updates"):
            assert got[key] == want[key], key
        for key in [k for k in ("actor/loss", "actor/grad_norm", "critic/loss") if k in want]:
            assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key
