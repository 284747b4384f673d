"""End to end: T-PPO steps of the demo task with the shipped base model, on the CPU."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from conftest import SMALL_RUN, spy
from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

from tppo.config import load_config
from tppo.trainer import Trainer

pytestmark = pytest.mark.slow

SMALL = SMALL_RUN


def params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def changed(before, model):
    return [n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())]


def test_a_step_without_finished_responses_leaves_the_value_model_untouched(tmp_path):
    # A window of 2 tokens: the shortest correct response has 6 characters + EOS, and this seed's
    # samples emit no early EOS, so nothing finishes in the first step.
    trainer = Trainer(load_config(None, [*SMALL, "rollout.window_length=2"]), tmp_path)
    policy_0, value_0 = params(trainer.models.policy), params(trainer.models.value)
    first = trainer.train_step()
    assert first["rollout/finished"] == 0 and first["tokens/value"] == 0
    assert first["critic/updates"] == 0
    assert changed(value_0, trainer.models.value) == []
    assert changed(policy_0, trainer.models.policy)  # the policy trains on every window
    assert first["tokens/policy"] == 12 * 2


def test_steps_carry_over_and_update_both_models(tmp_path):
    trainer = Trainer(load_config(None, SMALL), tmp_path)
    policy_0, value_0 = params(trainer.models.policy), params(trainer.models.value)
    carried, finished = [], []
    for _ in range(4):
        metrics = trainer.train_step()
        carried.append(metrics["rollout/carried"])
        finished.append(metrics["rollout/finished"])
    assert carried[0] == 0 and all(c > 0 for c in carried[1:])  # unfinished ones continued
    assert sum(finished) > 0
    assert changed(policy_0, trainer.models.policy)
    assert changed(value_0, trainer.models.value)  # finished responses trained the value model
    # every slot freed by a finished response took exactly one new prompt the next step
    assert trainer.pool.stream.position == 12 + sum(finished[:-1])
    assert len(trainer.pool.active()) == 12 - finished[-1]


def test_cli_train_writes_config_metrics_tensorboard_checkpoints_and_plot(tmp_path):
    out = tmp_path / "run"
    args = [a for a in SMALL if not a.startswith(("trainer.eval_every", "trainer.tensorboard"))]
    cmd = [sys.executable, "-m", "tppo.cli", "train", "--output-dir", str(out), *args]
    cmd += ["trainer.total_steps=2", "trainer.eval_every=1", "trainer.tensorboard=true"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "plot of accuracy and reward vs wall-clock" in result.stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [-1, 0, 1]
    for key in (
        "time/step_s",
        "time/generate_s",
        "time/actor_s",
        "time/critic_s",
        "rollout/carried",
        "rollout/finished",
        "rollout/new_prompts",
        "rollout/slot_utilization",
        "tokens/policy",
        "tokens/value",
        "reward/mean",
        "response_length/mean",
        "actor/clipfrac",
        "actor/approx_kl",
        "critic/loss",
        "critic/explained_variance",
        "eval/accuracy",
    ):
        assert key in rows[2], key
    assert 0.0 < rows[2]["rollout/slot_utilization"] <= 1.0
    assert (out / "config.yaml").is_file() and (out / "plot.png").stat().st_size > 10_000
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    AutoModelForCausalLM.from_pretrained(out / "final" / "policy")
    AutoModelForTokenClassification.from_pretrained(out / "final" / "value")
    # the end of the run is a checkpoint: the same command again resumes there and appends nothing
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000002"]
    before = (out / "metrics.jsonl").read_text()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stderr and (out / "metrics.jsonl").read_text() == before


def test_learning_rates_follow_the_schedule_step_by_step(tmp_path):
    overrides = [
        *SMALL,
        "trainer.total_steps=5",
        "optim.warmup_steps=1",
        "optim.lr_schedule=linear",
        "optim.min_lr_ratio=0.2",
        "optim.actor_lr=1e-3",
        "optim.critic_lr=2e-3",
    ]
    trainer = Trainer(load_config(None, overrides), tmp_path)
    factors = []
    for _ in range(3):
        metrics = trainer.train_step()
        factors.append(metrics["optim/lr_factor"])
        assert trainer.learner.actor_optim.param_groups[0]["lr"] == pytest.approx(1e-3 * factors[-1])
        assert trainer.learner.critic_optim.param_groups[0]["lr"] == pytest.approx(2e-3 * factors[-1])
    # step 0 warms up (1 / 1), then linear over the 4 steps after it: 1.0, 0.8
    assert factors == pytest.approx([1.0, 1.0, 0.8])


def test_truncation_diagnostics_are_logged_and_consistent(tmp_path):
    trainer = Trainer(load_config(None, [*SMALL, "algorithm.policy_skip_tail=2"]), tmp_path)
    rewarded = []  # per step: (finished slot, its reward), recorded as the trainer scores them
    real_reward = trainer._reward

    def reward(active):
        scores, problems = real_reward(active)
        rewarded.append([(s, float(scores[i])) for i, s in enumerate(active) if s.finished])
        return scores, problems

    trainer._reward = reward
    rows = [trainer.train_step() for _ in range(4)]
    first = rows[0]
    # this seed's first window finishes some responses (short answers emit EOS within 8 tokens);
    # they were generated in that step alone: one version, none stale, no window edge crossed
    assert first["rollout/finished"] > 0
    assert first["diagnostics/policy_versions_mean"] == 1.0
    assert first["diagnostics/stale_value_token_frac"] == 0.0
    assert first["diagnostics/bootstrap_edges"] == 0
    later = [r for r in rows[1:] if r["diagnostics/bootstrap_edges"] > 0]
    assert later, "carried responses finished and were bootstrapped at earlier edges"
    for row in later:
        assert row["diagnostics/policy_versions_mean"] > 1.0
        assert 0.0 < row["diagnostics/stale_value_token_frac"] <= 1.0
    # the bootstrap errors are V(s_b-1) - G_b-1 over the edges the step's finished responses
    # crossed (gamma = 1: G is the reward), from the values recorded on each slot at each edge
    for row, finished in zip(rows, rewarded, strict=True):
        errors = [v - reward for slot, reward in finished for v in slot.bootstrap_values]
        assert row["diagnostics/bootstrap_edges"] == len(errors)
        signed = sum(errors) / len(errors) if errors else math.nan
        mean_abs = sum(abs(e) for e in errors) / len(errors) if errors else math.nan
        assert row["diagnostics/bootstrap_error_signed"] == pytest.approx(signed, nan_ok=True)
        assert row["diagnostics/bootstrap_error_abs"] == pytest.approx(mean_abs, nan_ok=True)
    # every unfinished slot has one bootstrap per edge it crossed, at the end of each window
    for slot in trainer.pool.active():
        assert len(slot.bootstrap_positions) == len(set(slot.token_steps))
        ends = [
            i
            for i in range(len(slot.token_steps))
            if i + 1 == len(slot.token_steps) or slot.token_steps[i + 1] != slot.token_steps[i]
        ]
        assert slot.bootstrap_positions == ends
    assert any(not math.isnan(r["diagnostics/tail_adv_abs_mean"]) for r in rows)
    assert all(not math.isnan(r["diagnostics/rest_adv_abs_mean"]) for r in rows)


def test_update_statistics_are_logged_and_mean_what_they_say(tmp_path):
    # One epoch of one minibatch: the update's forward pass runs on the weights that scored the
    # batch, so its ratios are exactly 1 and its values are the old values.
    trainer = Trainer(load_config(None, SMALL), tmp_path)
    batches = spy(trainer, "update_critic")
    rows = [trainer.train_step() for _ in range(3)]
    trained = [(row, batch) for row, batch in zip(rows, batches, strict=True) if row["critic/updates"]]
    assert trained, "some responses finished in three steps"
    for row, batch in trained:
        mask = batch.per_token["value_mask"]
        returns = float(batch.per_token["returns"][mask].double().mean())
        values = float(batch.per_token["old_values"][mask].double().mean())
        assert row["critic/returns_mean"] == pytest.approx(returns, rel=1e-6, abs=1e-7)
        assert row["critic/values_mean"] == pytest.approx(values, rel=1e-5, abs=1e-6)
    for row in rows:
        assert row["actor/ratio_mean"] == pytest.approx(1.0, abs=1e-6)
        assert row["actor/dual_clipfrac"] == 0.0  # no dual clip configured


def test_dual_clip_shows_in_its_statistic_when_it_bites(tmp_path):
    # Two epochs: the second runs on updated weights, so ratios move off 1; a dual clip at
    # c = 1.001 caps every negative-advantage token whose ratio passed 1.001.
    overrides = [*SMALL, "algorithm.ppo_epochs=2"]
    plain = Trainer(load_config(None, overrides), tmp_path / "plain").train_step()
    dual = load_config(None, [*overrides, "algorithm.dual_clip=1.001"])
    clipped = Trainer(dual, tmp_path / "dual").train_step()
    assert plain["actor/dual_clipfrac"] == 0.0
    assert plain["actor/ratio_mean"] != pytest.approx(1.0, abs=1e-7)
    # a mean over the two epochs' updates, and the first (ratios exactly 1) caps nothing
    assert 0.0 < clipped["actor/dual_clipfrac"] <= 0.5


def test_the_gap_between_engine_and_trainer_log_probs_is_logged_and_small(tmp_path):
    """Engine and trainer share one log-prob contract, top-k / top-p included: on the step's new
    tokens the recomputed old log-probs are the engine's up to float noise."""
    base = [*SMALL, "algorithm.ppo_epochs=2", "rollout.top_p=0.9", "rollout.top_k=6"]
    row = Trainer(load_config(None, base), tmp_path / "on").train_step()
    assert 0.0 <= row["rollout/logprob_gap_abs_mean"] < 1e-3
    off = Trainer(load_config(None, [*base, "algorithm.recompute_old_log_probs=false"]), tmp_path / "off")
    assert "rollout/logprob_gap_abs_mean" not in off.train_step()  # nothing recomputed to compare with
