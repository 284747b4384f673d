"""Iterating ``x -> 3x + 7 (mod 1000)`` with a countdown: the built-in demo task (``"lcg"``).

Each line is ``<c>:<v>``: a countdown ``c`` and a value ``v``, both written least-significant digit
first with a fixed width (2 and 3 digits). The prompt is one line, ``<k>:<x>=``; the response
writes ``k`` lines, each with the next value and the countdown one lower, down to 0. The last line
reads ``00#<v>``: its value is the answer. Then EOS::

    prompt    30:521=                 k = 3, x = 125
    response  20:283;10:351;00#664    125 -> 382 -> 153 -> 466

(``3 * 125 + 7 = 382``, written ``283``; ``3 * 382 + 7 = 1153``, so 153; ``3 * 153 + 7 = 466``.)

Why this task (``NOTES.md``, "The built-in demo task", has the earlier attempts):

* **Every step is local, and the same.** A line depends only on the line before it, at a fixed
  offset (all lines have the same width); the prompt is such a line, so the first step is like the
  others. Least-significant digit first, value digit ``i`` is ``3 x_i + carry`` (plus 7 at
  ``i = 0``), and the countdown digit is a decrement with a borrow. The answer is written by the
  last step itself: nothing is counted or copied from far back. A 1M-parameter model learns the
  step exactly in about 700 optimizer steps (loss < 0.01; 99% exact answers, greedy).
* **What failed before it, measured here.** Copying terms from far back in the prompt (NOTES.md).
  Collatz trajectories with the step count as the answer (:mod:`tppo.tasks.collatz`): two thirds
  of the wrong answers had a correct chain and a miscounted answer, which greedy decoding did not
  fix. ``x -> 21x + 7 (mod 100)``: as ``21**5 = 1 (mod 100)``, every value is the one five lines
  earlier plus 35, and the model learnt that in-context shortcut instead of the step, so it failed
  the first lines of every response (10% right on the first line). A Fibonacci sequence modulo
  1000 (two operands per step) did not train in the same budget at all. With the multiplier 3
  the lower two digits repeat only every 20 lines and the value every 100, so the step is the
  easiest rule to learn.
* **Errors build up step by step.** The map is a bijection, so sequences never merge: a wrong digit
  makes every later value, and the answer, wrong. Starts are drawn from the 800 values on cycles of
  length 100 (not from the short cycles of length 4 and 20), so no response repeats itself within
  its 70 lines. The answer has 1000 possible values: guessing scores about 0.1%.
* **A long tail of lengths, by design.** ``k`` is drawn log-uniformly from ``1..max_steps`` (70),
  and a response has ``7k - 1`` characters: mean ~110, median ~55, p90 ~315, max 489. Half are
  short, a few are ten times longer than the median: the regime in which plain PPO waits for its
  longest response and T-PPO does not.
* **Verifiable with an outcome reward** (paper eq. 7): 1.0 iff the text after the last ``#`` is
  the final value; the chain itself is not graded. Prompts: 56,000 (k, x) pairs.
* **A 14-character alphabet** (digits, ``:``, ``;``, ``=``, ``#``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from tppo.tasks.base import Example, Task, final_answer_reward, register_task

ALPHABET = "0123456789:;=#"
COUNTER_DIGITS = 2


def to_lsd(n: int, width: int) -> str:
    """``n`` in ``width`` digits, least-significant first, zero-padded: ``to_lsd(7, 3) == "700"``."""
    if not 0 <= n < 10**width:
        raise ValueError(f"{n} does not fit in {width} digits")
    return str(n).zfill(width)[::-1]


def cycle_length(step: Callable[[int], int], x: int, limit: int) -> int:
    """Length of the cycle of the bijection ``step`` through ``x`` (``limit`` if it is longer)."""
    y, n = step(x), 1
    while y != x and n < limit:
        y, n = step(y), n + 1
    return n


class LcgTask(Task):
    """``k`` steps of ``x -> (multiplier * x + increment) mod 10**digits`` (module docstring).

    Args:
        max_steps: ``k`` is drawn log-uniformly from ``1..max_steps`` (at most 99).
        multiplier: ``a`` of the map; coprime to 10, so that the map is a bijection.
        increment: ``b`` of the map.
        digits: values are taken modulo ``10**digits`` and written with that many digits.
    """

    name = "lcg"
    alphabet = ALPHABET

    def __init__(self, max_steps: int = 70, multiplier: int = 3, increment: int = 7, digits: int = 3):
        if not 1 <= max_steps < 10**COUNTER_DIGITS:
            raise ValueError(f"max_steps must be in 1..{10**COUNTER_DIGITS - 1}")
        if math.gcd(multiplier, 10) != 1:
            raise ValueError("the multiplier must be coprime to 10 (else the map merges sequences)")
        self.max_steps = max_steps
        self.multiplier = multiplier
        self.increment = increment
        self.digits = digits
        self.modulus = 10**digits
        # Starts whose sequence does not come back to itself within max_steps steps.
        self.starts = [
            x for x in range(self.modulus) if cycle_length(self.step, x, max_steps + 1) > max_steps
        ]

    def step(self, x: int) -> int:
        """One step of the map."""
        return (self.multiplier * x + self.increment) % self.modulus

    def line(self, countdown: int, value: int, marker: str = ":") -> str:
        return to_lsd(countdown, COUNTER_DIGITS) + marker + to_lsd(value, self.digits)

    def example(self, x: int, k: int) -> Example:
        """The example asking for ``k`` steps from ``x``."""
        if not 1 <= k <= self.max_steps or not 0 <= x < self.modulus:
            raise ValueError(f"x={x} or k={k} out of range")
        prompt = self.line(k, x) + "="
        lines = []
        for countdown in range(k - 1, -1, -1):
            x = self.step(x)
            lines.append(self.line(countdown, x, "#" if countdown == 0 else ":"))
        return Example(prompt=prompt, solution=";".join(lines), answer=to_lsd(x, self.digits))

    def sample(self, rng: random.Random) -> Example:
        k = int(math.exp(rng.uniform(0.0, math.log(self.max_steps + 1))))
        return self.example(rng.choice(self.starts), min(self.max_steps, max(1, k)))

    def reward(self, response: str, ground_truth: str) -> float:
        """1.0 iff the final answer (after the last ``#``) is right: :func:`final_answer_reward`."""
        return final_answer_reward(response, ground_truth)


@register_task("lcg")
def make_lcg() -> Task:
    """The demo task with its defaults: ``x -> 3x + 7 (mod 1000)``, ``k`` up to 70."""
    return LcgTask()
