"""Bad input and failures during training: each is refused with a message naming it, or survived
and counted (rewards that raise or hang, non-finite updates, failed checkpoint writes, signals)."""

from __future__ import annotations

import logging
import math
import os
import signal

import pytest
import torch

from tppo.checkpoint import latest_checkpoint, list_checkpoints, verify_checkpoint
from tppo.config import ConfigError, ModelConfig, load_config
from tppo.metrics import read_metrics
from tppo.models import load_models
from tppo.rewards import build_scorer

TINY = [
    "rollout.num_slots=4",
    "rollout.window_length=8",
    "rollout.max_response_length=32",
    "rollout.samples_per_prompt=2",
    "data.train_size=8",
    "data.eval_size=0",
    "trainer.eval_every=0",
    "trainer.progress=false",
    "trainer.tensorboard=false",
    "trainer.checkpoint_every=1",
    "trainer.keep_checkpoints=0",
    "trainer.reward_timeout_s=null",
    "optim.actor_lr=1e-3",
    "optim.critic_lr=1e-3",
]


def make_trainer(tmp_path, *overrides):
    from tppo.trainer import Trainer

    return Trainer(load_config(None, [*TINY, *overrides]), tmp_path)


# ---------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.keep_checkpoints=-1", r"trainer.keep_checkpoints: must be >= 0"),
        ("trainer.max_consecutive_bad_updates=0", r"trainer.max_consecutive_bad_updates: must be > 0"),
        ("trainer.reward_timeout_s=0", r"trainer.reward_timeout_s: must be > 0 or null"),
        ("trainer.checkpoint_every=often", r"trainer.checkpoint_every: expected int, got 'often'"),
        (
            "data.overlong_prompts=truncate",
            r"data.overlong_prompts: 'truncate' is not one of \['error', 'skip'\]",
        ),
    ],
)
def test_crash_safety_keys_are_checked(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


# ---------------------------------------------------------------------- model


def test_a_model_path_that_does_not_exist_is_named():
    with pytest.raises(FileNotFoundError, match=r"model path '/no/such/model' does not exist"):
        load_models(ModelConfig(policy_path="/no/such/model", device="cpu"))


def test_a_checkpoint_without_a_tokenizer_is_refused(tmp_path, tiny_qwen2):
    tiny_qwen2.save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"has no tokenizer .*model.tokenizer_path"):
        load_models(ModelConfig(policy_path=str(tmp_path), device="cpu"))


def test_a_tokenizer_without_eos_is_refused(tmp_path):
    from transformers import AutoTokenizer

    from tppo.models import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("tppo-demo"))
    tokenizer.eos_token = None
    tokenizer.save_pretrained(tmp_path / "tok")
    config = ModelConfig(tokenizer_path=str(tmp_path / "tok"), device="cpu")
    with pytest.raises(ValueError, match=r"tokenizer of .*tok' has no EOS token"):
        load_models(config)


# ---------------------------------------------------------------------- data


def test_a_prompt_over_the_limit_is_an_error_or_skipped_and_counted(caplog):
    from transformers import AutoTokenizer

    from tppo.data import task_rows
    from tppo.models import resolve_model_path
    from tppo.tasks import Example, get_task

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("tppo-demo"))
    task = get_task("lcg")
    examples = [Example("10:1=", "", "1"), Example("90:123456789=", "", "2"), Example("10:2=", "", "3")]
    with pytest.raises(ValueError, match=r"example 1: prompt of 13 tokens exceeds data.max_prompt_length=8"):
        task_rows(task, tokenizer, examples, max_prompt_length=8)
    with caplog.at_level(logging.WARNING, logger="tppo.data"):
        rows = task_rows(task, tokenizer, examples, max_prompt_length=8, overlong="skip")
    assert [r.ground_truth for r in rows] == ["1", "3"]
    assert "skipped 1 of 3 prompts longer than data.max_prompt_length=8" in caplog.text
    with pytest.raises(ValueError, match=r"no prompt fits data\.max_prompt_length=2"):
        task_rows(task, tokenizer, examples, max_prompt_length=2, overlong="skip")


@pytest.mark.slow
def test_skipped_prompts_are_counted_in_the_metrics(tmp_path):
    # collatz prompts are 2-5 characters (one token each): a limit of 3 keeps some, skips others
    overrides = ["data.task=collatz", "data.max_prompt_length=3", "data.overlong_prompts=skip"]
    trainer = make_trainer(tmp_path, *overrides)
    metrics = trainer.train_step()
    assert 0 < metrics["data/skipped_prompts"] < 8
    assert metrics["data/skipped_prompts"] == 8 - len(trainer.pool.stream.rows)


# ---------------------------------------------------------------------- reward


