"""``tppo bench-engines``: the run's own prompts, and a raw vLLM path that does our engine's work."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest
import torch
from test_sources import write_jsonl
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tppo.bench_engines import bench_prompts, measure, raw_vllm_run
from tppo.config import load_config
from tppo.engines.types import SamplingParams

WORDS = ["[UNK]", "<eos>", "alpha", "beta", "gamma", "delta", "one", "two", "three"]


def numbered_tokenizer() -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", unk_token="[UNK]")


def test_prompts_come_from_train_files_when_they_are_set(tmp_path):
    problems = ["alpha beta", "gamma", "delta one two"]
    train = write_jsonl(tmp_path / "train.jsonl", [{"problem": p, "answer": "1"} for p in problems])
    config = load_config(
        None,
        [
            f"data.train_files=[{train}]",
            "data.prompt_template=none",
            "rollout.num_slots=8",
            "rollout.samples_per_prompt=2",
        ],
    )
    ids = [[WORDS.index(w) for w in p.split()] for p in problems]
    want = [ids[(i // 2) % 3] for i in range(8)]  # each prompt twice, as the slot pool fills
    assert bench_prompts(config, numbered_tokenizer()) == want


def test_rounds_rotate_which_run_goes_first():
    order: list[str] = []

    def run(name: str):
        return lambda: order.append(name) or 10

    rates = measure({"a": run("a"), "b": run("b"), "c": run("c")}, repeats=3)
    assert order == ["a", "b", "c", "a", "b", "c", "b", "c", "a", "c", "a", "b"]  # warm-up, 3 rounds
    assert set(rates) == {"a", "b", "c"} and all(r > 0 for r in rates.values())


class RecordingLLM:
    def __init__(self):
        self.params = []

    def generate(self, prompts, params, use_tqdm):
        self.params.append(params)
        return [SimpleNamespace(outputs=[SimpleNamespace(token_ids=[1, 2])]) for _ in prompts]


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")
def test_raw_same_work_asks_vllm_for_what_our_engine_asks():
    from tppo.engines.vllm import VLLMEngine

    sampling = SamplingParams(temperature=0.9, top_p=0.8, top_k=4)
    prefixes, eos = [[3, 4], [5], [6, 7, 8]], [1]
    llm = RecordingLLM()
    plain = raw_vllm_run(llm, prefixes, 16, sampling, eos)
    same = raw_vllm_run(llm, prefixes, 16, sampling, eos, same_work_seeds=torch.Generator().manual_seed(0))
    assert plain() == same() == 6
    plain_params, same_params = llm.params
    assert plain_params.logprobs is None and plain_params.seed is None
    assert len(same_params) == 3 and len({p.seed for p in same_params}) == 3  # one seed per request
    ours = VLLMEngine(RecordingLLM(), eos_token_ids=eos, max_model_len=64)._sampling_params(sampling, 16)
    fields = ("max_tokens", "temperature", "top_p", "top_k", "logprobs", "flat_logprobs", "stop_token_ids")
    for params in same_params:
        assert [getattr(params, f) for f in fields] == [getattr(ours, f) for f in fields]
        assert params.detokenize == ours.detokenize
    same()
    assert [p.seed for p in llm.params[-1]] != [p.seed for p in same_params]  # fresh seeds every call
