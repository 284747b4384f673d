"""The rollout-engine interface: continue token prefixes by at most ``n`` tokens each.

An engine knows nothing of the algorithm. The slot pool hands it one prefix per slot
(prompt + response so far, as token ids) and a token budget per slot; the engine samples
continuations and reports, for every new token, its log-probability, and why each row stopped.

**The log-prob contract** (every engine; ``tests/test_engine_conformance.py`` checks each one): the
log-probability of the sampled token under the distribution the engine actually sampled it from:
``logits / temperature``, then top-k, then top-p filtering, renormalised over the kept tokens
(:func:`tppo.engines.sampling.processed_logits`; vLLM's ``logprobs_mode="processed_logprobs"``).
Greedy decoding reports ``log_softmax(logits)``. With top-k / top-p active these differ from the
unfiltered ``log_softmax(logits / temperature)``; the trainer recomputes ``old_log_probs`` (and the
actor's log-probs) under the same processing, so engine and trainer log-probs agree up to numerics
(logged as ``rollout/logprob_gap_abs_mean``) and ``algorithm.recompute_old_log_probs: false`` gives
the same policy ratio as recomputing.

The data types (:class:`SamplingParams`, :class:`Completion`, :data:`FinishReason`,
:class:`EngineStats`) live in the light :mod:`tppo.engines.types` and are re-exported here.

Engines are registered by name in :data:`ENGINES`; ``rollout.engine`` in the config picks one. The
built-in ones (``hf``, ``vllm``) are registered as ``"module:Class"`` paths, imported only when
:func:`get_engine_factory` resolves them, so that listing or checking names imports neither
transformers nor vLLM.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from tppo.engines.types import (
    FINISH_REASONS,
    LENGTH,
    STOP,
    Completion,
    EngineStats,
    FinishReason,
    Refill,
    Request,
    SamplingParams,
)
from tppo.registry import Registry

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from tppo.config import TPPOConfig
    from tppo.models import Vocabulary


class Engine(abc.ABC):
    """A generation backend. Plug-in engines register themselves with :func:`register_engine`."""

    samples_in_place: bool = False
    """Whether the engine samples from the very model object it is built on (then, to generate
    while that model trains, ``rollout.overlap_generation`` builds it on a copy)."""

    def __init__(self) -> None:
        self.stats = EngineStats()

    @classmethod
    def from_config(
        cls, config: TPPOConfig, policy: PreTrainedModel, vocabulary: Vocabulary, *, seed: int
    ) -> Engine:
        """The engine the trainer uses, generating with ``policy``'s current weights.

        The default suits engines that sample from the in-process policy model itself:
        ``cls(policy, eos_token_ids=..., pad_token_id=..., seed=seed,
        max_batch_size=rollout.max_batch_size)``. Engines that hold their own copy of the weights
        override it (and sync ``policy`` into that copy before returning).
        """
        factory: Any = cls
        return factory(
            policy,
            eos_token_ids=vocabulary.eos_token_ids,
            pad_token_id=vocabulary.pad_token_id,
            seed=seed,
            max_batch_size=config.rollout.max_batch_size,
        )

    @abc.abstractmethod
    def generate(
        self,
        prefixes: Sequence[Sequence[int]],
        max_new_tokens: Sequence[int],
        sampling: SamplingParams,
    ) -> list[Completion]:
        """Continue every prefix by at most ``max_new_tokens[i]`` tokens.

        A row stops at the first EOS token (``finish_reason="stop"``) or when its budget is
        spent (``"length"``). A budget of 0 yields an empty ``"length"`` completion.
        """

    def generate_refilling(
        self,
        prefixes: Sequence[Sequence[int]],
        max_new_tokens: Sequence[int],
        sampling: SamplingParams,
        refill: Refill,
    ) -> list[Completion]:
        """:meth:`generate`, and every row that ends hands its place to the request ``refill`` returns.

        ``refill(row, completion, decode_step)`` is called once per row, when its completion is final
        (see :data:`~tppo.engines.types.Refill`); a returned :class:`~tppo.engines.types.Request` is
        continued in the same call, with the same weights, under the same contract. Returns every
        row's completion: the given prefixes', then the refills' in the order they were returned.

        This default runs in waves: one :meth:`generate` call, then one for the requests its ended
        rows returned (each row's ``decode_step`` counted from the start of the first wave), and so
        on. It keeps the semantics for any engine (remote ones included) but not the speed: a wave
        starts only when the last one has ended. Engines that can add rows to a running generation
        (``hf``, ``vllm``) override it so that a refill starts as soon as its row is free.
        """
        check_requests(prefixes, max_new_tokens)
        out: list[Completion] = []
        wave = [(list(p), int(n), 0) for p, n in zip(prefixes, max_new_tokens, strict=True)]
        while wave:
            completions = self.generate([p for p, _, _ in wave], [n for _, n, _ in wave], sampling)
            first_row, following = len(out), []
            out.extend(completions)
            for offset, ((_, _, started), completion) in enumerate(zip(wave, completions, strict=True)):
                ended = started + len(completion.token_ids)
                request = refill(first_row + offset, completion, ended)
                if request is not None:
                    following.append((list(request.prefix), int(request.max_new_tokens), ended))
            wave = following
        return out

    @abc.abstractmethod
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load new policy weights in place (``pi_old <- pi_theta``), Hugging Face names."""

    def workers_of(self, num_rows: int) -> list[int]:
        """Which worker continues each of ``num_rows`` rows of a :meth:`generate` call (one worker: 0)."""
        return [0] * num_rows

    def get_rng_state(self) -> Any:
        """State of the engine's sampling RNG (for checkpoints)."""
        return None

    def set_rng_state(self, state: Any) -> None:  # noqa: B027 - engines without an RNG keep no state
        """Restore what :meth:`get_rng_state` returned."""

    def reseed(self, seed: int) -> None:
        """Restart the sampling RNG from ``seed`` (evaluation uses the same stream every time)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be reseeded")

    def close(self) -> None:  # noqa: B027 - most engines hold nothing to release
        """Release resources (processes, memory)."""

    def pop_stats(self) -> EngineStats:
        stats, self.stats = self.stats, EngineStats()
        return stats


class SeededEngine(Engine):
    """An engine that samples from one ``torch.Generator``, ``self.generator``: its state is the
    engine's RNG state (checkpoints save and restore it; evaluation reseeds it)."""

    generator: torch.Generator

    def get_rng_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_rng_state(self, state: Any) -> None:
        self.generator.set_state(state)

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed)


