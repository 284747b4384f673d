"""Rollout engines: continue token prefixes by a bounded number of tokens (see :mod:`.base`).

Importing this package registers the built-in engines (``"hf"``, ``"vllm"``; vLLM itself is
imported only when a vLLM engine is built).
"""

from tppo.engines.base import (
    ENGINES,
    Completion,
    Engine,
    EngineStats,
    SamplingParams,
    SeededEngine,
    get_engine_factory,
    register_engine,
)
from tppo.engines.hf import HFEngine  # registers "hf"
from tppo.engines.vllm import VLLMEngine  # registers "vllm"

__all__ = [
    "ENGINES",
    "Completion",
    "Engine",
    "EngineStats",
    "HFEngine",
    "SamplingParams",
    "SeededEngine",
    "VLLMEngine",
    "get_engine_factory",
    "register_engine",
]
