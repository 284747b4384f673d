"""Going on when a remote worker dies (``distributed.*``, ``trainer.max_restarts``).

A rollout worker that dies is replaced inside its group
(:class:`~tppo.distributed.ray_roles.RayRolloutGroup`), without the trainer noticing. A training
worker that dies breaks the whole training group: its peers were in a collective with it, and the
update in progress is half done on them. The step stops (:class:`~tppo.faults.WorkerLost`), the
controller kills the group, builds a new one, and resumes from the newest checkpoint exactly as
``tppo train --resume`` would (weights, optimizers, slot pool, prompt stream, RNGs, metrics position;
the metrics rows written after the checkpoint are cut), then goes on. After ``trainer.max_restarts``
rebuilds in one run, the next death stops the run with an error naming the checkpoint to resume from.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from tppo.checkpoint import latest_checkpoint
from tppo.config import TPPOConfig
from tppo.engines.base import Engine
from tppo.faults import WorkerLost
from tppo.learner import LearnerRole
from tppo.roles import build_learner


class Trainer(Protocol):
    """What recovery needs of :class:`tppo.trainer.Trainer`."""

    config: TPPOConfig
    output_dir: Path
    learner: LearnerRole
    engine: Engine
    step: int

    @property
    def checkpoint_dir(self) -> Path: ...

    def resume(self, checkpoint: Path | None) -> None: ...


log = logging.getLogger(__name__)


def restartable(trainer: Trainer) -> bool:
    """Whether a dead training worker can be replaced: remote training workers and
    ``trainer.max_restarts > 0`` (the trainer then makes sure a checkpoint exists from step 0)."""
    return trainer.config.distributed.train_workers > 0 and trainer.config.trainer.max_restarts > 0


def train_with_restarts(trainer: Trainer, run: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """``run()`` (the training loop), rebuilding the training group from the newest checkpoint
    each time a training worker dies, at most ``trainer.max_restarts`` times; then (and for a
    death nothing can repair) :class:`~tppo.faults.WorkerLost` naming the checkpoint to resume from."""
    limit = trainer.config.trainer.max_restarts
    restarts = 0
    while True:
        try:
            return run()
        except WorkerLost as error:
            checkpoint = latest_checkpoint(trainer.checkpoint_dir)
            broken = bool(getattr(trainer.learner, "broken", False))
            if not (broken and restartable(trainer) and restarts < limit and checkpoint is not None):
                raise WorkerLost(
                    f"{error}; stopped in step {trainer.step} after {restarts} restart(s) of the "
                    f"training group (trainer.max_restarts={limit}). Resume from checkpoint "
                    f"{checkpoint or 'none (the run starts over)'} with: tppo train --resume "
                    f"--output-dir {trainer.output_dir}"
                ) from error
            restarts += 1
            log.warning(
                "%s: rebuilding the training group from %s (restart %d of %d)",
                error,
                checkpoint,
                restarts,
                limit,
            )
            trainer.learner.close()
            trainer.learner = build_learner(trainer.config)
            trainer.engine.pop_stats()  # the abandoned step's generation counts nowhere
            trainer.resume(checkpoint)
