"""Outcome rewards: ``(response text, ground truth) -> float``, registered by name.

A reward function that raises scores 0 and is counted (``reward/errors``), so one bad response
never stops training; :class:`RewardScorer` also runs it in a worker process with a time limit
(a hung verifier scores 0, counted as ``reward/timeouts``).
"""

from __future__ import annotations

import atexit
import importlib
import logging
import multiprocessing
import pickle
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

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
    """responses whose reward function raised (scored 0)."""
    timeouts: int = 0
    """responses not scored within the time limit (scored 0)."""


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


class PoolScorer:
    """Scores batches with the reward ``name`` on a :class:`~tppo.reward_pool.RewardPool` of
    ``num_workers`` processes, each response within ``timeout_s`` (a late one scores 0 and counts
    as a timeout; its worker is replaced)."""

    def __init__(self, name: str, *, num_workers: int, timeout_s: float) -> None:
        self.name = name
        self.pool = RewardPool(name, num_workers=num_workers, timeout_s=timeout_s)

    def __call__(self, responses: Sequence[str], ground_truths: Sequence[str]) -> ScoredBatch:
        batch = self.pool.score_batch(responses, ground_truths)
        return ScoredBatch(batch.scores, batch.errors, batch.timeouts)

    def close(self) -> None:
        self.pool.close()


def build_scorer(name: str, *, num_workers: int, timeout_s: float | None) -> PoolScorer | RewardScorer:
    """The trainer's scorer for reward ``name``: a pool of ``num_workers`` processes for named
    verifiers (``math``, ``module:function``) under the time limit; one worker process
    (:class:`RewardScorer`) for built-in task verifiers or ``num_workers=0``; this process when
    ``timeout_s`` is ``None``."""
    if timeout_s is None or num_workers == 0 or name.startswith("task:"):
        return RewardScorer(get_reward(name), timeout_s=timeout_s)
    return PoolScorer(name, num_workers=num_workers, timeout_s=timeout_s)


STARTUP_TIMEOUT_S = 300.0
"""How long the reward worker may take to start (spawn a Python, import the reward's module)."""


class RewardScorer:
    """Scores responses in a separate worker process, each within ``timeout_s`` seconds.

    A reward function that raises scores 0 (``errors``); one that has not answered after
    ``timeout_s`` seconds scores 0 (``timeouts``), and its worker is killed and started again for
    the rest of the batch, so a hung verifier never stops training. ``timeout_s=None`` scores in
    this process (no isolation, no time limit). The worker starts on first use (``spawn``: the
    reward function must be importable by name, as tasks' and registered rewards are; one that is
    not is scored in this process, with a warning).
    """

    def __init__(self, reward_fn: RewardFn, *, timeout_s: float | None) -> None:
        self.reward_fn, self.timeout_s = reward_fn, timeout_s
        self._process: Any = None
        self._conn: Any = None
        self._in_process = timeout_s is None
        if not self._in_process:
            try:
                pickle.dumps(reward_fn)
            except Exception as error:
                log.warning(
                    "reward function %r cannot be sent to a worker process (%s): scoring in this "
                    "process, without the %s s time limit",
                    reward_fn,
                    error,
                    timeout_s,
                )
                self._in_process = True

    def __call__(self, responses: Sequence[str], ground_truths: Sequence[str]) -> ScoredBatch:
        if len(responses) != len(ground_truths):
            raise ValueError(f"{len(responses)} responses but {len(ground_truths)} ground truths")
        if self._in_process:
            return score_responses(self.reward_fn, responses, ground_truths)
        scores: list[float] = []
        errors = timeouts = 0
        pending = list(zip(responses, ground_truths, strict=True))
        while pending:
            conn = self._worker()
            if conn is None:  # the worker could not start: score the rest here
                rest = score_responses(self.reward_fn, *zip(*pending, strict=True))
                return ScoredBatch(scores + rest.scores, errors + rest.errors, timeouts)
            conn.send(pending)
            answered = 0
            for response, _ in pending:
                if not conn.poll(self.timeout_s):
                    log.warning(
                        "reward function gave no score within %s s (response %r...); scored 0, "
                        "restarting the reward worker",
                        self.timeout_s,
                        response[:80],
                    )
                    self.close()
                    scores.append(0.0)
                    timeouts += 1
                    answered += 1
                    break
                try:
                    kind, value = conn.recv()
                except (EOFError, OSError):  # the worker died (the reward function killed it)
                    kind, value = "error", "the reward worker process died"
                    self.close()
                if kind == "error":
                    log.warning("reward function raised %s; scored 0", value)
                    errors += 1
                scores.append(float(value) if kind == "ok" else 0.0)
                answered += 1
                if self._process is None:
                    break
            pending = pending[answered:]
        return ScoredBatch(scores, errors, timeouts)

    def _worker(self) -> Any:
        """The worker's end of the pipe, starting the worker if needed (its start-up, which imports
        the reward function's module, does not count against the time limit); ``None`` (and from
        then on scoring in this process) when it cannot start."""
        if self._in_process:
            return None
        if self._process is None or not self._process.is_alive():
            self.close()
            context = multiprocessing.get_context("spawn")
            parent, child = context.Pipe()
            self._process = context.Process(
                target=_reward_worker, args=(child, self.reward_fn), daemon=True, name="tppo-reward"
            )
            self._process.start()
            child.close()
            self._conn = parent
            try:
                ready = parent.poll(STARTUP_TIMEOUT_S) and parent.recv() == "ready"
            except (EOFError, OSError):
                ready = False
            if not ready:
                log.warning("the reward worker process did not start: scoring in this process from now on")
                self.close()
                self._in_process = True
                return None
        return self._conn

    def close(self) -> None:
        """Stop the worker process (if any)."""
        if self._process is not None:
            self._process.kill()
            self._process.join(timeout=10)
            self._conn.close()
        self._process = self._conn = None


def _reward_worker(conn: Any, reward_fn: RewardFn) -> None:
    """Worker loop: receive a list of ``(response, ground_truth)``, send one ``("ok", score)`` or
    ``("error", text)`` per item; exits when the trainer's end of the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle
    conn.send("ready")
    while True:
        try:
            items = conn.recv()
        except (EOFError, OSError):
            return
        for response, truth in items:
            try:
                conn.send(("ok", float(reward_fn(response, truth))))
            except Exception as error:
                conn.send(("error", f"{type(error).__name__}: {error}"))
