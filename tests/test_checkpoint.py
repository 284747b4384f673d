"""Atomic, checksummed checkpoints (tppo/checkpoint.py): write, keep k, detect torn and corrupted
ones, RNG states, metrics truncation."""

from __future__ import annotations

import json
import logging
import os
import random

import numpy as np
import pytest
import torch
from conftest import make_tiny_qwen2

from tppo.checkpoint import (
    CheckpointError,
    config_changes,
    latest_checkpoint,
    list_checkpoints,
    load_model_weights,
    rng_state,
    set_rng_state,
    truncate_lines,
    verify_checkpoint,
    write_checkpoint,
)


def files(content: dict[str, bytes]):
    def write(directory):
        for name, data in content.items():
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            (directory / name).write_bytes(data)

    return write


def test_write_is_complete_with_a_manifest_of_checksums(tmp_path):
    path = write_checkpoint(tmp_path, 7, files({"a.bin": b"abc", "sub/b.txt": b"hello"}), keep=0)
    assert path == tmp_path / "step_00000007"
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["step"] == 7
    # sha256("abc") is the FIPS 180-2 test vector
    assert manifest["files"]["a.bin"] == {
        "bytes": 3,
        "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    }
    assert set(manifest["files"]) == {"a.bin", "sub/b.txt"}
    assert verify_checkpoint(path)["step"] == 7
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000007"]  # no temporary left


def test_only_the_newest_k_are_kept(tmp_path):
    for step in (1, 2, 3, 4):
        write_checkpoint(tmp_path, step, files({"x": str(step).encode()}), keep=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 4]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: (p / "weights.bin").write_bytes(b"\x00" * 4), "fails its sha256 checksum"),
        (lambda p: (p / "weights.bin").write_bytes(b"12"), "has 2 bytes, the manifest says 4"),
        (lambda p: (p / "weights.bin").unlink(), "file 'weights.bin' is missing"),
        (lambda p: (p / "manifest.json").unlink(), "no manifest.json"),
        (lambda p: (p / "manifest.json").write_text("{not json"), "unreadable manifest.json"),
    ],
)
def test_a_damaged_newest_checkpoint_is_detected_and_the_previous_used(tmp_path, caplog, damage, message):
    write_checkpoint(tmp_path, 1, files({"weights.bin": b"good"}), keep=0)
    newest = write_checkpoint(tmp_path, 2, files({"weights.bin": b"newr"}), keep=0)
    damage(newest)
    with caplog.at_level(logging.WARNING, logger="tppo.checkpoint"):
        assert latest_checkpoint(tmp_path) == tmp_path / "step_00000001"
    assert message in caplog.text and "step_00000002" in caplog.text and "using the previous" in caplog.text
    with pytest.raises(CheckpointError, match=message):
        verify_checkpoint(newest)


def test_a_failed_write_leaves_the_previous_checkpoint_and_says_why(tmp_path):
    write_checkpoint(tmp_path, 1, files({"w": b"one"}), keep=1)

    def fails(directory):
        (directory / "w").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(CheckpointError, match=r"could not write checkpoint .*step_00000002.*No space left"):
        write_checkpoint(tmp_path, 2, fails, keep=1)
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000001"]
    assert latest_checkpoint(tmp_path) == tmp_path / "step_00000001"


def test_leftovers_of_a_killed_write_are_ignored_then_removed(tmp_path):
    write_checkpoint(tmp_path, 1, files({"w": b"one"}), keep=0)
    dead = tmp_path / ".tmp-step_00000002-999999999"  # no such process
    dead.mkdir()
    (dead / "w").write_bytes(b"partial")
    assert latest_checkpoint(tmp_path) == tmp_path / "step_00000001"
    write_checkpoint(tmp_path, 2, files({"w": b"two"}), keep=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000001", "step_00000002"]


def test_the_same_step_again_keeps_a_valid_checkpoint_and_replaces_a_damaged_one(tmp_path):
    write_checkpoint(tmp_path, 3, files({"w": b"old"}), keep=0)
    write_checkpoint(tmp_path, 3, files({"w": b"new"}), keep=0)
    assert (tmp_path / "step_00000003" / "w").read_bytes() == b"old"
    (tmp_path / "step_00000003" / "w").write_bytes(b"bad")
    write_checkpoint(tmp_path, 3, files({"w": b"new"}), keep=0)
    assert (tmp_path / "step_00000003" / "w").read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000003"]


def test_rng_states_round_trip_through_a_file(tmp_path):
    generator = torch.Generator().manual_seed(5)
    torch.save(rng_state({"update": generator}), tmp_path / "rng.pt")

    def draws():
        return (
            random.random(),
            float(np.random.rand()),
            float(torch.rand(())),
            float(torch.rand((), generator=generator)),
        )

    first = draws()
    other = torch.Generator()
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True), {"update": other})
    generator.set_state(other.get_state())
    assert draws() == first
    with pytest.raises(CheckpointError, match="no state for the random generator 'engine'"):
        set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True), {"engine": other})


