"""Refill within the step (``rollout.refill_within_step``): the slot pool's side with a scripted engine
(through the engine interface's default, waves), then real T-PPO steps on the demo model."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pytest
import torch
from conftest import SMALL_RUN, spy

from tppo.config import load_config
from tppo.engines.base import Engine
from tppo.engines.types import LENGTH, STOP, Completion, SamplingParams
from tppo.rollout.prompts import PromptRow, PromptStream
from tppo.rollout.slot_pool import SlotPool
from tppo.roofline import context_token_sum, rollout_cost
from tppo.trainer import Trainer

EOS = 99


class ScriptedEngine(Engine):
    """Continues each prefix from a per-prompt script (the prompt's first token names it): the
    script is that prompt's whole response, ending in EOS or not."""

    def __init__(self, scripts: dict[int, list[int]]) -> None:
        super().__init__()
        self.scripts = scripts

    def generate(
        self, prefixes: Sequence[Sequence[int]], max_new_tokens: Sequence[int], sampling: SamplingParams
    ) -> list[Completion]:
        out = []
        for prefix, budget in zip(prefixes, max_new_tokens, strict=True):
            script = self.scripts[prefix[0] - 100]
            done = len(prefix) - 2
            tokens = script[done : done + budget]
            stop = bool(tokens) and tokens[-1] == EOS
            out.append(Completion(tokens, [-0.5] * len(tokens), STOP if stop else LENGTH))
        return out

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        pass


def make_pool(num_slots: int = 3, window: int = 4, max_len: int = 12) -> SlotPool:
    rows = [PromptRow(token_ids=(100 + i, 200 + i), ground_truth=str(i)) for i in range(20)]
    stream = PromptStream(rows, samples_per_prompt=1, seed=0, shuffle=False)
    return SlotPool(stream, num_slots=num_slots, window_length=window, max_response_length=max_len)


def step(pool: SlotPool, engine: Engine, step: int) -> tuple[list, int, list]:
    pool.fill(step)
    window = pool.refilling(step, [EOS])
    engine.generate_refilling(window.prefixes, window.budgets, SamplingParams(), window)
    return window.slots, window.refilled, pool.retire()


SCRIPTS = {
    0: [1, EOS],  # finishes at decode step 2 of 4: prompt 3 enters with 2 tokens to go
    1: [1, 1, 1, 1, 1, 1, EOS],  # carries over
    2: [EOS],  # finishes at step 1: prompt 4 enters with 3 tokens to go
    3: [1, EOS],  # enters at 2, finishes at 4 = l: its slot waits for the next step
    4: [1, 1, 1, 1, 1, EOS],  # enters at 1, 3 tokens, carries over
    **{i: [1, 1, 1, EOS] for i in range(5, 20)},
}


def test_a_response_that_finishes_mid_window_hands_its_slot_to_the_next_prompt_for_the_rest_of_it():
    pool = make_pool()
    slots, refilled, retired = step(pool, ScriptedEngine(SCRIPTS), 0)
    assert [s.prompt.row for s in slots] == [0, 1, 2, 3, 4]  # the step's responses, in row order
    assert refilled == 2 and pool.stream.position == 5
    assert [s.response_ids for s in slots] == [[1, EOS], [1, 1, 1, 1], [EOS], [1, EOS], [1, 1, 1]]
    assert all(s.token_steps == [0] * len(s.response_ids) and s.start_step == 0 for s in slots)
    # finished in order (0 at step 2, 2 at step 1: waves report in row order), then the slots
    assert [s.prompt.row for s in retired] == [0, 2, 3]
    # prompt 4 took prompt 2's slot and carries over; prompt 3 finished in the last decode step
    assert [None if s is None else s.prompt.row for s in pool.slots] == [None, 1, 4]
    assert pool.left == []

    slots, refilled, retired = step(pool, ScriptedEngine(SCRIPTS), 1)
    assert [s.prompt.row for s in slots][:3] == [5, 1, 4]  # the fill, then the refills
    assert slots[1].token_steps == [0, 0, 0, 0, 1, 1, 1]
    assert slots[2].token_steps == [0, 0, 0, 1, 1, 1]
    assert pool.stream.position == 6 + refilled


def test_no_refill_when_the_window_is_spent_or_the_response_goes_on():
    pool = make_pool(num_slots=2, window=4)
    scripts = {0: [1, 1, 1, EOS], 1: [1, 1, 1, 1, 1], **{i: [EOS] for i in range(2, 20)}}
    slots, refilled, retired = step(pool, ScriptedEngine(scripts), 0)
    assert refilled == 0 and len(slots) == 2 and [s.prompt.row for s in retired] == [0]


def test_a_refill_at_max_response_length_takes_the_rest_of_the_window():
    # l = L = 4 (PPO): a response reaching L at decode step 3 is finished; the refill gets 1 token
    pool = make_pool(num_slots=1, window=4, max_len=4)
    scripts = {0: [1, 1, EOS], 1: [1, 1, 1, 1, 1], 2: [EOS]}
    slots, refilled, retired = step(pool, ScriptedEngine(scripts), 0)
    assert [s.response_ids for s in slots] == [[1, 1, EOS], [1]]
    assert refilled == 1 and [s.prompt.row for s in retired] == [0]
    assert pool.slots[0] is not None and pool.slots[0].prompt.row == 1


def test_a_checkpoint_between_steps_holds_what_a_refilled_pool_needs():
    pool = make_pool()
    engine = ScriptedEngine(SCRIPTS)
    step(pool, engine, 0)
    copy = make_pool()
    copy.load_state_dict(pool.state_dict())
    assert step(copy, engine, 1)[0] == step(pool, engine, 1)[0]


REFILL = [*SMALL_RUN, "algorithm.ppo_epochs=2", "rollout.window_length=16", "rollout.refill_within_step=true"]


@pytest.mark.slow
def test_refilled_responses_are_this_steps_policy_tokens_and_value_responses(tmp_path):
    trainer = Trainer(load_config(None, REFILL), tmp_path)
    actor, critic = spy(trainer, "update_actor"), spy(trainer, "update_critic")
    rows = [trainer.train_step() for _ in range(3)]
    assert sum(r["rollout/refilled"] for r in rows) > 0
    for k, (row, batch) in enumerate(zip(rows, actor, strict=True)):
        this_step = batch.response_mask & (batch.token_steps == k)
        # every token generated in the step, refills' included, is a policy token of the step
        assert torch.equal(batch.per_token["policy_mask"], this_step)
        # ... sampled by the step's policy: the engine's log-probs are a fresh forward pass's
        assert row["rollout/logprob_gap_abs_mean"] < 1e-5
        assert row["rollout/carried"] + row["rollout/new_prompts"] + row["rollout/refilled"] == len(
            batch.is_finished
        )
    entered_and_finished = 0
    for k, batch in enumerate(critic):
        rows_in_step = (batch.token_steps == k) | ~batch.response_mask
        whole = rows_in_step.all(dim=1) & batch.is_finished  # started and finished within step k
        value_rows = batch.per_token["value_mask"].any(dim=1)
        assert torch.equal(value_rows, batch.is_finished)
        entered_and_finished += int(whole.sum())
    assert entered_and_finished > 0


def expected_context_tokens(batch, step: int) -> int:
    """Each row's context tokens over its decode steps in ``step``, from the batch alone: it entered
    the step with its prompt and the tokens of earlier steps, and generated those marked ``step``."""
    prompt = batch.attention_mask[:, : batch.prompt_width].sum(dim=1)
    before = (batch.response_mask & (batch.token_steps < step)).sum(dim=1)
    generated = (batch.response_mask & (batch.token_steps == step)).sum(dim=1)
    return sum(
        context_token_sum(int(p + b), int(g)) for p, b, g in zip(prompt, before, generated, strict=True)
    )


@pytest.mark.slow
@pytest.mark.parametrize("refill", [True, False], ids=["refill", "no_refill"])
def test_the_rollout_roofline_counts_every_rows_context_once(tmp_path, refill):
    trainer = Trainer(load_config(None, REFILL if refill else REFILL[:-1]), tmp_path)
    actor = spy(trainer, "update_actor")
    rows = [trainer.train_step() for _ in range(2)]
    assert not refill or sum(r["rollout/refilled"] for r in rows) > 0
    for k, (row, batch) in enumerate(zip(rows, actor, strict=True)):
        assert row["rollout/context_tokens"] == expected_context_tokens(batch, k) > 0
        cost = rollout_cost(
            trainer.decode_shape,
            decode_steps=row["rollout/decode_steps"],
            row_steps=row["rollout/generated_tokens"],
            context_tokens=int(row["rollout/context_tokens"]),
        )
        assert row["rollout/flops_per_byte"] == pytest.approx(cost.intensity) and cost.intensity > 0


@pytest.mark.slow
def test_refill_keeps_the_slots_busier_than_waiting_for_the_next_step(tmp_path):
    def utilization(overrides: list[str]) -> float:
        trainer = Trainer(load_config(None, overrides), tmp_path / str(len(overrides)))
        rows = [trainer.train_step() for _ in range(3)]
        return sum(r["rollout/generated_tokens"] for r in rows) / sum(
            trainer.pool.num_slots * r["rollout/decode_steps"] for r in rows
        )

    with_refill = utilization(REFILL)
    without = utilization(REFILL[:-1])
    print(f"slot utilization over 3 steps: {with_refill:.3f} with refill, {without:.3f} without")
    assert with_refill > without + 0.05, (with_refill, without)
    assert with_refill > 0.9


def test_group_methods_that_train_whole_responses_refuse_refill():
    from tppo.config_checks import ConfigError, check_config

    config = load_config(
        None,
        [
            "algorithm.name=grpo",
            "rollout.window_length=512",
            "rollout.refill_within_step=true",
        ],
    )
    with pytest.raises(ConfigError, match=r"rollout\.refill_within_step"):
        check_config(config)
