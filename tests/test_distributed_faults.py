"""Remote workers that die mid-step, killed for real (the worker's process SIGKILLs itself at a crash
point, :mod:`tppo.faults`): a rollout worker is replaced and its share of the generation redone, a
training group is rebuilt from the newest checkpoint, and either way the run ends as the
uninterrupted one does (every step logged once, the same metrics apart from times and the fault
counter); a training worker that dies with no restart left stops the run (exit code 1) naming the
checkpoint to resume from.
One Ray cluster for the module; each worker takes one logical CPU."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import SMALL_RUN

ray = pytest.importorskip("ray")

from tppo.config import load_config  # noqa: E402
from tppo.trainer import Trainer  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]

SMALL = [
    *SMALL_RUN,
    "trainer.num_threads=1",
    "trainer.total_steps=3",
    "distributed.rollout.num_cpus=1",
    "distributed.train.num_cpus=1",
]


def run(overrides, out):
    trainer = Trainer(load_config(None, overrides), out)
    try:
        history = trainer.train()
        return history, {n: t.clone() for n, t in trainer.learner.policy_weights()}
    finally:
        trainer.close()


def logged(out):
    """The rows of ``metrics.jsonl`` (as JSON, NaN is one object: rows with NaNs compare equal)."""
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def comparable(out, drop=("time/", "faults/")):
    return [{k: v for k, v in row.items() if not k.startswith(drop)} for row in logged(out)]


def logged_steps(out):
    return [row["step"] for row in logged(out)]


def test_a_rollout_worker_killed_mid_generation_is_replaced_and_nothing_is_lost(tmp_path, monkeypatch):
    overrides = [*SMALL, "distributed.rollout_workers=2"]
    expected, expected_weights = run(overrides, tmp_path / "reference")
    monkeypatch.setenv("TPPO_CRASH_AT", "rollout1_generate@1")  # worker 1, in step 1's generation
    history, weights = run(overrides, tmp_path / "crashed")
    assert [row["faults/rollout_worker_restarts"] for row in history] == [0, 1, 0]
    assert [row["faults/rollout_worker_restarts"] for row in expected] == [0, 0, 0]
    # the replacement had the synced weights and its predecessor's RNG state, and redid the lost
    # share from the controller's prefixes: the same completions, so the same run
    assert comparable(tmp_path / "crashed") == comparable(tmp_path / "reference")
    assert sum(row["rollout/carried_worker1"] for row in history[1:]) > 0
    for name, tensor in expected_weights.items():
        assert torch.equal(weights[name], tensor), name
    assert logged_steps(tmp_path / "crashed") == [0, 1, 2]


def test_a_training_worker_killed_mid_update_is_rebuilt_from_the_last_checkpoint(tmp_path, monkeypatch):
    overrides = [
        *SMALL,
        "distributed.train_workers=2",
        "trainer.checkpoint_every=2",  # the newest checkpoint at the crash is step 0's
        "trainer.max_restarts=1",
    ]
    _, expected_weights = run(overrides, tmp_path / "reference")
    monkeypatch.setenv("TPPO_CRASH_AT", "train1_update_actor@1")  # rank 1, mid step 1
    monkeypatch.setenv("TPPO_CRASH_ONCE", str(tmp_path / "crashed_once"))
    history, weights = run(overrides, tmp_path / "crashed")
    assert (tmp_path / "crashed_once").exists()  # the worker did die
    assert [row["step"] for row in history] == [0, 1, 2]
    assert logged_steps(tmp_path / "crashed") == [0, 1, 2]  # step 0 again after the rebuild, once
    assert comparable(tmp_path / "crashed") == comparable(tmp_path / "reference")
    for name, tensor in expected_weights.items():
        assert torch.equal(weights[name], tensor), name


def test_a_training_worker_death_with_no_restart_left_stops_the_run_naming_the_checkpoint(
    tmp_path, monkeypatch, capsys
):
    from tppo.cli import main

    monkeypatch.setenv("TPPO_CRASH_AT", "train0_update_critic@1")  # every time step 1 is run
    out = tmp_path / "run"
    # no restart left (the rebuild itself is the test above): the first death stops the run
    args = [*SMALL, "distributed.train_workers=2", "trainer.checkpoint_every=1", "trainer.max_restarts=0"]
    assert main(["train", "--output-dir", str(out), *args]) == 1
    err = capsys.readouterr().err
    checkpoint = out / "checkpoints" / "step_00000001"
    assert "training worker 0 died" in err and "after 0 restart(s)" in err, err[-2000:]
    assert f"Resume from checkpoint {checkpoint}" in err and "trainer.max_restarts=0" in err
    assert f"tppo train --resume --output-dir {out}" in err
    assert logged_steps(out) == [0]  # step 1 never finished
