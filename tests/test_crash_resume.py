"""Kill -9 a real training run (the demo task, tiny) at chosen and random moments, resume it each
time, and compare with an uninterrupted run of the same seed: the same prompts consumed once each,
the same unfinished responses carried over, and the same metrics and weights, bit for bit (CPU,
one thread: every operation of a step is deterministic, and a checkpoint restores all the state
a step reads, so a resumed step computes exactly what the uninterrupted one did)."""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from tppo.checkpoint import latest_checkpoint, list_checkpoints, verify_checkpoint

pytestmark = pytest.mark.slow

STEPS = 6
ARGS = [
    "rollout.num_slots=4",
    "rollout.window_length=8",
    "rollout.max_response_length=32",
    "rollout.samples_per_prompt=2",
    "data.train_size=4",  # 8 draws per epoch: the run crosses epoch boundaries (reshuffles)
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
]


def start(out: Path, crash_at: str | None = None, extra: Sequence[str] = ()) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "TPPO_CRASH_AT"}
    if crash_at:
        env["TPPO_CRASH_AT"] = crash_at
    cmd = [sys.executable, "-m", "tppo.cli", "train", "--output-dir", str(out), "--resume", *ARGS, *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> tuple[int, str]:
    _, err = process.communicate(timeout=600)
    return process.returncode, err


def rows(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def resume_step(out: Path) -> int:
    path = latest_checkpoint(out / "checkpoints")
    return 0 if path is None else int(verify_checkpoint(path)["step"])


def kill_at_a_random_moment(out: Path, rng: random.Random, extra: Sequence[str]) -> int:
    """Start, wait for the first new metrics row (the run is past its start-up), then SIGKILL it
    somewhere in the next two steps (their phases or checkpoints; at least four steps remain)."""
    seen = len(rows(out))
    process = start(out, extra=extra)
    while len(rows(out)) <= seen and process.poll() is None:
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 2 * rows(out)[-1]["time/step_s"]))
    process.send_signal(signal.SIGKILL)
    return finish(process)[0]


def state(checkpoint: Path) -> dict:
    manifest = json.loads((checkpoint / "manifest.json").read_text())["files"]
    trainer_state = json.loads((checkpoint / "trainer_state.json").read_text())
    return {
        "step": trainer_state["step"],
        "metrics_rows": trainer_state["metrics_rows"],
        "pool": trainer_state["pool"],
        "weights": {k: v["sha256"] for k, v in manifest.items() if k.endswith(".safetensors")},
        "optimizers": manifest["optimizers.pt"]["sha256"],
        "rng": manifest["rng.pt"]["sha256"],
    }


def without_times(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in metrics]


@pytest.mark.parametrize(
    "extra",
    [[], ["rollout.refill_within_step=true", "rollout.overlap_generation=true"]],
    ids=["synchronous", "refill_and_overlap"],
)
def test_kill_9_at_any_moment_then_resume_equals_the_uninterrupted_run(tmp_path, extra):
    reference_dir, crashed_dir = tmp_path / "reference", tmp_path / "crashed"
    reference = start(reference_dir, extra=extra)  # runs beside the crashing one
    rng = random.Random(int(os.environ.get("TPPO_TEST_SEED", "0")))
    log = []
    # mid-generation before any checkpoint exists (the resume starts over), mid-update,
    # mid-checkpoint (files written, no manifest, not renamed), after a metrics row but before its
    # checkpoint (the row must not be duplicated), then at a random moment
    for phase, offset in [
        ("generate", 0),
        ("actor", 1),
        ("checkpoint_write", 1),
        ("logged", 0),
        ("random", 0),
    ]:
        step = resume_step(crashed_dir)
        if phase == "random":
            assert step <= STEPS - 5
            code = kill_at_a_random_moment(crashed_dir, rng, extra)
        else:
            code, err = finish(start(crashed_dir, f"{phase}@{step + offset}", extra))
        log.append((phase, step, code))
        assert code == -signal.SIGKILL, (log, err[-2000:] if phase != "random" else "")
        if phase == "checkpoint_write":  # the write killed mid-checkpoint left its temporary directory
            assert list((crashed_dir / "checkpoints").glob(".tmp-*"))
            assert resume_step(crashed_dir) == step  # ... which is not a checkpoint
    code, err = finish(start(crashed_dir, extra=extra))
    assert code == 0, err[-3000:]
    assert not list((crashed_dir / "checkpoints").glob(".tmp-*"))  # a later write removed it
    code, err = finish(reference)
    assert code == 0, err[-3000:]

    crashed, expected = rows(crashed_dir), rows(reference_dir)
    # metrics continue without duplicated or missing steps, and equal the uninterrupted run's
    assert [r["step"] for r in crashed] == list(range(STEPS))
    assert without_times(crashed) == without_times(expected), log

    # at every step boundary: the same slot pool (prompt uids, carried responses with their tokens,
    # log-probs and generating steps; prompt stream position), weights, optimizer and RNG states
    steps = [s for s, _ in list_checkpoints(crashed_dir / "checkpoints")]
    assert (
        steps == [s for s, _ in list_checkpoints(reference_dir / "checkpoints")] == list(range(1, STEPS + 1))
    )
    for step in steps:
        name = f"step_{step:08d}"
        assert state(crashed_dir / "checkpoints" / name) == state(reference_dir / "checkpoints" / name), step

    # prompts consumed exactly once; unfinished responses continued where they stopped
    pools = [state(crashed_dir / "checkpoints" / f"step_{s:08d}")["pool"] for s in steps]
    consumed = set()
    for before, after in itertools.pairwise(pools):
        old = {s["prompt"]["uid"]: s for s in before["slots"] if s is not None}
        for slot in (s for s in after["slots"] if s is not None):
            uid = slot["prompt"]["uid"]
            if uid in old:  # carried over: the same response, extended
                assert slot["response_ids"][: len(old[uid]["response_ids"])] == old[uid]["response_ids"]
                assert slot["token_steps"][: len(old[uid]["token_steps"])] == old[uid]["token_steps"]
            else:
                assert uid not in consumed and uid >= before["stream"]["position"]
            consumed.add(uid)
        uids = [s["prompt"]["uid"] for s in after["slots"] if s is not None]
        assert len(uids) == len(set(uids))
    carried = [
        s
        for step, pool in zip(steps, pools, strict=True)
        for s in pool["slots"]
        if s and s["start_step"] < step - 1
    ]
    assert carried  # some responses were unfinished across more than one step boundary
    final = pools[-1]["stream"]["position"]
    assert sum(r["rollout/new_prompts"] + r["rollout/refilled"] for r in crashed) == final
    assert (sum(r["rollout/refilled"] for r in crashed) > 0) == bool(extra)
    assert [r["rollout/prompts_consumed"] for r in crashed] == [
        r["rollout/prompts_consumed"] for r in expected
    ]
