"""Groups in the slot pool: members finish at different steps, the group trains once, and what waits
is part of the checkpoint (resume loses and repeats nothing)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import SMALL_RUN

from tppo.config import load_config
from tppo.engines.types import LENGTH, STOP, Completion
from tppo.methods.group import GroupSelector
from tppo.rollout.groups import GroupBuffer
from tppo.rollout.prompts import PromptRow, PromptStream
from tppo.rollout.slot_pool import SlotPool
from tppo.trainer import Trainer

EOS = 9


def scripted_pool(num_slots: int = 4, group_size: int = 2) -> SlotPool:
    rows = [PromptRow((1, 2), "a"), PromptRow((3,), "b"), PromptRow((4, 5, 6), "c")]
    stream = PromptStream(rows, samples_per_prompt=group_size, seed=0, shuffle=False)
    return SlotPool(stream, num_slots=num_slots, window_length=2, max_response_length=6)


def run_step(pool: SlotPool, selector: GroupSelector, step: int, finishing: set[int]):
    """One scripted step: slots whose prompt uid is in ``finishing`` emit EOS, the rest two tokens."""
    pool.fill(step)
    active = pool.active()
    completions = [
        Completion([7, EOS], [-0.1, -0.2], STOP)
        if s.prompt.uid in finishing
        else Completion([7, 7], [-0.1, -0.1], LENGTH)
        for s in active
    ]
    pool.record(step, completions, [EOS])
    for slot in active:
        if slot.finished:
            slot.score = float(slot.prompt.uid % 3 == 0)
    retired = pool.retire()
    return selector.select(active, torch.zeros(len(active)), retired, step)


def test_a_group_trains_exactly_once_when_its_last_member_finishes():
    pool, selector = (
        scripted_pool(),
        GroupSelector(group_size=2, dynamic_sampling=False, min_groups=1, max_length=6, cache_length=None),
    )
    # step 0: uids 0..3 in the slots (groups {0,1} and {2,3}); 0 and 3 finish
    first = run_step(pool, selector, 0, {0, 3})
    assert first.slots == [] and first.metrics["rollout/waiting_responses"] == 2
    # step 1: 0's and 3's slots take uids 4 and 5; 1 finishes -> group {0, 1} completes
    second = run_step(pool, selector, 1, {1})
    assert [s.prompt.uid for s in second.slots] == [0, 1]
    assert second.group_ids.tolist() == [0, 0] and second.metrics["rollout/groups_completed"] == 1
    assert [s.token_steps for s in second.slots] == [[0, 0], [0, 0, 1, 1]]  # several policy versions
    # step 2: everything finishes -> {2, 3} and {4, 5} complete; nothing trains twice
    third = run_step(pool, selector, 2, {2, 4, 5, 6})
    assert sorted(s.prompt.uid for s in third.slots) == [2, 3, 4, 5]
    assert selector.buffer.num_waiting == 1  # uid 6 (its partner 7 is still generating)
    assert third.scores.tolist() == [float(s.prompt.uid % 3 == 0) for s in third.slots]


def test_the_buffer_round_trips_through_json():
    pool, selector = (
        scripted_pool(),
        GroupSelector(group_size=2, dynamic_sampling=True, min_groups=5, max_length=6, cache_length=2),
    )
    run_step(pool, selector, 0, {0, 3})
    run_step(pool, selector, 1, {1, 2})
    state = json.loads(json.dumps(selector.state_dict()))
    other = GroupSelector(group_size=2, dynamic_sampling=True, min_groups=5, max_length=6, cache_length=2)
    other.load_state_dict(state)
    assert other.state_dict() == selector.state_dict()
    with pytest.raises(ValueError, match="groups of 2"):
        GroupBuffer(3).load_state_dict(state)


def test_only_finished_scored_responses_join_a_group():
    pool = scripted_pool()
    pool.fill(0)
    with pytest.raises(ValueError, match="only finished, scored"):
        GroupBuffer(2).add(pool.active()[:1])


@pytest.mark.slow
def test_resume_in_the_middle_of_a_group_loses_and_repeats_nothing(tmp_path):
    overrides = [
        *SMALL_RUN,
        "rollout.samples_per_prompt=4",
        "algorithm.name=partial_rollout",
        "trainer.checkpoint_every=2",
    ]

    def trained_by_step(trainer, steps):
        out, original = [], trainer.selector.select

        def spy(*args):
            result = original(*args)
            out.append(sorted(s.prompt.uid for s in result.slots))
            return result

        trainer.selector.select = spy
        for _ in range(steps):
            trainer.train_step()
        return out

    straight = Trainer(load_config(None, overrides), tmp_path / "a")
    whole = trained_by_step(straight, 9)
    first = Trainer(load_config(None, overrides), tmp_path / "b")
    before: list[list[int]] = []
    while first.selector.buffer.num_waiting == 0:  # stop where finished members wait for the rest
        before += trained_by_step(first, 1)
    assert len(before) < 6
    state = copy.deepcopy(first.state_dict())
    resumed = Trainer(load_config(None, overrides), tmp_path / "c")
    resumed.load_state_dict(state)
    resumed.learner.models.policy.load_state_dict(first.models.policy.state_dict())
    resumed.learner.actor_optim.load_state_dict(first.learner.actor_optim.state_dict())
    resumed.learner.update_generator.set_state(first.learner.update_generator.get_state())
    after = trained_by_step(resumed, 9 - len(before))
    assert before + after == whole
    flat = [uid for uids in whole for uid in uids]
    assert len(flat) == len(set(flat))


def test_a_checkpoint_without_algorithm_name_resumes_as_ppo():
    from tppo.config import TPPOConfig, to_dict
    from tppo.resume import with_defaults

    saved = to_dict(TPPOConfig())
    del saved["algorithm"]["name"], saved["algorithm"]["is_cap"]
    filled = with_defaults(saved)
    assert filled["algorithm"]["name"] == "ppo" and filled == to_dict(TPPOConfig())
