"""The data an engine takes and returns: sampling settings, completions, finish reasons, counters.

Standard library only, so that the slot pool, the trainer and the tests can use these types without
importing an engine (and with it transformers or vLLM). :mod:`tppo.engines.base` re-exports them.

The log-prob contract (every engine, see :class:`Completion`): ``log_probs[i]`` is the
log-probability of ``token_ids[i]`` under the distribution the engine actually sampled it from:
the logits divided by the temperature, then top-k filtered, then top-p (nucleus) filtered, then
renormalised over the tokens that are left (:func:`tppo.engines.sampling.processed_log_probs`; vLLM's
``logprobs_mode="processed_logprobs"``). Greedy decoding (temperature 0) reports ``log_softmax`` of the
raw logits, no filter applied. So with top-k / top-p active the log-prob is that of the filtered,
renormalised distribution, which is larger than the unfiltered one's; the trainer computes its own
log-probs under the same processing (:func:`tppo.models.response_log_probs`), so that the PPO ratio
compares like with like whether ``old_log_probs`` come from the engine or are recomputed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

FinishReason = Literal["stop", "length"]
"""Why a completion or a response ended, everywhere in tppo (engines, slot pool, trainer, tests).

``stop``: an end-of-sequence token was emitted (kept as the last token). ``length``: a length limit
was reached without one: an engine completion's token budget, or a slot's ``max_response_length``."""

STOP: Final = "stop"
""":data:`FinishReason`: an EOS token ended it."""

LENGTH: Final = "length"
""":data:`FinishReason`: a length limit ended it (engine budget; a slot's ``max_response_length``)."""

FINISH_REASONS: Final = (STOP, LENGTH)
"""Every :data:`FinishReason`, in one tuple."""


@dataclass(frozen=True)
class SamplingParams:
    """How to sample next tokens (see the module docstring for what the returned log-probs mean).

    Attributes:
        temperature: divides the logits; ``0`` means greedy decoding (argmax, no filter).
        top_k: keep only the tokens whose logit is at least the ``top_k``-th largest (ties at the
            boundary are kept); ``0`` disables it. Applied before ``top_p``.
        top_p: nucleus sampling: keep the most likely tokens until their (top-k renormalised)
            probability reaches ``top_p`` (always at least one); ``1.0`` disables it.
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

    @property
    def filters(self) -> bool:
        """Whether top-k or top-p removes tokens from the sampling distribution (never when greedy)."""
        return not self.greedy and (self.top_k > 0 or self.top_p < 1.0)


@dataclass
class Completion:
    """The continuation of one prefix.

    Attributes:
        token_ids: the new tokens, at most the row's budget; ends with the EOS token when
            ``finish_reason == "stop"``.
        log_probs: ``log_probs[i]`` is the log-probability of ``token_ids[i]`` under the distribution
            it was sampled from (the log-prob contract in the module docstring).
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
        if self.finish_reason not in FINISH_REASONS:
            raise ValueError(f"finish_reason must be one of {FINISH_REASONS}, got {self.finish_reason!r}")


@dataclass
class EngineStats:
    """Counters an engine accumulates; the trainer reads and resets them every step."""

    generated_tokens: int = 0
    decode_steps: int = 0
    extra: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Request:
    """A prefix to continue by at most ``max_new_tokens`` tokens: what a refill puts in a freed row."""

    prefix: Sequence[int]
    max_new_tokens: int


Refill = Callable[[int, Completion, int], Request | None]
"""Called by :meth:`~tppo.engines.base.Engine.generate_refilling` once for every row when its completion is
final, as ``refill(row, completion, decode_step)``: ``row`` numbers the rows (the given prefixes
``0..n-1``, then the refills in the order they were returned), ``decode_step`` is how many decode steps
the call had run when the row ended. Returns the request that takes the freed row for the rest of the
call (continued with the same weights), or ``None``."""
