"""Collatz trajectories written least-significant digit first (``"collatz"``).

Prompt ``72=`` (the start number 27, digits reversed). The response echoes the start, then writes
every number of its Collatz trajectory (``n -> n/2`` if ``n`` is even, else ``3n+1``) down to 1,
separated by ``;``, then the number of steps after ``#``, then EOS::

    72=72;28;14;...;4;2;1;#111

Every number, the answer included, is written least-significant digit first.

Not the demo task (that is :mod:`tppo.tasks.lcg`), but kept as a second task: its long tail of
response lengths is a natural one. Starts are drawn log-uniformly from ``2..max_start``; most
trajectories are short, but those that join the family of 27 (peak 9232) run for 100+ steps. With
the defaults, responses have mean ~115, median ~55, p90 ~425 characters, capped at 500 (the ~3% of
starts with longer responses are redrawn). The reward is 1.0 iff the text after the last ``#``
equals the step count (an outcome reward, paper eq. 7).

Measured here: after 1500 steps of supervised warm-up, a 1M-parameter Qwen2 wrote a correct
trajectory about 74% of the time at temperature 1 but gave the right step count only 18% of the
time (31% greedy): counting 10 to 100 separators is beyond it, and most wrong answers followed a
correct chain. Echoing the start makes the first step the same operation as every later one.
"""

from __future__ import annotations

import math
import random

from tppo.tasks.base import Example, Task, final_answer_reward, register_task, stratified_held_out

ALPHABET = "0123456789=;#"


def to_lsd(n: int) -> str:
    """``n`` >= 0 written least-significant digit first: ``to_lsd(27) == "72"``."""
    if n < 0:
        raise ValueError(f"expected a non-negative integer, got {n}")
    return str(n)[::-1]


def collatz_step(n: int) -> int:
    """One Collatz step: ``n // 2`` for even ``n``, ``3 * n + 1`` for odd ``n``."""
    return n // 2 if n % 2 == 0 else 3 * n + 1


def collatz_trajectory(start: int) -> list[int]:
    """``[start, ..., 1]``; its length minus one is the step count."""
    if start < 1:
        raise ValueError(f"the start must be >= 1, got {start}")
    trajectory = [start]
    while trajectory[-1] != 1:
        trajectory.append(collatz_step(trajectory[-1]))
    return trajectory


class CollatzTask(Task):
    """Collatz trajectories, least-significant digit first (see the module docstring).

    Args:
        max_start: starts are drawn log-uniformly from ``2..max_start``.
        max_response_chars: a start whose solution is longer than this is redrawn.
        echo_start: whether the response first repeats the start number.
    """

    name = "collatz"
    alphabet = ALPHABET

    def __init__(self, max_start: int = 1000, max_response_chars: int = 500, echo_start: bool = True):
        if max_start < 2:
            raise ValueError("max_start must be >= 2")
        self.max_start = max_start
        self.max_response_chars = max_response_chars
        self.echo_start = echo_start
        self._held_out: frozenset[str] | None = None

    def prompt(self, start: int) -> str:
        return to_lsd(start) + "="

    def solution(self, start: int) -> str:
        trajectory = collatz_trajectory(start)
        numbers = trajectory if self.echo_start else trajectory[1:]
        return ";".join(to_lsd(n) for n in numbers) + ";#" + to_lsd(len(trajectory) - 1)

    def example(self, start: int) -> Example:
        return Example(
            prompt=self.prompt(start),
            solution=self.solution(start),
            answer=to_lsd(len(collatz_trajectory(start)) - 1),
        )

    def sample(self, rng: random.Random) -> Example:
        log_low, log_high = math.log(2), math.log(self.max_start + 1)
        for _ in range(10_000):
            start = min(self.max_start, max(2, int(math.exp(rng.uniform(log_low, log_high)))))
            example = self.example(start)
            if len(example.solution) <= self.max_response_chars:
                return example
        raise RuntimeError("no start found within max_response_chars; raise the cap")

    def is_held_out(self, example: Example) -> bool:
        """Held out one start in five along the order of response lengths
        (:func:`~tppo.tasks.base.stratified_held_out`): short trajectories are few (log-uniform
        starts from a small range), and a hashed split can leave none of them to evaluate on."""
        if self._held_out is None:
            lengths = {n: len(self.solution(n)) for n in range(2, self.max_start + 1)}
            drawn = {
                self.prompt(n): (length,)
                for n, length in lengths.items()
                if length <= self.max_response_chars
            }
            self._held_out = stratified_held_out(drawn)
        return example.prompt in self._held_out

    def reward(self, response: str, ground_truth: str) -> float:
        """1.0 iff the final answer (after the last ``#``) is right: :func:`final_answer_reward`."""
        return final_answer_reward(response, ground_truth)


@register_task("collatz")
def make_collatz() -> Task:
    """Collatz with its defaults: starts 2..1000, responses up to 500 characters, echo."""
    return CollatzTask()
