"""Sort the letters of a word (``"sort"``): the built-in task that is not arithmetic on numbers.

Prompt ``dcab=``; the response is the same letters in alphabetical order, then EOS::

    dcab=abcd

Why a third task: its responses are short (2 to 24 letters) and every letter is graded, so the
expected reward of a partial response (what the value model predicts) changes at once when one
letter goes wrong, the regime in which truncating at a window edge and bootstrapping with
``V(s_l) = V(s_{l-1})`` is most open to doubt (the paper's reviewers asked). Word lengths are drawn
log-uniformly, so short words are common and long ones rare: a long tail again, in letters.

The reward is 1.0 iff the response (EOS stripped) is exactly the sorted word: an outcome reward
(paper eq. 7) over the whole response, not only a final answer.
"""

from __future__ import annotations

import math
import random
import string

from tppo.tasks.base import Example, Task, register_task, strip_eos

LETTERS = string.ascii_lowercase
ALPHABET = LETTERS + "="


class SortLettersTask(Task):
    """Sort a word's letters (see the module docstring).

    Args:
        min_letters, max_letters: word lengths, drawn log-uniformly from this range.
        letters: how many letters of the alphabet words use (``a`` onwards).
    """

    name = "sort"
    alphabet = ALPHABET

    def __init__(self, min_letters: int = 2, max_letters: int = 24, letters: int = 26):
        if not 1 <= min_letters <= max_letters:
            raise ValueError(f"need 1 <= min_letters <= max_letters, got {min_letters}, {max_letters}")
        if not 2 <= letters <= len(LETTERS):
            raise ValueError(f"letters must be in [2, {len(LETTERS)}], got {letters}")
        self.min_letters, self.max_letters = min_letters, max_letters
        self.letters = LETTERS[:letters]

    def example(self, word: str) -> Example:
        answer = "".join(sorted(word))
        return Example(prompt=word + "=", solution=answer, answer=answer)

    def sample(self, rng: random.Random) -> Example:
        low, high = math.log(self.min_letters), math.log(self.max_letters + 1)
        length = min(self.max_letters, int(math.exp(rng.uniform(low, high))))
        return self.example("".join(rng.choice(self.letters) for _ in range(length)))

    def reward(self, response: str, ground_truth: str) -> float:
        """1.0 iff ``response`` (trailing EOS strings and whitespace removed) is ``ground_truth``."""
        return float(strip_eos(response) == ground_truth)


@register_task("sort")
def make_sort() -> Task:
    """Sort with its defaults: words of 2 to 24 letters from ``a..z``."""
    return SortLettersTask()
