from __future__ import annotations

import ast
import logging
import os
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("math_verify")

from reward_helpers import CALLS

import tppo
from tppo.math_answer import extract_final_answer, last_boxed, math_answer_reward
from tppo.rewards import (
    REWARDS,
    RewardPool,
    ScoredBatch,
    build_scorer,
    check_reward_name,
    get_reward,
    math_reward,
)

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


def test_a_reward_that_raises_on_any_input_starts_and_scores_zero_counted():
    # The pool used to warm each worker up on ("Answer: 1", "1") and failed to start on a raise.
    with build_scorer("reward_helpers:picky_reward", num_workers=2, timeout_s=5) as scorer:
        batch = scorer(["Answer: 2", "Answer: 1", "Answer: 3"], ["2", "1", "3"])
    assert batch.scores == [1.0, 0.0, 1.0]
    assert (batch.errors, batch.timeouts) == (1, 0)


def test_a_hung_reward_is_killed_at_the_limit_and_a_fresh_worker_goes_on():
    with build_scorer("reward_helpers:sleepy_pid", num_workers=1, timeout_s=1.0) as scorer:
        first = int(scorer(["0"], [""]).scores[0])  # the worker started
        start = time.perf_counter()
        batch = scorer(["30", "0"], [""] * 2)
        elapsed = time.perf_counter() - start
        assert batch.scores[0] == 0.0 and (batch.errors, batch.timeouts) == (0, 1)
        assert 1.0 <= elapsed < 8  # the limit, plus killing and replacing the worker: not 30 s
        second = int(batch.scores[1])
        assert second not in (first, os.getpid())  # the rest of the batch ran on a new worker
        with pytest.raises(ProcessLookupError):
            os.kill(first, 0)  # the hung worker is gone
        scorer.close()
        assert scorer(["0"], [""]).scores[0] not in (0.0, second)  # closed, then started again


def test_a_response_crafted_to_hang_math_verify_scores_zero_within_the_limit():
    with build_scorer("math", num_workers=1, timeout_s=1.5) as scorer:
        assert scorer(["Answer: 1"], ["1"]).scores == [1.0]  # worker started, math-verify imported
        start = time.perf_counter()
        batch = scorer([HANGING, "Answer: 5"], ["5", "5"])
        elapsed = time.perf_counter() - start
    assert (batch.scores, batch.timeouts) == ([0.0, 1.0], 1)
    assert 1.5 <= elapsed < 10


def test_a_reward_stuck_in_one_c_call_is_killed_at_once():
    # pebble stops a late worker with SIGTERM; its handler would only run after the C call, so
    # pebble would wait 3 s before a SIGKILL. The worker dies by the signal itself instead.
    with build_scorer("reward_helpers:c_hash", num_workers=1, timeout_s=1.0) as scorer:
        assert scorer(["1"], [""]).scores == [1.0]  # worker started
        start = time.perf_counter()
        batch = scorer(["1000000000", "1"], ["", ""])  # ten minutes of hashing
        elapsed = time.perf_counter() - start
    assert (batch.scores, batch.timeouts) == ([0.0, 1.0], 1)
    assert 1.0 <= elapsed < 1.0 + 2.5


def test_workers_run_items_in_parallel_in_separate_processes():
    with build_scorer("reward_helpers:sleepy_pid", num_workers=2, timeout_s=10) as scorer:
        for _ in range(20):  # until both workers have started (two items at once on two pids)
            if len(set(scorer(["0.2", "0.2"], ["", ""]).scores)) == 2:
                break
        start = time.perf_counter()
        batch = scorer(["1", "1"], ["", ""])
        elapsed = time.perf_counter() - start
    pids = {int(score) for score in batch.scores}
    assert len(pids) == 2 and os.getpid() not in pids
    assert elapsed < 1.8  # two 1 s sleeps side by side, not one after the other


def test_items_run_in_the_worker_main_thread_where_signal_alarm_works():
    with build_scorer(
        "reward_helpers:math_verify_with_its_own_timeouts", num_workers=1, timeout_s=10
    ) as scorer:
        batch = scorer(["$\\frac{1}{2}$", "$3$"], ["$0.5$", "$4$"])
    assert (batch.scores, batch.errors) == ([1.0, 0.0], 0)


