"""Supervised warm-up: train a tiny model on a built-in task's reference solutions.

This makes the base model that reinforcement learning starts from (``tppo/assets/demo_base/``).
Training is deterministic for a given config: the seed fixes the initial weights and the data order;
with a step budget (``max_steps``) the run is reproducible (1 and 2 threads gave bit-identical
weights on the machine the base was made on; other CPUs may differ in the last bits, and a
``max_seconds`` budget depends on the machine's speed). The defaults are the committed base's
recipe.

Usage::

    tppo sft --output-dir runs/base                      # the demo base (lcg task)
    python -m tppo.sft --output-dir runs/base --max-steps 200 --eval-examples 64
    python -m tppo.sft --output-dir runs/base --max-steps none --max-seconds 240
    tppo sft --output-dir runs/base --config sft.yaml lr=1e-3     # YAML of SFTConfig fields, then overrides

Label smoothing (``label_smoothing``, default 0.03) is what leaves reinforcement learning its
headroom on the demo task: the model learns the task's step exactly (greedy decoding is right
almost always) but keeps about 3% of its probability off the reference token, so at temperature 1
a response of ``n`` tokens is right with probability of about ``0.97 ** n``. Reinforcement learning
sharpens that distribution back.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tppo.config_loader import (
    ConfigError,
    NonEmptyStr,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Seed,
    UnitInterval,
    UnitIntervalOpen,
    field_docs,
    load_structured,
    merge,
    parse_overrides,
    require,
)
from tppo.engines import Engine, HFEngine, SamplingParams
from tppo.evaluation import evaluate
from tppo.rewards import RewardPool
from tppo.rollout.prompts import PromptRow
from tppo.schedules import lr_multiplier, run_progress
from tppo.tasks import Example, Task, get_task
from tppo.tasks.char_tokenizer import build_char_tokenizer
from tppo.tasks.tiny_model import build_tiny_qwen2

IGNORE_INDEX = -100
# Response-length buckets (characters of the reference solution, EOS excluded): inclusive bounds.
LENGTH_BUCKETS: tuple[tuple[int, int], ...] = ((1, 16), (17, 32), (33, 64), (65, 128), (129, 256), (257, 512))


@dataclass
class SFTConfig:
    """Settings of a supervised warm-up run (``tppo sft``).

    Read like the training config (:mod:`tppo.config_loader`): defaults, then ``--config FILE``
    (a YAML mapping of these fields), then one ``--flag VALUE`` per field (``--max-steps 200``,
    ``none`` for no value, ``--eval-greedy`` / ``--no-eval-greedy``), then ``field=value``
    overrides; types and ranges are checked and a bad value is refused naming the field.

    Attributes:
        task: name of a registered task (``tppo.tasks.TASKS``) whose reference solutions are learnt.
        hidden_size: model width (a fresh Qwen2, see ``tppo.tasks.tiny_model``).
        num_layers: number of decoder layers.
        num_heads: number of attention heads.
        intermediate_size: width of each MLP.
        max_steps: stop after this many optimizer steps (the reproducible budget); None for no limit.
        max_seconds: stop after this many seconds of training (evaluation not counted); None for no
            limit. At least one of ``max_steps`` and ``max_seconds`` must be set.
        lr: peak learning rate of AdamW.
        beta1: AdamW's first-moment decay.
        beta2: AdamW's second-moment decay.
        weight_decay: AdamW's decoupled weight decay, applied to matrices and embeddings only
            (not to norms).
        grad_clip: the gradient's global norm is clipped to this; 0 disables clipping.
        label_smoothing: cross-entropy label smoothing (``torch.nn.functional.cross_entropy``):
            the trained model keeps about this much probability off the reference token, so
            sampling at temperature 1 slips now and then where greedy decoding does not.
        tokens_per_batch: padded tokens (prompt + response + EOS) per batch; batches hold
            sequences of similar length, so short sequences come many to a batch.
        length_group_size: examples drawn at a time, sorted by length and cut into batches (whose
            order is then shuffled): larger groups waste less padding.
        warmup_steps: linear learning-rate warm-up from 0 over this many steps.
        min_lr_ratio: after warm-up the rate follows a cosine from ``lr`` to ``lr * min_lr_ratio``
            over the run's budget (steps, or seconds when only ``max_seconds`` is set).
        seed: seeds the initial weights and the training-data stream.
        num_threads: torch CPU threads (``torch.set_num_threads``).
        eval_examples: held-out examples (drawn with ``eval_seed``) scored after training.
        eval_seed: seed of the evaluation examples and of sampling during evaluation.
        eval_temperature: sampling temperature of the evaluation; 0 means greedy.
        eval_greedy: also evaluate greedily (temperature 0), to show how much of the error is
            sampling noise.
        eval_batch_size: prompts per ``generate`` call during evaluation.
        max_new_tokens: generation limit during evaluation (the response budget ``L``).
        log_every: steps between loss records in ``sft_metrics.json``.
    """

    task: NonEmptyStr = "lcg"
    hidden_size: PositiveInt = 128
    num_layers: PositiveInt = 4
    num_heads: PositiveInt = 4
    intermediate_size: PositiveInt = 512
    max_steps: PositiveInt | None = 1500
    max_seconds: PositiveFloat | None = None
    lr: PositiveFloat = 3e-3
    beta1: UnitIntervalOpen = 0.9
    beta2: UnitIntervalOpen = 0.98
    weight_decay: NonNegativeFloat = 0.01
    grad_clip: NonNegativeFloat = 1.0
    label_smoothing: UnitIntervalOpen = 0.03
    tokens_per_batch: PositiveInt = 2048
    length_group_size: PositiveInt = 2048
    warmup_steps: NonNegativeInt = 100
    min_lr_ratio: UnitInterval = 0.1
    seed: Seed = 0
    num_threads: PositiveInt = 2
    eval_examples: NonNegativeInt = 512
    eval_seed: Seed = 1234
    eval_temperature: NonNegativeFloat = 1.0
    eval_greedy: bool = True
    eval_batch_size: PositiveInt = 64
    max_new_tokens: PositiveInt = 512
    log_every: PositiveInt = 50

    def validate(self) -> None:
        """Refuse impossible combinations and an unknown task, naming the fields."""
        require(
            self.max_steps is not None or self.max_seconds is not None,
            "max_steps",
            "set max_steps or max_seconds (or both); both are null",
        )
        require(
            self.hidden_size % self.num_heads == 0,
            "num_heads",
            f"must divide hidden_size ({self.hidden_size}), got {self.num_heads}",
        )
        from tppo.tasks import TASKS

        require(self.task in TASKS, "task", TASKS.unknown_message(self.task))
        require(
            isinstance(getattr(get_task(self.task), "alphabet", None), str),
            "task",
            f"task {self.task!r} has no `alphabet` for a character tokenizer",
        )


def length_bucket(length: int) -> str:
    """The name (``"17-32"``) of the response-length bucket holding ``length`` characters."""
    for low, high in LENGTH_BUCKETS:
        if low <= length <= high:
            return f"{low}-{high}"
    return f">{LENGTH_BUCKETS[-1][1]}" if length > LENGTH_BUCKETS[-1][1] else "0"


def encode_example(tokenizer: PreTrainedTokenizerBase, example: Example) -> tuple[list[int], int]:
    """Token ids of ``prompt + solution + EOS`` and the number of prompt tokens."""
    prompt_ids = tokenizer.encode(example.prompt, add_special_tokens=False)
    response_ids = tokenizer.encode(example.solution, add_special_tokens=False)
    return [*prompt_ids, *response_ids, tokenizer.eos_token_id], len(prompt_ids)


def length_grouped_batches(
    task: Task, tokenizer: PreTrainedTokenizerBase, config: SFTConfig
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """An endless, seeded stream of training batches ``(input_ids, attention_mask, labels)``.

    Examples are drawn ``length_group_size`` at a time from ``random.Random(config.seed)``, sorted
    by length and packed into batches of at most ``tokens_per_batch`` padded tokens, whose order is
    then shuffled. Sequences are right-padded; labels are the input ids on response tokens (EOS
    included) and ``-100`` on prompt and padding tokens. All tensors are ``[B, T]``.
    """
    rng = random.Random(config.seed)
    pad_id = tokenizer.pad_token_id
    while True:
        encoded = [encode_example(tokenizer, task.sample(rng)) for _ in range(config.length_group_size)]
        encoded.sort(key=lambda item: len(item[0]))
        groups: list[list[tuple[list[int], int]]] = [[]]
        for item in encoded:
            group = groups[-1]
            if group and (len(group) + 1) * len(item[0]) > config.tokens_per_batch:
                groups.append([item])
            else:
                group.append(item)
        rng.shuffle(groups)
        for group in groups:
            width = max(len(ids) for ids, _ in group)
            input_ids = torch.full((len(group), width), pad_id, dtype=torch.long)
            labels = torch.full((len(group), width), IGNORE_INDEX, dtype=torch.long)
            attention_mask = torch.zeros((len(group), width), dtype=torch.long)
            for row, (ids, num_prompt) in enumerate(group):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                labels[row, num_prompt : len(ids)] = torch.tensor(ids[num_prompt:])
                attention_mask[row, : len(ids)] = 1
            yield input_ids, attention_mask, labels


def learning_rate(config: SFTConfig, step: int, elapsed: float) -> float:
    """Linear warm-up over ``warmup_steps``, then a cosine from ``lr`` to ``lr * min_lr_ratio``.

    Progress through the cosine is the larger of ``step / max_steps`` and
    ``elapsed / max_seconds`` (whichever budgets are set).
    """
    progress = run_progress(
        step,
        warmup_steps=config.warmup_steps,
        total_steps=config.max_steps,
        elapsed_s=elapsed,
        max_seconds=config.max_seconds,
    )
    return config.lr * lr_multiplier(
        step, warmup_steps=config.warmup_steps, progress=progress, min_ratio=config.min_lr_ratio
    )


def response_loss(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled tokens (``labels != -100``), all ``[B, T]``."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # [B, T, V]
    # The logits at position t predict the token at t + 1.
    predicted = logits[:, :-1].reshape(-1, logits.shape[-1])  # [B * (T - 1), V]
    targets = labels[:, 1:].reshape(-1)  # [B * (T - 1)]
    return torch.nn.functional.cross_entropy(
        predicted, targets, ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing
    )


def _build_optimizer(model: torch.nn.Module, config: SFTConfig) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2))


@torch.no_grad()
def evaluate_accuracy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    examples: Sequence[Example],
    *,
    temperature: float,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
    progress: bool = False,
) -> dict[str, Any]:
    """Sample one response per example with ``model`` and score it with ``task.reward``: the
    rollout engine training uses (:class:`~tppo.engines.HFEngine`, its sampling generator seeded
    with ``seed``; the global torch RNG is left alone), driven by :func:`engine_accuracy`."""
    engine = HFEngine(
        model,
        eos_token_ids=[tokenizer.eos_token_id],
        pad_token_id=tokenizer.pad_token_id,
        seed=seed,
        max_batch_size=batch_size,
    )
    return engine_accuracy(
        engine,
        tokenizer,
        task,
        examples,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
    )


def engine_accuracy(
    engine: Engine,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    examples: Sequence[Example],
    *,
    temperature: float,
    max_new_tokens: int,
    batch_size: int,
    progress: bool = False,
) -> dict[str, Any]:
    """One response per example from ``engine``, through :func:`tppo.evaluation.evaluate` (as the
    trainer evaluates), scored with ``task.reward``.

    Examples go to the engine ``batch_size`` at a time in order of their reference length (so a
    batch rarely waits for one long response); ``temperature`` 0 is greedy, else plain sampling at
    that temperature (no top-k or top-p). A response is the generated text up to its EOS; one with
    no EOS within ``max_new_tokens`` is truncated and scored as written.

    Returns:
        ``accuracy`` (mean reward), ``num_examples``, ``per_bucket`` (by the reference solution's
        length: ``{"17-32": {"num_examples", "accuracy"}}``), ``truncated_fraction``,
        ``mean_response_tokens`` (EOS not counted), ``rewards`` (in the order of ``examples``),
        ``responses`` and ``seconds``.
    """
    started = time.perf_counter()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].solution))
    rows = [
        PromptRow(tuple(tokenizer.encode(examples[i].prompt, add_special_tokens=False)), examples[i].answer)
        for i in order
    ]
    with tqdm(total=len(rows), desc="eval", leave=False, disable=not progress) as bar:
        result = evaluate(
            engine,
            tokenizer,
            RewardPool(f"task:{task.name}", timeout_s=None),  # the trainer's reward path, in process
            rows,
            sampling=SamplingParams(temperature=temperature),
            max_response_length=max_new_tokens,
            prompts_per_batch=batch_size,
            on_batch=lambda _, n: bar.update(n),
        )
    row_of = {example: row for row, example in enumerate(order)}
    rewards = [result.scores[row_of[i]][0] for i in range(len(examples))]
    truncated = [result.truncated[row_of[i]][0] for i in range(len(examples))]
    num_tokens = [result.lengths[row_of[i]][0] - (not cut) for i, cut in enumerate(truncated)]
    count = max(1, len(examples))
    return {
        "accuracy": sum(rewards) / count,
        "num_examples": len(examples),
        "per_bucket": _per_bucket(rewards, examples),
        "truncated_fraction": sum(truncated) / count,
        "mean_response_tokens": sum(num_tokens) / count,
        "rewards": rewards,
        "responses": [result.responses[row_of[i]][0] for i in range(len(examples))],
        "seconds": time.perf_counter() - started,
    }


def _per_bucket(rewards: Sequence[float], examples: Sequence[Example]) -> dict[str, dict[str, float]]:
    """Accuracy by the reference solution's length bucket (:data:`LENGTH_BUCKETS`), non-empty ones."""
    out: dict[str, dict[str, float]] = {}
    for low, high in LENGTH_BUCKETS:
        in_bucket = [r for r, ex in zip(rewards, examples, strict=True) if low <= len(ex.solution) <= high]
        if in_bucket:
            out[f"{low}-{high}"] = {
                "num_examples": len(in_bucket),
                "accuracy": sum(in_bucket) / len(in_bucket),
            }
    return out


