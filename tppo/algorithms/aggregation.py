"""Loss aggregation that does not depend on how a minibatch is split (micro-batches, workers).

A minibatch's loss is the token mean of its per-token losses over the minibatch's *global* token
count ``N``: ``sum_{t in minibatch} mask_t * l_t / N``. Each piece (a micro-batch, or the rows one
training worker holds) contributes ``sum_{t in piece} mask_t * l_t / N``; the pieces' losses, and so
their gradients, *add up* to the whole minibatch's. Data-parallel workers therefore sum their
gradients (not average them). The mean of per-worker means would weigh a worker holding 10 tokens
as much as one holding 1,000; it changes with the number of workers, this does not.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tppo.algorithms.stats import masked_sum


def global_token_mean(x: Tensor, mask: Tensor, token_count: int | float | Tensor | None = None) -> Tensor:
    """This piece's share of the token mean over a whole minibatch: ``sum_i mask_i x_i / max(1, N)``.

    Args:
        x: ``Tensor[...]`` per-token values (e.g. losses) of this piece.
        mask: ``Tensor[...]`` bool, the shape of ``x``: the tokens that count.
        token_count: ``N``, the masked-token count of the *whole* minibatch (all pieces, all
            workers). ``None``: this piece's own count (the plain masked mean).

    Returns:
        A 0-dim tensor (with grad through ``x``). Summed over pieces that partition a minibatch, it
        equals ``global_token_mean`` of the whole minibatch; masked entries are never read.
    """
    total = masked_sum(x, mask)
    count = mask.sum() if token_count is None else torch.as_tensor(token_count, device=mask.device)
    return total / count.to(total.dtype).clamp(min=1)


def shard_rows(rows: Tensor, world_size: int) -> list[Tensor]:
    """Split ``rows`` (``Tensor[R]`` row ids) into ``world_size`` contiguous pieces, in order.

    Piece sizes differ by at most one (the first ones are the larger); with fewer rows than
    workers, the last pieces are empty. Piece ``r`` is what worker (rank) ``r`` trains on.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    return list(torch.tensor_split(rows, world_size))


def sequence_token_weights(mask: Tensor) -> Tensor:
    """Per-token weights ``Tensor[B, T]`` float32 that turn a token mean into a sequence mean:
    ``1 / n_b`` on each of row ``b``'s ``n_b`` masked tokens, 0 elsewhere (and on empty rows).

    The weighted token mean ``sum_t w_t l_t / sum_t w_t`` over a minibatch is then the mean over its
    sequences of each sequence's token mean (the GRPO paper's ``seq_mean_token_mean`` aggregation);
    ``sum_t w_t`` is the number of sequences with a masked token.
    """
    if mask.dtype != torch.bool or mask.dim() != 2:
        raise ValueError(f"mask must be a 2-d bool Tensor[B, T], got {mask.dtype} {tuple(mask.shape)}")
    counts = mask.sum(dim=1, keepdim=True).to(torch.float32)
    return torch.where(mask, 1.0 / counts.clamp(min=1.0), 0.0)
