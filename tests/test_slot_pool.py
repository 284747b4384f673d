"""The slot pool (successive batching) driven by a scripted fake engine."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from tppo.engines.types import LENGTH, STOP, Completion
from tppo.rollout.prompts import PromptRow, PromptStream
from tppo.rollout.slot_pool import SlotPool

EOS = 99


def make_pool(num_rows=10, samples=1, num_slots=3, window=4, max_len=10, seed=0) -> SlotPool:
    rows = [PromptRow(token_ids=(100 + i, 200 + i), ground_truth=str(i)) for i in range(num_rows)]
    stream = PromptStream(rows, samples_per_prompt=samples, seed=seed, shuffle=False)
    return SlotPool(stream, num_slots=num_slots, window_length=window, max_response_length=max_len)


class ScriptedEngine:
    """Emits, for each prefix, tokens from a per-prompt script: script[row] is that row's whole
    response (ending in EOS or not); it continues from however much was already generated."""

    def __init__(self, scripts: dict[int, list[int]]) -> None:
        self.scripts = scripts
        self.calls: list[tuple[list[list[int]], list[int]]] = []

    def generate(self, prefixes: Sequence[Sequence[int]], budgets: Sequence[int]) -> list[Completion]:
        self.calls.append(([list(p) for p in prefixes], list(budgets)))
        out = []
        for prefix, budget in zip(prefixes, budgets, strict=True):
            row = prefix[0] - 100
            done = len(prefix) - 2
            script = self.scripts[row]
            tokens = script[done : done + budget]
            stop = bool(tokens) and tokens[-1] == EOS
            out.append(Completion(tokens, [-0.5] * len(tokens), "stop" if stop else "length"))
        return out


def run_step(pool: SlotPool, engine: ScriptedEngine, step: int):
    new = pool.fill(step)
    prefixes, budgets = pool.requests()
    pool.record(step, engine.generate(prefixes, budgets), [EOS])
    return new, pool.retire()


def test_fill_takes_prompts_in_stream_order_each_repeated_per_sample():
    pool = make_pool(samples=2, num_slots=5)
    assert pool.fill(step=0) == 5
    assert [(s.prompt.row, s.prompt.sample) for s in pool.active()] == [
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
        (2, 0),
    ]
    assert [s.prompt.uid for s in pool.active()] == [0, 1, 2, 3, 4]
    assert pool.fill(step=1) == 0  # nothing empty: nothing taken


def test_carry_over_finish_at_eos_and_at_max_length_and_refill():
    # row 0 finishes in step 0 (EOS as its 3rd token); row 1 needs 3 windows then EOS;
    # row 2 never emits EOS and is cut at L = 10 after 3 windows (4 + 4 + 2).
    scripts = {
        0: [1, 2, EOS],
        1: [1, 2, 3, 4, 5, 6, 7, 8, 9, EOS],
        2: list(range(1, 20)),
        3: [7, EOS],
        4: [EOS],
    }
    pool, engine = make_pool(num_slots=3, window=4, max_len=10), ScriptedEngine(scripts)

    new, retired = run_step(pool, engine, step=0)
    assert new == 3 and [s.prompt.row for s in retired] == [0]
    assert retired[0].finish == STOP and retired[0].response_ids == [1, 2, EOS]
    assert engine.calls[0][1] == [4, 4, 4]

    new, retired = run_step(pool, engine, step=1)
    assert new == 1  # row 3 takes the retired slot; rows 1 and 2 carry over
    prefixes, budgets = engine.calls[1]
    assert prefixes[1] == [101, 201, 1, 2, 3, 4]  # the carried slot continues where it stopped
    assert budgets == [4, 4, 4]
    assert [s.prompt.row for s in retired] == [3]

    new, retired = run_step(pool, engine, step=2)  # row 4 fills slot 0 and finishes at once
    assert new == 1
    assert engine.calls[2][1] == [4, 2, 2]  # min(l, L - len): rows 1 and 2 hold 8 tokens
    assert {s.prompt.row: s.finish for s in retired} == {4: STOP, 1: STOP, 2: LENGTH}
    assert [len(s.response_ids) for s in retired] == [1, 10, 10]
    assert pool.active() == []
    assert pool.fill(step=3) == 3  # every slot refilled from the stream, in order
    assert [s.prompt.row for s in pool.active()] == [5, 6, 7]


def test_token_steps_record_the_generating_step_and_finish_reasons():
    scripts = {0: [1, 2, 3, 4, 5, 6, EOS], 1: list(range(1, 30)), 2: [EOS], 3: [5, EOS]}
    pool, engine = make_pool(num_slots=2, window=3, max_len=7), ScriptedEngine(scripts)
    finished = []
    for step in range(4):
        finished += run_step(pool, engine, step)[1]
    by_row = {s.prompt.row: s for s in finished}
    assert by_row[0].token_steps == [0, 0, 0, 1, 1, 1, 2] and by_row[0].finish == STOP
    assert by_row[1].token_steps == [0, 0, 0, 1, 1, 1, 2] and by_row[1].finish == LENGTH
    assert len(by_row[1].response_ids) == 7
    assert by_row[2].start_step == 3 and by_row[2].token_steps == [3]
    assert by_row[0].log_probs == [-0.5] * 7


def test_length_completion_short_of_max_stays_unfinished():
    pool, engine = make_pool(num_slots=1, window=2, max_len=10), ScriptedEngine({0: list(range(1, 20))})
    _, retired = run_step(pool, engine, 0)
    assert retired == [] and not pool.active()[0].finished


def test_record_refuses_mismatched_completions():
    pool = make_pool(num_slots=2)
    pool.fill(0)
    with pytest.raises(ValueError, match="1 completions for 2 occupied slots"):
        pool.record(0, [Completion([1], [0.0], "length")], [EOS])


def test_state_dict_round_trip_continues_identically():
    scripts = {i: [*range(1, 4 + 3 * i), EOS] for i in range(10)}
    pool_a, engine_a = make_pool(num_slots=3, window=3, max_len=40), ScriptedEngine(scripts)
    for step in range(2):
        run_step(pool_a, engine_a, step)
    pool_b = make_pool(num_slots=3, window=3, max_len=40)
    pool_b.load_state_dict(pool_a.state_dict())
    engine_b = ScriptedEngine(scripts)
    for step in range(2, 6):
        _, ra = run_step(pool_a, engine_a, step)
        _, rb = run_step(pool_b, engine_b, step)
        assert [(s.prompt.uid, s.response_ids, s.token_steps) for s in ra] == [
            (s.prompt.uid, s.response_ids, s.token_steps) for s in rb
        ]
    assert engine_a.calls[2:] == engine_b.calls


def test_pool_rejects_window_longer_than_max():
    with pytest.raises(ValueError, match="window_length"):
        make_pool(window=11, max_len=10)


def test_the_pool_the_maths_and_the_engine_registry_import_neither_transformers_nor_vllm():
    """The slot pool, the algorithms and the engine names load without an engine's heavy imports."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, tppo.rollout.slot_pool, tppo.algorithms, tppo.engines\n"
        "from tppo.engines import engine_names, is_engine_name\n"
        "assert engine_names() == ['hf', 'vllm'] and is_engine_name('vllm') and not is_engine_name('vlm')\n"
        "print(sorted(m for m in ('transformers', 'vllm') if m in sys.modules))\n"
    )
    root = Path(__file__).resolve().parent.parent  # this checkout's tppo
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "[]"
