"""The training workers' part of a checkpoint: sharded with ``torch.distributed.checkpoint`` (DCP).

Every training worker writes its own shard of the policy and value weights and of both AdamW
states into ``<checkpoint>/sharded/`` (one ``__<rank>_0.distcp`` file per worker, and DCP's
``.metadata`` from rank 0), the minibatch-shuffle generator beside them (the same on every rank,
stored once). Loading reads whatever pieces each rank's shards need, so a checkpoint written by
M workers resumes with any other number of workers (DCP reshards). The controller's part (slot
pool, prompt stream, its RNGs, metrics position) and the gathered Hugging Face weights sit beside it
in the same atomic, checksummed checkpoint directory (:mod:`tppo.resume`, :mod:`tppo.checkpoint`).

An optimizer that has not stepped yet (the critic before any response finished, the actor during
critic warm-up) has no state and is left out: loading it leaves that optimizer fresh, as in the run
that wrote the checkpoint (DCP would otherwise initialise it with a zero step, which changes the
next update's bias correction).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from tppo.checkpoint import SHARDED_DIR

if TYPE_CHECKING:
    from tppo.learner import Learner


UPDATE_RNG = "update_rng"


def _parts(learner: Learner) -> dict[str, tuple[torch.nn.Module, torch.optim.Optimizer]]:
    parts: dict[str, tuple[torch.nn.Module, torch.optim.Optimizer]] = {
        "policy": (learner.models.policy, learner.actor_optim)
    }
    if learner.models.value is not None and learner.critic_optim is not None:
        parts["value"] = (learner.models.value, learner.critic_optim)
    return parts


def sharded_state(learner: Learner, *, optimizers: set[str]) -> dict[str, Any]:
    """This rank's state dict to save or to load into: ``policy`` / ``value`` (model shards, DTensors),
    ``policy_optim`` / ``value_optim`` for the names in ``optimizers``, and the update generator."""
    state: dict[str, Any] = {UPDATE_RNG: learner.update_generator.get_state()}
    for name, (model, optimizer) in _parts(learner).items():
        state[name] = get_model_state_dict(model)
        if name in optimizers:
            state[f"{name}_optim"] = get_optimizer_state_dict(model, optimizer)
    return state


def save_sharded(learner: Learner, checkpoint: Path) -> None:
    """Write this rank's shard into ``checkpoint/sharded`` (collective: every rank calls it)."""
    stepped = {name for name, (_, optimizer) in _parts(learner).items() if optimizer.state}
    dcp.save(sharded_state(learner, optimizers=stepped), checkpoint_id=Path(checkpoint) / SHARDED_DIR)


def saved_optimizers(checkpoint: Path) -> set[str]:
    """The models whose optimizer state ``checkpoint/sharded`` holds (see the module docstring)."""
    metadata = dcp.FileSystemReader(Path(checkpoint) / SHARDED_DIR).read_metadata()
    return {name for name in ("policy", "value") if f"{name}_optim" in _top_keys(metadata)}


def _top_keys(metadata: Any) -> set[str]:
    return {key.split(".", 1)[0] for key in metadata.state_dict_metadata}


def load_sharded(learner: Learner, checkpoint: Path) -> None:
    """Restore weights, optimizer states and the update generator from ``checkpoint/sharded``
    (collective); this rank reads the pieces its shards need, whatever the writers' number."""
    optimizers = saved_optimizers(checkpoint)
    state = sharded_state(learner, optimizers=optimizers)
    dcp.load(state, checkpoint_id=Path(checkpoint) / SHARDED_DIR)
    for name, (model, optimizer) in _parts(learner).items():
        set_model_state_dict(model, state[name])
        if name in optimizers:
            set_optimizer_state_dict(model, optimizer, state[f"{name}_optim"])
    learner.update_generator.set_state(state[UPDATE_RNG])


def read_sharded(checkpoint: Path) -> dict[str, Any]:
    """The whole of ``checkpoint/sharded`` as plain tensors in one process (no process group):
    ``{"policy": {name: weight}, "policy_optim": {"state": ..., "param_groups": ...}, ...}``,
    for inspection and tests."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as scratch:
        target = Path(scratch) / "whole.pt"
        dcp_to_torch_save(Path(checkpoint) / SHARDED_DIR, target)
        return dict(torch.load(target, weights_only=False))
