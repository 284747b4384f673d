"""What a task is (:class:`Task`, :class:`Example`), the final-answer reward the built-in tasks
share, and the task registry (:data:`TASKS`)."""

from __future__ import annotations

import abc
import hashlib
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from tppo.registry import Registry


@dataclass(frozen=True)
class Example:
    """One task instance.

    Attributes:
        prompt: the text the model sees (tokenised without special tokens).
        solution: a correct response, without the EOS token (used by supervised warm-up).
        answer: the ground truth the reward compares against.
    """

    prompt: str
    solution: str
    answer: str


class Task(abc.ABC):
    """A synthetic task with verifiable answers."""

    name: str

    @abc.abstractmethod
    def sample(self, rng: random.Random) -> Example:
        """Draw one example."""

    @abc.abstractmethod
    def reward(self, response: str, ground_truth: str) -> float:
        """Outcome reward of a response text (EOS stripped): 1.0 if correct else 0.0."""

    def is_held_out(self, example: Example) -> bool:
        """Which side of the train / held-out split ``example`` is on, the same every time: by
        default one prompt in :data:`HELD_OUT_SHARE`, by a stable hash of its text
        (:func:`hashed_held_out`). A task whose hard or easy prompts are few overrides it so that
        the held-out side holds some of each (collatz: stratified by response length)."""
        return hashed_held_out(example.prompt)

    def examples(self, n: int, seed: int) -> list[Example]:
        """``n`` examples drawn from ``random.Random(seed)``: the same list for the same seed."""
        rng = random.Random(seed)
        return [self.sample(rng) for _ in range(n)]


HELD_OUT_SHARE = 5
"""One prompt in this many is held out for evaluation."""


def hashed_held_out(prompt: str) -> bool:
    """The default split of a task's prompt space: a stable hash of the prompt's text."""
    return int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big") % HELD_OUT_SHARE == 0


def stratified_held_out(keys: Mapping[str, tuple[int, ...]]) -> frozenset[str]:
    """Prompts held out one in :data:`HELD_OUT_SHARE` along their order by ``keys[prompt]`` (ties
    broken by the prompt): every stretch of that order (every range of response lengths, say) has
    its share held out, and which ones does not depend on anything but the keys."""
    ordered = sorted(keys, key=lambda prompt: (keys[prompt], prompt))
    return frozenset(p for i, p in enumerate(ordered) if i % HELD_OUT_SHARE == HELD_OUT_SHARE // 2)


EOS_STRING = "<eos>"
"""The character tokenizer's end-of-sequence token, ignored at the end of a response."""


def strip_eos(response: str) -> str:
    """``response`` without surrounding whitespace and trailing EOS strings."""
    text = response.strip()
    while text.endswith(EOS_STRING):
        text = text[: -len(EOS_STRING)].rstrip()
    return text


def extract_answer(response: str) -> str | None:
    """The text after the last ``#`` of ``response`` (trailing EOS strings and whitespace removed),
    or ``None`` when there is no ``#``."""
    text = strip_eos(response)
    if "#" not in text:
        return None
    return text.rsplit("#", 1)[1]


def final_answer_reward(response: str, ground_truth: str) -> float:
    """1.0 iff the text after the last ``#`` equals ``ground_truth`` exactly, else 0.0.

    Only the final answer is checked (an outcome reward, paper eq. 7). A response with no ``#``
    (for instance one truncated at the maximum length) scores 0.0; a trailing ``<eos>`` string
    is ignored.
    """
    answer = extract_answer(response)
    return 1.0 if answer is not None and answer == ground_truth.strip() else 0.0


TASKS: Registry[Callable[[], Task]] = Registry("task")
"""Task factories by name; ``data.task`` picks one."""


def register_task(name: str) -> Callable[[Callable[[], Task]], Callable[[], Task]]:
    return TASKS.register(name)


def get_task(name: str) -> Task:
    return TASKS.get(name)()
