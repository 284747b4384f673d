"""The prompt stream: an endless, seeded, resumable sequence of prompts for the slot pool."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PromptRow:
    """One data-set row, tokenised.

    Attributes:
        token_ids: the prompt as the model sees it (template applied).
        ground_truth: what the reward compares the response against.
        text: the prompt text (for logs).
    """

    token_ids: tuple[int, ...]
    ground_truth: str
    text: str = ""


@dataclass(frozen=True)
class Prompt:
    """One draw from the stream: a row, and which of its samples this is.

    Attributes:
        uid: position in the stream (0, 1, 2, ...): unique per draw, so a resumed run can tell
            that no prompt was consumed twice or skipped.
        row: index of the row in the data set.
        sample: 0 .. samples_per_prompt - 1.
        epoch: pass over the data set this draw belongs to.
    """

    uid: int
    row: int
    sample: int
    epoch: int
    token_ids: tuple[int, ...]
    ground_truth: str


class PromptStream:
    """Rows in a seeded order, reshuffled every epoch, each repeated ``samples_per_prompt`` times.

    The whole state is one integer, ``position``: the order of epoch ``e`` is a permutation
    drawn from ``random.Random(f"{seed}:{e}")``, so the stream resumes exactly from a position.
    """

    def __init__(
        self, rows: Sequence[PromptRow], *, samples_per_prompt: int, seed: int, shuffle: bool = True
    ) -> None:
        if not rows:
            raise ValueError("the prompt stream needs at least one row")
        if samples_per_prompt < 1:
            raise ValueError(f"samples_per_prompt must be >= 1, got {samples_per_prompt}")
        self.rows = rows
        self.samples_per_prompt = samples_per_prompt
        self.seed = seed
        self.shuffle = shuffle
        self.position = 0
        self._order_epoch = -1
        self._order: list[int] = []

    def _epoch_order(self, epoch: int) -> list[int]:
        if epoch != self._order_epoch:
            order = list(range(len(self.rows)))
            if self.shuffle:
                random.Random(f"{self.seed}:{epoch}").shuffle(order)
            self._order, self._order_epoch = order, epoch
        return self._order

    def next(self) -> Prompt:
        per_epoch = len(self.rows) * self.samples_per_prompt
        epoch, offset = divmod(self.position, per_epoch)
        index, sample = divmod(offset, self.samples_per_prompt)
        row = self._epoch_order(epoch)[index]
        prompt = Prompt(
            uid=self.position,
            row=row,
            sample=sample,
            epoch=epoch,
            token_ids=self.rows[row].token_ids,
            ground_truth=self.rows[row].ground_truth,
        )
        self.position += 1
        return prompt

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position, "seed": self.seed, "num_rows": len(self.rows)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["num_rows"] != len(self.rows) or state["seed"] != self.seed:
            raise ValueError(
                f"prompt stream state is for {state['num_rows']} rows with seed {state['seed']}, "
                f"this stream has {len(self.rows)} rows with seed {self.seed}"
            )
        self.position = int(state["position"])
