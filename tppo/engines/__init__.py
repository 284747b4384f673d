"""Rollout engines: continue token prefixes by a bounded number of tokens (see :mod:`.base`).

Importing this package imports neither transformers nor vLLM: the built-in engines (``"hf"``,
``"vllm"``) are registered by ``"module:Class"`` path and imported when
:func:`get_engine_factory` resolves them, or when ``HFEngine`` / ``VLLMEngine`` is read from this
package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tppo.engines.base import (
    ENGINES,
    FINISH_REASONS,
    LENGTH,
    STOP,
    Completion,
    Engine,
    EngineStats,
    FinishReason,
    SamplingParams,
    SeededEngine,
    engine_names,
    get_engine_factory,
    is_engine_name,
    register_engine,
)

if TYPE_CHECKING:
    from tppo.engines.hf import HFEngine
    from tppo.engines.vllm import VLLMEngine

_LAZY = {"HFEngine": "tppo.engines.hf", "VLLMEngine": "tppo.engines.vllm"}


def __getattr__(name: str) -> Any:
    """``HFEngine`` and ``VLLMEngine``, imported on first use (PEP 562)."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ENGINES",
    "FINISH_REASONS",
    "LENGTH",
    "STOP",
    "Completion",
    "Engine",
    "EngineStats",
    "FinishReason",
    "HFEngine",
    "SamplingParams",
    "SeededEngine",
    "VLLMEngine",
    "engine_names",
    "get_engine_factory",
    "is_engine_name",
    "register_engine",
]
