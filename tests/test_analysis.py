"""Tests for tppo.analysis: bootstrap CIs paired by seed, significance, time to target, AUC."""

from __future__ import annotations

import math

import pytest

from tppo.analysis import (
    BootstrapCI,
    _percentile,
    area_under_curve,
    bootstrap_mean_ci,
    paired_bootstrap_ci,
    ratio_bootstrap_ci,
    significant,
    time_to_target,
    vs_baseline,
)

# --- percentiles and the bootstrap ------------------------------------------------------------------


def test_percentile_interpolates_linearly_between_order_statistics():
    # values [0, 10, 20, 30]: position q * 3. q = 0.5 -> 1.5 -> 10 + 0.5 * 10 = 15;
    # q = 0.025 -> 0.075 -> 0.75; q = 0 -> 0; q = 1 -> 30.
    values = [0.0, 10.0, 20.0, 30.0]
    assert _percentile(values, 0.5) == pytest.approx(15.0)
    assert _percentile(values, 0.025) == pytest.approx(0.75)
    assert _percentile(values, 0.0) == 0.0
    assert _percentile(values, 1.0) == 30.0


def test_paired_differences_by_hand():
    # a - b = [0.5 - 0.5, 0.7 - 0.6] = [0, 0.1]: mean 0.05. A resample of two pairs has mean 0 (both
    # pairs the first, probability 1/4), 0.05 (1/2) or 0.1 (1/4): of 10,000 means about 2,500 are 0
    # and 2,500 are 0.1, so the 2.5% and 97.5% quantiles are 0 and 0.1 exactly.
    ci = paired_bootstrap_ci([0.5, 0.7], [0.5, 0.6])
    assert ci.mean == pytest.approx(0.05)
    assert ci.low == pytest.approx(0.0, abs=1e-12)
    assert ci.high == pytest.approx(0.1)
    assert (ci.n, ci.confidence) == (2, 0.95)
    assert not significant(ci, 0.0)  # the interval touches 0


def test_one_seed_gives_a_point_interval():
    ci = paired_bootstrap_ci([0.4], [0.3])
    assert ci.low == pytest.approx(0.1) and ci.high == pytest.approx(0.1) and ci.mean == pytest.approx(0.1)


def test_a_consistent_gain_is_significant_and_noise_is_not():
    method = [0.50, 0.55, 0.48, 0.52, 0.51]
    ppo = [0.40, 0.44, 0.41, 0.39, 0.43]  # differences 0.10, 0.11, 0.07, 0.13, 0.08: all > 0
    gain = paired_bootstrap_ci(method, ppo)
    assert gain.mean == pytest.approx(0.098)
    assert 0.07 <= gain.low < gain.mean < gain.high <= 0.13
    assert significant(gain, 0.0)
    noise = paired_bootstrap_ci([0.5, 0.3, 0.5, 0.3, 0.4], [0.4, 0.4, 0.4, 0.4, 0.4])  # +-0.1, 0
    assert noise.low < 0.0 < noise.high and not significant(noise, 0.0)


def test_the_bootstrap_is_reproducible_by_seed():
    a, b = [0.1, 0.5, 0.3, 0.9, 0.2], [0.2, 0.1, 0.4, 0.3, 0.2]
    assert paired_bootstrap_ci(a, b, seed=3) == paired_bootstrap_ci(a, b, seed=3)
    assert bootstrap_mean_ci([1.0, 2.0, 4.0], n_resamples=200, seed=1).mean == pytest.approx(7 / 3)


def test_a_wider_confidence_gives_a_wider_interval():
    values = [0.1, 0.5, -0.3, 0.9, 0.2, 0.0]
    narrow = bootstrap_mean_ci(values, confidence=0.5)
    wide = bootstrap_mean_ci(values, confidence=0.99)
    assert wide.low <= narrow.low <= narrow.high <= wide.high


def test_speedup_ratio_by_hand():
    # PPO / method times per seed: 100 / 50 = 2, 90 / 45 = 2: every resample's mean is 2.
    ci = ratio_bootstrap_ci([100.0, 90.0], [50.0, 45.0])
    assert (ci.mean, ci.low, ci.high) == (2.0, 2.0, 2.0)
    assert significant(ci, 1.0)
    # ratios 1.5 and 0.5: mean 1, quantiles 0.5 and 1.5, so not significant against 1.
    mixed = ratio_bootstrap_ci([30.0, 10.0], [20.0, 20.0])
    assert (mixed.mean, mixed.low, mixed.high) == (1.0, 0.5, 1.5)
    assert not significant(mixed, 1.0)


def test_as_dict_is_the_summary_shape():
    assert BootstrapCI(0.1, -0.2, 0.4, 5, 0.95).as_dict() == {"mean": 0.1, "ci95": [-0.2, 0.4]}


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: paired_bootstrap_ci([1.0], [1.0, 2.0]), "paired"),
        (lambda: paired_bootstrap_ci([], []), "at least one"),
        (lambda: paired_bootstrap_ci([math.nan], [1.0]), "finite"),
        (lambda: ratio_bootstrap_ci([1.0], [0.0]), "> 0"),
        (lambda: bootstrap_mean_ci([1.0], confidence=1.0), "confidence"),
        (lambda: bootstrap_mean_ci([1.0], n_resamples=0), "n_resamples"),
        (lambda: significant((0.3, 0.1), 0.0), "low <= high"),
    ],
)
def test_bad_inputs_are_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_significant_on_plain_pairs():
    assert significant((0.01, 0.2), 0.0)
    assert significant((-0.3, -0.1), 0.0)
    assert not significant((-0.1, 0.2), 0.0)
    assert not significant((0.0, 0.2), 0.0)  # touching the null does not exclude it
    assert significant([1.1, 1.5], 1.0)


