"""The bench's paired statistics, on hand-worked small cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tppo.bench_stats import (
    accuracy_at_budget,
    area_under_curve,
    compare_to_baseline,
    default_target,
    paired_bootstrap_ci,
    ratio_bootstrap_ci,
    time_to_target,
)


# ---------------------------------------------------------------------------- paired_bootstrap_ci
def test_constant_differences_give_a_point_interval() -> None:
    assert paired_bootstrap_ci([1.0, 1.0, 1.0]) == (1.0, 1.0, 1.0)


def test_one_seed_gives_lo_equal_hi_equal_mean() -> None:
    assert paired_bootstrap_ci([0.25]) == (0.25, 0.25, 0.25)


def test_two_seeds_hand_worked() -> None:
    # differences [0, 1]: a resample of two seeds has mean 0 (prob 1/4), 0.5 (1/2) or 1 (1/4)
    mean, lo, hi = paired_bootstrap_ci([0.0, 1.0])
    assert (mean, lo, hi) == (0.5, 0.0, 1.0)  # the 2.5% and 97.5% quantiles fall in the outer atoms
    # a 40% interval: the 30% and 70% quantiles both fall in the middle atom
    assert paired_bootstrap_ci([0.0, 1.0], confidence=0.4) == (0.5, 0.5, 0.5)
    # the resampled means are those of uniform draws with replacement: their spread matches
    # the analytic standard error sqrt(var / n) = 0.5 / sqrt(2)
    values = np.array([0.0, 1.0])
    means = values[np.random.default_rng(0).integers(0, 2, size=(20000, 2))].mean(axis=1)
    assert means.std() == pytest.approx(0.5 / math.sqrt(2), rel=0.02)


def test_interval_is_deterministic_by_seed_and_narrows_with_confidence() -> None:
    diffs = [0.1, -0.05, 0.2, 0.07, 0.0, 0.15]
    first = paired_bootstrap_ci(diffs, seed=3)
    assert paired_bootstrap_ci(diffs, seed=3) == first
    assert paired_bootstrap_ci(diffs, seed=4) != first
    assert first[0] == pytest.approx(np.mean(diffs))
    assert first[1] < first[0] < first[2]
    narrow = paired_bootstrap_ci(diffs, seed=3, confidence=0.5)
    assert first[1] < narrow[1] <= narrow[2] < first[2]
    # all differences positive: the interval stays above 0
    assert paired_bootstrap_ci([0.1, 0.2, 0.3, 0.15, 0.25])[1] > 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"differences": []}, r"^differences: is empty"),
        ({"differences": [1.0, math.nan]}, r"^differences\[1\]: must be a finite number"),
        ({"differences": [1.0, 2.0], "confidence": 1.0}, r"^confidence: must be in \(0, 1\)"),
        ({"differences": [1.0, 2.0], "num_resamples": 0}, r"^num_resamples: must be >= 1"),
    ],
)
def test_paired_bootstrap_refuses_bad_input(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        paired_bootstrap_ci(**kwargs)


# ---------------------------------------------------------------------------- ratio_bootstrap_ci
def test_ratio_of_means_hand_worked() -> None:
    # baseline 100 s and 200 s, method 50 s and 100 s: 2x on both seeds
    assert ratio_bootstrap_ci([100.0, 200.0], [50.0, 100.0]) == pytest.approx((2.0, 2.0, 2.0))
    # a ratio of means, not a mean of ratios: (10 + 30) / (10 + 10) = 2
    ratio, lo, hi = ratio_bootstrap_ci([10.0, 30.0], [10.0, 10.0])
    assert ratio == 2.0 and (lo, hi) == (1.0, 3.0)
    assert ratio_bootstrap_ci([30.0], [10.0]) == (3.0, 3.0, 3.0)


def test_ratio_when_a_run_never_reaches_the_target() -> None:
    # the method never reached on seed 1: infinitely slow there, so the point estimate is 0 and
    # every resample drawing seed 1 (3 in 4 of them) has ratio 0
    ratio, lo, hi = ratio_bootstrap_ci([10.0, 10.0], [5.0, None])
    assert (ratio, lo, hi) == (0.0, 0.0, 2.0)
    assert ratio_bootstrap_ci([10.0, 10.0], [5.0, math.inf]) == (ratio, lo, hi)
    # the baseline never reached on seed 1: that pair is left out
    assert ratio_bootstrap_ci([10.0, None], [5.0, 1.0]) == (2.0, 2.0, 2.0)
    assert ratio_bootstrap_ci([None, None], [5.0, 1.0]) is None


def test_ratio_is_deterministic_and_refuses_bad_input() -> None:
    top, bottom = [100.0, 120.0, 90.0, 110.0], [60.0, 80.0, 70.0, 50.0]
    assert ratio_bootstrap_ci(top, bottom, seed=1) == ratio_bootstrap_ci(top, bottom, seed=1)
    with pytest.raises(ValueError, match="lengths differ"):
        ratio_bootstrap_ci([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match=r"^denominators\[0\]: must be > 0, None or inf"):
        ratio_bootstrap_ci([1.0], [0.0])
    with pytest.raises(ValueError, match=r"^numerators\[1\]: must be > 0"):
        ratio_bootstrap_ci([1.0, math.nan], [1.0, 1.0])


# ---------------------------------------------------------------------------- one curve
def test_time_to_target_on_a_curve_crossing_between_evaluations() -> None:
    times, accs = [0.0, 10.0, 20.0, 30.0], [0.2, 0.4, 0.6, 0.8]
    # 0.5 is crossed between t = 10 and t = 20: reached when measured, at 20 (no interpolation)
    assert time_to_target(times, accs, 0.5) == 20.0
    assert time_to_target(times, accs, 0.6) == 20.0  # >= counts
    assert time_to_target(times, accs, 0.9) is None
    assert time_to_target([], [], 0.5) is None
    # the first evaluation at or above, even if accuracy falls afterwards
    assert time_to_target([5.0, 6.0, 7.0], [0.1, 0.7, 0.3], 0.6) == 6.0


def test_accuracy_at_budget_is_the_last_evaluation_at_or_before_it() -> None:
    times, accs = [0.0, 10.0, 20.0], [0.2, 0.5, 0.9]
    assert accuracy_at_budget(times, accs, 10.0) == 0.5
    assert accuracy_at_budget(times, accs, 19.9) == 0.5
    assert accuracy_at_budget(times, accs, 100.0) == 0.9
    assert accuracy_at_budget([5.0], [0.4], 4.0) is None


def test_area_under_a_step_curve_by_hand() -> None:
    # first evaluation at 5 s (held back to 0), last at 15 s (held to the budget of 20 s):
    # 5 * 0.5 + 10 * (0.5 + 1.0) / 2 + 5 * 1.0 = 2.5 + 7.5 + 5 = 15; / 20 = 0.75
    assert area_under_curve([5.0, 15.0], [0.5, 1.0], budget_s=20.0) == pytest.approx(0.75)
    # a jump made of two close evaluations: 0 up to 10 s, 1 from 10.001 s on, budget 20 s
    step = area_under_curve([0.0, 10.0, 10.001, 20.0], [0.0, 0.0, 1.0, 1.0], budget_s=20.0)
    assert step == pytest.approx((0.001 / 2 + 9.999) / 20)
    # an evaluation after the budget sets the value at the budget by interpolation:
    # 0.2 at 0, 0.6 at 10, budget 5 -> 0.4 at 5: (0.2 + 0.4) / 2 = 0.3
    assert area_under_curve([0.0, 10.0], [0.2, 0.6], budget_s=5.0) == pytest.approx(0.3)
    assert area_under_curve([3.0], [0.7], budget_s=9.0) == pytest.approx(0.7)


@pytest.mark.parametrize(
    ("times", "accs", "match"),
    [
        ([0.0, 1.0], [0.5], r"of one length \(2 vs 1\)"),
        ([0.0, 2.0, 2.0], [0.1, 0.2, 0.3], r"^times\[2\]: must be after times\[1\]"),
        ([-1.0, 2.0], [0.1, 0.2], r"^times\[0\]: must be >= 0"),
        ([0.0, 1.0], [0.1, math.inf], r"^accuracies\[1\]: must be a finite number"),
    ],
)
def test_curves_are_checked(times, accs, match) -> None:
    for call in (
        lambda: time_to_target(times, accs, 0.5),
        lambda: accuracy_at_budget(times, accs, 5.0),
        lambda: area_under_curve(times, accs, budget_s=5.0),
    ):
        with pytest.raises(ValueError, match=match):
            call()


def test_budget_and_empty_curves_are_checked() -> None:
    with pytest.raises(ValueError, match=r"^budget_s: must be a finite number > 0"):
        area_under_curve([0.0], [0.5], budget_s=0.0)
    with pytest.raises(ValueError, match=r"^budget_s: must be a finite number > 0"):
        accuracy_at_budget([0.0], [0.5], math.inf)
    with pytest.raises(ValueError, match="need at least one evaluation"):
        area_under_curve([], [], budget_s=1.0)


# ---------------------------------------------------------------------------- compare_to_baseline
def _runs() -> dict[str, dict[int, tuple[list[float], list[float]]]]:
    return {
        "ppo": {
            0: ([0.0, 10.0, 20.0], [0.2, 0.4, 0.5]),
            1: ([0.0, 10.0, 20.0], [0.2, 0.3, 0.6]),
        },
        # faster: the same accuracies at half the time, and better at the budget
        "fast": {
            0: ([0.0, 5.0, 10.0, 20.0], [0.2, 0.4, 0.5, 0.7]),
            1: ([0.0, 5.0, 10.0, 20.0], [0.2, 0.3, 0.6, 0.8]),
            7: ([0.0, 5.0], [0.2, 0.9]),  # no baseline run of seed 7: not paired
        },
        "never": {  # stays at the base model's accuracy
            0: ([0.0, 10.0, 20.0], [0.2, 0.2, 0.2]),
            1: ([0.0, 10.0, 20.0], [0.2, 0.2, 0.2]),
        },
    }


def test_default_target_is_the_highest_accuracy_every_baseline_seed_reaches() -> None:
    assert default_target(_runs()["ppo"]) == 0.5
    # the base model's evaluation at time 0 does not count
    assert default_target({0: ([0.0, 5.0], [0.9, 0.1])}) == 0.1
    with pytest.raises(ValueError, match="baseline seed 3: no evaluation after training began"):
        default_target({3: ([0.0], [0.5])})


def test_compare_to_baseline_hand_worked() -> None:
    result = compare_to_baseline(_runs(), budget_s=20.0)
    assert set(result) == {"fast", "never"}
    fast = result["fast"]
    assert fast["seeds"] == [0, 1] and fast["target"] == 0.5 and fast["budget_s"] == 20.0
    # accuracy at 20 s: 0.7 - 0.5 and 0.8 - 0.6 -> 0.2 on both seeds
    acc = fast["accuracy_diff_at_budget"]
    assert acc["mean"] == pytest.approx(0.2) and acc["ci95"] == pytest.approx([0.2, 0.2]) and acc["n"] == 2
    # time to 0.5: PPO 20 s and 20 s, fast 10 s and 10 s -> 2x
    assert fast["speedup_to_target"]["mean"] == pytest.approx(2.0)
    assert fast["speedup_to_target"]["ci95"] == pytest.approx([2.0, 2.0])
    assert fast["reached_target"] == 2 and fast["significant"] is True
    # AUC over 20 s, seed 0: PPO (0.3 * 10 + 0.45 * 10) / 20 = 0.375;
    # fast (0.3 * 5 + 0.45 * 5 + 0.6 * 10) / 20 = 0.4875: + 0.1125; seed 1: PPO 7 / 20 = 0.35,
    # fast (1.25 + 2.25 + 7) / 20 = 0.525: + 0.175
    assert fast["auc"]["mean"] == pytest.approx((0.1125 + 0.175) / 2) and fast["auc"]["n"] == 2
    assert fast["auc"]["ci95"] == pytest.approx([0.1125, 0.175])

    never = result["never"]
    assert never["reached_target"] == 0
    assert never["speedup_to_target"]["mean"] == 0.0 and never["speedup_to_target"]["ci95"] == [0.0, 0.0]
    assert never["accuracy_diff_at_budget"]["mean"] == pytest.approx(-0.35)
    assert never["significant"] is True  # both intervals exclude their null value


def test_significance_parts() -> None:
    runs = _runs()
    # equal on seed 0, better on seed 1: the accuracy interval [0, 0.2] touches 0, and the
    # speed-up interval [1, 2] touches 1 -> not significant
    runs["mixed"] = {
        0: ([0.0, 10.0, 20.0], [0.2, 0.4, 0.5]),
        1: ([0.0, 10.0, 20.0], [0.2, 0.6, 0.8]),
    }
    mixed = compare_to_baseline(runs, budget_s=20.0)["mixed"]
    assert mixed["accuracy_diff_at_budget"]["ci95"] == pytest.approx([0.0, 0.2])
    assert mixed["speedup_to_target"]["ci95"] == pytest.approx([1.0, 2.0])
    assert mixed["significant"] is False
    # the speed-up part alone: same accuracy at the budget, twice as fast on both seeds
    runs["sooner"] = {s: ([0.0, 10.0, 20.0], [0.2, 0.5, 0.5 if s == 0 else 0.6]) for s in (0, 1)}
    sooner = compare_to_baseline(runs, budget_s=20.0)["sooner"]
    assert sooner["accuracy_diff_at_budget"]["ci95"] == pytest.approx([0.0, 0.0])
    assert sooner["speedup_to_target"]["ci95"] == pytest.approx([2.0, 2.0])
    assert sooner["significant"] is True
    # one paired seed has no spread: never significant, whatever its difference
    single = {"ppo": {0: runs["ppo"][0]}, "fast": {0: runs["fast"][0]}}
    assert compare_to_baseline(single, budget_s=20.0)["fast"]["significant"] is False


def test_compare_with_a_given_target_the_baseline_misses() -> None:
    result = compare_to_baseline(_runs(), budget_s=20.0, target=0.75)
    fast = result["fast"]
    # PPO never reaches 0.75: no pair for the speed-up, so it has no interval
    assert fast["speedup_to_target"] == {"mean": None, "ci95": None, "n": 0}
    assert fast["reached_target"] == 1 and fast["target"] == 0.75
    # without seeds in common, nothing is compared
    alone = compare_to_baseline({"ppo": _runs()["ppo"], "x": {9: ([0.0], [0.1])}}, budget_s=5.0)["x"]
    assert alone["seeds"] == [] and alone["accuracy_diff_at_budget"]["mean"] is None
    assert alone["significant"] is False


def test_compare_is_deterministic_and_refuses_bad_input() -> None:
    assert compare_to_baseline(_runs(), budget_s=15.0, seed=5) == compare_to_baseline(
        _runs(), budget_s=15.0, seed=5
    )
    with pytest.raises(ValueError, match=r"^baseline: 'grpo' is not among the methods"):
        compare_to_baseline(_runs(), baseline="grpo", budget_s=20.0)
    with pytest.raises(ValueError, match=r"^budget_s: must be a finite number > 0"):
        compare_to_baseline(_runs(), budget_s=-1.0)
