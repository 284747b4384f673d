"""Supervised warm-up: batching, the schedule, evaluation on hand-made cases, a tiny full run."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tppo.engines import Completion, Engine, HFEngine
from tppo.sft import (
    IGNORE_INDEX,
    SFTConfig,
    build_parser,
    config_from_args,
    config_to_argv,
    engine_accuracy,
    evaluate_accuracy,
    learning_rate,
    length_bucket,
    length_grouped_batches,
    main,
)
from tppo.tasks import get_task
from tppo.tasks.char_tokenizer import build_char_tokenizer
from tppo.tasks.collatz import ALPHABET
from tppo.tasks.tiny_model import build_tiny_qwen2


class ScriptedEngine(Engine):
    """Answers each prompt with a fixed token list, as an engine would: cut after the first EOS
    (finish "stop") or at the budget (finish "length"); records each call's prompts."""

    def __init__(self, tokenizer, script: dict[str, list[int]]) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.tokenizer, self.script, self.calls = tokenizer, script, []

    def generate(self, prefixes, max_new_tokens, sampling):  # type: ignore[no-untyped-def]
        prompts = [self.tokenizer.decode(p) for p in prefixes]
        self.calls.append(prompts)
        out = []
        for prompt, budget in zip(prompts, max_new_tokens, strict=True):
            tokens = self.script[prompt][:budget]
            eos = self.tokenizer.eos_token_id
            if eos in tokens:
                out.append(
                    Completion(tokens[: tokens.index(eos) + 1], [0.0] * (tokens.index(eos) + 1), "stop")
                )
            else:
                out.append(Completion(tokens, [0.0] * len(tokens), "length"))
        return out

    def update_weights(self, named_tensors):  # type: ignore[no-untyped-def]
        raise NotImplementedError


