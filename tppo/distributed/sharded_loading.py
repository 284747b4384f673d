"""Loading sharded from the start: a training worker never holds a whole model.

Each worker builds the policy and the value model on the ``meta`` device (parameters without
storage; buffers, such as rotary frequencies, real: they are small and computed, not stored),
shards them with FSDP2 (:func:`~tppo.distributed.fsdp.shard_model`), allocates its own shards
only, and reads just its rows of every weight from the checkpoint's safetensors files, which are
memory-mapped: a rank reads ``1 / world_size`` of the checkpoint, and a model larger than one
worker's memory can be trained.

FSDP2 shards every parameter along its first dimension as ``torch.chunk`` does
(:func:`shard_bounds`). A checkpoint without safetensors files (``pytorch_model.bin``) cannot be read
in parts: it is loaded whole and sharded after, and a warning says so.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from safetensors import safe_open
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForTokenClassification,
    GenerationConfig,
    PreTrainedModel,
)

from tppo.config import ModelConfig
from tppo.distributed.fsdp import shard_model
from tppo.models import (
    DTYPES,
    Models,
    disable_dropout,
    load_models,
    load_vocabulary,
    resolve_device,
    resolve_model_path,
    value_head_parameter_names,
)

log = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"

Reader = Callable[[str, int, int], torch.Tensor | None]
"""``read(name, start, stop)``: rows ``start:stop`` of weight ``name`` (``None``: not in the checkpoint)."""


def shard_bounds(rows: int, world_size: int, rank: int) -> tuple[int, int]:
    """The rows ``[start, stop)`` of a ``rows``-row parameter that rank ``rank`` of ``world_size``
    holds under FSDP2: ``torch.chunk`` of dim 0 (chunks of ``ceil(rows / world_size)``; the last
    ranks may hold fewer rows, or none)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} of {world_size}")
    size = math.ceil(rows / world_size)
    start = min(rank * size, rows)
    return start, min(start + size, rows)


def safetensors_files(folder: str) -> list[Path]:
    """The safetensors files of a checkpoint folder or Hub name (``[]``: none). A Hub name is
    resolved through the local Hugging Face cache (and downloaded, where the Hub is reachable)."""
    path = Path(folder)
    if not path.is_dir():
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(folder, allow_patterns=["*.safetensors", "*.json"]))
    index = path / INDEX_FILE
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / name for name in names]
    return sorted(path.glob("*.safetensors"))


@contextmanager
def open_checkpoint(files: list[Path]) -> Iterator[Reader]:
    """A :data:`Reader` over memory-mapped safetensors ``files``: a slice reads only its rows."""
    with ExitStack() as stack:
        where: dict[str, Any] = {}
        for file in files:
            handle = stack.enter_context(safe_open(str(file), framework="pt", device="cpu"))
            where.update(dict.fromkeys(handle.keys(), handle))

        def read(name: str, start: int, stop: int) -> torch.Tensor | None:
            handle = where.get(name)
            if handle is None:
                return None
            part = handle.get_slice(name)
            return part[:] if not part.get_shape() else part[start:stop]

        yield read


def empty_model(factory: Callable[[], PreTrainedModel]) -> PreTrainedModel:
    """``factory()`` with every parameter on the ``meta`` device (no storage); buffers stay real;
    tied weights (``tie_word_embeddings``) tied, as ``from_pretrained`` ties them."""
    with init_empty_weights(include_buffers=False):
        model = factory()
    model.tie_weights()
    return model


