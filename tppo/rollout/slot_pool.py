"""Successive batching (paper sec. 3.2, DESIGN.md 1.1-1.10): K slots of responses in flight.

Every step: empty slots take new prompts (``fill``); every slot is continued by at most
``min(l, L - len(response))`` tokens (``requests`` -> engine -> ``record``); a response is
finished on EOS or when it reaches L; finished slots are emptied (``retire``) and refilled
next step, unfinished ones carry over. Every response token remembers the step that
generated it, and the log-probability the engine gave it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tppo.engines.types import LENGTH, STOP, Completion, FinishReason
from tppo.rollout.prompts import Prompt, PromptStream


@dataclass
class Slot:
    """One response in flight.

    Attributes:
        prompt: the prompt draw this response answers.
        start_step: the step in which the slot took the prompt.
        response_ids: response tokens so far (all steps).
        log_probs: the engine's log-prob of each response token, under the policy of its step.
        token_steps: the step that generated each response token.
        finish: ``None`` while unfinished; why it finished otherwise: ``"stop"`` (it emitted an
            end-of-sequence token) or ``"length"`` (it reached ``max_response_length`` L).
        bootstrap_positions: for each window edge the response crossed unfinished, the index of
            the window's last token (where EGAE bootstrapped with ``V(s_{b-1})``).
        bootstrap_values: the value estimate used as the bootstrap at each of those edges.
        score: the outcome reward, once finished and scored (a group member keeps it while it
            waits for the rest of its group: :class:`~tppo.rollout.groups.GroupBuffer`).
    """

    prompt: Prompt
    start_step: int
    response_ids: list[int] = field(default_factory=list)
    log_probs: list[float] = field(default_factory=list)
    token_steps: list[int] = field(default_factory=list)
    finish: FinishReason | None = None
    bootstrap_positions: list[int] = field(default_factory=list)
    bootstrap_values: list[float] = field(default_factory=list)
    score: float | None = None

    @property
    def finished(self) -> bool:
        return self.finish is not None

    @property
    def prefix(self) -> list[int]:
        """What the engine continues: prompt + response so far."""
        return [*self.prompt.token_ids, *self.response_ids]


class SlotPool:
    """K slots over a prompt stream; see the module docstring for the step protocol."""

    def __init__(
        self, stream: PromptStream, *, num_slots: int, window_length: int, max_response_length: int
    ) -> None:
        if num_slots < 1:
            raise ValueError(f"num_slots must be >= 1, got {num_slots}")
        if not 0 < window_length <= max_response_length:
            raise ValueError(
                f"need 0 < window_length ({window_length}) <= max_response_length ({max_response_length})"
            )
        self.stream = stream
        self.window_length = window_length
        self.max_response_length = max_response_length
        self.slots: list[Slot | None] = [None] * num_slots

    @property
    def num_slots(self) -> int:
        return len(self.slots)

    def active(self) -> list[Slot]:
        """Occupied slots, in slot order."""
        return [slot for slot in self.slots if slot is not None]

    def fill(self, step: int) -> int:
        """Put a new prompt in every empty slot; returns how many were filled."""
        filled = 0
        for index, slot in enumerate(self.slots):
            if slot is None:
                self.slots[index] = Slot(prompt=self.stream.next(), start_step=step)
                filled += 1
        return filled

    def requests(self) -> tuple[list[list[int]], list[int]]:
        """Prefixes and token budgets ``min(l, L - len(response))`` of the occupied slots."""
        active = self.active()
        budgets = [min(self.window_length, self.max_response_length - len(s.response_ids)) for s in active]
        return [s.prefix for s in active], budgets

    def record(self, step: int, completions: Sequence[Completion], eos_token_ids: Sequence[int]) -> None:
        """Append each completion to its slot (``active()`` order) and mark finished slots."""
        active = self.active()
        if len(completions) != len(active):
            raise ValueError(f"{len(completions)} completions for {len(active)} occupied slots")
        eos = set(eos_token_ids)
        for slot, completion in zip(active, completions, strict=True):
            slot.response_ids.extend(completion.token_ids)
            slot.log_probs.extend(completion.log_probs)
            slot.token_steps.extend([step] * len(completion.token_ids))
            if completion.finish_reason == STOP and slot.response_ids and slot.response_ids[-1] in eos:
                slot.finish = STOP
            elif len(slot.response_ids) >= self.max_response_length:
                slot.finish = LENGTH

    def retire(self) -> list[Slot]:
        """Empty the finished slots and return them (in slot order)."""
        retired = []
        for index, slot in enumerate(self.slots):
            if slot is not None and slot.finished:
                retired.append(slot)
                self.slots[index] = None
        return retired

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the unfinished responses exactly."""
        return {
            "slots": [None if s is None else slot_to_dict(s) for s in self.slots],
            "stream": self.stream.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["slots"]) != self.num_slots:
            raise ValueError(f"checkpoint has {len(state['slots'])} slots, this pool has {self.num_slots}")
        self.stream.load_state_dict(state["stream"])
        self.slots = [None if s is None else slot_from_dict(s) for s in state["slots"]]


def slot_to_dict(slot: Slot) -> dict[str, Any]:
    """A JSON-able copy of ``slot`` (what checkpoints hold)."""
    return {**asdict(slot), "prompt": asdict(slot.prompt)}


def slot_from_dict(data: dict[str, Any]) -> Slot:
    prompt = dict(data["prompt"])
    prompt["token_ids"] = tuple(prompt["token_ids"])
    return Slot(**{**data, "prompt": Prompt(**prompt)})
