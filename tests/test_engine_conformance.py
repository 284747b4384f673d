"""The engine contract, one suite for every registered engine (``hf`` always; ``vllm`` when installed).

On the demo model (``tppo-demo``): greedy continuation of prefixes, finish reasons and budgets, the
log-prob contract (the sampled token's log-prob under ``logits / temperature``, top-k, top-p,
renormalised, against a fresh forward pass of the same weights), and seeds. Each engine is built
once per module (vLLM's start-up is slow), by its registered name, as the trainer builds it.

Every test runs twice per engine: through ``generate``, and through ``generate_refilling`` (the path
``rollout.refill_within_step`` takes) with a refill that adds nothing; the refill tests at the end
add rows for real.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does: idle OpenMP threads sleep

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch
from transformers import PreTrainedModel

from tppo.config import TPPOConfig, load_config
from tppo.data import build_data
from tppo.engines import FINISH_REASONS, LENGTH, STOP, Engine, get_engine_factory
from tppo.engines.sampling import processed_log_probs
from tppo.engines.types import Completion, Refill, Request, SamplingParams
from tppo.models import Vocabulary, load_policy, load_vocabulary

GREEDY = SamplingParams(temperature=0.0)
ENGINES_UNDER_TEST = [
    "hf",
    pytest.param(
        "vllm",
        marks=pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed"),
    ),
]


@dataclass
class Demo:
    config: TPPOConfig
    policy: PreTrainedModel
    vocabulary: Vocabulary
    prompts: list[list[int]]


@pytest.fixture(scope="module")
def demo() -> Demo:
    config = load_config(
        None,
        [
            "rollout.window_length=64",
            "rollout.max_response_length=64",
            "rollout.vllm.kv_cache_memory_gib=0.0625",
        ],
    )
    policy = load_policy(config.model)
    vocabulary = load_vocabulary(config.model)
    rows = build_data(config.data, vocabulary.tokenizer, seed=0).train
    return Demo(config, policy, vocabulary, [list(row.token_ids) for row in rows[:24]])


@pytest.fixture(scope="module", params=ENGINES_UNDER_TEST)
def built(request: pytest.FixtureRequest, demo: Demo) -> Iterator[Engine]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    engine = get_engine_factory(request.param).from_config(demo.config, demo.policy, demo.vocabulary, seed=0)
    yield engine
    engine.close()
    torch.set_num_threads(threads)


class ThroughRefilling:
    """An engine seen through ``generate_refilling`` with a refill that adds no row."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def generate(
        self, prefixes: list[list[int]], max_new_tokens: list[int], sampling: SamplingParams
    ) -> list[Completion]:
        return self.engine.generate_refilling(prefixes, max_new_tokens, sampling, lambda *_: None)

    def __getattr__(self, name: str) -> object:
        return getattr(self.engine, name)


@pytest.fixture(params=["generate", "generate_refilling"])
def engine(request: pytest.FixtureRequest, built: Engine) -> Engine:
    return built if request.param == "generate" else ThroughRefilling(built)  # type: ignore[return-value]


def fresh_log_probs(
    policy: PreTrainedModel, prefix: list[int], tokens: list[int], sampling: SamplingParams
) -> torch.Tensor:
    """The contract's log-prob of each of ``tokens`` after ``prefix``, from one unpadded forward pass."""
    with torch.no_grad():
        logits = policy(input_ids=torch.tensor([[*prefix, *tokens]])).logits[0, len(prefix) - 1 : -1]
    return processed_log_probs(logits, sampling).gather(-1, torch.tensor(tokens)[:, None])[:, 0]


def carried_prefixes(engine: Engine, demo: Demo, n: int) -> list[list[int]]:
    """Prompt + the start of the model's own greedy response (as carried-over slots hold), uneven."""
    prompts = demo.prompts[:n]
    heads = engine.generate(prompts, [i % 6 for i in range(n)], GREEDY)
    return [p + c.token_ids for p, c in zip(prompts, heads, strict=True)]


