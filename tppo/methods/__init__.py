"""Training methods by name (``algorithm.name``): each answers DESIGN.md section 5's questions.

A method says whether it needs a value model, which responses train in a step (its selector), how
their advantages and token masks are made (``estimate``), and which policy objective (``surrogate``).
The trainer calls these and never branches on a method's name. Built in: ``ppo`` (PPO and T-PPO),
``grpo``, ``dapo`` and ``partial_rollout``.
"""

from __future__ import annotations

from tppo.methods.base import METHODS, Method, Selector, TrainSet
from tppo.methods.geppo import GePPOMethod, ReuseSelector
from tppo.methods.group import GroupMethod, GroupSelector
from tppo.methods.ppo import PPOMethod

__all__ = [
    "METHODS",
    "GePPOMethod",
    "GroupMethod",
    "GroupSelector",
    "Method",
    "PPOMethod",
    "ReuseSelector",
    "Selector",
    "TrainSet",
    "get_method",
]


def get_method(name: str) -> Method:
    """The method registered as ``name`` (``KeyError`` naming the registered ones otherwise)."""
    return METHODS.get(name)
