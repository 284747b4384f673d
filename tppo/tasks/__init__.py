"""Built-in synthetic verifiable tasks (the offline demo and benchmarks).

A task makes examples (prompt text, reference solution, ground-truth answer) from a seeded RNG
and scores responses. Tasks are registered by name in :data:`TASKS` (see :mod:`.base`); importing
this package registers the built-in ones.
"""

from tppo.tasks import collatz as _collatz  # noqa: F401 - registers "collatz"
from tppo.tasks import lcg as _lcg  # noqa: F401 - registers "lcg"
from tppo.tasks import sort_letters as _sort_letters  # noqa: F401 - registers "sort"
from tppo.tasks.base import (
    EOS_STRING,
    TASKS,
    Example,
    Task,
    extract_answer,
    final_answer_reward,
    get_task,
    register_task,
)

__all__ = [
    "EOS_STRING",
    "TASKS",
    "Example",
    "Task",
    "extract_answer",
    "final_answer_reward",
    "get_task",
    "register_task",
]
