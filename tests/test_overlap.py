"""Generation overlapped with training (``rollout.overlap_generation``): real T-PPO steps on the demo
model, with the HF engine and with vLLM, and the configuration it needs."""

from __future__ import annotations

import copy
import threading

import pytest
import torch
from conftest import SMALL_RUN

from tppo.config import ConfigError, load_config
from tppo.config_checks import check_names
from tppo.diagnostics import staleness_stats, token_staleness
from tppo.engines.sampling import processed_log_probs
from tppo.trainer import Trainer

OVERLAP = [*SMALL_RUN, "algorithm.ppo_epochs=2", "rollout.overlap_generation=true"]


def fresh_log_probs(policy, prefix, tokens, sampling):
    with torch.no_grad():
        logits = policy(input_ids=torch.tensor([[*prefix, *tokens]])).logits[0, len(prefix) - 1 : -1]
    return processed_log_probs(logits, sampling).gather(-1, torch.tensor(tokens)[:, None])[:, 0]


def test_token_staleness_counts_the_updates_between_generating_and_training_weights():
    steps = torch.tensor([[0, 0, 1, 2, 2], [3, 3, 3, 0, 0]])
    mask = torch.tensor([[True, True, True, True, True], [True, True, True, False, False]])
    synchronous = token_staleness(steps, step=3, ahead=False)
    assert synchronous.tolist() == [[3, 3, 2, 1, 1], [0, 0, 0, 3, 3]]
    ahead = token_staleness(steps, step=3, ahead=True)
    assert ahead.tolist() == [[3, 3, 3, 2, 2], [1, 1, 1, 3, 3]]  # window 0 is generated in its step
    this_window = mask & (steps == 3)
    assert staleness_stats(ahead, this_window) == {
        "rollout/staleness_max": 1.0,
        "rollout/stale_token_frac": 1.0,
    }
    assert staleness_stats(synchronous, this_window)["rollout/stale_token_frac"] == 0.0
    assert staleness_stats(synchronous, mask)["rollout/staleness_max"] == 3.0


def assert_each_window_came_from_the_weights_before(slots, weights_at_start, sampling):
    """Every window ``j > 0`` of each slot carries the log-probs of the weights step ``j - 1`` started
    with (window 0: step 0's)."""
    for slot in slots:
        for step in sorted(set(slot.token_steps)):
            index = [i for i, s in enumerate(slot.token_steps) if s == step]
            prefix = [*slot.prompt.token_ids, *slot.response_ids[: index[0]]]
            tokens = slot.response_ids[index[0] : index[-1] + 1]
            want = fresh_log_probs(weights_at_start[max(step - 1, 0)], prefix, tokens, sampling)
            got = torch.tensor(slot.log_probs[index[0] : index[-1] + 1])
            torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def watch(trainer):
    """Record, in order, each generation's step and thread and each actor update's start and end."""
    events, generate, update = [], trainer.engine.generate, trainer.learner.update_actor

    def generating(*args, **kwargs):
        events.append(("generate", trainer.step, threading.current_thread() is threading.main_thread()))
        return generate(*args, **kwargs)

    def updating(batch):
        events.append(("actor", trainer.step, True))
        out = update(batch)
        events.append(("actor_done", trainer.step, True))
        return out

    trainer.engine.generate, trainer.learner.update_actor = generating, updating
    return events


