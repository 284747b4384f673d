"""Next-token sampling shared by the in-process engines.

:func:`sample_tokens` draws one token per row and returns its log-probability under the
*unfiltered* tempered distribution ``log_softmax(logits / temperature)`` (raw ``log_softmax``
when greedy), which is what the trainer recomputes. Top-k and top-p only shape the distribution
the token is drawn from.
"""

from __future__ import annotations

import torch

from tppo.engines.base import SamplingParams


def sample_tokens(
    logits: torch.Tensor,
    sampling: SamplingParams,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row.

    Args:
        logits: ``[B, V]`` next-token logits (any float dtype; computed in float32).
        sampling: temperature / top-k / top-p; temperature 0 is greedy (argmax, ties to the
            lowest id), and then top-k / top-p are ignored.
        generator: RNG for the draw (on ``logits.device``); ``None`` uses torch's global RNG.

    Returns:
        ``(tokens, log_probs)``: ``[B]`` long token ids and ``[B]`` float32 log-probabilities of
        those tokens under ``log_softmax(logits / temperature)`` (``log_softmax(logits)`` when greedy).
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be [B, V], got shape {tuple(logits.shape)}")
    logits = logits.float()
    if sampling.greedy:
        tokens = logits.argmax(dim=-1)
        log_probs = torch.log_softmax(logits, dim=-1)
    else:
        scaled = logits / sampling.temperature
        log_probs = torch.log_softmax(scaled, dim=-1)
        filtered = _filter_logits(scaled, top_k=sampling.top_k, top_p=sampling.top_p)
        probs = torch.softmax(filtered, dim=-1)
        tokens = torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
    return tokens, log_probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def _filter_logits(logits: torch.Tensor, *, top_k: int, top_p: float) -> torch.Tensor:
    """Mask (to ``-inf``) the tokens outside the top-k, then outside the nucleus of mass ``top_p``.

    Args:
        logits: ``[B, V]`` float32 (already tempered) logits.
        top_k: keep exactly the ``top_k`` largest logits per row (``0``, or ``>= V``: no-op).
        top_p: keep the smallest prefix of the sorted, top-k-renormalised distribution whose mass
            is at least ``top_p`` (always at least one token); ``1.0``: no-op.

    Returns:
        ``[B, V]`` logits with the filtered-out entries set to ``-inf``.
    """
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        kept = torch.topk(logits, top_k, dim=-1).indices
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, kept, True)
        logits = logits.masked_fill(~keep, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        drop_sorted = mass_before >= top_p
        drop_sorted[:, 0] = False
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits
