"""Runs side by side, each in a process of its own pinned to a CPU core: ``tppo bench --jobs N``.

A bench's runs are independent and each trains on one core (``trainer.num_threads: 1``); two of
them on a two-core machine take half the time of one after another, and pinning each to its own
core keeps them from taking turns on both (the wall-clock budgets stay comparable). This module
knows nothing of the bench: it starts commands, at most one per free core, and reports each as it
ends.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Job:
    """One command to run on a core of its own.

    Attributes:
        label: how progress lines name it.
        argv: the command.
        log: where its stdout and stderr go.
        env: extra environment variables.
    """

    label: str
    argv: list[str]
    log: Path
    env: dict[str, str]


class JobFailed(RuntimeError):
    """A job exited non-zero; the message names it, its exit code and its log."""


def usable_cores(jobs: int) -> list[int]:
    """The first ``jobs`` cores this process may run on (fewer if it may use fewer)."""
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    return sorted(os.sched_getaffinity(0))[:jobs]


def _start(job: Job, core: int) -> subprocess.Popen[bytes]:
    """Start ``job`` and pin it to ``core`` at once, before the interpreter it starts has begun any
    thread of its own (threads inherit it). Not ``preexec_fn``: that is unsafe in a parent that runs
    threads, as one that has imported torch does."""
    job.log.parent.mkdir(parents=True, exist_ok=True)
    with job.log.open("wb") as log:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            job.argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **job.env}
        )
    with contextlib.suppress(ProcessLookupError):  # it has already exited: poll() reports how
        os.sched_setaffinity(process.pid, {core})
    return process


def run_pinned(
    jobs: Sequence[Job],
    cores: Sequence[int],
    on_done: Callable[[Job], None],
    *,
    poll_s: float = 0.5,
) -> None:
    """Run ``jobs`` in order, each pinned to one of ``cores``, at most one per core at a time;
    ``on_done(job)`` after each that exits 0. A job that fails stops the others (killed) and raises
    :class:`JobFailed`; so does an interrupt (the others are killed, none is left running)."""
    if not cores:
        raise ValueError("no cores to run on")
    waiting = list(jobs)
    running: dict[int, tuple[Job, subprocess.Popen[bytes]]] = {}
    try:
        while waiting or running:
            for core in [c for c in cores if c not in running]:
                if waiting:
                    job = waiting.pop(0)
                    print(f"{job.label}: started on core {core} (log {job.log})", flush=True)
                    running[core] = (job, _start(job, core))
            for core, (job, process) in list(running.items()):
                code = process.poll()
                if code is None:
                    continue
                del running[core]
                if code != 0:
                    raise JobFailed(f"{job.label} exited with code {code}; its log: {job.log}")
                on_done(job)
            time.sleep(poll_s)
    finally:
        for _, process in running.values():
            process.kill()
            process.wait()
