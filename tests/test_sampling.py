"""Tests of :mod:`tppo.engines.sampling`: the processed sampling distribution and draws from it."""

from __future__ import annotations

import math

import pytest
import torch

from tppo.engines.sampling import processed_log_probs, sample_tokens, token_log_probs_and_entropy
from tppo.engines.types import SamplingParams


def _logits(batch: int = 4, vocab: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, vocab, generator=torch.Generator().manual_seed(seed)) * 2.0


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_greedy_is_argmax_with_raw_log_softmax() -> None:
    logits = _logits()
    tokens, log_probs = sample_tokens(logits, SamplingParams(temperature=0.0), _gen())
    assert tokens.dtype == torch.long and tokens.shape == (4,)
    assert torch.equal(tokens, logits.argmax(-1))
    expected = torch.log_softmax(logits, -1).gather(-1, tokens[:, None]).squeeze(-1)
    torch.testing.assert_close(log_probs, expected, atol=1e-6, rtol=0)


def _reference_log_probs(row: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The contract written out for one row of logits: temperature, then the k largest logits (ties
    at the k-th kept), then the most likely tokens until their renormalised mass reaches top_p."""
    scaled = row.double() / params.temperature
    kept = list(range(len(row)))
    if params.top_k:
        kth = sorted(scaled.tolist(), reverse=True)[params.top_k - 1]
        kept = [t for t in kept if scaled[t] >= kth]
    if params.top_p < 1:
        probs = torch.softmax(scaled[kept], -1).tolist()
        order = sorted(range(len(kept)), key=lambda i: -probs[i])
        nucleus, mass = [], 0.0
        for i in order:
            nucleus.append(kept[i])
            mass += probs[i]
            if mass >= params.top_p:
                break
        kept = nucleus
    out = torch.full_like(scaled, -math.inf)
    out[kept] = torch.log_softmax(scaled[kept], -1)
    return out.float()


FILTERS = [
    SamplingParams(temperature=0.7),
    SamplingParams(temperature=0.7, top_k=3),
    SamplingParams(temperature=1.3, top_p=0.5),
    SamplingParams(temperature=0.7, top_k=5, top_p=0.6),
]


@pytest.mark.parametrize("params", FILTERS)
def test_log_prob_is_of_the_processed_distribution_sampled_from(params: SamplingParams) -> None:
    logits = _logits(batch=64)
    tokens, log_probs = sample_tokens(logits, params, _gen())
    expected = torch.stack([_reference_log_probs(row, params) for row in logits])
    torch.testing.assert_close(processed_log_probs(logits, params), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(log_probs, expected.gather(-1, tokens[:, None]).squeeze(-1), atol=1e-5, rtol=0)
    assert torch.isfinite(log_probs).all()


def test_kept_tokens_stay_in_the_support_and_gradients_stay_finite() -> None:
    params = SamplingParams(temperature=0.8, top_k=4, top_p=0.7)
    logits = _logits(batch=3, seed=2).reshape(1, 3, 32).requires_grad_(True)
    outside = processed_log_probs(logits.detach(), params).argmin(-1)  # a filtered-out token per row
    chosen, entropy = token_log_probs_and_entropy(logits, outside, params)
    assert torch.isfinite(chosen).all() and torch.isfinite(entropy).all()
    (chosen.sum() + entropy.sum()).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    full = torch.log_softmax(logits.detach() / 0.8, -1).gather(-1, outside[..., None]).squeeze(-1)
    assert (chosen.detach() > full).all()  # renormalised over a smaller support


def test_low_precision_logits_give_float32_log_probs() -> None:
    logits = _logits().to(torch.bfloat16)
    tokens, log_probs = sample_tokens(logits, SamplingParams(temperature=0.9), _gen())
    assert log_probs.dtype == torch.float32
    expected = torch.log_softmax(logits.float() / 0.9, -1).gather(-1, tokens[:, None]).squeeze(-1)
    torch.testing.assert_close(log_probs, expected, atol=1e-6, rtol=0)


def test_same_generator_seed_same_tokens_and_other_seed_differs() -> None:
    logits = _logits(batch=256)
    params = SamplingParams(temperature=1.0)
    a, _ = sample_tokens(logits, params, _gen(7))
    b, _ = sample_tokens(logits, params, _gen(7))
    c, _ = sample_tokens(logits, params, _gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_top_k_one_is_greedy() -> None:
    logits = _logits(batch=128)
    tokens, _ = sample_tokens(logits, SamplingParams(temperature=1.5, top_k=1), _gen())
    assert torch.equal(tokens, logits.argmax(-1))


def test_top_k_samples_only_among_the_k_most_likely() -> None:
    k = 5
    logits = _logits(batch=1, vocab=40).expand(4000, -1)
    tokens, _ = sample_tokens(logits, SamplingParams(temperature=2.0, top_k=k), _gen())
    allowed = set(torch.topk(logits[0], k).indices.tolist())
    seen = set(tokens.tolist())
    assert seen <= allowed
    assert seen == allowed  # all k are reachable at a high temperature over 4000 draws


def test_top_k_keeps_ties_at_the_k_th_logit_as_vllm_does() -> None:
    logits = torch.tensor([3.0, 2.0, 1.0, 1.0, 1.0, 0.0, -1.0]).expand(3000, -1)
    tokens, log_probs = sample_tokens(logits, SamplingParams(temperature=1.0, top_k=3), _gen())
    assert set(tokens.tolist()) == {0, 1, 2, 3, 4}
    expected = torch.log_softmax(logits[0, :5], -1)[tokens]
    torch.testing.assert_close(log_probs, expected)


def test_top_k_at_least_vocab_is_a_no_op() -> None:
    logits = _logits(batch=16)
    a, _ = sample_tokens(logits, SamplingParams(temperature=1.0, top_k=32), _gen(3))
    b, _ = sample_tokens(logits, SamplingParams(temperature=1.0, top_k=0), _gen(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize(("top_p", "allowed"), [(0.01, {0}), (0.7, {0, 1}), (0.85, {0, 1, 2})])
def test_top_p_keeps_the_smallest_nucleus(top_p: float, allowed: set[int]) -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(3000, -1)
    tokens, log_probs = sample_tokens(logits, SamplingParams(temperature=1.0, top_p=top_p), _gen())
    assert set(tokens.tolist()) == allowed
    kept = probs[sorted(allowed)].sum()
    torch.testing.assert_close(log_probs, (probs / kept).log()[tokens])  # renormalised on the nucleus


def test_top_p_sees_the_top_k_renormalised_distribution() -> None:
    # top_k=2 leaves {0: 0.625, 1: 0.375}; top_p=0.6 then keeps only token 0.
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log().expand(2000, -1)
    tokens, _ = sample_tokens(logits, SamplingParams(temperature=1.0, top_k=2, top_p=0.6), _gen())
    assert set(tokens.tolist()) == {0}


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_sampled_frequencies_follow_the_tempered_distribution(temperature: float) -> None:
    base = torch.tensor([1.0, 0.5, 0.0, -1.0, -2.0])
    n = 40_000
    tokens, _ = sample_tokens(base.expand(n, -1), SamplingParams(temperature=temperature), _gen())
    freq = torch.bincount(tokens, minlength=5).float() / n
    torch.testing.assert_close(freq, torch.softmax(base / temperature, -1), atol=0.01, rtol=0)


def test_rejects_non_2d_logits() -> None:
    with pytest.raises(ValueError, match=r"\[B, V\]"):
        sample_tokens(torch.zeros(5), SamplingParams(), _gen())
