"""Prompt sources (built-in tasks, data files) -> tokenised :class:`PromptRow` lists (train, held-out)."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from tppo.config import DataConfig
from tppo.rollout.prompts import PromptRow
from tppo.sources import DataError, load_problems, problem_rows
from tppo.tasks import Example, Task, get_task

log = logging.getLogger(__name__)


def tokenize_prompt(tokenizer: PreTrainedTokenizerBase, text: str) -> tuple[int, ...]:
    return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])


def draw_split(task: Task, *, size: int, seed: int, held_out: bool) -> list[Example]:
    """``size`` examples from ``random.Random(seed)``, keeping only one side of the split, so
    training and evaluation prompts follow the task's distribution and never overlap."""
    rng, examples = random.Random(seed), list[Example]()
    for _ in range(1000 * size + 1000):
        if len(examples) == size:
            return examples
        example = task.sample(rng)
        if task.is_held_out(example) == held_out:
            examples.append(example)
    key, side = ("data.eval_size", "held-out") if held_out else ("data.train_size", "training")
    raise DataError(f"{key}: task {task.name!r}: could not draw {size} {side} prompts")


def task_rows(
    task: Task,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example],
    *,
    max_prompt_length: int,
    overlong: str = "error",
) -> list[PromptRow]:
    """Tokenised rows; a prompt over the limit is an error naming the example, or, with
    ``overlong="skip"``, left out (the log says how many)."""
    rows, skipped = [], 0
    for index, example in enumerate(examples):
        ids = tokenize_prompt(tokenizer, example.prompt)
        if len(ids) > max_prompt_length:
            if overlong == "skip":
                skipped += 1
                continue
            raise DataError(
                f"task {task.name!r} example {index}: prompt of {len(ids)} tokens exceeds "
                f"data.max_prompt_length={max_prompt_length} (data.overlong_prompts=skip leaves such "
                "prompts out)"
            )
        rows.append(PromptRow(token_ids=ids, ground_truth=example.answer, text=example.prompt))
    if skipped:
        log.warning(
            "task %r: skipped %d of %d prompts longer than data.max_prompt_length=%d",
            task.name,
            skipped,
            len(examples),
            max_prompt_length,
        )
    if not rows:
        raise DataError(f"task {task.name!r}: no prompt fits data.max_prompt_length={max_prompt_length}")
    return rows


def build_task_data(
    config: DataConfig, tokenizer: PreTrainedTokenizerBase, *, seed: int
) -> tuple[Task, list[PromptRow], list[PromptRow]]:
    """The task, its training rows and its held-out rows (disjoint prompt sets)."""
    task = get_task(config.task)
    limit = config.max_prompt_length
    train = draw_split(task, size=config.train_size, seed=seed, held_out=False)
    held_out = (
        draw_split(task, size=config.eval_size, seed=config.eval_seed, held_out=True)
        if config.eval_size
        else []
    )
    return (
        task,
        task_rows(task, tokenizer, train, max_prompt_length=limit, overlong=config.overlong_prompts),
        task_rows(task, tokenizer, held_out, max_prompt_length=limit, overlong=config.overlong_prompts)
        if held_out
        else [],
    )


@dataclass(frozen=True)
class PromptData:
    """What the trainer reads: training rows, held-out rows, and the reward that fits them.

    Attributes:
        train: training prompt rows.
        held_out: evaluation rows (may be empty).
        default_reward: the reward used when ``reward.name`` is unset (``task:<name>`` or ``math``).
    """

    train: list[PromptRow]
    held_out: list[PromptRow]
    default_reward: str


def build_data(config: DataConfig, tokenizer: PreTrainedTokenizerBase, *, seed: int) -> PromptData:
    """Rows from ``data.train_files`` / ``data.eval_file`` when set, else from the built-in task."""
    if not config.train_files:
        task, train, held_out = build_task_data(config, tokenizer, seed=seed)
        return PromptData(train, held_out, f"task:{task.name}")

    def rows(source: str, limit: int | None = None) -> list[PromptRow]:
        problems = load_problems(
            source, prompt_key=config.prompt_key, answer_key=config.answer_key, limit=limit
        )
        return problem_rows(
            problems,
            tokenizer,
            template=config.prompt_template,
            chat=config.chat_template,
            max_prompt_length=config.max_prompt_length,
        )

    train = [row for source in config.train_files for row in rows(source)]
    held_out = rows(config.eval_file, config.eval_size) if config.eval_file and config.eval_size else []
    return PromptData(train, held_out, "math")
