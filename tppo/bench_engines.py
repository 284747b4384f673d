"""``tppo bench-engines``: generated tokens/s of the HF engine, our vLLM engine and raw vLLM, same prompts.

K prompts of the configured task (``rollout.num_slots``; each prompt repeated
``rollout.samples_per_prompt`` times, as the slot pool fills) are each continued by at most
``rollout.window_length`` tokens, sampled at ``rollout.temperature`` / ``top_p`` / ``top_k``, by:

1. ``hf``: :class:`~tppo.engines.hf.HFEngine` on the policy;
2. ``vllm (ours)``: :class:`~tppo.engines.vllm.VLLMEngine` through the engine interface (per-request
   seeds, per-token log-probs, conversion to :class:`~tppo.engines.base.Completion`);
3. ``vllm (raw)``: the same ``vllm.LLM`` called directly with ``LLM.generate`` (same prompts, same
   ``max_tokens``, EOS as stop token; no log-probs, no per-request seeds): what vLLM can do.

Each engine is warmed up once, then timed over ``--repeats`` rounds; ours and raw alternate round by
round so that load from other processes falls on both alike. The rate is generated tokens (EOS
included) over generation seconds, summed over the rounds. The last line is
``ours/raw vllm tokens/s: R``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from tppo.config import TPPOConfig
from tppo.engines.base import Engine, SamplingParams


def bench_prompts(config: TPPOConfig, tokenizer: object) -> list[list[int]]:
    """K token prefixes: the task's first training prompts, each ``samples_per_prompt`` times."""
    from tppo.data import build_task_data

    _, rows, _ = build_task_data(config.data, tokenizer, seed=config.trainer.seed)  # type: ignore[arg-type]
    k, per_prompt = config.rollout.num_slots, config.rollout.samples_per_prompt
    return [list(rows[(i // per_prompt) % len(rows)].token_ids) for i in range(k)]


def timed(run: Callable[[], int]) -> tuple[int, float]:
    """``(tokens, seconds)`` of one call of ``run`` (which returns the tokens it generated)."""
    started = time.perf_counter()
    tokens = run()
    return tokens, time.perf_counter() - started


def measure(runs: dict[str, Callable[[], int]], repeats: int) -> dict[str, float]:
    """Tokens/s of each run: one warm-up call each, then ``repeats`` interleaved rounds."""
    for run in runs.values():
        run()
    tokens = dict.fromkeys(runs, 0)
    seconds = dict.fromkeys(runs, 0.0)
    for _ in range(repeats):
        for name, run in runs.items():
            n, s = timed(run)
            tokens[name] += n
            seconds[name] += s
    return {name: tokens[name] / seconds[name] for name in runs}


def raw_vllm_run(
    llm: object,
    prefixes: Sequence[Sequence[int]],
    window: int,
    sampling: SamplingParams,
    eos_token_ids: Sequence[int],
) -> Callable[[], int]:
    """``LLM.generate`` on the prefixes, as a vLLM user would call it; returns the tokens generated."""
    from tppo.engines.vllm import import_vllm

    vllm = import_vllm()
    prompts = [vllm.inputs.TokensPrompt(prompt_token_ids=list(p)) for p in prefixes]
    params = vllm.SamplingParams(
        max_tokens=window,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k,
        stop_token_ids=list(eos_token_ids),
        detokenize=False,
    )

    def run() -> int:
        outputs = llm.generate(prompts, params, use_tqdm=False)  # type: ignore[attr-defined]
        return sum(len(o.outputs[0].token_ids) for o in outputs)

    return run


def run_benchmark(config: TPPOConfig, *, repeats: int = 3, skip_hf: bool = False) -> dict[str, float]:
    """Print the tokens/s of the three paths (see the module docstring) and return them."""
    import torch

    from tppo.engines.hf import HFEngine
    from tppo.engines.vllm import VLLMEngine
    from tppo.models import load_models

    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if config.trainer.num_threads:
        torch.set_num_threads(config.trainer.num_threads)
    torch.manual_seed(config.trainer.seed)
    models = load_models(config.model)
    r = config.rollout
    prefixes = bench_prompts(config, models.tokenizer)
    budgets = [r.window_length] * len(prefixes)
    sampling = SamplingParams(temperature=r.temperature, top_p=r.top_p, top_k=r.top_k)
    print(
        f"model {config.model.policy_path}: K={len(prefixes)} prompts of task {config.data.task!r} "
        f"({min(map(len, prefixes))}-{max(map(len, prefixes))} tokens), window {r.window_length}, "
        f"temperature {r.temperature}; {repeats} timed rounds after one warm-up",
        flush=True,
    )

    def engine_run(engine: Engine) -> Callable[[], int]:
        return lambda: sum(len(c.token_ids) for c in engine.generate(prefixes, budgets, sampling))

    rates: dict[str, float] = {}
    if not skip_hf:
        hf = HFEngine.from_config(config, models.policy, models.vocabulary, seed=config.trainer.seed)
        rates.update(measure({"hf": engine_run(hf)}, repeats))
        print(f"hf engine: {rates['hf']:,.0f} tokens/s", flush=True)
    ours = VLLMEngine.from_config(config, models.policy, models.vocabulary, seed=config.trainer.seed)
    try:
        raw = raw_vllm_run(ours.llm, prefixes, r.window_length, sampling, ours.eos_token_ids)
        rates.update(measure({"ours": engine_run(ours), "raw": raw}, repeats))
    finally:
        ours.close()
    rates["ratio"] = rates["ours"] / rates["raw"]
    print(f"vllm engine (ours): {rates['ours']:,.0f} tokens/s")
    print(f"raw vllm LLM.generate: {rates['raw']:,.0f} tokens/s")
    print(f"ours/raw vllm tokens/s: {rates['ratio']:.3f}")
    return rates
