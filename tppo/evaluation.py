"""Held-out evaluation: sample full responses (up to L) for held-out prompts and score them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from tppo.engines.base import Engine, SamplingParams
from tppo.rewards import RewardFn, score_responses
from tppo.rollout.prompts import PromptRow


@dataclass
class EvalResult:
    accuracy: float
    """mean score over every (prompt, sample)."""
    response_length: float
    """mean response length in tokens."""
    truncated: float
    """fraction of responses that reached the maximum length without EOS."""
    per_prompt: list[float]
    """mean score of each prompt's samples."""

    def as_metrics(self, prefix: str = "eval") -> dict[str, float]:
        return {
            f"{prefix}/accuracy": self.accuracy,
            f"{prefix}/response_length": self.response_length,
            f"{prefix}/truncated": self.truncated,
        }


def evaluate(
    engine: Engine,
    tokenizer: PreTrainedTokenizerBase,
    reward_fn: RewardFn,
    rows: Sequence[PromptRow],
    *,
    sampling: SamplingParams,
    max_response_length: int,
    samples_per_prompt: int = 1,
) -> EvalResult:
    """Generate ``samples_per_prompt`` responses per row in one batch and score them."""
    if not rows:
        raise ValueError("evaluation needs at least one held-out prompt")
    prefixes = [list(row.token_ids) for row in rows for _ in range(samples_per_prompt)]
    completions = engine.generate(prefixes, [max_response_length] * len(prefixes), sampling)
    texts = tokenizer.batch_decode([c.token_ids for c in completions], skip_special_tokens=True)
    truths = [row.ground_truth for row in rows for _ in range(samples_per_prompt)]
    scores = score_responses(reward_fn, texts, truths).scores
    per_prompt = [
        sum(scores[i * samples_per_prompt : (i + 1) * samples_per_prompt]) / samples_per_prompt
        for i in range(len(rows))
    ]
    return EvalResult(
        accuracy=sum(scores) / len(scores),
        response_length=sum(len(c.token_ids) for c in completions) / len(completions),
        truncated=sum(c.finish_reason == "length" for c in completions) / len(completions),
        per_prompt=per_prompt,
    )