def test_engine_accuracy_on_a_scripted_engine() -> None:
    task = get_task("collatz")
    tokenizer = build_char_tokenizer(ALPHABET)
    eos = tokenizer.eos_token_id

    def ids(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    examples = [task.example(start) for start in (6, 2, 27, 12, 5)]
    script = {
        "6=": [*ids(examples[0].solution), eos],  # right
        "2=": [*ids(examples[1].solution), eos, *ids("#9")],  # right; text after EOS is ignored
        "72=": ids(examples[2].solution) + ids("1;#1") + [eos],  # wrong answer
        "21=": ids(examples[3].solution),  # right answer, but no EOS: truncated, scored as written
        "5=": ids("61;8;4;2;1;"),  # cut before its answer line
    }
    engine = ScriptedEngine(tokenizer, script)
    result = engine_accuracy(
        engine, tokenizer, task, examples, temperature=1.0, max_new_tokens=512, batch_size=2
    )
    assert result["rewards"] == [1.0, 1.0, 0.0, 1.0, 0.0]
    assert result["accuracy"] == 3 / 5
    assert result["responses"][0] == examples[0].solution
    assert result["truncated_fraction"] == 2 / 5
    # EOS is not a response token (one character, one token): 6, 2 and 12 their solutions,
    # 27 its solution and "1;#1", 5 "61;8;4;2;1;"
    solutions = [len(examples[i].solution) for i in (0, 1, 3)]
    assert result["mean_response_tokens"] == (sum(solutions) + len(examples[2].solution) + 4 + 11) / 5
    # two prompts a call, shortest reference solution first
    assert engine.calls == [["2=", "5="], ["6=", "21="], ["72="]]
    # Reference lengths: 2 -> "2;1;#1" (6) and 5 -> "5;61;8;4;2;1;#5" (15) in 1-16 (one right);
    # 6 -> "6;3;01;5;61;8;4;2;1;#8" (22) and 12 -> "21;6;...;#9" (25) in 17-32 (both right).
    assert result["per_bucket"]["1-16"] == {"num_examples": 2, "accuracy": 0.5}
    assert result["per_bucket"]["17-32"] == {"num_examples": 2, "accuracy": 1.0}
    assert result["per_bucket"]["257-512"] == {"num_examples": 1, "accuracy": 0.0}


def test_evaluate_accuracy_samples_through_the_hf_engine() -> None:
    task = get_task("collatz")
    tokenizer = build_char_tokenizer(ALPHABET)
    model = build_tiny_qwen2(tokenizer, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    examples = [task.example(start) for start in (3, 27, 703, 9, 100)]
    kwargs = {"temperature": 1.0, "max_new_tokens": 12, "batch_size": 2}
    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    result = evaluate_accuracy(model, tokenizer, task, examples, seed=7, **kwargs)
    assert torch.equal(torch.random.get_rng_state(), before)  # the engine's own generator samples
    engine = HFEngine(
        model, eos_token_ids=[tokenizer.eos_token_id], pad_token_id=tokenizer.pad_token_id, seed=7
    )
    assert engine_accuracy(engine, tokenizer, task, examples, **kwargs)["responses"] == result["responses"]
    again = evaluate_accuracy(model, tokenizer, task, examples, seed=8, **kwargs)["responses"]
    assert again != result["responses"]  # another seed, other samples


def test_left_padded_batches_match_single_prompts() -> None:
    task = get_task("collatz")
    tokenizer = build_char_tokenizer(ALPHABET)
    model = build_tiny_qwen2(tokenizer, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # large random weights, so that greedy outputs differ between prompts
        for parameter in model.parameters():
            parameter.normal_(0.0, 1.0, generator=generator)
    examples = [task.example(start) for start in (3, 27, 703, 9, 100)]
    kwargs = {"temperature": 0.0, "max_new_tokens": 12, "seed": 0}
    batched = evaluate_accuracy(model, tokenizer, task, examples, batch_size=5, **kwargs)["responses"]
    single = [
        evaluate_accuracy(model, tokenizer, task, [ex], batch_size=1, **kwargs)["responses"][0]
        for ex in examples
    ]
    assert batched == single
    assert len(set(batched)) > 1


def test_batches_are_seeded_length_grouped_and_masked() -> None:
    task = get_task("collatz")
    tokenizer = build_char_tokenizer(ALPHABET)
    config = SFTConfig(max_steps=1, tokens_per_batch=512, length_group_size=256, seed=3)
    first = next(next(length_grouped_batches(task, tokenizer, config)) for _ in range(1))
    stream_a = length_grouped_batches(task, tokenizer, config)
    stream_b = length_grouped_batches(task, tokenizer, config)
    for _ in range(10):
        batch_a, batch_b = next(stream_a), next(stream_b)
        assert all(torch.equal(a, b) for a, b in zip(batch_a, batch_b, strict=True))
        input_ids, attention_mask, labels = batch_a
        assert input_ids.numel() <= 512 or input_ids.shape[0] == 1
        # Labels: the response and its EOS; never the prompt ('=' ends it) nor padding.
        assert bool((labels[attention_mask == 0] == IGNORE_INDEX).all())
        eq_id = tokenizer.convert_tokens_to_ids("=")
        assert not bool((labels == eq_id).any())
        for row in range(input_ids.shape[0]):
            length = int(attention_mask[row].sum())
            assert input_ids[row, length - 1] == tokenizer.eos_token_id
            assert labels[row, length - 1] == tokenizer.eos_token_id
            prompt_length = input_ids[row, :length].tolist().index(eq_id) + 1
            assert bool((labels[row, :prompt_length] == IGNORE_INDEX).all())
            assert bool((labels[row, prompt_length:length] != IGNORE_INDEX).all())
    other = next(length_grouped_batches(task, tokenizer, SFTConfig(max_steps=1, seed=4)))
    assert not torch.equal(first[0], other[0]) or first[0].shape != other[0].shape


def test_schedule() -> None:
    config = SFTConfig(max_steps=110, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert learning_rate(config, 0, 0.0) == 0.1
    assert learning_rate(config, 9, 0.0) == 1.0
    assert learning_rate(config, 10, 0.0) == 1.0
    assert abs(learning_rate(config, 60, 0.0) - 0.55) < 1e-12  # halfway: 0.1 + 0.9 * 0.5
    assert abs(learning_rate(config, 110, 0.0) - 0.1) < 1e-12
    timed = SFTConfig(max_steps=None, max_seconds=100.0, warmup_steps=0, lr=1.0, min_lr_ratio=0.0)
    assert abs(learning_rate(timed, 5, 50.0) - 0.5) < 1e-12


def test_length_bucket() -> None:
    assert [length_bucket(n) for n in (1, 16, 17, 64, 65, 512, 513)] == [
        "1-16",
        "1-16",
        "17-32",
        "33-64",
        "65-128",
        "257-512",
        ">512",
    ]


def test_cli_flags_round_trip() -> None:
    config = SFTConfig(max_steps=None, max_seconds=12.5, lr=1e-3, eval_greedy=False, seed=9)
    args = build_parser().parse_args([*config_to_argv(config), "--output-dir", "x"])
    assert config_from_args(args) == config


def test_flag_help_comes_from_the_config_docstring() -> None:
    text = " ".join(build_parser().format_help().split())
    assert "--num-layers NUM_LAYERS number of decoder layers. (default: 4)" in text
    assert "--eval-greedy, --no-eval-greedy also evaluate greedily" in text


def test_the_committed_reproduce_command_still_parses() -> None:
    base = Path(__file__).resolve().parents[1] / "tppo" / "assets" / "demo_base"
    metrics = json.loads((base / "sft_metrics.json").read_text())
    argv = shlex.split(metrics["reproduce"])[2:]  # after "tppo sft"
    config = config_from_args(build_parser().parse_args(argv))
    assert dataclasses.asdict(config) == {**metrics["config"], "num_threads": 1}
    assert config == SFTConfig(num_threads=1)  # the committed base is the defaults' recipe


def test_yaml_flags_and_overrides_share_the_training_loader(tmp_path: Path) -> None:
    path = tmp_path / "sft.yaml"
    path.write_text("lr: 1e-3\nmax_steps: 300\nhidden_size: 64\n")
    args = build_parser().parse_args(
        ["--output-dir", "x", "--config", str(path), "--max-steps", "200", "eval_greedy=false", "seed=5"]
    )
    config = config_from_args(args)
    assert (config.lr, config.max_steps, config.hidden_size) == (1e-3, 200, 64)  # flag beats file
    assert (config.eval_greedy, config.seed) == (False, 5)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lr", "-1"], r"^lr: must be > 0, got -1\.0$"),
        (["--max-steps", "none", "--max-seconds", "none"], r"^max_steps: set max_steps"),
        (["--task", "lgc"], r"^task: unknown task 'lgc' \(did you mean 'lcg'\?\)"),
        (["--num-heads", "3"], r"^num_heads: must divide hidden_size \(128\), got 3$"),
        (["--tokens-per-batch", "many"], r"^tokens_per_batch: expected int, got 'many'"),
        (["learning_rate=1"], r"unknown config key 'learning_rate'"),
        (["--config", "nope.yaml"], r"config file 'nope.yaml' does not exist"),
    ],
)
def test_bad_settings_exit_2_naming_the_field(argv, message, tmp_path, capsys, monkeypatch) -> None:
    import tppo.sft

    def no_training(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("a bad setting must be refused before training starts")

    monkeypatch.setattr(tppo.sft, "run_sft", no_training)
    monkeypatch.chdir(tmp_path)
    from tppo.cli import main as tppo_main

    assert tppo_main(["sft", "--output-dir", str(tmp_path / "out"), *argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0]
    prefix = "tppo sft: config error: "
    assert lines[0].startswith(prefix) and re.search(message, lines[0][len(prefix) :]), lines[0]
    assert not (tmp_path / "out").exists()


def test_tiny_run_lowers_the_loss_and_writes_a_checkpoint(tmp_path: Path) -> None:
    argv = [
        "--output-dir",
        str(tmp_path),
        "--hidden-size",
        "32",
        "--num-layers",
        "1",
        "--num-heads",
        "2",
        "--intermediate-size",
        "64",
        "--max-steps",
        "20",
        "--warmup-steps",
        "2",
        "--lr",
        "1e-2",
        "--tokens-per-batch",
        "512",
        "--length-group-size",
        "256",
        "--log-every",
        "1",
        "--eval-examples",
        "6",
        "--max-new-tokens",
        "8",
        "--num-threads",
        "1",
    ]
    assert main(argv) == 0
    metrics = json.loads((tmp_path / "sft_metrics.json").read_text())
    losses = [record["loss"] for record in metrics["loss_history"]]
    assert len(losses) == 20 and metrics["steps"] == 20
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.2, losses  # about 2.6 -> 2.3 nats
    assert set(metrics["evaluations"]) == {"temperature_1", "greedy"}
    assert metrics["evaluations"]["greedy"]["num_examples"] == 6
    assert metrics["config"]["max_steps"] == 20
    assert metrics["command"].startswith("tppo sft --output-dir")
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json"):
        assert (tmp_path / name).is_file(), name
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert model.config.hidden_size == 32
    assert tokenizer.eos_token_id == model.config.eos_token_id == 1
    logits = model(torch.tensor([tokenizer.encode("72=")])).logits
    assert logits.shape == (1, 3, len(tokenizer))
    # Same seed and config: the same initial weights and data, hence the same trained weights.
    again = tmp_path / "again"
    assert main([*argv[:1], str(again), *argv[2:]]) == 0
    reloaded = AutoModelForCausalLM.from_pretrained(again)
    for a, b in zip(model.parameters(), reloaded.parameters(), strict=True):
        assert torch.equal(a, b)


def test_committed_demo_base() -> None:
    base = Path(__file__).resolve().parents[1] / "tppo" / "assets" / "demo_base"
    metrics = json.loads((base / "sft_metrics.json").read_text())
    assert metrics["config"]["task"] == "lcg"
    assert 0.2 <= metrics["evaluations"]["temperature_1"]["accuracy"] <= 0.5
    assert metrics["evaluations"]["greedy"]["accuracy"] >= 0.9
    model = AutoModelForCausalLM.from_pretrained(base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    task = get_task("lcg")
    reference = build_char_tokenizer(task.alphabet)  # type: ignore[attr-defined]
    assert tokenizer.get_vocab() == reference.get_vocab() and len(tokenizer) == model.config.vocab_size
    assert model.config.tie_word_embeddings and model.config.eos_token_id == tokenizer.eos_token_id
    # Greedy decoding solves short held-out prompts (the base's errors are sampling noise).
    examples = [task.example(x, k) for x, k in zip(task.starts[::50], range(1, 17), strict=False)]
    result = evaluate_accuracy(
        model, tokenizer, task, examples, temperature=0.0, max_new_tokens=128, batch_size=16, seed=0
    )
    assert result["accuracy"] >= 15 / 16, result["responses"]
