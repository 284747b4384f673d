"""What a trainer checkpoint holds, how it is written and read back (the file handling is
:mod:`tppo.checkpoint`'s).

A checkpoint ``checkpoints/step_N/`` holds everything step ``N`` reads: policy and value weights
(Hugging Face format, ``policy/`` and ``value/``), both optimizers' states, the RNG states (Python,
NumPy, torch, the learner's update shuffles, the rollout engine's sampling) and the trainer's own
state (:meth:`tppo.trainer.Trainer.state_dict`: the slot pool with every unfinished response and
the prompt stream position, the step counter, the training wall-clock, the count of consecutive
non-finite updates, the number of ``metrics.jsonl`` rows written, and the config). Resuming
restores all of it, so the resumed steps compute exactly what the uninterrupted run's did.

This module knows the learner and a trainer's state as a dict; it never sees the trainer itself.

With remote training workers (``distributed.train_workers > 0``) the training workers write their
part themselves, sharded with ``torch.distributed.checkpoint`` (``sharded/``: weights, both
optimizers, the update shuffles; see :mod:`tppo.distributed.sharded_checkpoint`) in place of
``optimizers.pt``; the Hugging Face weights beside it are gathered from the shards. Such a checkpoint
resumes with any positive number of training workers (DCP reshards), not in-process, and the other
way round.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import torch

from tppo.checkpoint import (
    SHARDED_DIR,
    STATE_FILE,
    CheckpointError,
    config_changes,
    latest_checkpoint,
    load_model_weights,
    read_state,
    read_training_state,
    rng_state,
    set_rng_state,
    write_checkpoint,
    write_training_state,
)
from tppo.config import ConfigError, TPPOConfig, to_dict

if TYPE_CHECKING:
    from tppo.learner import LearnerRole

log = logging.getLogger(__name__)

ENGINE_RNG = "engine_rng"
"""The key of a trainer state holding the rollout engine's RNG state (saved in ``rng.pt``, not in
the JSON state file)."""


def check_resumable(checkpoint: Path, config: TPPOConfig) -> None:
    """Refuse (:class:`~tppo.config.ConfigError`) a checkpoint that ``config`` cannot continue: one
    that holds weights only (older checkpoints of remote training workers), one written by the other
    kind of learner (in-process / remote training workers), or one written with a config that
    differs in a key a resumed run may not change (:data:`tppo.checkpoint.RESUMABLE_CHANGES`).
    Reads only the small state file, so it runs before anything heavy loads."""
    if not (checkpoint / STATE_FILE).is_file():
        raise ConfigError(
            f"checkpoint {str(checkpoint)!r} holds weights only (remote training workers of an older "
            "tppo wrote it) and cannot be resumed; pass --overwrite or choose another --output-dir"
        )
    sharded = (checkpoint / SHARDED_DIR).is_dir()
    if sharded != (config.distributed.train_workers > 0):
        written = "remote training workers (sharded)" if sharded else "the in-process learner"
        wanted = "a positive number" if sharded else "0"
        raise ConfigError(
            f"checkpoint {str(checkpoint)!r} was written by {written}: resume it with "
            f"distributed.train_workers set to {wanted}"
        )
    changes = config_changes(with_defaults(read_state(checkpoint)["config"]), to_dict(config))
    if changes:
        raise ConfigError(
            f"cannot resume from {str(checkpoint)!r} with a different config: {'; '.join(changes)}"
        )


def with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's config with the keys it predates filled in with their defaults: an older
    tppo ran with exactly those (a checkpoint without ``algorithm.name`` is ``ppo``)."""

    def merge(defaults: Any, values: Any) -> Any:
        if isinstance(defaults, dict) and isinstance(values, dict):
            return {
                k: merge(defaults.get(k), values[k]) if k in values else v for k, v in defaults.items()
            } | {k: v for k, v in values.items() if k not in defaults}
        return values

    return merge(to_dict(TPPOConfig()), saved)


