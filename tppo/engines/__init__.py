"""Rollout engines: continue token prefixes by a bounded number of tokens (see :mod:`.base`).

Importing this package registers the built-in engines (``"hf"``).
"""

from tppo.engines.base import (
    ENGINES,
    Completion,
    Engine,
    EngineStats,
    SamplingParams,
    get_engine_factory,
    register_engine,
)
from tppo.engines.hf import HFEngine  # registers "hf"

__all__ = [
    "ENGINES",
    "Completion",
    "Engine",
    "EngineStats",
    "HFEngine",
    "SamplingParams",
    "get_engine_factory",
    "register_engine",
]