def fill_shards(model: nn.Module, device: torch.device, read: Reader, *, zero: tuple[str, ...] = ()) -> None:
    """Allocate this rank's shard of every (FSDP2-sharded, ``meta``) parameter of ``model`` on
    ``device`` and read its rows with ``read``; buffers are kept. Parameters named in ``zero`` that
    the checkpoint lacks start at zero (a new value head); any other missing one is an error."""
    buffers = {name: buffer.detach().clone() for name, buffer in model.named_buffers()}
    model.to_empty(device=device)
    missing = []
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(buffers[name])
        for name, param in model.named_parameters():
            local = param.to_local() if isinstance(param, DTensor) else param
            start, stop = (0, 0) if param.dim() == 0 else _local_rows(param, local)
            rows = read(name, start, stop)
            if rows is None:
                missing.append(name)
                local.zero_()
                continue
            if tuple(rows.shape) != tuple(local.shape):
                raise ValueError(
                    f"{name}: the checkpoint's rows {start}:{stop} are {tuple(rows.shape)}, "
                    f"the shard is {tuple(local.shape)}"
                )
            local.copy_(rows)
    unexpected = [name for name in missing if name not in zero]
    if unexpected:
        raise KeyError(f"the checkpoint has no weights for {', '.join(unexpected)}")
    if missing:
        log.warning("value head not in the checkpoint: initialised to zero (%s)", ", ".join(missing))


def _local_rows(param: torch.Tensor, local: torch.Tensor) -> tuple[int, int]:
    if not isinstance(param, DTensor):
        return 0, param.shape[0]
    mesh = param.device_mesh
    start, stop = shard_bounds(param.shape[0], mesh.size(), mesh.get_local_rank())
    if stop - start != local.shape[0]:
        raise AssertionError(
            f"FSDP2 shard of {tuple(param.shape)} holds {local.shape[0]} rows, not {stop - start}"
        )
    return start, stop


def load_sharded_model(
    path: str,
    factory: Callable[[], PreTrainedModel],
    mesh: DeviceMesh,
    device: torch.device,
    *,
    value_head: bool = False,
) -> PreTrainedModel:
    """``factory()`` built on ``meta``, FSDP2-sharded over ``mesh``, its shards read from ``path``
    (``value_head``: a value head the checkpoint lacks starts at zero)."""
    files = safetensors_files(path)
    if not files:
        raise FileNotFoundError(f"{path}: no safetensors files")
    model = empty_model(factory)
    zero = value_head_parameter_names(model) if value_head else ()
    shard_model(model, mesh)
    with open_checkpoint(files) as read:
        fill_shards(model, device, read, zero=zero)
    disable_dropout(model)
    return model


def load_models_sharded(config: ModelConfig, mesh: DeviceMesh, *, value: bool = True) -> Models:
    """Policy and value model as :func:`tppo.models.load_models` gives them, but FSDP2-sharded over
    ``mesh`` and read shard by shard (see the module's docstring). Checkpoints without safetensors
    files are loaded whole, then sharded."""
    device = resolve_device(config.device)
    policy_path = resolve_model_path(config.policy_path)
    value_path = resolve_model_path(config.value_path or config.policy_path)
    if not safetensors_files(policy_path) or (value and not safetensors_files(value_path)):
        log.warning("%s: no safetensors files to read in shards; loading whole, then sharding", policy_path)
        models = load_models(config, value=value)
        shard_model(models.policy, mesh)
        if models.value is not None:
            shard_model(models.value, mesh)
        return models
    dtype = DTYPES[config.dtype]
    policy_config = AutoConfig.from_pretrained(policy_path)
    policy = load_sharded_model(
        policy_path, lambda: AutoModelForCausalLM.from_config(policy_config, dtype=dtype), mesh, device
    )
    _keep_generation_config(policy, policy_path)
    value_model = None
    if value:
        value_config = AutoConfig.from_pretrained(value_path, num_labels=1)
        value_model = load_sharded_model(
            value_path,
            lambda: AutoModelForTokenClassification.from_config(value_config, dtype=dtype),
            mesh,
            device,
            value_head=True,
        )
    vocabulary = load_vocabulary(config)
    return Models(
        vocabulary.tokenizer, policy, value_model, vocabulary.eos_token_ids, vocabulary.pad_token_id
    )


def _keep_generation_config(model: PreTrainedModel, path: str) -> None:
    with suppress(OSError):  # a checkpoint without generation_config.json keeps the default
        model.generation_config = GenerationConfig.from_pretrained(path)