def test_truncate_lines_drops_rows_after_the_checkpoint_and_a_torn_last_row(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0}\n{"step": 1}\n{"step": 2}\n{"st')
    assert truncate_lines(path, 2) == 3
    assert path.read_text() == '{"step": 0}\n{"step": 1}\n'
    with pytest.raises(CheckpointError, match="has 2 rows but the checkpoint counts 5"):
        truncate_lines(path, 5)


def test_config_changes_allow_run_length_but_not_the_algorithm():
    saved = {"trainer": {"total_steps": 10, "seed": 0}, "rollout": {"num_slots": 4}, "eval": {"x": 1}}
    current = {"trainer": {"total_steps": 20, "seed": 0}, "rollout": {"num_slots": 8}, "eval": {"x": 2}}
    assert config_changes(saved, current) == ["rollout.num_slots: 4 -> 8"]


def test_model_weights_load_back_exactly_with_tied_embeddings(tmp_path):
    model = make_tiny_qwen2(seed=1)
    model.save_pretrained(tmp_path, safe_serialization=True)
    other = make_tiny_qwen2(seed=2)
    load_model_weights(other, tmp_path)
    for (name, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(CheckpointError, match="do not fit the model"):
        load_model_weights(
            make_tiny_qwen2(hidden_size=16, num_attention_heads=2, num_key_value_heads=1), tmp_path
        )
    with pytest.raises(CheckpointError, match=r"holds no \.safetensors"):
        load_model_weights(other, tmp_path / "nowhere")


def test_checkpoint_files_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    synced, renamed = [], []
    real_fsync, real_rename = os.fsync, type(tmp_path).rename
    monkeypatch.setattr(
        os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd)
    )
    monkeypatch.setattr(
        type(tmp_path), "rename", lambda self, t: renamed.append(len(synced)) or real_rename(self, t)
    )
    write_checkpoint(tmp_path, 1, files({"a": b"1", "b": b"2"}), keep=0)
    before_rename = synced[: renamed[0]]
    assert any(p.endswith("/a") for p in before_rename) and any(p.endswith("/b") for p in before_rename)
    assert any(p.endswith("/manifest.json") for p in before_rename)


def test_check_resumable_refuses_weights_only_and_changed_configs(tmp_path):
    from tppo.config import ConfigError, load_config, to_dict
    from tppo.resume import check_resumable

    config = load_config(None, ["rollout.num_slots=4"])
    weights_only = write_checkpoint(tmp_path / "a", 1, files({"policy/model.safetensors": b"w"}), keep=0)
    with pytest.raises(ConfigError, match="holds weights only"):
        check_resumable(weights_only, config)
    state = json.dumps({"config": to_dict(config)}).encode()
    path = write_checkpoint(tmp_path / "b", 1, files({"trainer_state.json": state}), keep=0)
    check_resumable(path, config)  # the same config
    check_resumable(path, load_config(None, ["rollout.num_slots=4", "trainer.total_steps=999"]))
    with pytest.raises(ConfigError, match=r"cannot resume from .*step_00000001.*rollout\.num_slots: 4 -> 8"):
        check_resumable(path, load_config(None, ["rollout.num_slots=8"]))


@pytest.mark.slow
def test_trainer_state_dict_round_trips_into_another_trainer(tmp_path):
    from conftest import SMALL_RUN

    from tppo.config import load_config
    from tppo.resume import ENGINE_RNG
    from tppo.trainer import Trainer

    first = Trainer(load_config(None, SMALL_RUN), tmp_path / "first")
    for _ in range(2):
        first.train_step()
    state = first.state_dict()
    assert state["step"] == 2 and state["pool"]["stream"]["position"] > 0
    json.dumps({k: v for k, v in state.items() if k != ENGINE_RNG})  # the state file's part is JSON
    second = Trainer(load_config(None, SMALL_RUN), tmp_path / "second")
    assert second.state_dict()["pool"] != state["pool"]
    second.load_state_dict(state)
    restored = second.state_dict()
    assert torch.equal(restored.pop(ENGINE_RNG), state.pop(ENGINE_RNG))
    assert restored == state
    carried = [s for s in second.pool.slots if s is not None]
    assert carried and [s.response_ids for s in carried] == [
        s.response_ids for s in first.pool.slots if s is not None
    ]


def test_check_resumable_matches_the_kind_of_learner_and_lets_the_training_worker_count_change(tmp_path):
    """A sharded checkpoint (remote training workers) resumes with any positive number of training
    workers, never in-process; an in-process one never with remote workers."""
    from tppo.config import ConfigError, load_config, to_dict
    from tppo.resume import check_resumable

    two = load_config(None, ["distributed.train_workers=2"])
    state = json.dumps({"config": to_dict(two)}).encode()
    sharded = write_checkpoint(
        tmp_path / "a", 1, files({"trainer_state.json": state, "sharded/.metadata": b"m"}), keep=0
    )
    check_resumable(sharded, two)
    check_resumable(sharded, load_config(None, ["distributed.train_workers=3"]))  # DCP reshards
    with pytest.raises(
        ConfigError, match=r"remote training workers .*distributed\.train_workers set to a positive"
    ):
        check_resumable(sharded, load_config(None, []))
    state = json.dumps({"config": to_dict(load_config(None, []))}).encode()
    in_process = write_checkpoint(tmp_path / "b", 1, files({"trainer_state.json": state}), keep=0)
    with pytest.raises(
        ConfigError, match=r"in-process learner: resume it with distributed\.train_workers set to 0"
    ):
        check_resumable(in_process, two)
