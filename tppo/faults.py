"""Crash injection for the crash-safety tests: ``TPPO_CRASH_AT=<point>@<step>`` makes the process
SIGKILL itself when it reaches that named point in that training step (nothing is flushed, no
handler runs: exactly what ``kill -9`` does). Unset, :func:`crash_point` costs one dict lookup.

Points: ``fill``, ``sync``, ``generate``, ``reward``, ``score``, ``estimate``, ``actor``,
``critic`` (the start of each phase of a step), ``logged`` (after the step's metrics row is
written, before its checkpoint), ``checkpoint_write`` (every file of the checkpoint written into
its temporary directory, no manifest yet, not renamed) and ``checkpoint_written`` (renamed, old
checkpoints not yet pruned).

Remote workers have points of their own (the environment variable reaches them, see
:func:`worker_env`): ``rollout<i>_generate@<n>`` makes rollout worker ``i`` kill itself in the rollout
group's ``n``-th generation (from 0; a redone generation never crashes again),
``rollout<i>_receive@<step>`` when it starts receiving a broadcast weight sync in that step, and
``train<r>_<method>@<step>`` makes training worker ``r`` kill itself when it starts
``update_actor``, ``update_critic``, ``old_forward`` ... of that step. ``TPPO_CRASH_ONCE=<path>``
makes any point fire once: the first crash creates the file, and no point fires while it exists.
"""

from __future__ import annotations

import os
import signal

ENV = "TPPO_CRASH_AT"
ONCE_ENV = "TPPO_CRASH_ONCE"


class WorkerLost(RuntimeError):
    """A remote worker's process died (Ray reported its actor dead); the message names it."""


def crash_point(point: str, step: int) -> None:
    target = os.environ.get(ENV)
    if target and target == f"{point}@{step}":
        once = os.environ.get(ONCE_ENV)
        if once:
            try:
                os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
        os.kill(os.getpid(), signal.SIGKILL)


def worker_env() -> dict[str, str]:
    """The crash-injection variables set in this process, for the remote workers it starts."""
    return {key: os.environ[key] for key in (ENV, ONCE_ENV) if key in os.environ}
