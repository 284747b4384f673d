"""The sampling distribution, defined once: temperature, then top-k, then top-p, renormalised.

:func:`processed_logits` is the one definition of the distribution an engine samples from (the
log-prob contract of :mod:`tppo.engines.types`). The HF engine samples from it
(:func:`sample_tokens`) and the trainer recomputes log-probs under it
(:func:`tppo.models.response_log_probs`), so both report the same numbers for the same weights.
It follows vLLM's own filters (``apply_top_k_top_p_pytorch`` in ``vllm/v1/sample/ops/topk_topp_sampler.py``,
whose ``logprobs_mode="processed_logprobs"`` our vLLM engine uses):

* top-k keeps every token whose logit is at least the k-th largest (ties at the boundary stay);
* top-p sorts the remaining tokens by probability, ascending, and drops those whose cumulative
  probability is ``<= 1 - top_p``; the most likely token always stays.

Pure functions on tensors; nothing here imports an engine.
"""

from __future__ import annotations

import torch

from tppo.engines.types import SamplingParams


def processed_logits(
    logits: torch.Tensor, sampling: SamplingParams, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """The logits of the distribution sampled from: ``logits / temperature`` with the tokens top-k and
    top-p filter out set to ``-inf`` (greedy: the raw logits, float32).

    Args:
        logits: ``[..., V]`` next-token logits (any float dtype; the result is float32). Gradients flow
            through the kept entries (which tokens are kept is not differentiable).
        sampling: temperature / top-k / top-p.
        keep: optional ``[...]`` long token ids never filtered out (the trainer passes the sampled
            tokens, so that their log-prob stays finite after an update moves the nucleus; the
            engine's sampled token is always inside the nucleus it was drawn from, so for the weights
            that sampled it this changes nothing).

    Returns:
        ``[..., V]`` float32 logits; ``log_softmax`` of them is the processed log-prob.
    """
    logits = logits.float()
    if sampling.greedy:
        return logits
    scaled = logits / sampling.temperature
    if not sampling.filters:
        return scaled
    shape = scaled.shape
    flat = scaled.reshape(-1, shape[-1])
    drop = _filtered_out(flat.detach(), top_k=sampling.top_k, top_p=sampling.top_p)
    if keep is not None:
        drop.scatter_(-1, keep.reshape(-1, 1).to(drop.device), False)
    return flat.masked_fill(drop, float("-inf")).reshape(shape)


def processed_log_probs(
    logits: torch.Tensor, sampling: SamplingParams, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """``[..., V]`` float32 log-probs of the distribution sampled from (``-inf`` on filtered tokens)."""
    return torch.log_softmax(processed_logits(logits, sampling, keep), dim=-1)


def token_log_probs_and_entropy(
    logits: torch.Tensor, tokens: torch.Tensor, sampling: SamplingParams
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of ``tokens [...]`` under the processed distribution of ``logits [..., V]`` (each token
    kept in the support), and that distribution's entropy; both ``[...]`` float32."""
    log_probs = processed_log_probs(logits, sampling, keep=tokens)
    chosen = log_probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    finite = log_probs.clamp(min=torch.finfo(log_probs.dtype).min)  # 0 * -inf would be NaN
    entropy = -(log_probs.exp() * finite).sum(-1)
    return chosen, entropy


def sample_tokens(
    logits: torch.Tensor,
    sampling: SamplingParams,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row from the processed distribution.

    Args:
        logits: ``[B, V]`` next-token logits (any float dtype; computed in float32).
        sampling: temperature / top-k / top-p; temperature 0 is greedy (argmax, ties to the
            lowest id), and then top-k / top-p are ignored.
        generator: RNG for the draw (on ``logits.device``); ``None`` uses torch's global RNG.

    Returns:
        ``(tokens, log_probs)``: ``[B]`` long token ids and ``[B]`` float32 log-probabilities of
        those tokens under :func:`processed_log_probs` (the log-prob contract).
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be [B, V], got shape {tuple(logits.shape)}")
    log_probs = processed_log_probs(logits, sampling)
    if sampling.greedy:
        tokens = logits.float().argmax(dim=-1)
    else:
        tokens = torch.multinomial(log_probs.exp(), num_samples=1, generator=generator).squeeze(-1)
    return tokens, log_probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def _filtered_out(logits: torch.Tensor, *, top_k: int, top_p: float) -> torch.Tensor:
    """``[N, V]`` bool: the tokens top-k, then top-p, remove from ``[N, V]`` tempered logits.

    ``top_k`` of ``0`` or ``>= V`` and ``top_p`` of ``1.0`` remove nothing.
    """
    vocab = logits.shape[-1]
    drop = torch.zeros_like(logits, dtype=torch.bool)
    if 0 < top_k < vocab:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        drop |= logits < kth
    if top_p < 1.0:
        masked = logits.masked_fill(drop, float("-inf"))
        sorted_logits, order = masked.sort(dim=-1, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative <= 1 - top_p
        drop_sorted[:, -1] = False
        drop |= torch.zeros_like(drop).scatter_(-1, order, drop_sorted)
    return drop
