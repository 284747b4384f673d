"""The rollout-engine interface: continue token prefixes by at most ``n`` tokens each.

An engine knows nothing of the algorithm. The slot pool hands it one prefix per slot
(prompt + response so far, as token ids) and a token budget per slot; the engine samples
continuations and reports, for every new token, its log-probability under the sampling
distribution ``log_softmax(logits / temperature)`` (before top-p / top-k filtering, so that
the trainer's recomputed log-probs are directly comparable), and why each row stopped.

Engines are registered by name in :data:`ENGINES`; ``rollout.engine`` in the config picks one.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import torch

from tppo.registry import Registry

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from tppo.config import TPPOConfig
    from tppo.models import Vocabulary

FinishReason = Literal["stop", "length"]
"""``stop``: the row emitted an end-of-sequence token (kept as its last token);
``length``: the row used its whole token budget without emitting one."""


@dataclass(frozen=True)
class SamplingParams:
    """How to sample next tokens.

    Attributes:
        temperature: divides the logits; ``0`` means greedy decoding (argmax).
        top_p: nucleus sampling, keep the smallest set of tokens whose probability sums to
            at least ``top_p``; ``1.0`` disables it.
        top_k: keep only the ``top_k`` most likely tokens; ``0`` disables it.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class Completion:
    """The continuation of one prefix.

    Attributes:
        token_ids: the new tokens, at most the row's budget; ends with the EOS token when
            ``finish_reason == "stop"``.
        log_probs: ``log_probs[i]`` is the log-probability of ``token_ids[i]`` under
            ``log_softmax(logits / temperature)`` (raw logits when greedy).
        finish_reason: ``"stop"`` (EOS emitted) or ``"length"`` (budget used up).
    """

    token_ids: list[int]
    log_probs: list[float]
    finish_reason: FinishReason

    def __post_init__(self) -> None:
        if len(self.token_ids) != len(self.log_probs):
            raise ValueError(
                f"{len(self.token_ids)} tokens but {len(self.log_probs)} log-probs in a completion"
            )


@dataclass
class EngineStats:
    """Counters an engine accumulates; the trainer reads and resets them every step."""

    generated_tokens: int = 0
    decode_steps: int = 0
    extra: dict[str, float] = field(default_factory=dict)


class Engine(abc.ABC):
    """A generation backend. Subclasses register themselves with :func:`register_engine`."""

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

ENGINES: Registry[type[Engine]] = Registry("rollout engine")
"""Engines by name; ``rollout.engine`` in the config picks one."""


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


def get_engine_factory(name: str) -> type[Engine]:
    """The engine class registered as ``name`` (build it with ``.from_config(config, models)``)."""
    return ENGINES.get(name)