def save_checkpoint(
    root: Path, learner: LearnerRole, state: dict[str, Any], *, step: int, keep: int
) -> Path | None:
    """Write ``root/step_N`` atomically (the learner's weights and optimizers, the RNG states, and
    the trainer ``state``), keeping the newest ``keep``.

    Not written (logged, ``None`` returned; the previous checkpoint stays the newest): when the
    weights hold a non-finite value, or when the write fails (disk full, read-only, ...).
    """
    bad = _nonfinite_weights(learner)
    if bad:
        log.error("not writing a checkpoint at step %d: non-finite weights (%s)", step, bad[:3])
        return None
    try:
        path = write_checkpoint(
            root, step, lambda directory: _write_state(learner, state, directory), keep=keep
        )
    except CheckpointError as error:
        previous = latest_checkpoint(root)
        log.error("%s; the previous checkpoint (%s) is still the one to resume from", error, previous)
        return None
    log.info("checkpoint written: %s", path)
    return path


def load_checkpoint(checkpoint: Path, learner: LearnerRole, config: TPPOConfig) -> dict[str, Any]:
    """Restore ``learner`` (weights, optimizers, update shuffles) and the global RNGs from
    ``checkpoint`` (verified by :func:`tppo.checkpoint.latest_checkpoint`) after
    :func:`check_resumable`; returns the trainer state to hand to ``Trainer.load_state_dict``."""
    from tppo.learner import Learner

    check_resumable(checkpoint, config)
    optimizers, rng, state = read_training_state(checkpoint)
    if not isinstance(learner, Learner):  # remote training workers: each loads its shards
        cast(ShardedLearnerRole, learner).load_sharded(checkpoint)
        set_rng_state(rng, {})
        return {**state, ENGINE_RNG: rng["engine"]}
    load_model_weights(learner.models.policy, checkpoint / "policy")
    learner.actor_optim.load_state_dict(optimizers["actor"])
    if learner.proximal is not None:
        load_model_weights(learner.proximal, checkpoint / "proximal")
    if learner.models.value is not None and learner.critic_optim is not None:
        load_model_weights(learner.models.value, checkpoint / "value")
        learner.critic_optim.load_state_dict(optimizers["critic"])
    set_rng_state(rng, {"update": learner.update_generator})
    return {**state, ENGINE_RNG: rng["engine"]}


def _nonfinite_weights(learner: LearnerRole) -> list[str]:
    from tppo.learner import Learner

    if not isinstance(learner, Learner):
        return []  # the weights live in the training workers
    return [
        f"{role}.{name}"
        for role, model in (("policy", learner.models.policy), ("value", learner.models.value))
        if model is not None
        for name, weight in model.named_parameters()
        if not bool(torch.isfinite(weight).all())
    ]


def _write_state(learner: LearnerRole, state: dict[str, Any], directory: Path) -> None:
    from tppo.learner import Learner

    learner.save(directory)  # policy/ and value/ in Hugging Face format
    rng: dict[str, Any]
    optimizers: dict[str, torch.optim.Optimizer] | None
    if isinstance(learner, Learner):
        rng = rng_state({"update": learner.update_generator})
        optimizers = {"actor": learner.actor_optim}
        if learner.critic_optim is not None:
            optimizers["critic"] = learner.critic_optim
    else:  # the training workers write their shards (weights, optimizers, update shuffles)
        cast("ShardedLearnerRole", learner).save_sharded(directory)
        rng, optimizers = rng_state({}), None
    rng["engine"] = state[ENGINE_RNG]
    write_training_state(
        directory,
        optimizers=optimizers,
        rng=rng,
        state={key: value for key, value in state.items() if key != ENGINE_RNG},
    )


class ShardedLearnerRole(Protocol):
    """A learner whose workers save and load their own shards of the training state
    (:class:`~tppo.distributed.ray_roles.RayLearnerGroup`)."""

    def save_sharded(self, checkpoint: Path) -> None: ...

    def load_sharded(self, checkpoint: Path) -> None: ...
