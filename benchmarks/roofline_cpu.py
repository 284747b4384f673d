"""This CPU's roof: attainable matmul FLOP/s and memory bandwidth, measured with torch.

- Compute: ``C = A @ B`` on ``n x n`` matrices (``2 n^3`` FLOPs), best of ``--repeats`` timings.
- Bandwidth: ``dst.copy_(src)`` on ``--copy-mib`` MiB tensors (far larger than the caches), counted
  as ``2 x`` the size (one read, one write), best of ``--repeats``; and ``src.sum()`` (a read only).

The figures make this CPU's roof in :mod:`tppo.roofline`:
``Accelerator(name, peak_flops=matmul, memory_bandwidth=copy, source=command)``.
Run (prints the command that reproduces it)::

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/roofline_cpu.py --threads 1

Best-of timings on a shared machine are the least disturbed runs, not typical ones.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tppo.roofline import Accelerator, ridge_intensity

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` timed calls, after one untimed warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_flops(n: int, dtype: torch.dtype, repeats: int) -> float:
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    seconds = best_seconds(lambda: torch.matmul(a, b, out=out), repeats)
    return 2.0 * n**3 / seconds


def copy_bandwidth(mib: int, repeats: int) -> tuple[float, float]:
    """(copy bytes/s counting read + write, read-only bytes/s of a sum)."""
    numel = mib * 2**20 // 4
    src = torch.rand(numel)
    dst = torch.empty_like(src)
    copy_s = best_seconds(lambda: dst.copy_(src), repeats)
    sum_s = best_seconds(lambda: src.sum(), repeats)
    size = numel * 4
    return 2.0 * size / copy_s, size / sum_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the demo trains on 1)")
    parser.add_argument("--n", type=int, default=1024, help="matmul size n (n x n @ n x n)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--copy-mib", type=int, default=256, help="size of the copied tensor, MiB")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    flops = matmul_flops(args.n, DTYPES[args.dtype], args.repeats)
    copy_bw, read_bw = copy_bandwidth(args.copy_mib, args.repeats)
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    cpu = Accelerator(
        name="cpu",
        peak_flops=flops,
        memory_bandwidth=copy_bw,
        source=f"measured: {command} (OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '')})",
    )
    figures = {
        "threads": args.threads,
        "dtype": args.dtype,
        "matmul_n": args.n,
        "matmul_gflops": flops / 1e9,
        "copy_gb_s": copy_bw / 1e9,
        "read_gb_s": read_bw / 1e9,
        "ridge_flops_per_byte": ridge_intensity(cpu),
        "command": command,
    }
    print(f"command: {command}")
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.dtype}")
    print(f"matmul {args.n}x{args.n}: {flops / 1e9:.1f} GFLOP/s")
    print(f"copy {args.copy_mib} MiB: {copy_bw / 1e9:.2f} GB/s (read + write); sum: {read_bw / 1e9:.2f} GB/s")
    print(f"ridge: {ridge_intensity(cpu):.1f} FLOPs/byte")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