def test_a_reward_that_raises_hangs_or_dies_scores_zero_and_is_counted(caplog):
    with (
        build_scorer("reward_helpers:length_or_trouble", num_workers=1, timeout_s=2.0) as scorer,
        caplog.at_level(logging.WARNING, logger="tppo.rewards"),
    ):
        result = scorer(["ab", "boom", "hang", "abcd", "die", "xyz"], ["", "", "", "", "", ""])
        assert result.scores == [2.0, 0.0, 0.0, 4.0, 0.0, 3.0]
        assert (result.errors, result.timeouts) == (2, 1)
        assert scorer(["a"], [""]).scores == [1.0]  # the replaced worker goes on scoring
    assert "ZeroDivisionError: boom" in caplog.text
    assert "no score within 2.0 s" in caplog.text and "worker process died" in caplog.text


@pytest.mark.slow
@pytest.mark.parametrize("timeout_s", [None, 5.0])  # in this process, in worker processes
def test_reward_errors_are_counted_in_metrics_and_training_goes_on(tmp_path, timeout_s):
    trainer = make_trainer(tmp_path, "trainer.total_steps=4")
    trainer.scorer = build_scorer("reward_helpers:raises_sometimes", num_workers=2, timeout_s=timeout_s)
    history = trainer.train()
    assert trainer.step == 4
    errors, finished = sum(r["reward/errors"] for r in history), sum(r["rollout/finished"] for r in history)
    assert 0 < errors < finished
    assert all(r["reward/timeouts"] == 0 for r in history)


# ---------------------------------------------------------------------- numerics


def test_a_non_finite_loss_or_gradient_skips_the_update(tiny_qwen2):
    from conftest import make_prefixes

    from tppo.rollout.batch import collate
    from tppo.rollout.prompts import Prompt
    from tppo.rollout.slot_pool import Slot
    from tppo.update import UpdateSchedule, run_update

    slots = []
    for i, prefix in enumerate(make_prefixes(3, min_len=4, max_len=8)):
        prompt = Prompt(uid=i, row=i, sample=0, epoch=0, token_ids=tuple(prefix[:2]), ground_truth="")
        slots.append(Slot(prompt, 0, list(prefix[2:]), [0.0] * (len(prefix) - 2), [0] * (len(prefix) - 2)))
    batch = collate(slots, pad_token_id=0)
    batch.per_token["mask"] = batch.response_mask
    optimizer = torch.optim.AdamW(tiny_qwen2.parameters(), lr=1e-2)
    before = {n: p.detach().clone() for n, p in tiny_qwen2.named_parameters()}

    def poisoned(kind):
        def loss_fn(model, sub, token_count):
            logits = model(input_ids=sub.input_ids).logits
            if kind == "inf gradient":  # a finite loss whose gradient overflows
                logits.register_hook(lambda grad: grad * math.inf)
            loss = logits.mean() * (math.nan if kind == "nan loss" else 1.0)
            return loss, {}

        return loss_fn

    for kind in ("nan loss", "inf gradient"):
        out = run_update(
            tiny_qwen2,
            optimizer,
            batch,
            mask_key="mask",
            loss_fn=poisoned(kind),
            schedule=UpdateSchedule(num_minibatches=3),
            generator=torch.Generator().manual_seed(0),
        )
        assert (out["updates"], out["skipped_updates"]) == (3.0, 3.0), kind
    assert all(torch.equal(before[n], p) for n, p in tiny_qwen2.named_parameters())
    assert not optimizer.state  # Adam's moments never saw a non-finite gradient


@pytest.mark.slow
def test_non_finite_updates_in_a_row_stop_training_with_the_last_good_checkpoint(tmp_path, monkeypatch):
    import tppo.learner as learner_module
    from tppo.trainer import TrainingError

    real = learner_module.actor_loss_fn
    trainer = make_trainer(tmp_path, "trainer.total_steps=10", "trainer.max_consecutive_bad_updates=2")

    def actor_loss_fn(**kwargs):
        inner = real(**kwargs)

        def loss_fn(model, sub, token_count):
            loss, stats = inner(model, sub, token_count)
            return (loss * math.nan if trainer.step >= 2 else loss), stats

        return loss_fn

    monkeypatch.setattr(learner_module, "actor_loss_fn", actor_loss_fn)
    with pytest.raises(
        TrainingError, match=r"actor: every update of the last 2 steps had a non-finite"
    ) as info:
        trainer.train()
    assert "max_consecutive_bad_updates=2" in str(info.value) and "step_00000003" in str(info.value)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["actor/skipped_updates"] for r in rows] == [0, 0, 1, 1]
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [1, 2, 3]  # none of step 4
    assert latest_checkpoint(tmp_path / "checkpoints") == tmp_path / "checkpoints" / "step_00000003"
    assert not (tmp_path / "final").exists()
    # the skipped updates left the policy as it was after step 2
    from safetensors.torch import load_file

    two = load_file(tmp_path / "checkpoints" / "step_00000002" / "policy" / "model.safetensors")
    three = load_file(tmp_path / "checkpoints" / "step_00000003" / "policy" / "model.safetensors")
    assert all(torch.equal(two[k], three[k]) for k in two)
    assert all(torch.isfinite(p).all() for p in trainer.models.policy.parameters())


