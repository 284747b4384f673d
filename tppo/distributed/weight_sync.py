"""How the trained policy reaches the rollout workers (``distributed.weight_sync``).

- ``object_store`` (the default): training rank 0 gathers the policy from its shards and returns it
  to the controller, which puts it in Ray's object store once; every rollout worker loads it.
- ``broadcast``: training rank 0 broadcasts the gathered policy to the rollout workers through a
  ``torch.distributed`` process group of its own (rank 0 of training + the N rollout workers:
  ``nccl`` when the training workers have GPUs, else ``gloo``): the weights never pass through the
  controller. The policy travels as one flat buffer per dtype (:func:`flatten_weights`), one
  broadcast each. A group is formed before the first sync and again after a worker is replaced.

The group is not the training workers' default one (the rollout workers are not in that), so it is
built directly on a ``TCPStore`` that training rank 0 hosts, as vLLM's stateless process groups
are for the same purpose.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from tppo.registry import Registry

SYNC_TIMEOUT = datetime.timedelta(seconds=120)
"""How long a member of the sync group waits for the others (a peer that died fails it after this)."""


@dataclass(frozen=True)
class TensorSpec:
    """What a receiver needs to rebuild one weight from the flat buffers: name, shape, dtype, and
    where it starts in its dtype's buffer."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    offset: int

    @property
    def numel(self) -> int:
        return int(torch.Size(self.shape).numel())


def weight_specs(named: Iterable[tuple[str, torch.Tensor]]) -> list[TensorSpec]:
    """The layout :func:`flatten_weights` gives these tensors: one flat buffer per dtype (named as
    ``str(dtype)`` without ``torch.``), the tensors in order. Shapes are global ones, so a sharded
    model's parameters give the layout of its gathered weights without gathering them."""
    specs: list[TensorSpec] = []
    sizes: dict[str, int] = {}
    for name, tensor in named:
        dtype = str(tensor.dtype).removeprefix("torch.")
        specs.append(TensorSpec(name, tuple(tensor.shape), dtype, sizes.get(dtype, 0)))
        sizes[dtype] = sizes.get(dtype, 0) + tensor.numel()
    return specs


def flatten_weights(
    named: Iterable[tuple[str, torch.Tensor]], device: torch.device | None = None
) -> tuple[list[TensorSpec], dict[str, torch.Tensor]]:
    """``(specs, buffers)``: every tensor copied into its dtype's flat buffer (on ``device``, else
    where the tensors are), laid out as :func:`weight_specs` says; :func:`unflatten_weights` inverts it."""
    pairs = list(named)
    parts: dict[str, list[torch.Tensor]] = {}
    for _, tensor in pairs:
        flat = tensor.detach().reshape(-1)
        parts.setdefault(str(tensor.dtype).removeprefix("torch."), []).append(
            flat if device is None else flat.to(device)
        )
    return weight_specs(pairs), {dtype: torch.cat(tensors) for dtype, tensors in parts.items()}


def sync_device(backend: str) -> torch.device:
    """Where the sync group's buffers live: the GPU for ``nccl``, the host for ``gloo``."""
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


def empty_buffers(specs: Sequence[TensorSpec], device: torch.device) -> dict[str, torch.Tensor]:
    """Buffers to receive what :func:`flatten_weights` made from tensors of these ``specs``."""
    sizes: dict[str, int] = {}
    for spec in specs:
        sizes[spec.dtype] = max(sizes.get(spec.dtype, 0), spec.offset + spec.numel)
    return {dtype: torch.empty(n, dtype=getattr(torch, dtype), device=device) for dtype, n in sizes.items()}


def unflatten_weights(
    specs: Sequence[TensorSpec], buffers: dict[str, torch.Tensor]
) -> list[tuple[str, torch.Tensor]]:
    """The named tensors (views into ``buffers``) that :func:`flatten_weights` flattened."""
    return [(s.name, buffers[s.dtype][s.offset : s.offset + s.numel].view(s.shape)) for s in specs]


class SyncGroup:
    """One member's side of the sync group: rank 0 (training rank 0, which hosts the store) sends,
    ranks ``1..size-1`` (the rollout workers) receive."""

    def __init__(self, host: str, port: int, rank: int, size: int, backend: str) -> None:
        self.rank, self.size, self.backend = rank, size, backend
        store = dist.TCPStore(host, port, size, is_master=rank == 0, timeout=SYNC_TIMEOUT)
        self.group = _process_group(backend, store, rank, size)

    def broadcast(self, buffers: dict[str, torch.Tensor]) -> None:
        """Every buffer from rank 0 to all (in place on the receivers), in dtype-name order."""
        for dtype in sorted(buffers):
            self.group.broadcast(buffers[dtype], 0).wait()


def _process_group(backend: str, store: Any, rank: int, size: int) -> Any:
    if backend == "nccl":  # a CUDA build of torch (never run on the project's CPU machines)
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = SYNC_TIMEOUT
        return dist.ProcessGroupNCCL(store, rank, size, options)
    return dist.ProcessGroupGloo(store, rank, size, SYNC_TIMEOUT)


WeightSync = Callable[[Any, Any], None]
"""``sync(learner, engine)``: put the learner's current policy weights into the rollout engine."""

WEIGHT_SYNCS: Registry[WeightSync] = Registry("weight sync")


@WEIGHT_SYNCS.register("object_store")
def sync_through_controller(learner: Any, engine: Any) -> None:
    """Rank 0's gathered policy comes to the controller, which hands it to the engine (for remote
    rollout workers: once into Ray's object store, which every worker reads)."""
    engine.update_weights(learner.policy_weights())


@WEIGHT_SYNCS.register("broadcast")
def sync_by_broadcast(learner: Any, engine: Any) -> None:
    """Training rank 0 broadcasts the policy straight to the rollout workers (see the module)."""
    learner.broadcast_weights(engine)
