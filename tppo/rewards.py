"""Outcome rewards: ``(response text, ground truth) -> float``, registered by name.

A reward function that raises scores 0 and is counted (``reward/errors``), so one bad response
never stops training.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tppo.registry import Registry
from tppo.reward_pool import RewardPool
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


@register_reward("math")
def _math_reward_in_process() -> RewardFn:
    """``math``: paper eq. 7 with math-verify (:func:`tppo.math_answer.math_answer_reward`)."""
    from tppo.math_answer import math_answer_reward

    return math_answer_reward


_DEFAULT_POOL: RewardPool | None = None
_DEFAULT_POOL_LOCK = threading.Lock()
MATH_REWARD_TIMEOUT_S = 10.0
"""The per-item limit of :func:`math_reward` (the trainer's is ``reward.timeout_s``)."""


def math_reward(response: str, ground_truth: str) -> float:
    """1.0 if the response's final answer equals ``ground_truth``, else 0.0 (paper eq. 7).

    The answer is the text after the last ``Answer:`` (DAPO style), else the last ``\\boxed{...}``;
    equality is symbolic, by math-verify (``0.5`` = ``\\frac12``, ``025`` = ``25``). Verification runs
    in a shared pool of worker processes with a :data:`MATH_REWARD_TIMEOUT_S` limit per call (a
    hanging response scores 0), so this is safe to call from any thread or process."""
    global _DEFAULT_POOL
    with _DEFAULT_POOL_LOCK:
        if _DEFAULT_POOL is None:
            _DEFAULT_POOL = RewardPool("math", num_workers=2, timeout_s=MATH_REWARD_TIMEOUT_S)
            atexit.register(_DEFAULT_POOL.close)
        pool = _DEFAULT_POOL
    return pool.score(response, ground_truth).score


@dataclass
class ScoredBatch:
    scores: list[float]
    errors: int
    timeouts: int = 0


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


class RewardScorer:
    """Scores batches with the reward ``name``: in worker processes under a per-item time limit
    (:class:`~tppo.reward_pool.RewardPool`), or in this process when ``num_workers`` is 0 or the
    reward is a built-in task's (a string comparison that cannot hang)."""

    def __init__(self, name: str, *, num_workers: int, timeout_s: float) -> None:
        self.name = name
        in_process = num_workers == 0 or name.startswith("task:")
        self.pool = None if in_process else RewardPool(name, num_workers=num_workers, timeout_s=timeout_s)
        self.fn = get_reward(name) if in_process else None

    def score(self, responses: Sequence[str], ground_truths: Sequence[str]) -> ScoredBatch:
        if self.pool is None:
            assert self.fn is not None
            return score_responses(self.fn, responses, ground_truths)
        batch = self.pool.score_batch(responses, ground_truths)
        return ScoredBatch(batch.scores, batch.errors, batch.timeouts)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
