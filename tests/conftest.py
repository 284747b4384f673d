"""Shared test helpers: a tiny random Qwen2 causal LM, random token prefixes, a local Ray cluster.

Use the fixtures (``tiny_qwen2``, ``tiny_qwen2_factory``, ``prefix_factory``, ``ray_cluster``), or
import the functions directly (``from conftest import make_tiny_qwen2, make_prefixes``; pytest puts
this folder on ``sys.path``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

# `.venv/bin/pytest` puts only this folder on sys.path; make `import tppo` work without an install.
_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

TINY_QWEN2_DEFAULTS: dict[str, Any] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
    # Larger than Qwen2's 0.02, so that next-token distributions are peaked rather than almost
    # uniform: greedy decoding then does not hinge on float rounding (batched vs. alone).
    "initializer_range": 0.2,
    "bos_token_id": None,
    "eos_token_id": None,
    "pad_token_id": None,
}


SMALL_RUN = [
    "rollout.num_slots=12",
    "rollout.window_length=8",
    "rollout.max_response_length=48",
    "rollout.samples_per_prompt=1",
    "data.train_size=64",
    "data.eval_size=8",
    "trainer.eval_every=0",
    "trainer.progress=false",
    "trainer.tensorboard=false",
    "optim.actor_lr=1e-3",
    "optim.critic_lr=1e-3",
]
"""Overrides of a tiny demo-task run (K = 12, l = 8, L = 48) shared by the trainer-level tests;
later overrides in a list win, so a test appends what it changes."""


def make_tiny_qwen2(vocab_size: int = 48, seed: int = 0, **overrides: Any) -> Qwen2ForCausalLM:
    """A seeded, float32, eval-mode random ``Qwen2ForCausalLM`` (defaults: :data:`TINY_QWEN2_DEFAULTS`).

    ``overrides`` are :class:`Qwen2Config` fields (e.g. ``hidden_size=128, num_hidden_layers=4``).
    The same ``(vocab_size, seed, overrides)`` always gives the same weights.
    """
    config = Qwen2Config(vocab_size=vocab_size, **{**TINY_QWEN2_DEFAULTS, **overrides})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    return model.float().eval()


def make_prefixes(
    n: int,
    vocab_size: int = 48,
    min_len: int = 1,
    max_len: int = 16,
    seed: int = 0,
) -> list[list[int]]:
    """``n`` random token lists, lengths uniform in ``[min_len, max_len]``, ids in ``[0, vocab_size)``."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, max_len + 1, (n,), generator=gen).tolist()
    return [torch.randint(0, vocab_size, (length,), generator=gen).tolist() for length in lengths]


@pytest.fixture
def tiny_qwen2() -> Qwen2ForCausalLM:
    """A fresh :func:`make_tiny_qwen2` model with the defaults (vocab 48, seed 0)."""
    return make_tiny_qwen2()


@pytest.fixture
def tiny_qwen2_factory() -> Callable[..., Qwen2ForCausalLM]:
    """:func:`make_tiny_qwen2` itself, for tests that need other sizes or seeds."""
    return make_tiny_qwen2


@pytest.fixture
def prefix_factory() -> Callable[..., list[list[int]]]:
    """:func:`make_prefixes` itself."""
    return make_prefixes


def spy(trainer, method):
    """Wrap ``trainer.learner.<method>`` (the real one runs) and record the batches it gets."""
    seen, real = [], getattr(trainer.learner, method)

    def wrapped(batch):
        seen.append(batch)
        return real(batch)

    setattr(trainer.learner, method, wrapped)
    return seen


@pytest.fixture(scope="module")
def ray_cluster():
    """One Ray cluster for a test module: a local one of 4 logical CPUs, or the one ``RAY_ADDRESS``
    names (``ray start --head``). Use with ``pytestmark = pytest.mark.usefixtures("ray_cluster")``."""
    ray = pytest.importorskip("ray")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=False)
    else:
        try:
            ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
        except Exception:  # Ray gives its raylet 30 s to register; a busy machine can miss that once
            ray.shutdown()
            ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
