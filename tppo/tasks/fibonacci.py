"""A Fibonacci-like sequence modulo 1000, with a countdown: the built-in demo task (``"fibonacci"``).

Each line is ``<c>:<v>``: a countdown ``c`` and a value ``v``, both least-significant digit first
with a fixed width (2 and 3 digits). The prompt holds two lines, with values ``a`` and ``b`` and
countdowns ``k + 1`` and ``k``; the response continues the sequence for ``k`` lines, each value the
sum of the two before it modulo 1000, counting down to 0. The last line reads ``00#<v>``: its value
is the answer. Then EOS::

    prompt    40:521;30:113=              a = 125, b = 311, k = 3
    response  20:634;10:747;00#381        125, 311 -> 436 -> 747 -> 183 (1183 mod 1000)

Why this task (``NOTES.md``, "The built-in demo task", has the earlier attempts):

* **Every step is local and the same.** A line depends only on the two lines just before it, at
  fixed offsets (7 and 14 characters back: all lines have the same width), and the prompt is two
  such lines, so the first step is like every other. Least-significant digit first, each digit is
  ``a_i + b_i + carry``. The answer is the last value itself: nothing to count or copy from far
  back. Three designs failed before this one, each on a step that needed more than the last few
  lines: copying terms from the prompt (``NOTES.md``); counting the steps of a Collatz trajectory
  (``tppo.tasks.collatz``: two thirds of its wrong answers had a correct chain and a wrong count);
  and iterating ``x -> 21x + 7 mod 1000``, where the model learnt the in-context shortcut
  ``x(n+5) = 101 x(n) + c`` instead of the step and so failed the first lines of every response.
  The sum of the two previous lines is the simplest relation this sequence has, so there is no
  cheaper shortcut to learn.
* **Errors build up step by step.** The map ``(a, b) -> (b, a + b)`` is a bijection on pairs, so
  sequences never merge: one wrong digit makes every later value, and the answer, wrong. The
  answer has 1000 possible values (guessing scores about 0.1%). Held-out prompts are real: there
  are 70 million (a, b, k).
* **A long tail of lengths, by design.** ``k`` is drawn log-uniformly from ``1..max_steps`` (70),
  and a response has ``7k - 1`` characters: mean ~109, median ~55, p90 ~320, max 489. Half are
  short, a few are ten times longer than the median: the regime in which plain PPO waits for its
  longest response and T-PPO does not.
* **Verifiable with an outcome reward** (paper eq. 7): 1.0 iff the text after the last ``#`` is
  the final value; the chain itself is not graded.
* **A 14-character alphabet** (digits, ``:``, ``;``, ``=``, ``#``).
"""

from __future__ import annotations

import math
import random

from tppo.tasks import Example, Task, register_task

ALPHABET = "0123456789:;=#"
EOS_STRING = "<eos>"
COUNTER_DIGITS = 2


def to_lsd(n: int, width: int) -> str:
    """``n`` in ``width`` digits, least-significant first, zero-padded: ``to_lsd(7, 3) == "700"``."""
    if not 0 <= n < 10**width:
        raise ValueError(f"{n} does not fit in {width} digits")
    return str(n).zfill(width)[::-1]


def extract_answer(response: str) -> str | None:
    """The text after the last ``#`` of ``response`` (trailing EOS strings and whitespace removed),
    or ``None`` when there is no ``#``."""
    text = response.strip()
    while text.endswith(EOS_STRING):
        text = text[: -len(EOS_STRING)].rstrip()
    if "#" not in text:
        return None
    return text.rsplit("#", 1)[1]


class FibonacciTask(Task):
    """``k`` more terms of ``v(n) = v(n-1) + v(n-2) mod 10**digits`` (see the module docstring).

    Args:
        max_steps: ``k`` is drawn log-uniformly from ``1..max_steps`` (at most 98).
        digits: values are taken modulo ``10**digits`` and written with that many digits.
    """

    name = "fibonacci"
    alphabet = ALPHABET

    def __init__(self, max_steps: int = 70, digits: int = 3):
        if not 1 <= max_steps <= 10**COUNTER_DIGITS - 2:
            raise ValueError(f"max_steps must be in 1..{10**COUNTER_DIGITS - 2}")
        if digits < 1:
            raise ValueError("digits must be >= 1")
        self.max_steps = max_steps
        self.digits = digits
        self.modulus = 10**digits

    def line(self, countdown: int, value: int, marker: str = ":") -> str:
        return to_lsd(countdown, COUNTER_DIGITS) + marker + to_lsd(value, self.digits)

    def example(self, a: int, b: int, k: int) -> Example:
        """The example that continues ``a, b`` for ``k`` terms."""
        if not 1 <= k <= self.max_steps or not (0 <= a < self.modulus and 0 <= b < self.modulus):
            raise ValueError(f"a={a}, b={b} or k={k} out of range")
        prompt = self.line(k + 1, a) + ";" + self.line(k, b) + "="
        lines = []
        for countdown in range(k - 1, -1, -1):
            a, b = b, (a + b) % self.modulus
            lines.append(self.line(countdown, b, "#" if countdown == 0 else ":"))
        return Example(prompt=prompt, solution=";".join(lines), answer=to_lsd(b, self.digits))

    def sample(self, rng: random.Random) -> Example:
        k = int(math.exp(rng.uniform(0.0, math.log(self.max_steps + 1))))
        a, b = rng.randrange(self.modulus), rng.randrange(self.modulus)
        return self.example(a, b, min(self.max_steps, max(1, k)))

    def reward(self, response: str, ground_truth: str) -> float:
        """1.0 iff the text after the last ``#`` equals ``ground_truth`` exactly, else 0.0.

        Only the final answer is checked (an outcome reward, paper eq. 7). A response with no
        ``#`` (for instance one truncated at the maximum length) scores 0.0; a trailing
        ``<eos>`` string is ignored.
        """
        answer = extract_answer(response)
        return 1.0 if answer is not None and answer == ground_truth.strip() else 0.0


@register_task("fibonacci")
def make_fibonacci() -> Task:
    """The demo task with its defaults: values modulo 1000, ``k`` up to 70."""
    return FibonacciTask()