def test_greedy_continuation_of_prefixes_equals_each_prefix_continued_alone(
    engine: Engine, demo: Demo
) -> None:
    prefixes = carried_prefixes(engine, demo, 8)
    budgets = [20, 3, 20, 9, 1, 20, 14, 20]
    together = engine.generate(prefixes, budgets, GREEDY)
    for i, (prefix, budget) in enumerate(zip(prefixes, budgets, strict=True)):
        (alone,) = engine.generate([prefix], [budget], GREEDY)
        assert together[i].token_ids == alone.token_ids, f"row {i}"
        assert together[i].finish_reason == alone.finish_reason, f"row {i}"
        # greedy is the argmax of the policy itself: the chosen token's log-prob is the largest
        with torch.no_grad():
            ids = torch.tensor([[*prefix, *alone.token_ids]])
            logits = demo.policy(input_ids=ids).logits[0, len(prefix) - 1 : -1]
        best = torch.log_softmax(logits.float(), -1).max(-1).values
        torch.testing.assert_close(torch.tensor(alone.log_probs), best, atol=1e-4, rtol=0)


@pytest.mark.parametrize("sampling", [GREEDY, SamplingParams(temperature=1.0)], ids=["greedy", "t1"])
def test_finish_reasons_and_budgets(engine: Engine, demo: Demo, sampling: SamplingParams) -> None:
    """``stop``: the EOS is the last token and the only one; ``length``: exactly the budget, no EOS;
    never more tokens than the budget; a budget of 0 gives an empty ``length`` completion."""
    eos = set(demo.vocabulary.eos_token_ids)
    prefixes = demo.prompts[:16]
    budgets = [(0, 1, 3, 8, 64)[i % 5] for i in range(16)]
    engine.reseed(5)
    completions = engine.generate(prefixes, budgets, sampling)
    assert len(completions) == len(prefixes)
    for i, (budget, completion) in enumerate(zip(budgets, completions, strict=True)):
        assert completion.finish_reason in FINISH_REASONS
        assert len(completion.token_ids) <= budget, f"row {i}"
        assert len(completion.log_probs) == len(completion.token_ids)
        if completion.finish_reason == STOP:
            assert completion.token_ids[-1] in eos and not set(completion.token_ids[:-1]) & eos, f"row {i}"
        else:
            assert len(completion.token_ids) == budget and not set(completion.token_ids) & eos, f"row {i}"
    assert [completions[i].token_ids for i in range(0, 16, 5)] == [[]] * 4
    assert {completions[i].finish_reason for i in (1, 6, 11)} == {
        LENGTH
    }  # budget 1: no demo answer is that short
    assert STOP in {completions[i].finish_reason for i in (4, 9, 14)}  # budget 64: the demo answers end


@pytest.mark.parametrize(
    "sampling",
    [
        GREEDY,
        SamplingParams(temperature=0.7),
        SamplingParams(temperature=1.3, top_p=0.8),
        SamplingParams(temperature=0.7, top_k=5),
        SamplingParams(temperature=1.2, top_k=6, top_p=0.9),
    ],
    ids=["greedy", "t0.7", "t1.3-top_p", "t0.7-top_k", "t1.2-top_k-top_p"],
)
def test_log_probs_are_the_contracts_against_a_fresh_forward_pass(
    engine: Engine, demo: Demo, sampling: SamplingParams
) -> None:
    prefixes = carried_prefixes(engine, demo, 12)
    engine.reseed(11)
    completions = engine.generate(prefixes, [24] * len(prefixes), sampling)
    assert sum(len(c.token_ids) for c in completions) > 100
    for i, (prefix, completion) in enumerate(zip(prefixes, completions, strict=True)):
        want = fresh_log_probs(demo.policy, prefix, completion.token_ids, sampling)
        got = torch.tensor(completion.log_probs)
        assert torch.isfinite(want).all(), f"row {i}: a sampled token outside the processed support"
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0, msg=f"row {i}")


def test_same_seed_same_tokens_and_another_seed_other_tokens(engine: Engine, demo: Demo) -> None:
    sampling = SamplingParams(temperature=1.5)  # the demo model is sure of itself: make draws vary
    prefixes, budgets = demo.prompts[:8], [16] * 8

    def tokens() -> list[list[int]]:
        return [c.token_ids for c in engine.generate(prefixes, budgets, sampling)]

    engine.reseed(123)
    first = tokens()
    state = engine.get_rng_state()
    second = tokens()
    engine.reseed(123)
    assert tokens() == first
    engine.set_rng_state(state)
    assert tokens() == second
    assert second != first  # the stream moves on
    engine.reseed(124)
    assert tokens() != first