@pytest.mark.slow
def test_the_next_window_is_generated_by_the_previous_weights_while_the_learner_trains(tmp_path):
    trainer = Trainer(load_config(None, [*OVERLAP, "trainer.total_steps=4"]), tmp_path)
    assert trainer.engine.model is not trainer.models.policy  # the engine samples from its own copy
    events = watch(trainer)
    weights_at_start, rows = [], []
    for _ in range(4):
        weights_at_start.append(copy.deepcopy(trainer.models.policy))
        rows.append(trainer.train_step())
    # window 0 is generated in step 0 on the main thread; window j + 1 in the background, started
    # during step j before its actor update ended; the last step starts no window beyond the run
    assert events[0] == ("generate", 0, True)
    for j in range(3):
        launched = events.index(("generate", j, False))
        assert launched < events.index(("actor_done", j, True))
    assert [e for e in events if e[0] == "generate"] == [("generate", 0, True)] + [
        ("generate", j, False) for j in range(3)
    ]
    # the tokens of window j + 1 carry the log-probs of the weights step j started with
    slots = trainer.pool.active() + trainer.pool.left
    assert_each_window_came_from_the_weights_before(slots, weights_at_start, trainer.sampling)
    assert [r["rollout/staleness_max"] for r in rows] == [0.0, 1.0, 1.0, 1.0]
    assert [r["rollout/stale_token_frac"] for r in rows] == [0.0, 1.0, 1.0, 1.0]
    # the decoupled loss: importance weights of pi_old over the engine's weights
    assert rows[0]["actor/is_weight_mean"] == pytest.approx(1.0, abs=1e-5)
    assert all(r["actor/is_weight_mean"] != pytest.approx(1.0, abs=1e-6) for r in rows[1:])
    # an evaluation waits for the window in flight and evaluates the learner's current weights
    trainer.evaluate()
    for (name, mine), theirs in zip(
        trainer.models.policy.named_parameters(), trainer.engine.model.parameters(), strict=True
    ):
        assert torch.equal(mine, theirs), name
    trainer.close()


@pytest.mark.slow
def test_without_overlap_every_window_is_generated_in_its_own_step_on_the_main_thread(tmp_path):
    trainer = Trainer(load_config(None, SMALL_RUN), tmp_path)
    assert trainer.engine.model is trainer.models.policy and trainer.rollout.executor is None
    events = watch(trainer)
    rows = [trainer.train_step() for _ in range(2)]
    assert [e for e in events if e[0] == "generate"] == [("generate", 0, True), ("generate", 1, True)]
    assert all(r["rollout/staleness_max"] == 0.0 and "actor/is_weight_mean" not in r for r in rows)


@pytest.mark.slow
def test_overlap_and_refill_with_vllm_train_on_the_previous_weights_tokens(tmp_path):
    pytest.importorskip("vllm")
    overrides = [
        *OVERLAP,
        "rollout.engine=vllm",
        "rollout.vllm.kv_cache_memory_gib=0.0625",
        "rollout.refill_within_step=true",
        "rollout.window_length=16",
        "trainer.num_threads=1",  # the rollout thread must run with it too (vLLM's CPU attention checks)
    ]
    trainer = Trainer(load_config(None, overrides), tmp_path)
    weights_at_start, rows = [], []
    for _ in range(3):
        weights_at_start.append(copy.deepcopy(trainer.models.policy))
        rows.append(trainer.train_step())
    trainer.rollout.wait()
    assert sum(r["rollout/refilled"] for r in rows) > 0
    assert [r["rollout/staleness_max"] for r in rows] == [0.0, 1.0, 1.0]
    for slot in trainer.pool.active() + trainer.pool.left:
        for step in sorted(set(slot.token_steps)):
            index = [i for i, s in enumerate(slot.token_steps) if s == step]
            prefix = [*slot.prompt.token_ids, *slot.response_ids[: index[0]]]
            tokens = slot.response_ids[index[0] : index[-1] + 1]
            want = fresh_log_probs(weights_at_start[max(step - 1, 0)], prefix, tokens, trainer.sampling)
            torch.testing.assert_close(
                torch.tensor(slot.log_probs[index[0] : index[-1] + 1]), want, atol=1e-4, rtol=0
            )
    trainer.close()


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["rollout.max_staleness=0"], "rollout.max_staleness"),
        (["algorithm.recompute_old_log_probs=false"], "algorithm.recompute_old_log_probs"),
        (["algorithm.name=geppo"], "rollout.overlap_generation"),
        (["distributed.rollout_workers=2"], "rollout.overlap_generation"),
    ],
)
def test_overlap_refuses_what_it_cannot_keep_its_promises_with(overrides, key):
    with pytest.raises(ConfigError, match=rf"^{key.replace('.', '[.]')}"):
        check_names(load_config(None, ["rollout.overlap_generation=true", *overrides], validate=False))
