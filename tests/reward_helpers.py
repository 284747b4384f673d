"""Reward functions for the reward-pool and robustness tests, importable by name inside worker
processes."""

from __future__ import annotations

import os
import time

CALLS: list[str] = []


def pid_reward(response: str, ground_truth: str) -> float:
    """The worker's process id (so a test can tell where it ran); records the call in CALLS."""
    CALLS.append(response)
    return float(os.getpid())


def sleepy_reward(response: str, ground_truth: str) -> float:
    """Sleeps for ``response`` seconds (a float), then returns 1.0."""
    if response != "Answer: 1":  # the warm-up call returns at once
        time.sleep(float(response))
    return 1.0


def crashing_reward(response: str, ground_truth: str) -> float:
    """Kills its own process on ``crash``, raises on ``raise``, else 1.0."""
    if response == "crash":
        os._exit(3)
    if response == "raise":
        raise ValueError("bad response")
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
