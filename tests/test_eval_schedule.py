"""The evaluation schedule: every N steps, every N seconds of training time, or both."""

from __future__ import annotations

import pytest

from tppo.config import load_config
from tppo.schedules import eval_due


def test_step_schedule() -> None:
    assert eval_due(0, 0.0, None, 5, None, False)
    assert not eval_due(3, 30.0, 0.0, 5, None, False)
    assert eval_due(5, 50.0, 0.0, 5, None, False)
    assert eval_due(3, 30.0, 0.0, 5, None, True)  # the end
    assert not eval_due(3, 30.0, 0.0, 0, None, True)  # both off: never, not even at the end


def test_seconds_schedule_counts_training_time_since_the_last_evaluation() -> None:
    assert eval_due(0, 0.0, None, 0, 10.0, False)  # no evaluation yet: at once
    assert not eval_due(1, 9.9, 0.0, 0, 10.0, False)
    assert eval_due(2, 10.0, 0.0, 0, 10.0, False)  # at least 10 s
    assert not eval_due(3, 19.0, 10.0, 0, 10.0, False)  # 9 s since the last one
    assert eval_due(4, 23.0, 10.0, 0, 10.0, False)
    assert eval_due(4, 12.0, 10.0, 0, 10.0, True)


def test_both_schedules_side_by_side() -> None:
    assert eval_due(4, 3.0, 2.0, 4, 100.0, False)  # the step schedule
    assert eval_due(3, 150.0, 2.0, 4, 100.0, False)  # the seconds schedule
    assert not eval_due(3, 50.0, 2.0, 4, 100.0, False)


def test_eval_every_seconds_is_validated() -> None:
    assert load_config(None, []).trainer.eval_every_seconds is None
    assert load_config(None, ["trainer.eval_every_seconds=2.5"]).trainer.eval_every_seconds == 2.5
    with pytest.raises(ValueError, match=r"^trainer\.eval_every_seconds: must be > 0 or null"):
        load_config(None, ["trainer.eval_every_seconds=0"])


def test_bench_refuses_a_bad_eval_every_seconds(capsys) -> None:
    from tppo.cli import main

    assert main(["bench", "--eval-every-seconds", "-1", "--seeds", "1"]) == 2
    assert "trainer.eval_every_seconds" in capsys.readouterr().err


@pytest.mark.parametrize(("seconds", "evaluated_steps"), [("1e-9", [-1, 0, 1, 2]), ("1e6", [-1, 2])])
def test_trainer_evaluates_on_the_seconds_schedule(tmp_path, seconds, evaluated_steps) -> None:
    from tppo.cli import main
    from tppo.metrics import read_metrics

    small = [
        "rollout.num_slots=4",
        "rollout.max_response_length=16",
        "rollout.window_length=16",
        "rollout.samples_per_prompt=2",
        "data.train_size=16",
        "data.eval_size=4",
        "trainer.total_steps=3",
        "trainer.eval_every=0",
        f"trainer.eval_every_seconds={seconds}",
        "trainer.progress=false",
        "trainer.tensorboard=false",
    ]
    assert main(["train", "--output-dir", str(tmp_path), *small]) == 0
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows if "eval/accuracy" in r] == evaluated_steps
    clock = [r["time/train_elapsed_s"] for r in rows if r["step"] >= 0]
    assert clock == sorted(clock)  # the training clock, evaluation excluded, only grows
