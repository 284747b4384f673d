"""The ``broadcast`` weight sync's pure parts (:mod:`tppo.distributed.weight_sync`): the flat
layout, and the config key's checks. Its runs on Ray are in ``tests/test_distributed_broadcast.py``."""

from __future__ import annotations

import pytest
import torch

from tppo.config import ConfigError, load_config
from tppo.distributed.weight_sync import (
    WEIGHT_SYNCS,
    TensorSpec,
    empty_buffers,
    flatten_weights,
    unflatten_weights,
    weight_specs,
)


def named_tensors():
    gen = torch.Generator().manual_seed(0)
    return [
        ("a", torch.randn(3, 4, generator=gen)),
        ("b", torch.randn(5, generator=gen).bfloat16()),
        ("c", torch.randn(2, 3, generator=gen).t()),  # not contiguous
        ("d", torch.arange(6).reshape(2, 3)),
        ("e", torch.randn((), generator=gen)),
    ]


def test_flattened_weights_come_back_bit_for_bit_by_name_shape_and_dtype():
    named = named_tensors()
    specs, buffers = flatten_weights(named)
    assert sorted(buffers) == ["bfloat16", "float32", "int64"]
    assert buffers["float32"].numel() == 12 + 6 + 1
    back = unflatten_weights(specs, buffers)
    assert [name for name, _ in back] == [name for name, _ in named]
    for (_, got), (_, want) in zip(back, named, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want)


def test_the_layout_follows_from_shapes_alone_so_receivers_allocate_it_beforehand():
    named = named_tensors()
    specs = weight_specs(named)
    assert specs[0] == TensorSpec("a", (3, 4), "float32", 0)
    assert specs[2] == TensorSpec("c", (3, 2), "float32", 12)
    assert specs[4] == TensorSpec("e", (), "float32", 18)
    received = empty_buffers(specs, torch.device("cpu"))
    _, sent = flatten_weights(named)
    assert {k: (v.dtype, v.numel()) for k, v in received.items()} == {
        k: (v.dtype, v.numel()) for k, v in sent.items()
    }
    for dtype, buffer in received.items():  # what a broadcast does: fill the receiver's buffers
        buffer.copy_(sent[dtype])
    assert all(
        torch.equal(a, b) for (_, a), (_, b) in zip(unflatten_weights(specs, received), named, strict=True)
    )


def test_every_weight_sync_setting_is_registered():
    assert sorted(WEIGHT_SYNCS) == ["broadcast", "object_store"]


@pytest.mark.parametrize(
    "overrides",
    [
        ["distributed.weight_sync=broadcast"],
        ["distributed.weight_sync=broadcast", "distributed.rollout_workers=2"],
        ["distributed.weight_sync=broadcast", "distributed.train_workers=2"],
    ],
)
def test_broadcast_needs_remote_rollout_and_training_workers(overrides):
    with pytest.raises(ConfigError, match=r"^distributed\.weight_sync: broadcast sends from training rank 0"):
        load_config(None, overrides)


def test_an_unknown_weight_sync_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"distributed\.weight_sync"):
        load_config(None, ["distributed.weight_sync=nccl"])
    config = load_config(
        None,
        ["distributed.weight_sync=broadcast", "distributed.rollout_workers=2", "distributed.train_workers=2"],
    )
    assert config.distributed.weight_sync == "broadcast"
