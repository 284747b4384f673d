"""What a trainer checkpoint holds and how a trainer resumes from one (the file handling is
:mod:`tppo.checkpoint`'s).

A checkpoint ``checkpoints/step_N/`` holds everything step ``N`` reads: policy and value weights
(Hugging Face format, ``policy/`` and ``value/``), both optimizers' states, the slot pool (every
unfinished response: tokens, log-probs, the step of each token, bootstrap records) with the prompt
stream position, the RNG states (Python, NumPy, torch, the learner's update shuffles, the rollout
engine's sampling), the step counter, the training wall-clock, the count of consecutive non-finite
updates, the number of ``metrics.jsonl`` rows written, and the config. Resuming restores all of it,
so the resumed steps compute exactly what the uninterrupted run's did.

Resumable checkpoints need the in-process learner; with remote training workers
(``distributed.train_workers > 0``) a checkpoint holds the weights only (its optimizers are sharded
across the workers) and cannot be resumed from.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from tppo.checkpoint import (
    CheckpointError,
    config_changes,
    latest_checkpoint,
    load_model_weights,
    read_training_state,
    rng_state,
    set_rng_state,
    truncate_lines,
    write_checkpoint,
    write_training_state,
)
from tppo.config import ConfigError, to_dict
from tppo.learner import Learner
from tppo.metrics import MetricsLogger

if TYPE_CHECKING:
    from tppo.trainer import Trainer

log = logging.getLogger(__name__)


def save_trainer_checkpoint(trainer: Trainer, logger: MetricsLogger) -> Path | None:
    """Write ``checkpoints/step_N`` atomically, keeping the newest ``trainer.keep_checkpoints``.

    Not written (logged, ``None`` returned; the previous checkpoint stays the newest): when the
    weights hold a non-finite value, or when the write fails (disk full, read-only, ...).
    """
    if trainer.checkpointed_step == trainer.step:
        return latest_checkpoint(trainer.checkpoint_dir)
    learner = trainer.learner
    if isinstance(learner, Learner):
        bad = [
            f"{role}.{name}"
            for role, model in (("policy", learner.models.policy), ("value", learner.models.value))
            for name, weight in model.named_parameters()
            if not bool(torch.isfinite(weight).all())
        ]
        if bad:
            log.error("not writing a checkpoint at step %d: non-finite weights (%s)", trainer.step, bad[:3])
            return None
    logger.sync()
    trainer.metrics_rows = logger.rows
    try:
        path = write_checkpoint(
            trainer.checkpoint_dir,
            trainer.step,
            lambda directory: _write_state(trainer, directory),
            keep=trainer.config.trainer.keep_checkpoints,
        )
    except CheckpointError as error:
        previous = latest_checkpoint(trainer.checkpoint_dir)
        log.error("%s; the previous checkpoint (%s) is still the one to resume from", error, previous)
        return None
    trainer.checkpointed_step = trainer.step
    log.info("checkpoint written: %s", path)
    return path


def _write_state(trainer: Trainer, directory: Path) -> None:
    trainer.save(directory)  # policy/ and value/ in Hugging Face format
    learner = trainer.learner
    if not isinstance(learner, Learner):
        return  # weights only: the optimizers live, sharded, in the training workers
    rng = rng_state({"update": learner.update_generator})
    rng["engine"] = trainer.engine.get_rng_state()
    write_training_state(
        directory,
        optimizers={"actor": learner.actor_optim, "critic": learner.critic_optim},
        rng=rng,
        state={
            "step": trainer.step,
            "train_seconds": trainer.train_seconds,
            "metrics_rows": trainer.metrics_rows,
            "bad_steps": trainer.bad_steps,
            "pool": trainer.pool.state_dict(),
            "config": to_dict(trainer.config),
        },
    )


def resume_trainer(trainer: Trainer, checkpoint: Path | None) -> None:
    """Restore ``trainer`` from ``checkpoint`` (verified by :func:`tppo.checkpoint.latest_checkpoint`)
    and cut ``metrics.jsonl`` back to the rows it had written. ``None``: start this run again from
    step 0 in the same directory (its metrics are dropped)."""
    metrics = trainer.output_dir / "metrics.jsonl"
    trainer.resumed_from = checkpoint or trainer.output_dir
    if checkpoint is None:
        truncate_lines(metrics, 0)
        return
    learner = trainer.learner
    if not isinstance(learner, Learner):
        raise CheckpointError(
            "resuming needs the in-process learner (distributed.train_workers = 0): the checkpoints of "
            "remote training workers hold weights only"
        )
    optimizers, rng, state = read_training_state(checkpoint)
    changes = config_changes(state["config"], to_dict(trainer.config))
    if changes:
        raise ConfigError(
            f"cannot resume from {str(checkpoint)!r} with a different config: {'; '.join(changes)}"
        )
    load_model_weights(learner.models.policy, checkpoint / "policy")
    load_model_weights(learner.models.value, checkpoint / "value")
    learner.actor_optim.load_state_dict(optimizers["actor"])
    learner.critic_optim.load_state_dict(optimizers["critic"])
    trainer.pool.load_state_dict(state["pool"])
    set_rng_state(rng, {"update": learner.update_generator})
    trainer.engine.set_rng_state(rng["engine"])
    trainer.step, trainer.train_seconds = int(state["step"]), float(state["train_seconds"])
    trainer.bad_steps = dict(state["bad_steps"])
    trainer.metrics_rows = int(state["metrics_rows"])
    truncate_lines(metrics, trainer.metrics_rows)
    trainer.checkpointed_step = trainer.step
    log.warning("resumed from %s at step %d", checkpoint, trainer.step)
