"""Groups of responses to one prompt draw, for the group-relative methods (GRPO, DAPO, partial rollout).

The ``samples_per_prompt`` draws of one prompt are consecutive in the prompt stream, so a response's
group is ``prompt.uid // group_size``. With ``l < L`` the members finish at different steps: a
finished member leaves its slot at once (so every slot stays busy) and waits here, tokens, engine
log-probs and score kept, until the last one finishes; the complete group is then handed out once.
Everything waiting is part of the checkpoint (:meth:`GroupBuffer.state_dict`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tppo.rollout.slot_pool import Slot, slot_from_dict, slot_to_dict


def group_id(slot: Slot, group_size: int) -> int:
    """The group of ``slot``'s response: its prompt draw's position in the stream // group size."""
    return slot.prompt.uid // group_size


class GroupBuffer:
    """Finished members of incomplete groups, and complete groups held back for an update.

    Args:
        group_size: responses per group (``rollout.samples_per_prompt``).
    """

    def __init__(self, group_size: int) -> None:
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        self.group_size = group_size
        self.waiting: dict[int, list[Slot]] = {}
        """Group id -> its members that have finished (fewer than ``group_size``)."""
        self.ready: list[list[Slot]] = []
        """Complete groups kept for a later update (dynamic sampling's minimum not yet reached)."""

    @property
    def num_waiting(self) -> int:
        """Responses held here: members of incomplete groups and of groups kept for later."""
        return sum(len(g) for g in self.waiting.values()) + sum(len(g) for g in self.ready)

    def add(self, finished: Sequence[Slot]) -> list[list[Slot]]:
        """File each finished (and scored) slot under its group; return the groups that became
        complete, in the order they completed, members in sample order. Each group is returned once."""
        completed = []
        for slot in finished:
            if not slot.finished or slot.score is None:
                raise ValueError(
                    f"prompt draw {slot.prompt.uid}: only finished, scored responses join a group"
                )
            members = self.waiting.setdefault(group_id(slot, self.group_size), [])
            members.append(slot)
            if len(members) == self.group_size:
                del self.waiting[group_id(slot, self.group_size)]
                completed.append(sorted(members, key=lambda s: s.prompt.sample))
        return completed

    def state_dict(self) -> dict[str, Any]:
        return {
            "group_size": self.group_size,
            "waiting": [[slot_to_dict(s) for s in members] for _, members in sorted(self.waiting.items())],
            "ready": [[slot_to_dict(s) for s in members] for members in self.ready],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["group_size"] != self.group_size:
            raise ValueError(f"checkpoint has groups of {state['group_size']}, this run {self.group_size}")
        self.waiting = {}
        for members in state["waiting"]:
            slots = [slot_from_dict(s) for s in members]
            self.waiting[group_id(slots[0], self.group_size)] = slots
        self.ready = [[slot_from_dict(s) for s in members] for members in state["ready"]]