EngineT = TypeVar("EngineT", bound="Engine")

ENGINES: Registry[type[Engine] | str] = Registry("rollout engine")
"""Engines by name: the class, or ``"module:Class"`` imported on first use (:func:`get_engine_factory`);
``rollout.engine`` in the config picks one."""

ENGINES.add("hf", "tppo.engines.hf:HFEngine")
ENGINES.add("vllm", "tppo.engines.vllm:VLLMEngine")


def check_requests(prefixes: Sequence[Sequence[int]], max_new_tokens: Sequence[int]) -> None:
    """The :meth:`Engine.generate` contract on its inputs: ``ValueError`` on mismatched lengths,
    negative budgets or an empty prefix to continue."""
    if len(prefixes) != len(max_new_tokens):
        raise ValueError(f"{len(prefixes)} prefixes but {len(max_new_tokens)} budgets")
    for i, (prefix, budget) in enumerate(zip(prefixes, max_new_tokens, strict=True)):
        if budget < 0:
            raise ValueError(f"max_new_tokens[{i}] = {budget} < 0")
        if budget > 0 and len(prefix) == 0:
            raise ValueError(f"prefix {i} is empty: there is nothing to condition the first token on")


def register_engine(name: str) -> Callable[[type[EngineT]], type[EngineT]]:
    """Class decorator: make an engine selectable as ``rollout.engine: <name>``."""
    return ENGINES.register(name)


def engine_names() -> list[str]:
    """The registered engine names, sorted (imports no engine)."""
    return sorted(ENGINES)


def is_engine_name(name: str) -> bool:
    """Whether ``name`` is a registered engine (imports no engine; for config validation, whose error
    can quote ``ENGINES.unknown_message(name)``)."""
    return name in ENGINES


def get_engine_factory(name: str) -> type[Engine]:
    """The engine class registered as ``name`` (build it with ``.from_config(...)``); a ``"module:Class"``
    entry is imported now. ``KeyError`` naming the registered engines for an unknown name."""
    entry = ENGINES.get(name)
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        cls: type[Engine] = getattr(importlib.import_module(module), attr)
        return cls
    return entry


__all__ = [
    "ENGINES",
    "FINISH_REASONS",
    "LENGTH",
    "STOP",
    "Completion",
    "Engine",
    "EngineStats",
    "FinishReason",
    "Refill",
    "Request",
    "SamplingParams",
    "SeededEngine",
    "check_requests",
    "engine_names",
    "get_engine_factory",
    "is_engine_name",
    "register_engine",
]
