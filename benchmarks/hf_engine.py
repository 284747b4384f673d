"""Throughput of the ``hf`` rollout engine against ``model.generate`` on the same prefixes.

K slots each continue a random prefix (prompt + response so far, lengths uniform in
``[--min-prefix, --max-prefix]``) by at most ``--window`` tokens, with a real EOS token so that rows
finish at different times. ``HFEngine`` drops finished rows out of the batch and the KV cache;
``model.generate`` keeps decoding them (padding) until the last row is done. Both count only the
useful tokens (up to and including each row's EOS). A random model puts ~1/vocab of its mass on EOS
at every step, so sampled response lengths are roughly geometric (mean ~vocab): a long tail, as in
reasoning RL. Greedy lengths depend on the model's loops: see the ``mean/max len`` columns.
``HFEngine 1-pass`` is the engine with one padded prefill pass over all K prefixes instead of
length-sorted groups of at most ``--prefill-chunk-tokens`` padded tokens.

Run (prints the command that reproduces it)::

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/hf_engine.py --slots 64 --window 128 \
        --hidden 128 --layers 4 --vocab 16 --threads 2

``OMP_WAIT_POLICY=PASSIVE``: on a 2-core machine where another process keeps a core busy, torch's
2 OpenMP threads otherwise stall at every parallel region (a 64x128 @ 128x512 matmul: 0.14 ms with
it, 6-16 ms without; 0.07-0.09 ms either way on an idle machine).
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tppo.engines import HFEngine, SamplingParams


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slots", type=int, default=64, help="K: prefixes continued per call")
    p.add_argument("--window", type=int, default=128, help="l: at most this many new tokens per row")
    p.add_argument("--min-prefix", type=int, default=8)
    p.add_argument("--max-prefix", type=int, default=256)
    p.add_argument("--vocab", type=int, default=16)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=512)
    p.add_argument("--eos", type=int, default=1, help="EOS token id")
    p.add_argument("--prefill-chunk-tokens", type=int, default=1024, help="HFEngine(prefill_chunk_tokens=)")
    p.add_argument("--temperature", type=float, default=1.0, help="for the sampled runs")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per setting (best reported)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def build_model(args: argparse.Namespace) -> Qwen2ForCausalLM:
    """A random float32 Qwen2 of the demo task's shape (tied embeddings)."""
    config = Qwen2Config(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        intermediate_size=args.intermediate,
        max_position_embeddings=max(2048, args.max_prefix + args.window),
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=args.eos,
        pad_token_id=0,
    )
    torch.manual_seed(args.seed)
    return Qwen2ForCausalLM(config).float().eval()


def make_prefixes(args: argparse.Namespace) -> list[list[int]]:
    """K random prefixes without EOS, lengths uniform in [min_prefix, max_prefix]."""
    gen = torch.Generator().manual_seed(args.seed + 1)
    lengths = torch.randint(args.min_prefix, args.max_prefix + 1, (args.slots,), generator=gen).tolist()
    prefixes = []
    for n in lengths:
        ids = torch.randint(0, args.vocab - 1, (n,), generator=gen)
        prefixes.append((ids + (ids >= args.eos).long()).tolist())  # skip the EOS id
    return prefixes


def run_engine(
    engine: HFEngine, prefixes: list[list[int]], window: int, sampling: SamplingParams
) -> list[int]:
    """New tokens per row (EOS included) from one ``HFEngine.generate`` call."""
    completions = engine.generate(prefixes, [window] * len(prefixes), sampling)
    return [len(c.token_ids) for c in completions]


def run_generate(
    model: Any, prefixes: list[list[int]], window: int, sampling: SamplingParams, eos: int
) -> list[int]:
    """Useful new tokens per row (up to and including its first EOS) from one padded ``model.generate``."""
    width = max(len(p) for p in prefixes)
    ids = torch.zeros(len(prefixes), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, p in enumerate(prefixes):
        ids[b, width - len(p) :] = torch.tensor(p)
        mask[b, width - len(p) :] = 1
    kwargs = (
        {"do_sample": False}
        if sampling.greedy
        else {"do_sample": True, "temperature": sampling.temperature, "top_k": 0, "top_p": 1.0}
    )
    with torch.inference_mode():
        out = model.generate(
            ids, attention_mask=mask, max_new_tokens=window, eos_token_id=eos, pad_token_id=0, **kwargs
        )
    lengths = []
    for row in out[:, width:].tolist():
        lengths.append(row.index(eos) + 1 if eos in row else len(row))
    return lengths


def timed(fn: Callable[[], list[int]], repeats: int) -> tuple[float, list[int]]:
    """Best tokens/s over ``repeats`` calls, and the last call's per-row lengths."""
    best, lengths = 0.0, []
    for _ in range(repeats):
        start = time.perf_counter()
        lengths = fn()
        best = max(best, sum(lengths) / (time.perf_counter() - start))
    return best, lengths


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    model = build_model(args)
    prefixes = make_prefixes(args)
    n_params = sum(p.numel() for p in model.parameters())
    env = "".join(f"{k}={os.environ[k]} " for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS") if k in os.environ)
    print(f"command: {env}.venv/bin/python {shlex.join(sys.argv)}")
    print(
        f"model: Qwen2 {n_params / 1e6:.2f}M params (hidden {args.hidden}, {args.layers} layers, vocab "
        f"{args.vocab}), float32, {args.threads} threads, torch {torch.__version__}"
    )
    print(
        f"K={args.slots} slots, window {args.window}, prefix lengths {min(map(len, prefixes))}.."
        f"{max(map(len, prefixes))} (mean {statistics.mean(map(len, prefixes)):.0f}), EOS id {args.eos}"
    )
    settings = {"greedy": SamplingParams(temperature=0.0), "sampled": SamplingParams(args.temperature)}
    print(
        f"{'setting':<9} {'backend':<16} {'useful tok/s':>12} {'mean len':>9} {'max len':>8} {'slot util':>9}"
    )
    for name, sampling in settings.items():
        engines = {
            "HFEngine": HFEngine(
                model, eos_token_ids=[args.eos], pad_token_id=0, seed=args.seed,
                prefill_chunk_tokens=args.prefill_chunk_tokens,
            ),
            "HFEngine 1-pass": HFEngine(  # one padded prefill pass over all K prefixes
                model, eos_token_ids=[args.eos], pad_token_id=0, seed=args.seed, prefill_chunk_tokens=1 << 40
            ),
        }  # fmt: skip
        torch.manual_seed(args.seed)
        run_generate(model, prefixes[:4], 4, sampling, args.eos)  # warm-up
        for label, engine in engines.items():
            run_engine(engine, prefixes[:4], 4, sampling)  # warm-up
            engine.pop_stats()
            rate, lengths = timed(partial(run_engine, engine, prefixes, args.window, sampling), args.repeats)
            stats = engine.pop_stats()
            util = stats.generated_tokens / (args.slots * stats.decode_steps)
            print(_row(name, label, rate, lengths, util))
        rate, lengths = timed(
            partial(run_generate, model, prefixes, args.window, sampling, args.eos), args.repeats
        )
        print(_row(name, "model.generate", rate, lengths, sum(lengths) / (args.slots * max(lengths))))


def _row(setting: str, backend: str, rate: float, lengths: list[int], util: float) -> str:
    return (
        f"{setting:<9} {backend:<16} {rate:>12,.0f} {statistics.mean(lengths):>9.1f} {max(lengths):>8} "
        f"{util:>9.2f}"
    )


if __name__ == "__main__":
    main()
