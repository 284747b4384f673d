"""The math outcome reward, in-process: final-answer extraction and a math-verify equality check.

This runs math-verify *without* its own timeouts (they use ``signal.alarm``, which raises outside
the main thread, and a wrapper catching every exception then scores every answer 0). Call it
through a :class:`tppo.rewards.RewardPool` (reward ``math``, or :func:`tppo.rewards.math_reward`),
which runs it in worker processes under a time limit that the pool enforces.
"""

from __future__ import annotations

import logging
import re

ANSWER_LINE = re.compile(r"Answer\s*:(.*)", re.IGNORECASE)
"""DAPO style: the text after the last ``Answer:`` (to the end of its line)."""
MAX_ANSWER_CHARS = 1_000
"""A longer extracted answer is no answer (scores 0): it is prose, not a value, and slow to parse."""


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced; ``None`` if none."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    while start >= 0:
        brace = text.find("{", start)
        if brace >= 0 and text[start:brace].strip() in ("\\boxed", "\\fbox"):
            depth = 0
            for i in range(brace, len(text)):
                depth += {"{": 1, "}": -1}.get(text[i], 0)
                if depth == 0:
                    return text[brace + 1 : i]
            return None  # unbalanced: the response was cut inside the box
        start = max(text.rfind("\\boxed", 0, start), text.rfind("\\fbox", 0, start))
    return None


def extract_final_answer(response: str) -> str | None:
    """The final answer of a response: the last ``Answer:`` line's text (markdown emphasis and a
    trailing period removed), else the last ``\\boxed{...}``; ``None`` when there is neither, or
    when it is empty or longer than :data:`MAX_ANSWER_CHARS`."""
    answer: str | None = None
    matches = ANSWER_LINE.findall(response)
    if matches:
        answer = matches[-1].strip().strip("*").strip()
        boxed = last_boxed(answer)
        answer = boxed if boxed is not None else answer
    if not answer:
        answer = last_boxed(response)
    if answer is None:
        return None
    answer = answer.strip().removesuffix(".").replace("\\$", "$").strip()
    return answer if answer and len(answer) <= MAX_ANSWER_CHARS else None


def _as_math(text: str) -> str:
    """math-verify reads LaTeX inside ``$...$`` (a bare ``\\frac12`` parses to nothing)."""
    return text if "$" in text or "\\boxed" in text else f"${text}$"


def answers_equal(answer: str, ground_truth: str) -> bool:
    """Symbolic equality by math-verify (``0.5`` = ``\\frac12``, ``025`` = ``25``), gold first.

    No time limit of its own: call it in a process you can kill."""
    from math_verify import parse, verify

    # Its one-time warning that it has no time limit of its own: the caller's pool enforces one.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    gold = parse(_as_math(ground_truth.strip()), parsing_timeout=None)
    predicted = parse(_as_math(answer), parsing_timeout=None)
    if not gold or not predicted:
        return False
    return bool(verify(gold, predicted, timeout_seconds=None))


def math_answer_reward(response: str, ground_truth: str) -> float:
    """Paper eq. 7, in this process and without a time limit: 1.0 iff the final answer of
    ``response`` (:func:`extract_final_answer`) equals ``ground_truth``, else 0.0."""
    answer = extract_final_answer(response)
    return 1.0 if answer is not None and answers_equal(answer, ground_truth) else 0.0
