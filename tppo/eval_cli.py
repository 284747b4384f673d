"""``tppo eval``: the paper's evaluation protocol on a model and a data file.

k samples per problem (temperature 1.0, top-p 0.7 in the paper), scored by the reward (``math`` by
default), reported as avg@k (mean pass@1) and pass@k. Writes ``results.jsonl`` (one line per
problem: prompt, ground truth, responses, scores) and ``summary.json`` into ``--output-dir``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tppo.config import TPPOConfig
    from tppo.evaluation import EvalResult


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="model folder, Hub name, or alias (smollm2-135m-instruct)"
    )
    parser.add_argument(
        "--data", required=True, help=".jsonl / .parquet file or Hugging Face NAME[:CONFIG][@SPLIT]"
    )
    parser.add_argument("--samples", type=int, default=32, help="k, samples per problem (default 32)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=0.7)
    parser.add_argument("--max-tokens", type=int, default=1024, help="maximum response length in tokens")
    parser.add_argument("--limit", type=int, help="evaluate only the first N problems")
    parser.add_argument("--output-dir", default="runs/eval", help="where results.jsonl and summary.json go")
    parser.add_argument("--reward", default="math", help="reward name or module:function (default math)")
    parser.add_argument("--reward-timeout", type=float, default=10.0, help="seconds per response")
    parser.add_argument("--template", default="dapo_math", help="dapo_math, none, or a string with {problem}")
    parser.add_argument(
        "--chat-template",
        choices=["auto", "yes", "no"],
        default="auto",
        help="use the tokenizer's chat template",
    )
    parser.add_argument("--max-prompt-length", type=int, default=4096)
    parser.add_argument("--prompts-per-batch", type=int, default=8, help="problems per engine call")
    parser.add_argument("--engine", default="hf")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--seed", type=int, default=0)


FLAG_KEYS = {
    "model.policy_path": "--model",
    "model.device": "--device",
    "model.dtype": "--dtype",
    "data.eval_file": "--data",
    "data.max_prompt_length": "--max-prompt-length",
    "data.prompt_template": "--template",
    "rollout.engine": "--engine",
    "rollout.max_response_length": "--max-tokens",
    "rollout.window_length": "--max-tokens",
    "eval.temperature": "--temperature",
    "eval.top_p": "--top-p",
    "eval.samples_per_prompt": "--samples",
    "reward.name": "--reward",
    "trainer.seed": "--seed",
    "trainer.reward_timeout_s": "--reward-timeout",
}
"""The config key each flag of ``tppo eval`` sets (so a bad flag is refused by the training checks)."""


def eval_config(args: argparse.Namespace) -> TPPOConfig:
    """The flags as a checked :class:`~tppo.config.TPPOConfig` (what the engine reads of one); a bad
    flag or a missing model or data file is a ConfigError / DataError naming the flag."""
    from tppo.config import ConfigError, RolloutConfig, TPPOConfig
    from tppo.config_checks import check_inputs, check_names
    from tppo.config_loader import load_structured, require
    from tppo.sources import DataError

    require(args.limit is None or args.limit > 0, "--limit", f"must be > 0, got {args.limit}")
    require(args.prompts_per_batch > 0, "--prompts-per-batch", f"must be > 0, got {args.prompts_per_batch}")
    values = {key: getattr(args, flag[2:].replace("-", "_")) for key, flag in FLAG_KEYS.items()}
    values["rollout.window_length"] = min(args.max_tokens, RolloutConfig.window_length)
    nested: dict[str, Any] = {}
    for key, value in values.items():
        section, name = key.split(".")
        nested.setdefault(section, {})[name] = value
    nested["data"]["eval_file"] = args.data
    try:
        config = load_structured(TPPOConfig, None, nested)
        check_names(config)
        config.validate()
        check_inputs(config)
    except (ConfigError, DataError) as error:
        key, _, rest = str(error).partition(": ")
        if key not in FLAG_KEYS:
            raise
        raise type(error)(f"{FLAG_KEYS[key]} ({key}): {rest}") from None
    return config


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate and write the outputs; returns the summary. Flags, model and data are checked,
    and the data read, before the policy loads."""
    from tqdm import tqdm

    from tppo.engines import SamplingParams
    from tppo.evaluation import evaluate
    from tppo.models import load_policy, load_vocabulary
    from tppo.rewards import build_scorer
    from tppo.roles import build_engine
    from tppo.sources import load_problems, problem_rows

    config = eval_config(args)
    vocabulary = load_vocabulary(config.model)
    problems = load_problems(args.data, limit=args.limit)
    chat = {"auto": None, "yes": True, "no": False}[args.chat_template]
    rows = problem_rows(
        problems,
        vocabulary.tokenizer,
        template=args.template,
        chat=chat,
        max_prompt_length=args.max_prompt_length,
    )
    policy = load_policy(config.model)
    engine = build_engine(config, policy, vocabulary, seed=args.seed)
    scorer = build_scorer(args.reward, num_workers=2, timeout_s=args.reward_timeout)
    sampling = SamplingParams(temperature=args.temperature, top_p=args.top_p)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        with (
            tqdm(total=len(rows), desc="tppo eval", unit="problem", dynamic_ncols=True) as bar,
            (out / "results.jsonl").open("w") as handle,
        ):

            def on_batch(so_far: EvalResult, n: int) -> None:  # each batch's problems, as they finish
                first = len(so_far.scores) - n
                for i in range(first, len(so_far.scores)):
                    handle.write(json.dumps(result_record(i, problems[i], rows[i], so_far)) + "\n")
                handle.flush()
                bar.update(n)

            result = evaluate(
                engine,
                vocabulary.tokenizer,
                scorer,
                rows,
                sampling=sampling,
                max_response_length=args.max_tokens,
                samples_per_prompt=args.samples,
                prompts_per_batch=args.prompts_per_batch,
                on_batch=on_batch,
            )
    finally:
        scorer.close()
        engine.close()
    seconds = time.perf_counter() - start
    summary = summarise(args, result, seconds)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def result_record(i: int, problem: Any, row: Any, result: EvalResult) -> dict[str, Any]:
    """One line of ``results.jsonl``: problem ``i``, its k responses and their scores."""
    return {
        "index": i,
        "source": problem.source,
        "prompt": row.text,
        "ground_truth": row.ground_truth,
        "avg": result.per_prompt[i],
        "pass": any(s >= 1.0 for s in result.scores[i]),
        "scores": result.scores[i],
        "lengths": result.lengths[i],
        "truncated": result.truncated[i],
        "responses": result.responses[i],
    }


def summarise(args: argparse.Namespace, result: EvalResult, seconds: float) -> dict[str, Any]:
    samples = len(result.scores) * result.k
    return {
        "model": args.model,
        "data": args.data,
        "problems": len(result.scores),
        "k": result.k,
        "avg_at_k": result.avg_at_k,
        "pass_at_k": result.pass_at_k,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "max_tokens": args.max_tokens,
        "mean_response_length": result.response_length,
        "truncated": result.truncated_share,
        "reward_timeouts": result.reward_timeouts,
        "reward_errors": result.reward_errors,
        "seconds": seconds,
        "samples_per_s": samples / seconds,
    }
