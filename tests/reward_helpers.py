"""Reward functions for the robustness tests; module-level so the reward worker process can
import them by name."""

from __future__ import annotations

import os
import time


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
