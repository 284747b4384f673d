"""What a method is (:class:`Method`), what its selector hands the trainer (:class:`TrainSet`), and
the registry of methods (:data:`METHODS`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

from tppo.registry import Registry

if TYPE_CHECKING:
    from tppo.config import TPPOConfig
    from tppo.rollout.batch import RolloutBatch
    from tppo.rollout.slot_pool import Slot
    from tppo.update import Surrogate


@dataclass
class TrainSet:
    """The responses a step trains on, with what the method's ``estimate`` needs.

    Attributes:
        slots: the responses (rows of the step's training batch, in this order).
        scores: ``Tensor[B]`` float32, each row's reward (0 for unfinished rows).
        group_ids: ``Tensor[B]`` long, each row's group (group methods; ``None`` otherwise).
        metrics: the selector's figures for the step (``rollout/groups_completed``, ...).
    """

    slots: list[Slot]
    scores: torch.Tensor
    group_ids: torch.Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)


class Selector(Protocol):
    """A method's per-run state: which responses train in each step (part of the checkpoint)."""

    def select(
        self, active: Sequence[Slot], scores: torch.Tensor, retired: Sequence[Slot], step: int
    ) -> TrainSet:
        """``active``: the step's slots (generated this step), ``scores`` their rewards, ``retired``
        the ones that finished this step (already scored: ``slot.score``)."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Method(Protocol):
    """A training method: the answers to DESIGN.md section 5's four questions."""

    @property
    def name(self) -> str:
        """Its ``algorithm.name``."""
        ...

    @property
    def needs_critic(self) -> bool:
        """Whether a value model is loaded and trained (``False``: no value model, no critic
        optimizer, no critic phase, no ``critic/*`` metrics)."""
        ...

    @property
    def needs_proximal(self) -> bool:
        """Whether the learner keeps an EWMA copy of the policy (``proximal_log_probs``)."""
        ...

    @property
    def needs_old_log_probs(self) -> bool:
        """Whether ``old_log_probs`` are always recomputed (not skipped with one epoch/minibatch)."""
        ...

    def check(self, config: TPPOConfig) -> None:
        """Refuse (:class:`~tppo.config.ConfigError`, naming the key) a config this method cannot run."""
        ...

    def selector(self, config: TPPOConfig) -> Selector: ...

    def estimate(self, batch: RolloutBatch, train: TrainSet, *, step: int, config: TPPOConfig) -> None:
        """Fill ``batch.per_token``: ``advantages``, ``raw_advantages``, ``policy_mask`` (and, with
        a critic, ``returns`` and ``value_mask``; optionally ``token_weights``)."""
        ...

    def surrogate(self, config: TPPOConfig) -> Surrogate:
        """The policy objective (see :mod:`tppo.update`)."""
        ...

    def positive_lm_coef(self, config: TPPOConfig) -> float:
        """The weight of the positive-example LM loss on ``per_token['positive_mask']`` (0: none)."""
        ...


METHODS: Registry[Method] = Registry("method")
"""``algorithm.name`` -> :class:`Method`."""
