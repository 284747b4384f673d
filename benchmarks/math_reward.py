"""Throughput of the math reward: in-process math-verify, and the process pool the trainer uses.

Items are DAPO-style responses (reasoning, then an ``Answer:`` line) and boxed answers against
integer, fraction and decimal ground truths, half of them right. The pool's figure includes the
inter-process round trip and the per-item time limit's bookkeeping; its workers start (on a few
of the items) before the clock starts. On a shared machine items/s follows the load; the pool's CPU
time per item (all its processes, Linux) is the steadier figure.

Run::

    .venv/bin/python benchmarks/math_reward.py --items 2000 --workers 2
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tppo.math_answer import math_answer_reward
from tppo.rewards import RewardPool


def make_items(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    items = []
    for i in range(n):
        a, b = rng.randint(1, 999), rng.randint(2, 99)
        truth, answer = [
            (str(a), str(a)),
            (f"\\frac{{{a}}}{{{b}}}", f"{a}/{b}"),
            (str(a / 4), f"\\frac{{{a}}}{{4}}"),
        ][i % 3]
        if i % 2:
            answer = str(a + 1)
        reasoning = "Let me work through this step by step. " * rng.randint(5, 60)
        response = f"{reasoning}\nAnswer: {answer}" if i % 4 < 2 else f"{reasoning} so \\boxed{{{answer}}}."
        items.append((response, truth))
    return items


def tree_cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and all its descendants (the pool's workers
    fork from a server process, so they are its grandchildren), from ``/proc``; nan elsewhere."""
    if not os.path.isdir("/proc"):
        return math.nan
    parents, seconds = {}, {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents[int(entry)] = int(fields[1])
        seconds[int(entry)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [os.getpid()]
    while todo:
        pid = todo.pop()
        total += seconds.get(pid, 0.0)
        todo.extend(child for child, parent in parents.items() if parent == pid)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()
    items = make_items(args.items)
    responses, truths = [r for r, _ in items], [t for _, t in items]
    print("command:", shlex.join([sys.executable, *sys.argv]))

    math_answer_reward("Answer: 1", "1")  # imports math-verify
    start = time.perf_counter()
    local = [math_answer_reward(r, t) for r, t in items]
    seconds = time.perf_counter() - start
    print(f"in-process: {len(items) / seconds:8.1f} items/s ({1000 * seconds / len(items):.2f} ms/item)")

    with RewardPool("math", num_workers=args.workers, timeout_s=args.timeout) as pool:
        pool(responses[: args.workers * 4], truths[: args.workers * 4])  # workers started
        cpu, start = tree_cpu_seconds(), time.perf_counter()
        batch = pool(responses, truths)
        seconds, cpu = time.perf_counter() - start, tree_cpu_seconds() - cpu
    print(
        f"pool x{args.workers}:  {len(items) / seconds:8.1f} items/s "
        f"({1000 * seconds / len(items):.2f} ms/item), timeouts {batch.timeouts}, errors {batch.errors}"
    )
    print(f"pool CPU:   {1000 * cpu / len(items):8.2f} ms/item (all the pool's processes)")
    if batch.scores != local:
        raise SystemExit("the pool's scores differ from the in-process scores")
    print(f"share scored 1: {sum(local) / len(local):.3f} (half the items are right by construction)")


if __name__ == "__main__":
    main()
