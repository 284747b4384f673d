"""Outcome rewards, ``(response text, ground truth) -> float``, by name, and the one pool that scores them.

A reward is named (:func:`get_reward`): a registered one (``math``), ``task:<name>`` (a built-in
task's verifier) or ``module:function``. :class:`RewardPool` scores batches of responses with it:

* a reward that raises scores 0 and is counted (``errors``, the trainer's ``reward/errors``);
* with a per-item limit ``timeout_s``, items run in ``num_workers`` worker processes; one still
  running at the limit scores 0 and is counted (``timeouts``, ``reward/timeouts``), and its worker
  is killed and replaced. A rule-based verifier can hang on a crafted response (math-verify on
  ``9^{9^{9^{9}}}`` computes a number with hundreds of millions of digits), and math-verify's own
  timeouts use ``signal.alarm``, which works in a main thread only; the pool's limit works anywhere.
  A worker that dies (a crash, out of memory) scores its item 0 as an error and is replaced too;
* ``timeout_s=None`` scores in this process, without a limit.

The reward is called on the responses it is asked to score and nothing else (no warm-up call):
workers build it (import its module, ``math`` imports math-verify) when they start, before any item.

The worker processes are a ``pebble`` ``ProcessPool``: its per-task timeout kills the worker that
runs the late task and starts a new one, and tasks run in the worker's main thread. Workers fork
from a ``forkserver`` that has imported math-verify once (a replacement starts in milliseconds;
none inherits the trainer's threads or memory). A script that scores in workers must guard its
entry point with ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import multiprocessing
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Literal

from pebble import ProcessExpired, ProcessPool

from tppo.registry import Registry
from tppo.tasks import TASKS

log = logging.getLogger(__name__)

RewardFn = Callable[[str, str], float]

REWARDS: Registry[Callable[[], RewardFn]] = Registry("reward")
"""Factories of reward functions by name; ``reward.name`` (or ``data.reward``) picks one."""


def register_reward(name: str) -> Callable[[Callable[[], RewardFn]], Callable[[], RewardFn]]:
    """Register a factory of a reward function under ``name``."""
    return REWARDS.register(name)


def _import_function(name: str) -> RewardFn:
    """The callable ``function`` of ``module:function``; ValueError naming ``name`` if there is none."""
    module_name, function_name = name.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"reward {name!r}: cannot import {module_name!r} ({error})") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ValueError(f"reward {name!r}: {module_name} has no callable {function_name!r}")
    return function


def _factory(name: str) -> Callable[[], RewardFn]:
    """The factory of reward ``name``; KeyError (naming the choices) or ValueError if there is none."""
    if name in REWARDS:
        return REWARDS[name]
    if name.startswith("task:"):
        task = TASKS.get(name.removeprefix("task:"))
        return lambda: task().reward
    if ":" in name:
        function = _import_function(name)
        return lambda: function
    raise KeyError(f"{REWARDS.unknown_message(name)}; or task:<name>, or module:function")


def check_reward_name(name: str) -> None:
    """Raise KeyError (naming the registered rewards) or ValueError unless ``name`` names a reward,
    without building it: cheap enough for config validation (``module:function`` imports the module)."""
    _factory(name)


def get_reward(name: str) -> RewardFn:
    """The reward function ``name``: a registered name, ``task:<name>`` (a built-in task's
    verifier) or ``module:function``; KeyError / ValueError as :func:`check_reward_name`."""
    return _factory(name)()


@register_reward("math")
def _math_reward_in_process() -> RewardFn:
    """``math``: paper eq. 7 with math-verify (:func:`tppo.math_answer.math_answer_reward`)."""
    import math_verify  # noqa: F401  (imported when the reward is built, not inside an item's limit)

    from tppo.math_answer import math_answer_reward

    return math_answer_reward


Status = Literal["ok", "error", "timeout"]
STARTUP_TIMEOUT_S = 300.0
"""How long a worker may take to start and build the reward (imports included) before the pool gives up."""


@dataclass
class ScoredBatch:
    """Scores of a batch (in order), with the counts of items scored 0 because of a problem."""

    scores: list[float]
    errors: int
    """responses whose reward function raised, or whose worker died (scored 0)."""
    timeouts: int = 0
    """responses not scored within the time limit (scored 0)."""


def _score_item(reward: RewardFn, response: str, ground_truth: str) -> tuple[float, str | None]:
    """``(score, None)``, or ``(0.0, what it raised)``."""
    try:
        return float(reward(response, ground_truth)), None
    except Exception as error:  # a broken verifier must not stop training
        return 0.0, f"{type(error).__name__}: {error}"


_WORKER_REWARD: RewardFn | None = None
_WORKER_PROBLEM = "the reward was not built in this worker"


def _start_worker(name: str) -> None:
    """A worker's start (pebble's initializer, before it takes any item): build the reward.

    SIGTERM, pebble's way to stop a late worker, kills it at once: pebble's own handler runs only
    between bytecodes, which a verifier stuck in a C call that never checks for signals does not
    reach, so the kill would wait for pebble's 3 s SIGKILL fallback. pebble only stops a worker while it
    holds the pool's channel locks, so no lock dies with it."""
    global _WORKER_REWARD, _WORKER_PROBLEM
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        _WORKER_REWARD = get_reward(name)
    except Exception as error:  # every item says why, instead of pebble restarting the worker forever
        _WORKER_PROBLEM = f"reward {name!r} could not be built in a worker: {type(error).__name__}: {error}"


