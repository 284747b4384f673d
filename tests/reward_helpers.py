"""Reward functions for the reward-pool and robustness tests, importable by name (``reward_helpers:...``)
inside worker processes."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading
import time

CALLS: list[str] = []


def pid_reward(response: str, ground_truth: str) -> float:
    """The worker's process id (so a test can tell where it ran); records the call in CALLS."""
    CALLS.append(response)
    return float(os.getpid())


def sleepy_pid(response: str, ground_truth: str) -> float:
    """Sleeps for ``response`` seconds (a float), then returns the process id."""
    time.sleep(float(response))
    return float(os.getpid())


def picky_reward(response: str, ground_truth: str) -> float:
    """Raises on ``Answer: 1`` (the pool's former warm-up input), else 1.0."""
    if response == "Answer: 1":
        raise ValueError("cannot score this one")
    return 1.0


def length_or_trouble(response: str, ground_truth: str) -> float:
    """``len(response)``; raises on ``boom``, hangs on ``hang``, kills its process on ``die``."""
    if response == "boom":
        raise ZeroDivisionError("boom")
    if response == "hang":
        time.sleep(3600)
    if response == "die":
        os._exit(3)
    return float(len(response))


def raises_sometimes(response: str, ground_truth: str) -> float:
    """Raises for lengths 2 mod 3 (responses cut at 32 tokens among them), scores 1 otherwise."""
    if len(response) % 3 == 2:
        raise RuntimeError(f"cannot score {len(response)} characters")
    return 1.0


def c_hash(response: str, ground_truth: str) -> float:
    """1.0 after ``int(response)`` rounds of PBKDF2: one C call that never checks for signals
    (about 0.6 s per million rounds here)."""
    hashlib.pbkdf2_hmac("sha256", b"response", b"salt", int(response))
    return 1.0


def math_verify_with_its_own_timeouts(response: str, ground_truth: str) -> float:
    """math-verify with its default ``signal.alarm`` timeouts, which raise outside a main thread."""
    from math_verify import parse, verify

    assert threading.current_thread() is threading.main_thread()
    return float(verify(parse(ground_truth), parse(response)))


if multiprocessing.parent_process() is None:  # defined in the test process, missing in workers

    def parent_only(response: str, ground_truth: str) -> float:
        """A reward that the test process can name but a worker cannot build."""
        return 1.0
