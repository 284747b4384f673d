"""Evaluation, the paper's protocol: k samples per problem, avg@k and pass@k.

avg@k is the mean score over all k samples of all problems (the mean pass@1, the paper's metric:
AIME24 avg@32 at temperature 1.0, top-p 0.7); pass@k is the share of problems with at least one
correct sample. The trainer evaluates its held-out rows with :func:`evaluate`; ``tppo eval`` runs
the same function on a model and a data file and writes per-problem results and a summary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from tppo.engines.base import Engine, SamplingParams
from tppo.engines.types import LENGTH
from tppo.rewards import ScoredBatch
from tppo.rollout.prompts import PromptRow

ScoreFn = Callable[[Sequence[str], Sequence[str]], ScoredBatch]
"""``(responses, ground truths) -> ScoredBatch``: e.g. a :class:`tppo.rewards.RewardPool`."""


def avg_at_k(scores: Sequence[Sequence[float]]) -> float:
    """Mean over problems of the mean score of each problem's samples (= the mean pass@1)."""
    return sum(sum(s) / len(s) for s in scores) / len(scores)


def pass_at_k(scores: Sequence[Sequence[float]], threshold: float = 1.0) -> float:
    """Share of problems with at least one sample scoring ``>= threshold``."""
    return sum(any(x >= threshold for x in s) for s in scores) / len(scores)


@dataclass
class EvalResult:
    """Scores of ``k`` samples for each of the evaluated rows.

    Attributes:
        scores: ``scores[i][j]``: sample ``j`` of row ``i``.
        responses: the decoded responses, shaped like ``scores``.
        lengths: response lengths in tokens, shaped like ``scores``.
        truncated: responses that reached the maximum length without EOS, shaped like ``scores``.
        reward_timeouts: responses whose verification ran past the reward's time limit (scored 0).
        reward_errors: responses whose verification raised (scored 0).
    """

    scores: list[list[float]]
    responses: list[list[str]]
    lengths: list[list[int]]
    truncated: list[list[bool]]
    reward_timeouts: int = 0
    reward_errors: int = 0

    @property
    def k(self) -> int:
        return len(self.scores[0])

    @property
    def avg_at_k(self) -> float:
        return avg_at_k(self.scores)

    @property
    def pass_at_k(self) -> float:
        return pass_at_k(self.scores)

    @property
    def accuracy(self) -> float:
        """The mean score over every (prompt, sample): avg@k."""
        return self.avg_at_k

    @property
    def per_prompt(self) -> list[float]:
        """Mean score of each prompt's samples."""
        return [sum(s) / len(s) for s in self.scores]

    @property
    def response_length(self) -> float:
        flat = [n for row in self.lengths for n in row]
        return sum(flat) / len(flat)

    @property
    def truncated_share(self) -> float:
        flat = [t for row in self.truncated for t in row]
        return sum(flat) / len(flat)

    def as_metrics(self, prefix: str = "eval") -> dict[str, float]:
        return {
            f"{prefix}/accuracy": self.accuracy,
            f"{prefix}/avg_at_k": self.avg_at_k,
            f"{prefix}/pass_at_k": self.pass_at_k,
            f"{prefix}/response_length": self.response_length,
            f"{prefix}/truncated": self.truncated_share,
            f"{prefix}/reward_timeouts": float(self.reward_timeouts),
        }


def evaluate(
    engine: Engine,
    tokenizer: PreTrainedTokenizerBase,
    score_fn: ScoreFn,
    rows: Sequence[PromptRow],
    *,
    sampling: SamplingParams,
    max_response_length: int,
    samples_per_prompt: int = 1,
    prompts_per_batch: int | None = None,
    on_batch: Callable[[EvalResult, int], object] | None = None,
) -> EvalResult:
    """Generate ``samples_per_prompt`` responses per row and score them.

    Rows go to the engine ``prompts_per_batch`` at a time (``None``: all in one call), each with
    its k samples; ``on_batch(result_so_far, n)`` is called after each batch of ``n`` rows (progress,
    results written as they come).
    """
    if not rows:
        raise ValueError("evaluation needs at least one prompt")
    if samples_per_prompt < 1:
        raise ValueError(f"samples_per_prompt must be >= 1, got {samples_per_prompt}")
    k, step = samples_per_prompt, prompts_per_batch or len(rows)
    result = EvalResult([], [], [], [])
    for start in range(0, len(rows), step):
        chunk = rows[start : start + step]
        prefixes = [list(row.token_ids) for row in chunk for _ in range(k)]
        completions = engine.generate(prefixes, [max_response_length] * len(prefixes), sampling)
        texts = [
            str(t)
            for t in tokenizer.batch_decode([c.token_ids for c in completions], skip_special_tokens=True)
        ]
        scored = score_fn(texts, [row.ground_truth for row in chunk for _ in range(k)])
        result.reward_timeouts += scored.timeouts
        result.reward_errors += scored.errors
        for i in range(len(chunk)):
            part = slice(i * k, (i + 1) * k)
            result.scores.append(scored.scores[part])
            result.responses.append(texts[part])
            result.lengths.append([len(c.token_ids) for c in completions[part]])
            result.truncated.append([c.finish_reason == LENGTH for c in completions[part]])
        if on_batch is not None:
            on_batch(result, len(chunk))
    return result
