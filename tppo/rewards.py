"""Outcome rewards: ``(response text, ground truth) -> float``, registered by name.

A reward function that raises scores 0 and is counted (``reward/errors``), so one bad response
never stops training.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tppo.registry import Registry
from tppo.tasks import get_task

log = logging.getLogger(__name__)

RewardFn = Callable[[str, str], float]

REWARDS: Registry[Callable[[], RewardFn]] = Registry("reward")
"""Factories of reward functions by name; ``reward.name`` (or ``data.reward``) picks one."""


def register_reward(name: str) -> Callable[[Callable[[], RewardFn]], Callable[[], RewardFn]]:
    """Register a factory of a reward function under ``name``."""
    return REWARDS.register(name)


def get_reward(name: str) -> RewardFn:
    """A registered name, ``task:<name>`` (a built-in task's verifier) or ``module:function``."""
    if name in REWARDS:
        return REWARDS[name]()
    if name.startswith("task:"):
        return get_task(name.removeprefix("task:")).reward
    if ":" in name:
        module_name, function_name = name.split(":", 1)
        function = getattr(importlib.import_module(module_name), function_name, None)
        if not callable(function):
            raise ValueError(f"reward {name!r}: {module_name} has no callable {function_name!r}")
        return function
    raise KeyError(f"{REWARDS.unknown_message(name)}; or task:<name>, or module:function")


@dataclass
class ScoredBatch:
    scores: list[float]
    errors: int


def score_responses(
    reward_fn: RewardFn, responses: Sequence[str], ground_truths: Sequence[str]
) -> ScoredBatch:
    """Score each response; an exception scores 0 and is counted."""
    scores, errors = [], 0
    for response, truth in zip(responses, ground_truths, strict=True):
        try:
            scores.append(float(reward_fn(response, truth)))
        except Exception as error:  # a broken verifier must not stop training
            log.warning("reward function raised %s: %s; scored 0", type(error).__name__, error)
            scores.append(0.0)
            errors += 1
    return ScoredBatch(scores, errors)