def length_statistics(examples: Sequence[Example]) -> dict[str, float]:
    """Mean, median, p90 and max of the reference solutions' lengths in characters (EOS excluded)."""
    lengths = sorted(len(ex.solution) for ex in examples)
    if not lengths:
        return {}

    def quantile(q: float) -> int:
        return lengths[min(len(lengths) - 1, int(q * len(lengths)))]

    return {
        "mean": sum(lengths) / len(lengths),
        "p50": quantile(0.5),
        "p90": quantile(0.9),
        "max": lengths[-1],
    }


def _train(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: Task, config: SFTConfig
) -> dict[str, Any]:
    """The training loop; returns the loss history, step count, tokens and seconds."""
    optimizer = _build_optimizer(model, config)
    batches = length_grouped_batches(task, tokenizer, config)
    model.train()
    history: list[dict[str, float]] = []
    step, tokens, running = 0, 0, float("nan")
    started = time.perf_counter()
    bar = tqdm(total=config.max_steps, desc="sft", unit="step")
    while True:
        elapsed = time.perf_counter() - started
        if config.max_steps is not None and step >= config.max_steps:
            break
        if config.max_seconds is not None and elapsed >= config.max_seconds:
            break
        input_ids, attention_mask, labels = next(batches)
        rate = learning_rate(config, step, elapsed)
        for group in optimizer.param_groups:
            group["lr"] = rate
        loss = response_loss(model, input_ids, attention_mask, labels, config.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        step += 1
        tokens += int(attention_mask.sum())
        value = float(loss.detach())
        running = value if math.isnan(running) else 0.95 * running + 0.05 * value
        if step % config.log_every == 0 or step == 1:
            history.append({"step": step, "seconds": round(elapsed, 2), "loss": value, "lr": rate})
        bar.update(1)
        bar.set_postfix(loss=f"{running:.4f}", lr=f"{rate:.2e}")
    bar.close()
    model.eval()
    return {
        "steps": step,
        "train_tokens": tokens,
        "train_seconds": time.perf_counter() - started,
        "final_loss": running,
        "loss_history": history,
    }


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k not in ("rewards", "responses")}