# --- time to target -----------------------------------------------------------------------------------


def test_time_to_target_interpolates_between_evaluations():
    times, acc = [0.0, 10.0, 20.0, 30.0], [0.2, 0.3, 0.5, 0.45]
    # First at or above 0.4: evaluation 2 (0.5 at 20 s); before it 0.3 at 10 s.
    # t* = 10 + (0.4 - 0.3) / (0.5 - 0.3) * (20 - 10) = 10 + 0.5 * 10 = 15.
    assert time_to_target(times, acc, 0.4) == pytest.approx(15.0)
    assert time_to_target(times, acc, 0.5) == pytest.approx(20.0)  # reached exactly at 20 s
    assert time_to_target(times, acc, 0.2) == 0.0  # the first evaluation already meets it
    assert time_to_target(times, acc, 0.6) is None  # never
    # 0.25: between 0.2 at 0 s and 0.3 at 10 s -> 0 + 0.05 / 0.1 * 10 = 5.
    assert time_to_target(times, acc, 0.25) == pytest.approx(5.0)


def test_time_to_target_takes_the_first_crossing():
    # Crosses 0.4 at 5 s (0.3 -> 0.5 over 0..10 s), falls back, crosses again later: 5 s.
    assert time_to_target([0.0, 10.0, 20.0, 30.0], [0.3, 0.5, 0.2, 0.6], 0.4) == pytest.approx(5.0)


def test_time_to_target_checks_the_schedule():
    with pytest.raises(ValueError, match="decrease"):
        time_to_target([10.0, 5.0], [0.1, 0.2], 0.15)
    with pytest.raises(ValueError, match="entries"):
        time_to_target([0.0, 5.0], [0.1], 0.15)


# --- area under the curve -----------------------------------------------------------------------------


def test_area_under_curve_by_hand():
    times, acc = [0.0, 10.0, 20.0], [0.2, 0.4, 0.4]
    # Trapezoids: 0..10 s: (0.2 + 0.4) / 2 * 10 = 3; 10..20 s: 0.4 * 10 = 4. Budget 20: 7 / 20 = 0.35.
    assert area_under_curve(times, acc, budget=20.0) == pytest.approx(0.35)
    # Budget 15: 3 + 0.4 * 5 = 5 -> 5 / 15 = 1/3.
    assert area_under_curve(times, acc, budget=15.0) == pytest.approx(1 / 3)
    # Budget 30: the last accuracy held for 10 s more: 7 + 4 = 11 -> 11 / 30.
    assert area_under_curve(times, acc, budget=30.0) == pytest.approx(11 / 30)
    # Budget 5: cut inside the first trapezoid, accuracy 0.3 at 5 s: (0.2 + 0.3) / 2 * 5 / 5 = 0.25.
    assert area_under_curve(times, acc, budget=5.0) == pytest.approx(0.25)


def test_area_under_curve_holds_the_first_value_before_the_first_evaluation():
    # 0..5 s held at 0.1 -> 0.5; 5..10 s from 0.1 to 0.2 (the line to 0.3 at 15 s) -> 0.75. 1.25 / 10.
    assert area_under_curve([5.0, 15.0], [0.1, 0.3], budget=10.0) == pytest.approx(0.125)


def test_a_constant_curve_has_its_constant_as_area_and_sooner_is_larger():
    assert area_under_curve([0.0, 7.0, 20.0], [0.3, 0.3, 0.3], budget=20.0) == pytest.approx(0.3)
    early = area_under_curve([0.0, 5.0, 20.0], [0.2, 0.5, 0.5], budget=20.0)
    late = area_under_curve([0.0, 15.0, 20.0], [0.2, 0.5, 0.5], budget=20.0)
    assert early > late


def test_area_under_curve_checks_its_inputs():
    with pytest.raises(ValueError, match="budget"):
        area_under_curve([0.0], [0.1], budget=0.0)
    with pytest.raises(ValueError, match=">= 0"):
        area_under_curve([-1.0, 2.0], [0.1, 0.2], budget=5.0)


# --- one method against the baseline ------------------------------------------------------------------


def test_vs_baseline_by_hand():
    # Accuracy differences 0.1, 0.1, 0.1: mean 0.1, every resample 0.1 -> CI [0.1, 0.1], significant.
    # Times: seed 0 200 / 100 = 2, seed 1 300 / 150 = 2, seed 2 the method never reached it -> left out.
    out = vs_baseline([0.5, 0.6, 0.4], [0.4, 0.5, 0.3], [100.0, 150.0, None], [200.0, 300.0, 250.0])
    accuracy = out["accuracy_diff_at_budget"]
    assert isinstance(accuracy, dict)
    assert accuracy["mean"] == pytest.approx(0.1)
    assert accuracy["ci95"] == pytest.approx([0.1, 0.1])
    assert out["speedup_to_target"] == {"mean": 2.0, "ci95": [2.0, 2.0]}
    assert out["significant"] is True and out["speedup_significant"] is True
    assert (out["speedup_pairs"], out["speedup_pairs_left_out"]) == (2, 1)


def test_vs_baseline_without_any_pair_at_the_target():
    out = vs_baseline([0.5, 0.3], [0.4, 0.4], [None, 10.0], [5.0, None])
    assert out["speedup_to_target"] is None and out["speedup_significant"] is False
    assert out["significant"] is False  # differences +0.1 and -0.1
    with pytest.raises(ValueError, match="paired"):
        vs_baseline([0.5], [0.4], [1.0, 2.0], [1.0])
