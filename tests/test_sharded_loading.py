"""Loading sharded from the start (:mod:`tppo.distributed.sharded_loading`): built on ``meta``, each
rank reads only its rows; the shards equal those of the whole model loaded and then sharded, bit for
bit, for 1 and 2 ranks (gloo, real processes), a value head the checkpoint lacks starts at zero and a
saved one is read, and the model computes what the whole one does."""

from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.tensor import DTensor
from transformers import AutoModelForTokenClassification

from tppo.config import load_config
from tppo.distributed.fsdp import device_mesh, free_port, init_process_group, shard_model
from tppo.distributed.sharded_loading import (
    empty_model,
    fill_shards,
    load_models_sharded,
    safetensors_files,
    shard_bounds,
)
from tppo.models import load_models, resolve_model_path


@pytest.mark.parametrize("rows", [0, 1, 5, 7, 8, 48, 129])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_shard_bounds_are_torch_chunk_of_the_rows(rows, world_size):
    chunks = torch.arange(rows).chunk(world_size) if rows else ()
    bounds = [shard_bounds(rows, world_size, rank) for rank in range(world_size)]
    covered = [i for start, stop in bounds for i in range(start, stop)]
    assert covered == list(range(rows))  # every row once, in rank order
    for rank, chunk in enumerate(chunks):
        assert bounds[rank] == (int(chunk[0]), int(chunk[-1]) + 1)
    assert all(start == stop for start, stop in bounds[len(chunks) :])  # ranks past the last chunk: none


def test_shard_bounds_refuse_a_rank_outside_the_group():
    with pytest.raises(ValueError, match="rank 2 of 2"):
        shard_bounds(8, 2, 2)


def test_a_missing_weight_is_an_error_naming_it(tiny_qwen2):
    weights = tiny_qwen2.state_dict()

    def read(name, start, stop):
        return None if name == "model.norm.weight" else weights[name][start:stop]

    model = empty_model(lambda: type(tiny_qwen2)(tiny_qwen2.config))
    with pytest.raises(KeyError, match=r"no weights for model\.norm\.weight'$"):
        fill_shards(model, torch.device("cpu"), read)


def test_unsharded_filling_reads_every_weight_and_keeps_the_buffers(tiny_qwen2):
    weights = tiny_qwen2.state_dict()
    model = empty_model(lambda: type(tiny_qwen2)(tiny_qwen2.config))
    assert all(p.is_meta for p in model.parameters()) and not any(b.is_meta for b in model.buffers())
    fill_shards(model, torch.device("cpu"), lambda name, start, stop: weights[name][start:stop])
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, weights[name]), name
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, tiny_qwen2(ids).logits)


def _rank(rank, world_size, port, overrides, out):
    torch.set_num_threads(1)
    init_process_group(
        backend="gloo", rank=rank, world_size=world_size, master_addr="127.0.0.1", master_port=port
    )
    try:
        config = load_config(None, overrides)
        mesh = device_mesh(torch.device("cpu"), world_size)
        sharded = load_models_sharded(config.model, mesh)
        whole = load_models(config.model)
        shard_model(whole.policy, mesh)
        shard_model(whole.value, mesh)
        report = {"rows": {}, "differ": [], "buffers_differ": [], "dtensors": 0}
        for role in ("policy", "value"):
            mine, theirs = getattr(sharded, role), getattr(whole, role)
            theirs_params = dict(theirs.named_parameters())
            for name, param in mine.named_parameters():
                report["dtensors"] += isinstance(param, DTensor)
                local, want = param.to_local(), theirs_params[name].to_local()
                report["rows"][f"{role}.{name}"] = [local.shape[0], param.shape[0]] if local.dim() else None
                if not torch.equal(local, want):
                    report["differ"].append(f"{role}.{name}")
            theirs_buffers = dict(theirs.named_buffers())
            for name, buffer in mine.named_buffers():
                if not torch.equal(buffer, theirs_buffers[name]):
                    report["buffers_differ"].append(f"{role}.{name}")
        ids = torch.tensor([[1, 5, 9, 3, 7, 2]])
        with torch.no_grad():
            report["logits_equal"] = torch.equal(sharded.policy(ids).logits, whole.policy(ids).logits)
            report["values"] = sharded.value(ids).logits.flatten().tolist()
        report["eos"] = (
            sharded.policy.generation_config.eos_token_id == whole.policy.generation_config.eos_token_id
        )
        report["tied"] = sharded.policy.lm_head.weight is sharded.policy.model.embed_tokens.weight
        report["tied_whole"] = whole.policy.lm_head.weight is whole.policy.model.embed_tokens.weight
        (out / f"rank{rank}.json").write_text(json.dumps(report))
    finally:
        dist.destroy_process_group()


def load_on_ranks(world_size, overrides, out):
    mp.spawn(_rank, args=(world_size, free_port(), overrides, out), nprocs=world_size, join=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world_size)]


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [1, 2])
def test_sharded_loading_gives_the_shards_of_the_whole_model(tmp_path, world_size):
    reports = load_on_ranks(world_size, [], tmp_path)
    for rank, report in enumerate(reports):
        assert report["differ"] == [] and report["buffers_differ"] == [], rank
        assert report["dtensors"] == len(report["rows"])
        assert report["logits_equal"] and report["eos"] and report["tied"] == report["tied_whole"]
        assert report["values"] == [0.0] * 6  # the demo checkpoint has no value head: zero
    for name, rows in reports[0]["rows"].items():  # each rank holds its chunk of every weight, no more
        if rows is not None:
            held = [report["rows"][name][0] for report in reports]
            assert sum(held) == rows[1] and max(held) == -(-rows[1] // world_size), name


@pytest.mark.slow
def test_a_saved_value_head_is_read_in_shards(tmp_path):
    path = resolve_model_path("tppo-demo")
    value = AutoModelForTokenClassification.from_pretrained(path, num_labels=1)
    with torch.no_grad():
        value.score.weight.normal_(generator=torch.Generator().manual_seed(0))
        value.score.bias.fill_(0.25)
    value.save_pretrained(tmp_path / "value")
    assert safetensors_files(str(tmp_path / "value"))
    reports = load_on_ranks(2, [f"model.value_path={tmp_path / 'value'}"], tmp_path)
    for report in reports:
        assert report["differ"] == []
        assert report["values"] != [0.0] * 6 and len(set(report["values"])) > 1
