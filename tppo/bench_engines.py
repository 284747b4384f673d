"""``tppo bench-engines``: generated tokens/s of the HF engine, our vLLM engine and raw vLLM, same prompts.

K of the run's own training prompts (``data.train_files`` when set, else the task's; ``rollout.num_slots``
of them, each repeated ``rollout.samples_per_prompt`` times, as the slot pool fills) are each continued
by at most ``rollout.window_length`` tokens, sampled at ``rollout.temperature`` / ``top_p`` / ``top_k``, by:

1. ``hf``: :class:`~tppo.engines.hf.HFEngine` on the policy;
2. ``vllm (ours)``: :class:`~tppo.engines.vllm.VLLMEngine` through the engine interface (per-request
   seeds, per-token log-probs, conversion to :class:`~tppo.engines.base.Completion`);
3. ``vllm (raw)``: the same ``vllm.LLM`` called directly with ``LLM.generate`` (same prompts, same
   ``max_tokens``, EOS as stop token; no log-probs, no per-request seeds): what vLLM can do;
4. ``vllm (raw, same work)``: ``LLM.generate`` asked for what training cannot skip: the sampled
   token's log-prob (``logprobs=0``) and one seed per request, exactly the vLLM ``SamplingParams``
   our engine sends. Ours over this one is what our wrapper costs.

Each engine is warmed up once, then timed over ``--repeats`` rounds; the vLLM paths alternate round
by round so that load from other processes falls on all alike. The rate is generated tokens (EOS
included) over generation seconds, summed over the rounds. The last two lines are
``ours/raw vllm tokens/s: R0`` and ``ours/raw vllm tokens/s, same work: R``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from tppo.config import TPPOConfig
from tppo.engines.base import Engine, SamplingParams


def bench_prompts(config: TPPOConfig, tokenizer: object) -> list[list[int]]:
    """K token prefixes: the run's first training prompts (``data.train_files`` when set, else the
    task's), each ``samples_per_prompt`` times."""
    from tppo.data import build_data

    rows = build_data(config.data, tokenizer, seed=config.trainer.seed).train  # type: ignore[arg-type]
    k, per_prompt = config.rollout.num_slots, config.rollout.samples_per_prompt
    return [list(rows[(i // per_prompt) % len(rows)].token_ids) for i in range(k)]


def timed(run: Callable[[], int]) -> tuple[int, float]:
    """``(tokens, seconds)`` of one call of ``run`` (which returns the tokens it generated)."""
    started = time.perf_counter()
    tokens = run()
    return tokens, time.perf_counter() - started


def measure(runs: dict[str, Callable[[], int]], repeats: int) -> dict[str, float]:
    """Tokens/s of each run: one warm-up call each, then ``repeats`` interleaved rounds, each round
    starting one run later than the one before (so that no run always follows the same one)."""
    for run in runs.values():
        run()
    names = list(runs)
    tokens = dict.fromkeys(runs, 0)
    seconds = dict.fromkeys(runs, 0.0)
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            n, s = timed(runs[name])
            tokens[name] += n
            seconds[name] += s
    return {name: tokens[name] / seconds[name] for name in runs}


def raw_vllm_run(
    llm: object,
    prefixes: Sequence[Sequence[int]],
    window: int,
    sampling: SamplingParams,
    eos_token_ids: Sequence[int],
    *,
    same_work_seeds: torch.Generator | None = None,
) -> Callable[[], int]:
    """``LLM.generate`` on the prefixes, as a vLLM user would call it; returns the tokens generated.

    With ``same_work_seeds``, each call asks for what our engine asks for: the sampled token's log-prob
    and one seed per request (drawn from that generator), the same vLLM ``SamplingParams`` fields.
    """
    from tppo.engines.vllm import import_vllm

    vllm = import_vllm()
    prompts = [vllm.inputs.TokensPrompt(prompt_token_ids=list(p)) for p in prefixes]
    fields = {
        "max_tokens": window,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k,
        "stop_token_ids": list(eos_token_ids),
        "detokenize": False,
    }

    def params() -> object:
        if same_work_seeds is None:
            return vllm.SamplingParams(**fields)
        seeds = torch.randint(0, 2**31 - 1, (len(prompts),), generator=same_work_seeds).tolist()
        return [vllm.SamplingParams(**fields, seed=s, logprobs=0, flat_logprobs=True) for s in seeds]

    def run() -> int:
        outputs = llm.generate(prompts, params(), use_tqdm=False)  # type: ignore[attr-defined]
        return sum(len(o.outputs[0].token_ids) for o in outputs)

    return run


def run_benchmark(config: TPPOConfig, *, repeats: int = 3, skip_hf: bool = False) -> dict[str, float]:
    """Print the tokens/s of the four paths (see the module docstring) and return them."""
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
    source = ", ".join(config.data.train_files) if config.data.train_files else f"task {config.data.task!r}"
    print(
        f"model {config.model.policy_path}: K={len(prefixes)} prompts of {source} "
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
        args = (ours.llm, prefixes, r.window_length, sampling, ours.eos_token_ids)
        raw = raw_vllm_run(*args)
        same = raw_vllm_run(*args, same_work_seeds=torch.Generator().manual_seed(config.trainer.seed))
        rates.update(measure({"ours": engine_run(ours), "raw": raw, "raw_same_work": same}, repeats))
    finally:
        ours.close()
    rates["ratio"] = rates["ours"] / rates["raw"]
    rates["ratio_same_work"] = rates["ours"] / rates["raw_same_work"]
    print(f"vllm engine (ours): {rates['ours']:,.0f} tokens/s")
    print(f"raw vllm LLM.generate: {rates['raw']:,.0f} tokens/s")
    print(f"raw vllm LLM.generate, log-probs + one seed per request: {rates['raw_same_work']:,.0f} tokens/s")
    print(f"ours/raw vllm tokens/s: {rates['ratio']:.3f}")
    print(f"ours/raw vllm tokens/s, same work: {rates['ratio_same_work']:.3f}")
    return rates