def _worker_problem() -> str | None:
    """In a worker: why its reward could not be built (``None``: it was). The pool's start-up check."""
    return None if _WORKER_REWARD is not None else _WORKER_PROBLEM


def _score_in_worker(response: str, ground_truth: str) -> tuple[float, str | None]:
    """One item, in a worker: :func:`_score_item` with the worker's reward."""
    if _WORKER_REWARD is None:
        return 0.0, _WORKER_PROBLEM
    try:
        return _score_item(_WORKER_REWARD, response, ground_truth)
    except BaseException as error:  # SystemExit and the like: this worker has no use for them
        return 0.0, f"{type(error).__name__}: {error}"


class RewardPool:
    """Scores ``(response, ground_truth)`` pairs with the reward ``name``: ``pool(responses,
    ground_truths) -> ScoredBatch`` (the trainer's scorer), :meth:`score` for one pair. Safe to
    call from many threads at once.

    Args:
        name: a reward name (:func:`get_reward`); an unknown one raises here.
        num_workers: worker processes scoring in parallel (0 counts as 1) when ``timeout_s`` is set.
        timeout_s: the per-item limit in seconds, counted from when a worker takes the item (its
            start-up, imports included, is not counted); ``None``: score in this process, no limit.
    """

    def __init__(self, name: str, *, num_workers: int = 2, timeout_s: float | None = 10.0) -> None:
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0 or None, got {timeout_s}")
        self.name, self.num_workers, self.timeout_s = name, max(num_workers, 1), timeout_s
        self._in_process: RewardFn | None = get_reward(name) if timeout_s is None else None
        if timeout_s is not None:
            check_reward_name(name)  # an unknown name fails here, in the caller's process
        self._lock = threading.Lock()
        self._pool: ProcessPool | None = None

    def __call__(self, responses: Sequence[str], ground_truths: Sequence[str]) -> ScoredBatch:
        if len(responses) != len(ground_truths):
            raise ValueError(f"{len(responses)} responses but {len(ground_truths)} ground truths")
        pairs = list(zip(responses, ground_truths, strict=True))
        if self._in_process is not None:
            fn = self._in_process
            outcomes = [self._status(*_score_item(fn, r, t)) for r, t in pairs]
        else:
            pool = self._workers()
            futures = [self._schedule(pool, r, t) for r, t in pairs]
            outcomes = [self._outcome(future) for future in futures]
        return ScoredBatch(
            scores=[score for score, _ in outcomes],
            errors=sum(status == "error" for _, status in outcomes),
            timeouts=sum(status == "timeout" for _, status in outcomes),
        )

    def score(self, response: str, ground_truth: str) -> float:
        """The score of one pair (0.0 if the reward raised or ran past the limit)."""
        return self([response], [ground_truth]).scores[0]

    def _workers(self) -> ProcessPool:
        """pebble's pool, started on first use (and again if pebble gave up on it, after a worker
        died between items); RuntimeError if its workers cannot start or build the reward."""
        with self._lock:
            if self._pool is None or not self._pool.active:
                if self._pool is not None:
                    log.warning("the reward worker pool broke; starting a new one")
                    self._pool.stop()
                self._pool = self._start_pool()
            return self._pool

    def _start_pool(self) -> ProcessPool:
        # The server preloads math-verify only: tppo itself is imported by each worker, on this
        # process's sys.path (the server's own path can hold another copy of tppo).
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["math_verify"])
        pool = ProcessPool(
            max_workers=self.num_workers, initializer=_start_worker, initargs=(self.name,), context=context
        )
        try:  # a worker answers without calling the reward: it started and built it
            problem = pool.schedule(_worker_problem).result(timeout=STARTUP_TIMEOUT_S)
        except Exception as error:
            problem = (
                f"reward {self.name!r}: its worker processes did not start ({type(error).__name__}: {error})"
            )
        if problem is not None:
            pool.stop()
            pool.join()
            raise RuntimeError(problem)
        return pool

    def _schedule(
        self, pool: ProcessPool, response: str, ground_truth: str
    ) -> Future[tuple[float, str | None]]:
        try:
            return pool.schedule(_score_in_worker, (response, ground_truth), timeout=self.timeout_s)
        except RuntimeError as error:  # the pool broke a moment ago: an error here, a new pool next call
            failed: Future[tuple[float, str | None]] = Future()
            failed.set_exception(error)
            return failed

    def _outcome(self, future: Future[tuple[float, str | None]]) -> tuple[float, Status]:
        try:
            score, problem = future.result()
        except TimeoutError:
            log.warning(
                "reward %r gave no score within %s s; scored 0, its worker killed and replaced",
                self.name,
                self.timeout_s,
            )
            return 0.0, "timeout"
        except ProcessExpired as error:
            score, problem = 0.0, f"its worker process died (exit code {error.exitcode}); replaced"
        except Exception as error:  # pebble could not run the item (a broken pool)
            score, problem = 0.0, f"the worker pool failed: {type(error).__name__}: {error}"
        return self._status(score, problem)

    def _status(self, score: float, problem: str | None) -> tuple[float, Status]:
        if problem is None:
            return score, "ok"
        log.warning("reward %r failed on a response (%s); scored 0", self.name, problem)
        return 0.0, "error"

    def close(self) -> None:
        """Stop the worker processes (idempotent; a later call starts new ones)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()
            pool.join()

    def __enter__(self) -> RewardPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def build_scorer(name: str, *, num_workers: int, timeout_s: float | None) -> RewardPool:
    """The trainer's scorer for reward ``name``: a :class:`RewardPool` of ``num_workers`` processes
    under the per-item limit ``timeout_s`` (``None``: in this process)."""
    return RewardPool(name, num_workers=num_workers, timeout_s=timeout_s)


_MATH_POOL: RewardPool | None = None
_MATH_POOL_LOCK = threading.Lock()
MATH_REWARD_TIMEOUT_S = 10.0
"""The per-item limit of :func:`math_reward` (the trainer's is ``trainer.reward_timeout_s``)."""


def math_reward(response: str, ground_truth: str) -> float:
    """1.0 if the response's final answer equals ``ground_truth``, else 0.0 (paper eq. 7).

    The answer is the text after the last ``Answer:`` (DAPO style), else the last ``\\boxed{...}``;
    equality is symbolic, by math-verify (``0.5`` = ``\\frac12``, ``025`` = ``25``). Verification runs
    on a shared :class:`RewardPool` (``math``, two workers, started on first use) with a
    :data:`MATH_REWARD_TIMEOUT_S` limit per call (a hanging response scores 0), so this is safe to
    call from any thread."""
    global _MATH_POOL
    with _MATH_POOL_LOCK:
        if _MATH_POOL is None:
            _MATH_POOL = RewardPool("math", num_workers=2, timeout_s=MATH_REWARD_TIMEOUT_S)
            atexit.register(_MATH_POOL.close)
        pool = _MATH_POOL
    return pool.score(response, ground_truth)