@dataclass
class Refills:
    """A refill that gives the next queued prompt to every row that ends with an EOS, for the rest of
    a window of ``window`` decode steps, and records what it saw and gave."""

    queue: list[list[int]]
    window: int
    seen: list[tuple[int, Completion, int]]
    given: list[tuple[list[int], int, int]]  # prefix, budget, decode step it entered at

    def __call__(self, row: int, completion: Completion, decode_step: int) -> Request | None:
        self.seen.append((row, completion, decode_step))
        budget = self.window - decode_step
        if completion.finish_reason != STOP or not self.queue or budget <= 0:
            return None
        prefix = self.queue.pop(0)
        self.given.append((prefix, budget, decode_step))
        return Request(prefix, budget)


def refills(demo: Demo, window: int) -> Refills:
    return Refills([list(p) for p in demo.prompts[8:24]], window, [], [])


def test_refilled_rows_keep_the_contract_and_their_budgets(built: Engine, demo: Demo) -> None:
    sampling = SamplingParams(temperature=0.7, top_p=0.9)
    prefixes, window = demo.prompts[:8], 64
    refill: Refill = refills(demo, window)
    built.reseed(3)
    completions = built.generate_refilling(prefixes, [window] * 8, sampling, refill)
    assert isinstance(refill, Refills)
    assert len(refill.given) >= 2, "some demo answers end well within 64 tokens: rows were refilled"
    assert len(completions) == 8 + len(refill.given)
    assert sorted(row for row, _, _ in refill.seen) == list(range(len(completions)))  # each row once
    for row, completion, _ in refill.seen:
        assert completion.token_ids == completions[row].token_ids
    eos = set(demo.vocabulary.eos_token_ids)
    rows = [(list(p), window) for p in prefixes] + [(p, b) for p, b, _ in refill.given]
    for i, ((prefix, budget), completion) in enumerate(zip(rows, completions, strict=True)):
        assert len(completion.token_ids) <= budget, f"row {i}"
        if completion.finish_reason == STOP:
            assert completion.token_ids[-1] in eos, f"row {i}"
        else:
            assert len(completion.token_ids) == budget, f"row {i}"
        want = fresh_log_probs(demo.policy, prefix, completion.token_ids, sampling)
        got = torch.tensor(completion.log_probs)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0, msg=f"row {i}")
    # no row outlives the window: a refill entering at decode step d is given window - d tokens
    entered = [0] * 8 + [d for _, _, d in refill.given]
    for row, completion, ended in refill.seen:
        assert entered[row] + len(completion.token_ids) <= ended <= window, f"row {row}"


def test_greedy_refill_leaves_the_other_rows_as_they_were_and_continues_each_refill_as_alone(
    built: Engine, demo: Demo
) -> None:
    prefixes = carried_prefixes(built, demo, 8)
    budgets = [40] * 8
    plain = built.generate(prefixes, budgets, GREEDY)
    refill = refills(demo, 40)
    together = built.generate_refilling(prefixes, budgets, GREEDY, refill)
    assert refill.given, "some rows ended early and were refilled"
    assert [c.token_ids for c in together[:8]] == [c.token_ids for c in plain]
    for k, (prefix, budget, _) in enumerate(refill.given):
        (alone,) = built.generate([prefix], [budget], GREEDY)
        assert together[8 + k].token_ids == alone.token_ids, f"refill {k}"
        assert together[8 + k].finish_reason == alone.finish_reason, f"refill {k}"


def test_a_zero_budget_row_is_offered_at_decode_step_zero(built: Engine, demo: Demo) -> None:
    seen: list[tuple[int, int]] = []

    def refill(row: int, completion: Completion, decode_step: int) -> Request | None:
        seen.append((row, decode_step))
        return Request(demo.prompts[5], 6) if row == 0 else None

    completions = built.generate_refilling([demo.prompts[0], demo.prompts[1]], [0, 4], GREEDY, refill)
    assert completions[0].token_ids == [] and len(completions) == 3
    assert (0, 0) in seen and {row for row, _ in seen} == {0, 1, 2}
    (alone,) = built.generate([demo.prompts[5]], [6], GREEDY)
    assert completions[2].token_ids == alone.token_ids
