"""Slots -> padded tensors for the training forward passes.

Layout (the one verl uses): prompts left-padded to a common width ``P``, responses right-padded
to a common width ``T``, so that every response starts at column ``P``::

    input_ids[i] = [pad ... pad, prompt_i, response_i, pad ... pad]
                   |<------- P ------->|<-------- T -------->|

The logits that predict response token ``t`` sit at column ``P - 1 + t``, for every row, so
log-probs and values of all response tokens come from one contiguous slice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from tppo.algorithms.aggregation import shard_rows
from tppo.rollout.slot_pool import Slot


@dataclass
class RolloutBatch:
    """Padded tensors of B responses.

    Attributes:
        input_ids: ``Tensor[B, P + T] long``.
        attention_mask: ``Tensor[B, P + T] bool``, True on real tokens.
        position_ids: ``Tensor[B, P + T] long``, 0 at each row's first real token.
        prompt_width: P.
        response_mask: ``Tensor[B, T] bool``, True on response tokens (a prefix run per row).
        token_steps: ``Tensor[B, T] long``, the step that generated each token (-1 on padding).
        engine_log_probs: ``Tensor[B, T] float32``, the engine's log-prob of each token.
        is_finished: ``Tensor[B] bool``.
        per_token: further ``[B, T]`` tensors the trainer attaches (advantages, returns, ...).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    prompt_width: int
    response_mask: torch.Tensor
    token_steps: torch.Tensor
    engine_log_probs: torch.Tensor
    is_finished: torch.Tensor
    per_token: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def response_width(self) -> int:
        return int(self.response_mask.shape[1])

    @property
    def response_tokens(self) -> torch.Tensor:
        """``Tensor[B, T]``: the response token ids (pad where masked)."""
        return self.input_ids[:, self.prompt_width :]

    @property
    def lengths(self) -> torch.Tensor:
        """``Tensor[B]``: real tokens (prompt + response) per row."""
        return self.attention_mask.sum(dim=1)

    def to(self, device: torch.device | str) -> RolloutBatch:
        moved = {k: v.to(device) for k, v in self.per_token.items()}
        return RolloutBatch(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            position_ids=self.position_ids.to(device),
            prompt_width=self.prompt_width,
            response_mask=self.response_mask.to(device),
            token_steps=self.token_steps.to(device),
            engine_log_probs=self.engine_log_probs.to(device),
            is_finished=self.is_finished.to(device),
            per_token=moved,
        )

    def select(self, rows: torch.Tensor | Sequence[int]) -> RolloutBatch:
        """The given rows, with all-padding columns trimmed off both ends."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.input_ids.device)
        attention = self.attention_mask[rows]
        response_mask = self.response_mask[rows]
        prompt_lengths = attention[:, : self.prompt_width].sum(dim=1)
        new_p = int(prompt_lengths.max()) if len(rows) else 0
        new_t = int(response_mask.sum(dim=1).max()) if len(rows) else 0
        cols = slice(self.prompt_width - new_p, self.prompt_width + new_t)
        return RolloutBatch(
            input_ids=self.input_ids[rows][:, cols],
            attention_mask=attention[:, cols],
            position_ids=self.position_ids[rows][:, cols],
            prompt_width=new_p,
            response_mask=response_mask[:, :new_t],
            token_steps=self.token_steps[rows][:, :new_t],
            engine_log_probs=self.engine_log_probs[rows][:, :new_t],
            is_finished=self.is_finished[rows],
            per_token={k: v[rows][:, :new_t] for k, v in self.per_token.items()},
        )


def collate(slots: Sequence[Slot], *, pad_token_id: int) -> RolloutBatch:
    """Pad the slots' prompts (left) and responses (right) into a :class:`RolloutBatch`."""
    if not slots:
        raise ValueError("cannot collate an empty list of slots")
    width_p = max(len(s.prompt.token_ids) for s in slots)
    width_t = max(len(s.response_ids) for s in slots)
    batch_size = len(slots)
    input_ids = torch.full((batch_size, width_p + width_t), pad_token_id, dtype=torch.long)
    attention = torch.zeros((batch_size, width_p + width_t), dtype=torch.bool)
    token_steps = torch.full((batch_size, width_t), -1, dtype=torch.long)
    log_probs = torch.zeros((batch_size, width_t), dtype=torch.float32)
    for i, slot in enumerate(slots):
        p, t = len(slot.prompt.token_ids), len(slot.response_ids)
        input_ids[i, width_p - p : width_p] = torch.tensor(slot.prompt.token_ids, dtype=torch.long)
        input_ids[i, width_p : width_p + t] = torch.tensor(slot.response_ids, dtype=torch.long)
        attention[i, width_p - p : width_p + t] = True
        token_steps[i, :t] = torch.tensor(slot.token_steps, dtype=torch.long)
        log_probs[i, :t] = torch.tensor(slot.log_probs, dtype=torch.float32)
    position_ids = (attention.long().cumsum(dim=1) - 1).clamp(min=0)
    return RolloutBatch(
        input_ids=input_ids,
        attention_mask=attention,
        position_ids=position_ids,
        prompt_width=width_p,
        response_mask=attention[:, width_p:].clone(),
        token_steps=token_steps,
        engine_log_probs=log_probs,
        is_finished=torch.tensor([s.finished for s in slots], dtype=torch.bool),
    )


def pack_rows(rows: torch.Tensor, lengths: torch.Tensor, *, max_tokens: int | None) -> list[torch.Tensor]:
    """Split ``rows`` into micro-batches of similar length: sorted longest first, each holding as
    many rows as fit in ``rows x longest row <= max_tokens`` (at least one). ``None``: one batch.

    ``lengths`` is indexed by row id. Padding (and so wasted compute) stays small because each
    micro-batch is trimmed to its own longest row by :meth:`RolloutBatch.select`.
    """
    if max_tokens is None or len(rows) == 0:
        return [rows] if len(rows) else []
    order = rows[torch.argsort(lengths[rows], descending=True, stable=True)]
    packs, start = [], 0
    while start < len(order):
        longest = int(lengths[order[start]])
        size = max(1, max_tokens // max(longest, 1))
        packs.append(order[start : start + size])
        start += size
    return packs


def shard_packs(
    rows: torch.Tensor, lengths: torch.Tensor, *, max_tokens: int | None, rank: int, world_size: int
) -> tuple[list[torch.Tensor], int]:
    """Rank ``rank``'s micro-batches of ``rows`` (its :func:`shard_rows` piece, packed by
    :func:`pack_rows`), and how many empty passes it must add to match the rank with the most.

    Sharded models (FSDP) gather parameters in every forward pass and reduce gradients in every
    backward pass, collectively: every rank must run the same number of passes.
    """
    counts = [len(pack_rows(piece, lengths, max_tokens=max_tokens)) for piece in shard_rows(rows, world_size)]
    mine = pack_rows(shard_rows(rows, world_size)[rank], lengths, max_tokens=max_tokens)
    return mine, max(counts) - len(mine)
