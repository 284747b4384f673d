import math

import pytest

from tppo.schedules import expected_total_steps, lr_multiplier, run_progress


def test_warmup_is_linear_from_one_step_to_full_rate() -> None:
    factors = [lr_multiplier(s, warmup_steps=4, progress=0.0, schedule="constant") for s in range(6)]
    assert factors == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("schedule", "progress", "expected"),
    [
        ("constant", 0.7, 1.0),
        ("linear", 0.0, 1.0),
        ("linear", 0.5, 0.55),
        ("linear", 1.0, 0.1),
        ("cosine", 0.0, 1.0),
        ("cosine", 0.5, 0.55),
        ("cosine", 0.25, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))),
        ("cosine", 1.0, 0.1),
        ("cosine", 3.0, 0.1),  # past the end: clamped
        ("linear", -1.0, 1.0),
    ],
)
def test_decay_hand_worked(schedule: str, progress: float, expected: float) -> None:
    got = lr_multiplier(10, warmup_steps=2, progress=progress, schedule=schedule, min_ratio=0.1)  # type: ignore[arg-type]
    assert got == pytest.approx(expected)


def test_unknown_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'step'"):
        lr_multiplier(5, warmup_steps=0, progress=0.5, schedule="step")  # type: ignore[arg-type]


def test_progress_is_the_larger_of_step_and_wall_clock_fractions() -> None:
    assert run_progress(5, warmup_steps=0, total_steps=10) == 0.5
    assert run_progress(7, warmup_steps=2, total_steps=12) == 0.5
    assert run_progress(1, warmup_steps=0, total_steps=10, elapsed_s=60.0, max_seconds=120.0) == 0.5
    assert run_progress(9, warmup_steps=0, total_steps=10, elapsed_s=1.0, max_seconds=120.0) == 0.9
    assert run_progress(50, warmup_steps=0, total_steps=10) == 1.0
    assert run_progress(0, warmup_steps=3, total_steps=10) == 0.0  # still warming up
    assert run_progress(3, warmup_steps=0, total_steps=None) == 0.0


def test_expected_total_steps_follows_the_wall_clock_budget() -> None:
    assert expected_total_steps(10, total_steps=1000, elapsed_s=100.0, max_seconds=None) == 1000
    assert expected_total_steps(10, total_steps=1000, elapsed_s=100.0, max_seconds=420.0) == 42
    assert expected_total_steps(10, total_steps=30, elapsed_s=100.0, max_seconds=420.0) == 30
    assert expected_total_steps(0, total_steps=30, elapsed_s=0.0, max_seconds=420.0) == 30
    # past the budget: never shorter than what is done
    assert expected_total_steps(10, total_steps=1000, elapsed_s=500.0, max_seconds=420.0) == 10
