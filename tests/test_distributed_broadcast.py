"""``distributed.weight_sync=broadcast`` on a local Ray cluster (CPU, gloo): training rank 0
broadcasts the policy to the 2 rollout workers past the controller. A 3-step T-PPO run with 2 + 2
workers is the object-store run exactly (metrics apart from times), the rollout workers end with the
training workers' weights, and a rollout worker killed mid-generation (a real SIGKILL) is replaced,
fetches the weights it missed and joins a newly formed sync group: the same run again.
A rollout worker killed while it receives a broadcast breaks the training group (its rank 0 is in
the broadcast): the group is rebuilt from the newest checkpoint, the dead worker replaced, and the
run ends as the uninterrupted one.
One Ray cluster for the module; each worker takes one logical CPU."""

from __future__ import annotations

import json

import pytest
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
    "distributed.rollout_workers=2",
    "distributed.train_workers=2",
]
BROADCAST = [*SMALL, "distributed.weight_sync=broadcast"]


def run(overrides, out):
    """The run's history, and what the rollout group and the learner group say at its end."""
    trainer = Trainer(load_config(None, overrides), out)
    try:
        history = trainer.train()
        end = {
            "formed_with": trainer.learner.sync_formed_with,
            "version": trainer.engine.version,
            "stored": trainer.engine.weights is not None,
        }
        trainer.learner.sync_weights(trainer.engine)  # one more sync: the final weights
        synced = {n: float(t.double().sum()) for n, t in trainer.learner.policy_weights()}
        end["in_sync"] = all(w == pytest.approx(synced, rel=1e-9) for w in trainer.engine.checksums())
        end["engine"] = id(trainer.engine)
        return history, end
    finally:
        trainer.close()


def comparable(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith(("time/", "faults/"))} for row in rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("object_store")
    run(SMALL, out)
    return comparable(out)


def test_a_broadcast_sync_run_is_the_object_store_run(tmp_path, reference):
    history, end = run(BROADCAST, tmp_path)
    assert [row["step"] for row in history] == [0, 1, 2]
    assert comparable(tmp_path) == reference
    assert not end["stored"]  # nothing went through the object store
    assert end["formed_with"] == (end["engine"], 0)  # one sync group, formed once
    assert end["in_sync"]


def test_a_rollout_worker_killed_mid_generation_with_broadcast_sync_is_replaced(
    tmp_path, monkeypatch, reference
):
    monkeypatch.setenv("TPPO_CRASH_AT", "rollout1_generate@1")  # worker 1, in step 1's generation
    history, end = run(BROADCAST, tmp_path)
    assert [row["faults/rollout_worker_restarts"] for row in history] == [0, 1, 0]
    # the replacement fetched the weights it missed, a new sync group was formed with it
    assert end["version"] == 1 and end["formed_with"] == (end["engine"], 1)
    assert comparable(tmp_path) == reference
    assert end["in_sync"]


def test_a_rollout_worker_killed_while_receiving_a_broadcast_ends_in_the_same_run(
    tmp_path, monkeypatch, reference
):
    # worker 1 dies as step 1's sync begins, with training rank 0 in the broadcast: the training group
    # is rebuilt from the newest checkpoint, the dead rollout worker replaced, and the run goes on
    monkeypatch.setenv("TPPO_CRASH_AT", "rollout1_receive@1")
    monkeypatch.setenv("TPPO_CRASH_ONCE", str(tmp_path / "crashed-once"))
    _, end = run(BROADCAST, tmp_path / "run")
    assert (tmp_path / "crashed-once").exists()
    assert end["version"] == 1 and end["formed_with"] == (end["engine"], 1)
    assert comparable(tmp_path / "run") == reference  # every step logged once, as uninterrupted
    assert end["in_sync"]
