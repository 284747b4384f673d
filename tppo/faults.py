"""Crash injection for the crash-safety tests: ``TPPO_CRASH_AT=<point>@<step>`` makes the process
SIGKILL itself when it reaches that named point in that training step (nothing is flushed, no
handler runs: exactly what ``kill -9`` does). Unset, :func:`crash_point` costs one dict lookup.

Points: ``fill``, ``sync``, ``generate``, ``reward``, ``score``, ``estimate``, ``actor``,
``critic`` (the start of each phase of a step), ``logged`` (after the step's metrics row is
written, before its checkpoint), ``checkpoint_write`` (every file of the checkpoint written into
its temporary directory, no manifest yet, not renamed) and ``checkpoint_written`` (renamed, old
checkpoints not yet pruned).
"""

from __future__ import annotations

import os
import signal

ENV = "TPPO_CRASH_AT"


def crash_point(point: str, step: int) -> None:
    target = os.environ.get(ENV)
    if target and target == f"{point}@{step}":
        os.kill(os.getpid(), signal.SIGKILL)
