"""The step metrics as pure functions, on a hand-made step of three slots."""

from __future__ import annotations

import math

import pytest
import torch

from tppo.engines import EngineStats
from tppo.rollout.batch import collate
from tppo.rollout.prompts import Prompt
from tppo.rollout.slot_pool import Slot
from tppo.step_metrics import DIAGNOSTIC_TAIL, headline, step_metrics, truncation_diagnostics, worker_metrics


def slot(uid, start_step, steps, finish=None, bootstraps=()):
    prompt = Prompt(uid=uid, row=uid, sample=0, epoch=0, token_ids=(3, 4), ground_truth="")
    out = Slot(prompt, start_step, [5] * len(steps), [-1.0] * len(steps), list(steps), finish)
    out.bootstrap_positions = [p for p, _ in bootstraps]
    out.bootstrap_values = [v for _, v in bootstraps]
    return out


def step_two():
    """Step 2 of a run with window 2: slot a (from step 1) finishes by EOS, slot b (from step 0)
    reaches the maximum length, slot c (new) carries on."""
    a = slot(0, 1, [1, 1, 2], "stop", bootstraps=[(1, 0.25)])
    b = slot(1, 0, [0, 0, 1, 1, 2], "length", bootstraps=[(1, 0.5), (3, -0.5)])
    c = slot(2, 2, [2, 2])
    a.score, b.score = 1.0, 0.0  # what the trainer's reward phase records on finished slots
    batch = collate([a, b, c], pad_token_id=0)
    mask = batch.response_mask
    batch.per_token.update(
        raw_advantages=torch.arange(15, dtype=torch.float32).reshape(3, 5) / 10,
        old_values=torch.full((3, 5), 0.5),
        returns=torch.where(batch.is_finished[:, None], 1.0, 0.0).expand(3, 5),
        policy_mask=mask & (batch.token_steps == 2),
        value_mask=mask & batch.is_finished[:, None],
    )
    return batch, [a, b], torch.tensor([1.0, 0.0, 0.0]), c


def test_truncation_diagnostics_by_hand():
    batch, retired, _, _ = step_two()
    out = truncation_diagnostics(batch, retired, step=2, gamma=1.0, policy_skip_tail=0)
    # bootstrap errors V - reward: a: 0.25 - 1 = -0.75; b: 0.5 - 0, -0.5 - 0
    assert out["diagnostics/bootstrap_edges"] == 3
    assert out["diagnostics/bootstrap_error_signed"] == pytest.approx((-0.75 + 0.5 - 0.5) / 3)
    assert out["diagnostics/bootstrap_error_abs"] == pytest.approx((0.75 + 0.5 + 0.5) / 3)
    # a spans steps 1, 2 and b steps 0, 1, 2; value tokens: a's 3 and b's 5, of which 6 are older
    assert out["diagnostics/policy_versions_mean"] == 2.5
    assert out["diagnostics/stale_value_token_frac"] == 6 / 8
    # the tail of the unfinished slot c: its last DIAGNOSTIC_TAIL (>= 2) tokens of step 2, i.e. both
    # (advantages 1.0 and 1.1); the rest of step 2's tokens: a's 0.2 and b's 0.9
    assert DIAGNOSTIC_TAIL >= 2
    assert out["diagnostics/tail_adv_mean"] == pytest.approx(1.05)
    assert out["diagnostics/rest_adv_mean"] == pytest.approx(0.55)
    # with gamma < 1 the error compares with the discounted reward: a's edge at 1 of 3 tokens
    discounted = truncation_diagnostics(batch, retired, step=2, gamma=0.5, policy_skip_tail=0)
    assert discounted["diagnostics/bootstrap_error_signed"] == pytest.approx((0.25 - 0.5 + 0.5 - 0.5) / 3)


def test_step_metrics_by_hand():
    batch, retired, scores, _ = step_two()
    engine = EngineStats(generated_tokens=4, decode_steps=2)
    actor, critic = {"clipfrac": 0.25}, {"loss": 0.5, "returns_mean": 1.0}
    out = step_metrics(
        batch,
        retired,
        finished=batch.is_finished,
        active_scores=scores,
        step=2,
        new_prompts=1,
        prompts_consumed=3,
        num_slots=4,
        engine=engine,
        actor=actor,
        critic=critic,
        gamma=1.0,
        policy_skip_tail=0,
    )
    assert out["step"] == 2 and out["rollout/new_prompts"] == 1 and out["rollout/carried"] == 2
    assert out["rollout/finished"] == 2 and out["rollout/truncated"] == 1
    assert out["rollout/slot_utilization"] == 4 / (4 * 2)
    assert (out["tokens/policy"], out["tokens/value"]) == (4, 8)
    assert out["reward/mean"] == 0.5  # a: 1, b: 0
    assert out["response_length/values"] == [3, 5] and out["response_length/mean"] == 4
    # raw advantages of step 2's tokens: 0.2 (a), 0.9 (b), 1.0 and 1.1 (c)
    assert out["advantages/raw_mean"] == pytest.approx((0.2 + 0.9 + 1.0 + 1.1) / 4)
    assert out["actor/clipfrac"] == 0.25 and out["critic/returns_mean"] == 1.0
    assert out["diagnostics/bootstrap_edges"] == 3


def test_a_step_with_nothing_finished_has_no_reward_lengths_or_errors():
    batch, _, _, c = step_two()
    alone = collate([c], pad_token_id=0)
    alone.per_token.update({k: v[2:, :2] for k, v in batch.per_token.items()})
    engine = EngineStats(generated_tokens=2, decode_steps=2)
    out = step_metrics(
        alone,
        [],
        finished=alone.is_finished,
        active_scores=torch.zeros(1),
        step=2,
        new_prompts=1,
        prompts_consumed=3,
        num_slots=1,
        engine=engine,
        actor={},
        critic={},
        gamma=1.0,
        policy_skip_tail=0,
    )
    for key in ("reward/mean", "response_length/mean", "critic/explained_variance"):
        assert math.isnan(out[key]), key
    assert out["diagnostics/bootstrap_edges"] == 0 and math.isnan(out["diagnostics/bootstrap_error_abs"])


def test_worker_metrics_count_carried_slots_per_worker():
    _, _, _, c = step_two()
    a, b = slot(0, 1, [1]), slot(1, 0, [0])
    assert worker_metrics([0, 0, 1], [a, b, c], step=2) == {
        "rollout/carried_worker0": 2,
        "rollout/carried_worker1": 0,
    }
    assert worker_metrics([0, 0, 0], [a, b, c], step=2) == {}


def test_headline():
    metrics = {"reward/mean": 0.5, "rollout/carried": 3, "time/step_s": 1.25}
    assert headline(metrics, None) == {"reward": "0.500", "carried": "3", "step_s": "1.2"}
    assert headline(metrics, 0.75)["eval_acc"] == "0.750"
