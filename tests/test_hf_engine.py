"""Tests of the Hugging Face rollout engine (:class:`tppo.engines.hf.HFEngine`) on a tiny random Qwen2."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import torch
from conftest import make_prefixes, make_tiny_qwen2
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from tppo.engines import ENGINES, Completion, HFEngine, SamplingParams, get_engine_factory
from tppo.engines import hf as hf_module
from tppo.engines.sampling import processed_log_probs

VOCAB = 48
NEVER = 10_000  # an EOS id the model cannot emit
GREEDY = SamplingParams(temperature=0.0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny models gain nothing from 2 threads, and OpenMP threads stall ~50x when another process
    keeps one of the 2 cores busy (measured: 64x128 @ 128x512 matmul, 0.11 ms on 1 thread, 6-16 ms on 2)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> PreTrainedModel:
    return make_tiny_qwen2(VOCAB, seed=0)


@pytest.fixture(scope="module")
def prefixes() -> list[list[int]]:
    """Eight prefixes of lengths 1..20, all different from one another."""
    out = make_prefixes(8, VOCAB, min_len=1, max_len=20, seed=1)
    assert len({len(p) for p in out}) >= 5
    return out


def _engine(model: PreTrainedModel, *, eos: Sequence[int] = (NEVER,), **kwargs: Any) -> HFEngine:
    return HFEngine(model, eos_token_ids=eos, pad_token_id=0, **kwargs)


def _hf_greedy(model: Any, prefix: list[int], n: int) -> list[int]:
    """``model.generate`` greedy continuation of one unpadded prefix, ignoring EOS."""
    ids = torch.tensor([prefix])
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=False,
        eos_token_id=NEVER,
        pad_token_id=0,
    )
    return out[0, len(prefix) :].tolist()


def _fresh_log_probs(
    model: PreTrainedModel, prefix: list[int], tokens: list[int], sampling: SamplingParams
) -> torch.Tensor:
    """The contract's log-prob of ``tokens`` (:func:`processed_log_probs`) from one unpadded forward
    pass over prefix + tokens."""
    with torch.no_grad():
        logits = model(torch.tensor([prefix + tokens])).logits[0].float()
    steps = logits[len(prefix) - 1 : len(prefix) - 1 + len(tokens)]
    return processed_log_probs(steps, sampling).gather(-1, torch.tensor(tokens)[:, None]).squeeze(-1)


def test_registered_under_hf() -> None:
    assert "hf" in ENGINES
    assert get_engine_factory("hf") is HFEngine


# One padded prefill; prefill in groups of <= 24 padded tokens, stacked into one cache; batches of 3 rows.
BATCHINGS = [{}, {"prefill_chunk_tokens": 24}, {"max_batch_size": 3, "prefill_chunk_tokens": 24}]
BATCHING_IDS = ["one-prefill", "grouped-prefill", "batches-of-3"]


def test_prefill_groups() -> None:
    assert hf_module._prefill_groups([2, 3, 5, 5, 9, 30], 12) == [(0, 2), (2, 4), (4, 5), (5, 6)]
    assert hf_module._prefill_groups([4, 4, 4], 12) == [(0, 3)]
    assert hf_module._prefill_groups([7], 1) == [(0, 1)]


@pytest.mark.parametrize("batching", BATCHINGS, ids=BATCHING_IDS)
def test_greedy_batch_equals_each_prefix_alone_and_model_generate(
    model: PreTrainedModel, prefixes: list[list[int]], batching: dict[str, Any]
) -> None:
    budgets = [10, 4, 10, 1, 7, 10, 2, 9]  # rows leave the batch at different steps
    batch = _engine(model, **batching).generate(prefixes, budgets, GREEDY)
    alone = _engine(model)
    for prefix, n, completion in zip(prefixes, budgets, batch, strict=True):
        assert completion.finish_reason == "length"
        assert completion.token_ids == alone.generate([prefix], [n], GREEDY)[0].token_ids
        assert completion.token_ids == _hf_greedy(model, prefix, n)


def _tiny_gpt2() -> PreTrainedModel:
    """Learned absolute positions: wrong ``position_ids`` on left-padded rows change its outputs."""
    config = GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, initializer_range=0.2,
        bos_token_id=None, eos_token_id=None,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return GPT2LMHeadModel(config).eval()


def _tiny_llama() -> PreTrainedModel:
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, initializer_range=0.2, bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return LlamaForCausalLM(config).eval()


def _tiny_sliding_qwen2() -> PreTrainedModel:
    """Layer 1 has a 6-token sliding window: its cache cannot be stacked from groups (one padded prefill)."""
    return make_tiny_qwen2(VOCAB, seed=0, use_sliding_window=True, sliding_window=6, max_window_layers=1)


@pytest.mark.parametrize(
    "make_model", [_tiny_gpt2, _tiny_llama, _tiny_sliding_qwen2], ids=["gpt2", "llama", "qwen2-sliding"]
)
def test_other_decoder_only_models(
    make_model: Callable[[], PreTrainedModel], prefixes: list[list[int]]
) -> None:
    model = make_model()
    budgets = [10, 4, 10, 1, 7, 10, 2, 9]
    completions = _engine(model, prefill_chunk_tokens=24).generate(prefixes, budgets, GREEDY)
    assert [c.token_ids for c in completions] == [
        _hf_greedy(model, p, n) for p, n in zip(prefixes, budgets, strict=True)
    ]
    sampling = SamplingParams(temperature=0.7)
    sampled = _engine(model).generate(prefixes, budgets, sampling)
    for prefix, completion in zip(prefixes, sampled, strict=True):
        expected = _fresh_log_probs(model, prefix, completion.token_ids, sampling)
        torch.testing.assert_close(torch.tensor(completion.log_probs), expected, atol=1e-4, rtol=0)


def test_rows_keep_decoding_correctly_when_the_cache_cannot_drop_rows(
    model: PreTrainedModel, prefixes: list[list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hf_module, "_can_drop_rows", lambda cache: False)
    budgets = [6, 1, 3, 6, 2, 5, 6, 4]
    engine = _engine(model, seed=5)
    greedy = engine.generate(prefixes, budgets, GREEDY)
    assert [c.token_ids for c in greedy] == [
        _hf_greedy(model, p, n) for p, n in zip(prefixes, budgets, strict=True)
    ]
    sampling = SamplingParams(temperature=0.8)
    sampled = engine.generate(prefixes, budgets, sampling)
    for prefix, budget, completion in zip(prefixes, budgets, sampled, strict=True):
        assert len(completion.token_ids) == budget
        expected = _fresh_log_probs(model, prefix, completion.token_ids, sampling)
        torch.testing.assert_close(torch.tensor(completion.log_probs), expected, atol=1e-4, rtol=0)
    assert engine.stats.decode_steps == 2 * max(budgets)


@pytest.mark.parametrize(
    "params",
    [GREEDY, SamplingParams(temperature=0.7), SamplingParams(temperature=0.7, top_k=8, top_p=0.8)],
    ids=["greedy", "t0.7", "t0.7-topk-topp"],
)
@pytest.mark.parametrize("batching", BATCHINGS, ids=BATCHING_IDS)
def test_log_probs_equal_a_fresh_forward_pass(
    model: PreTrainedModel, prefixes: list[list[int]], params: SamplingParams, batching: dict[str, Any]
) -> None:
    budgets = [12, 3, 12, 8, 1, 12, 5, 10]
    completions = _engine(model, seed=1, **batching).generate(prefixes, budgets, params)
    for prefix, completion in zip(prefixes, completions, strict=True):
        expected = _fresh_log_probs(model, prefix, completion.token_ids, params)
        torch.testing.assert_close(torch.tensor(completion.log_probs), expected, atol=1e-4, rtol=0)


def test_eos_stops_a_row_and_budgets_are_respected(model: PreTrainedModel, prefixes: list[list[int]]) -> None:
    budgets = [12, 12, 0, 12, 5, 1, 12, 12]
    free = _engine(model).generate(prefixes, budgets, GREEDY)
    eos = free[0].token_ids[4]  # row 0 emits this at step 5 at the latest
    stop_at = free[0].token_ids.index(eos)
    completions = _engine(model, eos=[eos, NEVER]).generate(prefixes, budgets, GREEDY)

    assert completions[0] == Completion(free[0].token_ids[: stop_at + 1], completions[0].log_probs, "stop")
    assert completions[2] == Completion([], [], "length")
    n_stopped = 0
    for full, budget, completion in zip(free, budgets, completions, strict=True):
        if eos in full.token_ids:
            n_stopped += 1
            cut = full.token_ids.index(eos) + 1
            assert completion.token_ids == full.token_ids[:cut]
            assert completion.finish_reason == "stop"
        else:
            assert completion.token_ids == full.token_ids
            assert len(completion.token_ids) == budget
            assert completion.finish_reason == "length"
        torch.testing.assert_close(
            completion.log_probs, full.log_probs[: len(completion.log_probs)], atol=1e-4, rtol=0
        )
    assert 0 < n_stopped < len(prefixes) - 1  # both kinds of row are exercised


def test_every_budget_zero_runs_nothing(model: PreTrainedModel, prefixes: list[list[int]]) -> None:
    engine = _engine(model)
    assert engine.generate(prefixes[:3], [0, 0, 0], GREEDY) == [Completion([], [], "length")] * 3
    assert engine.generate([], [], GREEDY) == []
    assert (engine.stats.generated_tokens, engine.stats.decode_steps) == (0, 0)


def test_invalid_inputs_raise(model: PreTrainedModel) -> None:
    engine = _engine(model)
    with pytest.raises(ValueError, match="budgets"):
        engine.generate([[1, 2]], [1, 2], GREEDY)
    with pytest.raises(ValueError, match="< 0"):
        engine.generate([[1, 2]], [-1], GREEDY)
    with pytest.raises(ValueError, match="empty"):
        engine.generate([[]], [3], GREEDY)
    with pytest.raises(ValueError, match="eos"):
        HFEngine(model, eos_token_ids=[], pad_token_id=0)
    with pytest.raises(ValueError, match="max_batch_size"):
        _engine(model, max_batch_size=0)
    with pytest.raises(ValueError, match="prefill_chunk_tokens"):
        _engine(model, prefill_chunk_tokens=0)


def test_same_seed_same_tokens_and_rng_state_round_trip(
    model: PreTrainedModel, prefixes: list[list[int]]
) -> None:
    params = SamplingParams(temperature=1.0)
    budgets = [8] * len(prefixes)
    first = _engine(model, seed=11).generate(prefixes, budgets, params)
    assert first == _engine(model, seed=11).generate(prefixes, budgets, params)
    assert first != _engine(model, seed=12).generate(prefixes, budgets, params)

    engine = _engine(model, seed=11)
    engine.generate(prefixes, budgets, params)
    state = engine.get_rng_state()
    second = engine.generate(prefixes, budgets, params)
    assert second != first  # the generator moved on
    resumed = _engine(model, seed=999)
    resumed.set_rng_state(state)
    assert resumed.generate(prefixes, budgets, params) == second

    resumed.reseed(11)
    assert resumed.generate(prefixes, budgets, params) == first


def test_top_k_one_equals_greedy(model: PreTrainedModel, prefixes: list[list[int]]) -> None:
    budgets = [9] * len(prefixes)
    greedy = _engine(model).generate(prefixes, budgets, GREEDY)
    top1 = _engine(model, seed=3).generate(prefixes, budgets, SamplingParams(temperature=1.0, top_k=1))
    assert [c.token_ids for c in top1] == [c.token_ids for c in greedy]


def test_update_weights_loads_another_models_weights(prefixes: list[list[int]]) -> None:
    policy, other = make_tiny_qwen2(VOCAB, seed=0), make_tiny_qwen2(VOCAB, seed=1)
    budgets = [8] * len(prefixes)
    engine = _engine(policy)
    before = [c.token_ids for c in engine.generate(prefixes, budgets, GREEDY)]
    engine.update_weights(other.state_dict().items())  # includes the tied alias lm_head.weight
    after = [c.token_ids for c in engine.generate(prefixes, budgets, GREEDY)]
    assert after == [_hf_greedy(other, p, n) for p, n in zip(prefixes, budgets, strict=True)]
    assert after != before
    for name, tensor in other.state_dict().items():
        assert torch.equal(policy.state_dict()[name], tensor), name


def test_update_weights_skips_tensors_that_already_are_the_parameters() -> None:
    model = make_tiny_qwen2(VOCAB, seed=0)
    engine = _engine(model)
    versions = {name: p._version for name, p in model.named_parameters()}
    engine.update_weights(model.named_parameters())
    assert {name: p._version for name, p in model.named_parameters()} == versions
    name, param = next(iter(model.named_parameters()))
    engine.update_weights([(name, param.detach().clone())])  # another tensor: copied
    assert param._version == versions[name] + 1


def test_update_weights_rejects_unknown_names_and_wrong_shapes() -> None:
    engine = _engine(make_tiny_qwen2(VOCAB, seed=0))
    with pytest.raises(KeyError, match=r"model\.not_a_layer\.weight"):
        engine.update_weights([("model.not_a_layer.weight", torch.zeros(3))])
    with pytest.raises(ValueError, match="shape"):
        engine.update_weights([("model.norm.weight", torch.zeros(3))])


def test_stats_count_tokens_and_forward_passes(model: PreTrainedModel, prefixes: list[list[int]]) -> None:
    engine = _engine(model)
    engine.generate(prefixes[:3], [3, 5, 0], GREEDY)
    assert (engine.stats.generated_tokens, engine.stats.decode_steps) == (8, 5)
    engine.generate(prefixes[:2], [2, 1], GREEDY)
    stats = engine.pop_stats()
    assert (stats.generated_tokens, stats.decode_steps) == (11, 7)
    assert stats.extra["generate_s"] > 0
    assert (engine.stats.generated_tokens, engine.stats.decode_steps) == (0, 0)

    chunked = _engine(model, max_batch_size=1)
    chunked.generate(prefixes[:3], [3, 5, 0], GREEDY)  # two batches of one row
    assert (chunked.stats.generated_tokens, chunked.stats.decode_steps) == (8, 8)


@pytest.mark.parametrize("training", [True, False])
def test_generates_in_eval_and_inference_mode_and_restores_the_mode(
    prefixes: list[list[int]], training: bool
) -> None:
    model = make_tiny_qwen2(VOCAB, seed=0)
    model.train(training)
    model.model.layers[0].eval()  # a mixed mode must come back exactly as it was
    modes = [m.training for m in model.modules()]
    seen: list[tuple[bool, bool]] = []
    model.register_forward_pre_hook(
        lambda m, args: seen.append((m.training, torch.is_inference_mode_enabled()))
    )
    _engine(model).generate(prefixes[:2], [3, 3], GREEDY)
    assert seen and set(seen) == {(False, True)}
    assert [m.training for m in model.modules()] == modes