# ---------------------------------------------------------------------- disk and signals


@pytest.mark.slow
def test_a_failed_checkpoint_write_keeps_the_previous_and_training_goes_on(tmp_path, monkeypatch, caplog):
    import tppo.resume as resume_module

    trainer = make_trainer(tmp_path, "trainer.total_steps=3", "trainer.keep_checkpoints=1")
    real = resume_module.write_training_state

    def disk_full_at_step_2(directory, **kwargs):
        if trainer.step == 2:
            raise OSError(28, "No space left on device")
        real(directory, **kwargs)

    monkeypatch.setattr(resume_module, "write_training_state", disk_full_at_step_2)
    with caplog.at_level(logging.ERROR, logger="tppo.resume"):
        trainer.train()
    assert "could not write checkpoint" in caplog.text and "No space left on device" in caplog.text
    assert "step_00000001" in caplog.text and "still the one to resume from" in caplog.text
    # step 3 (the end) was written again, and only then was step 1 pruned
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [3]
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


@pytest.mark.slow
def test_sigterm_finishes_the_step_writes_a_checkpoint_and_stops(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, "trainer.total_steps=10", "trainer.checkpoint_every=0")
    real = trainer._update_critic

    def critic_then_signal(batch):
        if trainer.step == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-step
        return real(batch)

    monkeypatch.setattr(trainer, "_update_critic", critic_then_signal)
    previous = signal.getsignal(signal.SIGTERM)
    history = trainer.train()
    assert trainer.stop_signal == signal.SIGTERM and trainer.step == 2 and len(history) == 2
    path = latest_checkpoint(tmp_path / "checkpoints")
    assert path is not None and verify_checkpoint(path)["step"] == 2
    assert not (tmp_path / "final").exists()
    # the checkpoint's models are plain Hugging Face ones, equal to the trainer's
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

    policy = AutoModelForCausalLM.from_pretrained(path / "policy")
    live = dict(trainer.models.policy.named_parameters())
    assert all(torch.equal(p, live[n]) for n, p in policy.named_parameters())
    AutoModelForTokenClassification.from_pretrained(path / "value")
    assert AutoTokenizer.from_pretrained(path / "policy").eos_token is not None
    assert signal.getsignal(signal.SIGTERM) == previous  # handlers restored


@pytest.mark.slow
def test_a_second_signal_abandons_the_step_without_a_checkpoint(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, "trainer.total_steps=10")
    real = trainer._update_critic

    def signals_twice(batch):
        if trainer.step == 1:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return real(batch)

    monkeypatch.setattr(trainer, "_update_critic", signals_twice)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [1]


# ---------------------------------------------------------------------- resuming


def fake_run(out, config_overrides, *, state=True):
    """A run directory with one checkpoint whose trainer state records the given config."""
    import json

    from tppo.checkpoint import write_checkpoint
    from tppo.config import to_dict

    def write(directory):
        (directory / "policy").mkdir()
        (directory / "policy" / "model.safetensors").write_bytes(b"weights")
        if state:
            config = to_dict(load_config(None, config_overrides))
            (directory / "trainer_state.json").write_text(json.dumps({"config": config}))

    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 0}\n')
    write_checkpoint(out / "checkpoints", 1, write, keep=0)


def test_resuming_with_a_changed_config_is_refused_before_anything_loads(tmp_path, capsys):
    from tppo.cli import main

    fake_run(tmp_path / "run", TINY)
    args = ["train", "--output-dir", str(tmp_path / "run"), *TINY]
    assert main([*args, "rollout.num_slots=8", "algorithm.gamma=0.9", "trainer.total_steps=50"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume from" in err and "step_00000001" in err
    assert "rollout.num_slots: 4 -> 8" in err and "algorithm.gamma: 1.0 -> 0.9" in err
    assert "total_steps" not in err  # a longer run is a resumable change


def test_a_run_without_a_usable_checkpoint_needs_resume_or_overwrite(tmp_path, capsys):
    from tppo.cli import main

    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 0}\n')
    assert main(["train", "--output-dir", str(out), *TINY]) == 2
    assert "already holds a run (metrics.jsonl) but no usable checkpoint; pass --resume" in (
        capsys.readouterr().err
    )
    weights_only = tmp_path / "weights_only"
    fake_run(weights_only, TINY, state=False)
    assert main(["train", "--output-dir", str(weights_only), *TINY]) == 2
    assert "holds weights only" in capsys.readouterr().err