def test_a_batch_counts_errors_timeouts_and_deaths_and_keeps_order(caplog):
    with (
        build_scorer("reward_helpers:length_or_trouble", num_workers=2, timeout_s=1.0) as scorer,
        caplog.at_level(logging.WARNING, logger="tppo.rewards"),
    ):
        batch = scorer(["ab", "boom", "hang", "abcd", "die", "xyz"], [""] * 6)
        assert batch.scores == [2.0, 0.0, 0.0, 4.0, 0.0, 3.0]
        assert (batch.errors, batch.timeouts) == (2, 1)
        assert scorer(["a"], [""]).scores == [1.0]  # replaced workers go on scoring
    assert "ZeroDivisionError: boom" in caplog.text
    assert "no score within 1.0 s" in caplog.text and "worker process died (exit code 3)" in caplog.text


def test_module_function_rewards_run_in_workers_and_task_verifiers_too():
    with build_scorer("reward_helpers:pid_reward", num_workers=2, timeout_s=5) as scorer:
        pids = {int(s) for s in scorer(["a", "b", "c", "d"], ["x"] * 4).scores}
    assert pids and os.getpid() not in pids
    assert CALLS == []  # the reward's side effects stayed in the workers
    with build_scorer("task:lcg", num_workers=2, timeout_s=5) as scorer:
        assert scorer(["30:521=20:283;10:351;00#664", "00#665"], ["664"] * 2).scores == [1.0, 0.0]


def test_workers_that_cannot_build_the_reward_stop_the_scorer_with_the_reason():
    scorer = build_scorer("reward_helpers:parent_only", num_workers=1, timeout_s=5)
    with pytest.raises(RuntimeError, match=r"could not be built in a worker: .*no callable 'parent_only'"):
        scorer(["x"], [""])


def test_without_a_limit_the_reward_runs_in_this_process():
    scorer = build_scorer("reward_helpers:length_or_trouble", num_workers=2, timeout_s=None)
    assert scorer(["ab", "boom", "xyz"], [""] * 3) == ScoredBatch([2.0, 0.0, 3.0], errors=1, timeouts=0)
    assert scorer.score("abcd", "") == 4.0
    assert (
        build_scorer("reward_helpers:sleepy_pid", num_workers=2, timeout_s=None).score("0", "") == os.getpid()
    )


def test_reward_names_are_checked_without_building_the_reward():
    built: list[str] = []
    REWARDS.add("probe", lambda: built.append("probe") or (lambda response, truth: 1.0))
    try:
        check_reward_name("probe")
        assert built == []  # checked, not built
        assert RewardPool("probe", timeout_s=None).score("x", "y") == 1.0 and built == ["probe"]
    finally:
        REWARDS.remove("probe")
    check_reward_name("task:lcg")
    check_reward_name("reward_helpers:picky_reward")
    with pytest.raises(KeyError, match=r"unknown task 'lgc'.*did you mean 'lcg'"):
        check_reward_name("task:lgc")
    with pytest.raises(ValueError, match=r"reward 'no_such_module:f': cannot import 'no_such_module'"):
        check_reward_name("no_such_module:f")


def test_rewards_are_pluggable_by_module_and_function():
    assert get_reward("tppo.rewards:math_reward") is math_reward
    with pytest.raises(ValueError, match=r"has no callable 'nope'"):
        get_reward("tppo.rewards:nope")
    for timeout_s in (None, 5.0):
        with pytest.raises(KeyError, match=r"unknown reward 'mathh'.*did you mean 'math'"):
            build_scorer("mathh", num_workers=2, timeout_s=timeout_s)


def _tppo_imports(path: Path) -> set[str]:
    """The tppo modules a source file imports, at any depth (function-level imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name.startswith("tppo.")}


def test_no_import_cycle_through_the_reward_modules():
    root = Path(tppo.__file__).parent
    modules = {
        ".".join(("tppo", *path.relative_to(root).with_suffix("").parts)).removesuffix(".__init__"): path
        for path in root.rglob("*.py")
    }
    graph = {name: _tppo_imports(path) & modules.keys() for name, path in modules.items()}
    for start in ("tppo.rewards", "tppo.math_answer", "tppo.reward_pool"):
        seen, todo = set(), list(graph.get(start, ()))
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo.extend(graph[name])
        assert start not in seen, f"{start} imports itself through {sorted(seen)}"
