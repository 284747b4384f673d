from __future__ import annotations

import os
import threading
import time

import pytest

pytest.importorskip("math_verify")

from reward_helpers import CALLS

from tppo.math_answer import extract_final_answer, last_boxed, math_answer_reward
from tppo.reward_pool import RewardPool
from tppo.rewards import PoolScorer, RewardScorer, build_scorer, get_reward, math_reward

HANGING = "Let me compute.\nAnswer: $9^{9^{9^{9}}}$"
"""math-verify evaluates this power tower (a number of ~370 million digits) when comparing."""


def test_answer_line_wins_over_boxed_and_the_last_one_counts():
    assert extract_final_answer("We get \\boxed{3}.\nAnswer: 4") == "4"
    assert extract_final_answer("Answer: 1\nwait, no.\nAnswer: 2") == "2"
    assert extract_final_answer("so $x = \\boxed{\\frac{1}{2}}$ and \\boxed{7}") == "7"
    assert extract_final_answer("**Answer:** $18$.") == "$18$"
    assert extract_final_answer("Answer: \\boxed{\\frac{3}{4}}") == "\\frac{3}{4}"
    assert last_boxed("\\boxed{a{b}c} \\boxed{d") is None  # cut inside the last box
    assert last_boxed("\\boxed{a{b}c}") == "a{b}c"


@pytest.mark.parametrize(
    ("response", "truth", "expected"),
    [
        ("Answer: 4", "4", 1.0),
        ("Answer: 5", "4", 0.0),
        ("The answer is \\boxed{\\frac12}.", "0.5", 1.0),  # fractions, boxed
        ("Answer: 0.5", "\\frac{1}{2}", 1.0),
        ("Answer: 025", "25", 1.0),  # AIME's zero padding
        ("Answer: 25", "025", 1.0),
        ("Answer: 1,080", "1080", 1.0),  # GSM8K thousands
        ("We get \\boxed{3}.\nAnswer: 4", "3", 0.0),  # the Answer: line is the final answer
        ("The result is 42, so 42 it is.", "42", 0.0),  # no final answer at all
        ("", "42", 0.0),
    ],
)
def test_math_answer_reward_on_tricky_cases(response, truth, expected):
    assert math_answer_reward(response, truth) == expected


def test_a_30000_character_response_is_scored_fast():
    long = "Let me think step by step. " * 1120 + "\nAnswer: 17"
    assert len(long) > 30_000
    math_reward("Answer: 1", "1")  # the shared pool's workers started
    start = time.perf_counter()
    assert math_reward(long, "17") == 1.0
    assert math_reward(long.replace("17", "18"), "17") == 0.0
    assert math_reward("x" * 30_000, "17") == 0.0  # no answer in 30,000 characters
    assert math_reward("Answer: " + "1" * 30_000, "17") == 0.0  # an answer too long to be one
    assert time.perf_counter() - start < 10


def test_math_reward_is_safe_from_threads():
    # math-verify's own signal.alarm timeouts raise outside the main thread; the pool does not care.
    results: list[float] = []
    threads = [
        threading.Thread(target=lambda r=r: results.append(math_reward(f"Answer: {r}", "3")))
        for r in (3, 4, 3, 3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [0.0, 1.0, 1.0, 1.0]


def test_a_response_crafted_to_hang_scores_zero_within_the_timeout():
    with RewardPool("math", num_workers=1, timeout_s=1.5) as pool:
        pool.score("Answer: 1", "1")  # worker started and warm
        pid = pool.worker_pids()[0]
        start = time.perf_counter()
        result = pool.score(HANGING, "5")
        elapsed = time.perf_counter() - start
        assert (result.score, result.status) == (0.0, "timeout")
        assert 1.5 <= elapsed < 10  # the limit, plus killing the worker
        assert pool.timeouts == 1 and pool.worker_pids() != [pid]  # the stuck worker was replaced
        assert pool.score("Answer: 5", "5").score == 1.0  # and the pool goes on


def test_batch_counts_timeouts_and_errors_and_keeps_order():
    with RewardPool("reward_helpers:crashing_reward", num_workers=2, timeout_s=5) as pool:
        batch = pool.score_batch(["ok", "raise", "crash", "ok"], ["1"] * 4)
        assert batch.scores == [1.0, 0.0, 0.0, 1.0]
        assert (batch.errors, batch.timeouts) == (2, 0)
    with RewardPool("reward_helpers:sleepy_reward", num_workers=2, timeout_s=1.0) as pool:
        batch = pool.score_batch(["0", "30", "0.1", "0"], ["1"] * 4)
        assert batch.scores == [1.0, 0.0, 1.0, 1.0] and batch.timeouts == 1


def test_workers_are_separate_processes():
    with RewardPool("reward_helpers:pid_reward", num_workers=2, timeout_s=5) as pool:
        scores = pool.score_batch(["a", "b", "c", "d"], ["x"] * 4).scores
        assert os.getpid() not in {int(s) for s in scores}
        assert {int(s) for s in scores} <= set(pool.worker_pids())
    assert CALLS == []  # the reward's side effects stayed in the workers


def test_scorer_picks_the_pool_or_one_worker():
    scorer = build_scorer("task:lcg", num_workers=2, timeout_s=5)
    try:
        assert isinstance(scorer, RewardScorer)  # built-in task verifiers: one worker process
        assert scorer(["30:521=20:283;10:351;00#664"], ["664"]).scores == [1.0]
    finally:
        scorer.close()
    scorer = build_scorer("math", num_workers=1, timeout_s=1.5)
    try:
        assert isinstance(scorer, PoolScorer)
        batch = scorer(["Answer: 2", HANGING], ["2", "5"])
        assert (batch.scores, batch.timeouts) == ([1.0, 0.0], 1)
    finally:
        scorer.close()


def test_rewards_are_pluggable_by_module_and_function():
    assert get_reward("tppo.rewards:math_reward") is math_reward
    with pytest.raises(ValueError, match=r"has no callable 'nope'"):
        get_reward("tppo.rewards:nope")
    with pytest.raises(KeyError, match=r"unknown reward 'mathh'.*did you mean 'math'"):
        RewardPool("mathh")
