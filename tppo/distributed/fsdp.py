"""One training process of many: join the process group, shard the models with FSDP2.

Each decoder layer is its own FSDP unit (parameters gathered just before it runs, freed after);
the embeddings, final norm and heads belong to the root unit. Gradients are *summed* over ranks:
every rank's loss is already divided by the minibatch's global token count
(:func:`tppo.algorithms.global_token_mean`), so the sum is the whole minibatch's gradient.
"""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard


def free_port() -> int:
    """A TCP port free on this machine now (for the rank-0 rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def init_process_group(
    *, backend: str, rank: int, world_size: int, master_addr: str, master_port: int
) -> None:
    """Join the default process group (blocks until all ``world_size`` ranks have joined)."""
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = master_addr, str(master_port)
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size)


def device_mesh(device: torch.device, world_size: int) -> DeviceMesh:
    return init_device_mesh(device.type, (world_size,))


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks: modules whose class is in the model's ``_no_split_modules``."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def shard_model(model: nn.Module, mesh: DeviceMesh) -> FSDPModule:
    """``fully_shard`` each decoder layer, then the root; gradients summed (not averaged) over ranks."""
    layers = decoder_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} names no decoder layer class in _no_split_modules")
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    root = fully_shard(model, mesh=mesh)
    for module in [*layers, root]:
        assert isinstance(module, FSDPModule)
        module.set_gradient_divide_factor(1.0)
        module.set_force_sum_reduction_for_comms(True)  # plain SUM: gloo has no PREMUL_SUM
    return root
