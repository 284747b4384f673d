"""Reward verification in worker processes, under a per-item time limit that the pool enforces.

A rule-based verifier can hang on a crafted response (math-verify on ``9^{9^{9^{9}}}`` computes a
number with hundreds of millions of digits) and its own timeouts use ``signal.alarm``, which only
works in a main thread. So every item goes to a worker process; the caller waits at most
``timeout_s`` for its answer. A late item scores 0 and counts as a timeout, and its worker is killed
and replaced (the replacement starts at once; it is waited for, without the item time limit, only
when it is next needed). A worker that crashes scores its item 0 as an error and is replaced too.

Workers fork from a ``forkserver`` process that has imported math-verify once (a fresh one starts
in milliseconds; none inherits the trainer's threads or memory). A script that builds a pool must
guard its entry point with ``if __name__ == "__main__":``. The reward is named (``math``,
``task:<name>``, ``module:function``, see :func:`tppo.rewards.get_reward`) and resolved again inside
each worker.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing as mp
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Literal

log = logging.getLogger(__name__)

Status = Literal["ok", "timeout", "error"]


@dataclass(frozen=True)
class ItemResult:
    """The outcome of one item: its score (0.0 unless ``ok``) and what happened."""

    score: float
    status: Status


@dataclass
class PoolBatch:
    """Scores of a batch, with the counts of items that timed out or raised."""

    scores: list[float]
    errors: int
    timeouts: int


def _worker_main(conn: Connection, reward: str) -> None:
    """A worker: resolve the reward, warm it up once, then answer ``(id, response, truth)`` items."""
    from tppo.rewards import get_reward

    try:
        fn = get_reward(reward)
        fn("Answer: 1", "1")  # imports and caches whatever the verifier needs, before any time limit
    except BaseException as error:
        conn.send(("failed", f"{type(error).__name__}: {error}"))
        return
    conn.send(("ready", None))
    while True:
        item = conn.recv()
        if item is None:
            return
        item_id, response, truth = item
        try:
            conn.send((item_id, ("ok", float(fn(response, truth)))))
        except Exception as error:
            conn.send((item_id, ("error", f"{type(error).__name__}: {error}")))


class _Worker:
    def __init__(self, context: Any, reward: str) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child, reward), daemon=True)
        self.process.start()
        child.close()
        self.ready = False

    def wait_ready(self, timeout_s: float) -> None:
        if self.ready:
            return
        if not self.conn.poll(timeout_s):
            raise RuntimeError(f"a reward worker did not start within {timeout_s:.0f} s")
        kind, message = self.conn.recv()
        if kind != "ready":
            raise RuntimeError(f"a reward worker failed to start: {message}")
        self.ready = True

    def kill(self) -> None:
        self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(None)
        self.process.join(timeout=1)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)
        self.conn.close()


class RewardPool:
    """``num_workers`` processes scoring ``(response, ground_truth)`` items of the reward ``reward``.

    :meth:`score` is safe to call from many threads at once (each call takes an idle worker);
    :meth:`score_batch` scores a batch on all workers. Counters ``timeouts`` and ``errors`` add up
    over the pool's life.

    Args:
        reward: a reward name that :func:`tppo.rewards.get_reward` resolves (checked here first).
        num_workers: worker processes.
        timeout_s: the per-item limit, from sending the item to a ready worker to its answer.
        start_timeout_s: how long a worker may take to start (imports included).
    """

    def __init__(
        self, reward: str, *, num_workers: int = 2, timeout_s: float = 10.0, start_timeout_s: float = 300.0
    ) -> None:
        from tppo.rewards import get_reward

        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        get_reward(reward)  # an unknown name fails here, in the caller's process
        self.reward, self.timeout_s, self.start_timeout_s = reward, timeout_s, start_timeout_s
        self._context = mp.get_context("forkserver")
        # Workers fork from a server that imported these once: a replacement starts in milliseconds.
        self._context.set_forkserver_preload(["tppo.rewards", "tppo.math_answer", "math_verify"])
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._all: list[_Worker] = []
        self._closed = False
        self.timeouts = 0
        self.errors = 0
        for _ in range(num_workers):
            self._idle.put(self._start())
        self._threads = ThreadPoolExecutor(num_workers, thread_name_prefix="reward")

    def _start(self) -> _Worker:
        worker = _Worker(self._context, self.reward)
        with self._lock:
            self._all.append(worker)
        return worker

    def _replace(self, worker: _Worker) -> _Worker:
        worker.kill()
        with self._lock:
            self._all.remove(worker)
        return self._start()

    def score(self, response: str, ground_truth: str) -> ItemResult:
        """Score one item within ``timeout_s``; late -> 0.0 (``timeout``), crashed -> 0.0 (``error``)."""
        if self._closed:
            raise RuntimeError("the reward pool is closed")
        worker = self._idle.get()
        try:
            worker.wait_ready(self.start_timeout_s)
            item_id = next(self._ids)
            worker.conn.send((item_id, response, ground_truth))
            deadline = time.monotonic() + self.timeout_s
            while worker.conn.poll(max(deadline - time.monotonic(), 0.0)):
                answer_id, (kind, value) = worker.conn.recv()
                if answer_id != item_id:  # a late answer to an abandoned item
                    continue
                if kind == "ok":
                    return ItemResult(float(value), "ok")
                log.warning("reward %r raised %s; scored 0", self.reward, value)
                return self._count(ItemResult(0.0, "error"))
            log.warning(
                "reward %r took over %.1f s on an item; scored 0, worker replaced",
                self.reward,
                self.timeout_s,
            )
            worker = self._replace(worker)
            return self._count(ItemResult(0.0, "timeout"))
        except (EOFError, OSError) as error:  # the worker died (crash, out of memory, killed)
            log.warning("a reward worker died (%s); item scored 0, worker replaced", type(error).__name__)
            worker = self._replace(worker)
            return self._count(ItemResult(0.0, "error"))
        finally:
            self._idle.put(worker)

    def _count(self, result: ItemResult) -> ItemResult:
        with self._lock:
            if result.status == "timeout":
                self.timeouts += 1
            elif result.status == "error":
                self.errors += 1
        return result

    def score_batch(self, responses: Sequence[str], ground_truths: Sequence[str]) -> PoolBatch:
        """Score a batch on every worker at once; the counts are this batch's."""
        if len(responses) != len(ground_truths):
            raise ValueError(f"{len(responses)} responses but {len(ground_truths)} ground truths")
        results = list(self._threads.map(self.score, responses, ground_truths))
        return PoolBatch(
            scores=[r.score for r in results],
            errors=sum(r.status == "error" for r in results),
            timeouts=sum(r.status == "timeout" for r in results),
        )

    def worker_pids(self) -> list[int]:
        with self._lock:
            return [int(w.process.pid) for w in self._all if w.process.pid is not None]

    def close(self) -> None:
        """Stop every worker (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._threads.shutdown(wait=True)
        with self._lock:
            workers, self._all = list(self._all), []
        for worker in workers:
            worker.stop()

    def __enter__(self) -> RewardPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