def run_sft(config: SFTConfig, output_dir: Path, *, command: str | None = None) -> dict[str, Any]:
    """Train a fresh tiny model on ``config.task``, evaluate it and save it to ``output_dir``.

    Writes a Hugging Face checkpoint (``config.json``, ``model.safetensors``,
    ``generation_config.json``, tokenizer files) and ``sft_metrics.json`` holding the accuracy
    (overall and per response-length bucket, sampled at ``eval_temperature`` and, with
    ``eval_greedy``, greedily), the task's length statistics, the config, the wall-clock times and
    the command line (``command``, by default this process's own). Returns the same metrics.
    """
    wall_started = time.perf_counter()
    config.validate()
    torch.set_num_threads(config.num_threads)
    task = get_task(config.task)
    tokenizer = build_char_tokenizer(task.alphabet)  # type: ignore[attr-defined]  # validate checked it
    model = build_tiny_qwen2(
        tokenizer,
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        intermediate_size=config.intermediate_size,
        seed=config.seed,
    )
    training = _train(model, tokenizer, task, config)

    eval_set = task.examples(config.eval_examples, config.eval_seed)
    evaluations: dict[str, Any] = {}
    temperatures = [config.eval_temperature]
    if config.eval_greedy and config.eval_temperature > 0:
        temperatures.append(0.0)
    for temperature in temperatures:
        result = evaluate_accuracy(
            model,
            tokenizer,
            task,
            eval_set,
            temperature=temperature,
            max_new_tokens=config.max_new_tokens,
            batch_size=config.eval_batch_size,
            seed=config.eval_seed,
            progress=True,
        )
        name = "greedy" if temperature == 0 else f"temperature_{temperature:g}"
        evaluations[name] = _summary(result)
        tqdm.write(f"{name}: accuracy {result['accuracy']:.3f} " + json.dumps(result["per_bucket"]))

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    metrics = {
        "accuracy": evaluations[next(iter(evaluations))]["accuracy"],
        "evaluations": evaluations,
        "task_length_stats": length_statistics(eval_set),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        **{k: v for k, v in training.items() if k != "loss_history"},
        "wall_seconds": time.perf_counter() - wall_started,
        "config": dataclasses.asdict(config),
        "command": command if command is not None else shlex.join(sys.orig_argv),
        "reproduce": "tppo sft " + shlex.join([*config_to_argv(config), "--output-dir", str(output_dir)]),
        "versions": {"torch": torch.__version__, "transformers": _transformers_version()},
        "loss_history": training["loss_history"],
    }
    (output_dir / "sft_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def _transformers_version() -> str:
    import transformers

    return str(transformers.__version__)


# --- command line -------------------------------------------------------------------------------


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def config_to_argv(config: SFTConfig) -> list[str]:
    """CLI flags that :func:`main` parses back into ``config`` (every field, explicitly)."""
    argv: list[str] = []
    for f in dataclasses.fields(SFTConfig):
        value = getattr(config, f.name)
        if isinstance(value, bool):
            argv.append(_flag(f.name) if value else "--no-" + f.name.replace("_", "-"))
        else:
            argv += [_flag(f.name), "none" if value is None else str(value)]
    return argv


def build_parser() -> argparse.ArgumentParser:
    """``--output-dir``, ``--config``, one flag per :class:`SFTConfig` field (help from its
    docstring), and ``field=value`` overrides. Flag values stay text until :func:`config_from_args`."""
    parser = argparse.ArgumentParser(
        prog="tppo sft",
        description="Supervised warm-up of a tiny model on a built-in task. Settings: defaults, then "
        "--config FILE, then the flags, then field=value overrides.",
    )
    parser.add_argument("--output-dir", type=Path, required=True, help="where the checkpoint is written")
    parser.add_argument("--config", help="YAML file: a mapping of SFTConfig fields")
    parser.add_argument("overrides", nargs="*", metavar="field=value", help="e.g. lr=1e-3 max_steps=200")
    docs, defaults = field_docs(SFTConfig), SFTConfig()
    for f in dataclasses.fields(SFTConfig):
        default = getattr(defaults, f.name)
        help_text = f"{docs.get(f.name, '')} (default: {default})"
        action = argparse.BooleanOptionalAction if isinstance(default, bool) else "store"
        parser.add_argument(_flag(f.name), action=action, default=argparse.SUPPRESS, help=help_text)
    return parser


def _flag_value(text: str | bool) -> Any:
    """A flag's text as a YAML value (``none`` is null); ``True``/``False`` from a switch."""
    if isinstance(text, bool):
        return text
    if text.strip().lower() in ("none", "null", ""):
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def config_from_args(args: argparse.Namespace) -> SFTConfig:
    """The checked :class:`SFTConfig` of parsed arguments (a bad value: ConfigError naming the field)."""
    names = [f.name for f in dataclasses.fields(SFTConfig)]
    flags = {name: _flag_value(getattr(args, name)) for name in names if hasattr(args, name)}
    config = load_structured(SFTConfig, args.config, merge(flags, parse_overrides(args.overrides)))
    config.validate()
    return config


def main(argv: list[str] | None = None) -> int:
    """``tppo sft``: read the settings, run :func:`run_sft`, print where the checkpoint went."""
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except ConfigError as error:
        print(f"tppo sft: config error: {error}", file=sys.stderr)
        return 2
    command = shlex.join(["tppo", "sft", *(sys.argv[1:] if argv is None else argv)])
    metrics = run_sft(config, args.output_dir, command=command)
    print(
        f"wrote {args.output_dir}: accuracy {metrics['accuracy']:.3f} after {metrics['steps']} steps "
        f"({metrics['train_seconds']:.0f} s of training, {metrics['wall_seconds']:.0f} s in all)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
