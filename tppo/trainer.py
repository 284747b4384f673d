"""The T-PPO trainer: one step = the named phases of DESIGN.md section 1.

    fill -> sync -> generate -> reward -> score -> estimate -> actor -> critic -> retire -> log

Plain PPO is this same trainer with ``rollout.window_length == rollout.max_response_length``:
every response then finishes within its step and nothing carries over.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from tppo.algorithms import (
    explained_variance,
    get_advantage_estimator,
    masked_mean,
    masked_whiten,
    monte_carlo_returns,
    outcome_rewards,
    select_tokens,
)
from tppo.config import TPPOConfig, save_config
from tppo.data import build_data
from tppo.diagnostics import (
    bootstrap_errors,
    policy_versions,
    stale_token_fraction,
    summarize_errors,
    tail_advantage_stats,
)
from tppo.engines import SamplingParams
from tppo.evaluation import EvalResult, evaluate
from tppo.learner import Learner
from tppo.metrics import MetricsLogger, PhaseTimer
from tppo.models import Models, load_vocabulary
from tppo.rewards import RewardScorer, ScoredBatch
from tppo.roles import build_learner, build_rollout
from tppo.rollout.batch import RolloutBatch, collate
from tppo.rollout.prompts import PromptStream
from tppo.rollout.slot_pool import Slot, SlotPool
from tppo.schedules import expected_total_steps, lr_multiplier, run_progress

log = logging.getLogger(__name__)

DIAGNOSTIC_TAIL = 8
"""Tokens at each window edge whose advantages ``diagnostics/tail_adv_*`` report when
``algorithm.policy_skip_tail`` is 0 (with it set, the tail is what it skips)."""


class Trainer:
    """The controller: owns the slot pool and drives the two roles, the rollout engine (sync,
    generate) and the learner (score, actor, critic), in process or remote (``distributed.*``,
    see :mod:`tppo.roles`); ``train()`` runs the loop."""

    def __init__(self, config: TPPOConfig, output_dir: Path, *, models: Models | None = None) -> None:
        self.config, self.output_dir = config, Path(output_dir)
        if config.trainer.num_threads:
            torch.set_num_threads(config.trainer.num_threads)
        torch.manual_seed(config.trainer.seed)
        self.vocabulary = models.vocabulary if models is not None else load_vocabulary(config.model)
        self.learner = build_learner(config, models)
        self.device = self.learner.device
        data = build_data(config.data, self.vocabulary.tokenizer, seed=config.trainer.seed)
        self.eval_rows = data.held_out
        w = config.reward
        self.scorer = RewardScorer(
            w.name or data.default_reward, num_workers=w.num_workers, timeout_s=w.timeout_s
        )
        stream = PromptStream(
            data.train,
            samples_per_prompt=config.rollout.samples_per_prompt,
            seed=config.trainer.seed,
            shuffle=config.data.shuffle,
        )
        r = config.rollout
        self.pool = SlotPool(
            stream,
            num_slots=r.num_slots,
            window_length=r.window_length,
            max_response_length=r.max_response_length,
        )
        self.sampling = SamplingParams(temperature=r.temperature, top_p=r.top_p, top_k=r.top_k)
        self.engine = build_rollout(config, self.learner, self.vocabulary)
        self.step = 0
        self.train_seconds = 0.0

    @property
    def models(self) -> Models:
        """The in-process models (single-process training only)."""
        if not isinstance(self.learner, Learner):
            raise AttributeError("the models live in the training workers (distributed.train_workers > 0)")
        return self.learner.models

    # ------------------------------------------------------------------ the step
    def train_step(self) -> dict[str, Any]:
        """One T-PPO step (Algorithm 1, lines 2-10); returns its metrics."""
        timer, step = PhaseTimer(), self.step
        with timer("fill"):
            new_prompts = self.pool.fill(step)
        active = self.pool.active()
        with timer("sync"):
            self.engine.update_weights(self.learner.policy_weights())
        with timer("generate"):
            self._generate(step, active)
        with timer("reward"):
            scores, scored = self._reward(active)
        batch = collate(active, pad_token_id=self.vocabulary.pad_token_id).to(self.device)
        with timer("score"):
            batch.per_token.update(self.learner.score(batch))
        with timer("estimate"):
            self._estimate(batch, scores, step)
            _record_bootstraps(active, batch)
        lr_factor = self._set_learning_rates()
        with timer("actor"):
            actor = self._update_actor(batch)
        with timer("critic"):
            critic = self._update_critic(batch)
        retired = self.pool.retire()
        self.step += 1
        metrics = self._step_metrics(batch, retired, scores, new_prompts, actor, critic)
        metrics.update(timer.as_metrics())
        metrics.update(self._worker_metrics(active, step))
        metrics["time/step_s"] = sum(timer.seconds.values())
        metrics["reward/errors"] = scored.errors
        metrics["reward/timeouts"] = scored.timeouts
        metrics["optim/lr_factor"] = lr_factor
        return metrics

    def _generate(self, step: int, active: list[Slot]) -> None:
        prefixes, budgets = self.pool.requests()
        completions = self.engine.generate(prefixes, budgets, self.sampling)
        self.pool.record(step, completions, self.vocabulary.eos_token_ids)

    def _worker_metrics(self, active: list[Slot], step: int) -> dict[str, int]:
        """With several rollout workers: how many carried-over responses each one continued."""
        owners = self.engine.workers_of(len(active))
        if max(owners, default=0) == 0:
            return {}
        carried = [0] * (max(owners) + 1)
        for owner, slot in zip(owners, active, strict=True):
            carried[owner] += slot.start_step < step
        return {f"rollout/carried_worker{i}": n for i, n in enumerate(carried)}

    def _reward(self, active: list[Slot]) -> tuple[torch.Tensor, ScoredBatch]:
        """Scores ``Tensor[B]``: the outcome reward of finished slots, 0 for unfinished ones."""
        finished = [i for i, slot in enumerate(active) if slot.finished]
        decode = self.vocabulary.tokenizer.decode
        texts = [str(decode(active[i].response_ids, skip_special_tokens=True)) for i in finished]
        result = self.scorer.score(texts, [active[i].prompt.ground_truth for i in finished])
        scores = torch.zeros(len(active), dtype=torch.float32)
        truncated_reward = self.config.algorithm.truncated_reward
        for i, score in zip(finished, result.scores, strict=True):
            if truncated_reward is not None and active[i].finish == "max_length":
                score = truncated_reward
            scores[i] = score
        return scores.to(self.device), result

    def _estimate(self, batch: RolloutBatch, scores: torch.Tensor, step: int) -> None:
        """EGAE advantages (over each response's history; only this window's are trained),
        Monte-Carlo returns, and the policy/value token masks."""
        a, per_token = self.config.algorithm, batch.per_token
        rewards = outcome_rewards(scores, batch.response_mask)
        estimator = get_advantage_estimator(a.advantage_estimator)
        advantages = estimator(
            rewards,
            per_token["old_values"],
            batch.response_mask,
            batch.is_finished,
            gamma=a.gamma,
            gae_lambda=a.gae_lambda,
        )
        masks = select_tokens(
            batch.token_steps,
            batch.response_mask,
            batch.is_finished,
            step=step,
            policy_skip_tail=a.policy_skip_tail,
        )
        per_token["raw_advantages"] = advantages
        if a.whiten_advantages and masks.policy_mask.sum() > 1:
            advantages = masked_whiten(advantages, masks.policy_mask, shift_mean=a.whiten_shift_mean)
        if a.advantage_clip is not None:
            advantages = advantages.clamp(-a.advantage_clip, a.advantage_clip)
        per_token["advantages"] = advantages
        per_token["returns"] = monte_carlo_returns(rewards, batch.response_mask, gamma=a.gamma)
        per_token["policy_mask"], per_token["value_mask"] = masks.policy_mask, masks.value_mask

    def _set_learning_rates(self) -> float:
        """Both optimizers' rates for this step, from the schedule; returns the factor used."""
        o, t = self.config.optim, self.config.trainer
        progress = run_progress(
            self.step,
            warmup_steps=o.warmup_steps,
            total_steps=t.total_steps,
            elapsed_s=self.train_seconds,
            max_seconds=t.max_wall_seconds,
        )
        factor = lr_multiplier(
            self.step,
            warmup_steps=o.warmup_steps,
            progress=progress,
            schedule=o.lr_schedule,
            min_ratio=o.min_lr_ratio,
        )
        self.learner.set_learning_rates(o.actor_lr * factor, o.critic_lr * factor)
        return factor

    def _update_actor(self, batch: RolloutBatch) -> dict[str, float]:
        """The clipped policy update on this window's tokens (none during critic warm-up)."""
        if self.step < self.config.trainer.critic_warmup_steps:
            return {"updates": 0.0}
        return self.learner.update_actor(batch)

    def _update_critic(self, batch: RolloutBatch) -> dict[str, float]:
        """Monte-Carlo value regression on finished responses; no finished response, no update."""
        return self.learner.update_critic(batch)

    # ------------------------------------------------------------------ metrics
    def _step_metrics(
        self,
        batch: RolloutBatch,
        retired: list[Slot],
        scores: torch.Tensor,
        new_prompts: int,
        actor: dict[str, float],
        critic: dict[str, float],
    ) -> dict[str, Any]:
        per_token, finished = batch.per_token, batch.is_finished
        engine = self.engine.pop_stats()
        lengths = [len(s.response_ids) for s in retired]
        k = self.pool.num_slots
        metrics: dict[str, Any] = {
            "step": self.step - 1,
            "rollout/new_prompts": new_prompts,
            "rollout/carried": len(finished) - new_prompts,
            "rollout/finished": int(finished.sum()),
            "rollout/truncated": sum(s.finish == "max_length" for s in retired),
            "rollout/generated_tokens": engine.generated_tokens,
            "rollout/decode_steps": engine.decode_steps,
            "rollout/slot_utilization": engine.generated_tokens / max(k * engine.decode_steps, 1),
            "rollout/prompts_consumed": self.pool.stream.position,
            "tokens/policy": int(per_token["policy_mask"].sum()),
            "tokens/value": int(per_token["value_mask"].sum()),
            "reward/mean": float(scores[finished].mean()) if finished.any() else math.nan,
            "response_length/mean": sum(lengths) / len(lengths) if lengths else math.nan,
            "response_length/max": max(lengths) if lengths else math.nan,
            "response_length/values": lengths,
            "advantages/raw_mean": float(masked_mean(per_token["raw_advantages"], per_token["policy_mask"])),
            "critic/explained_variance": float(
                explained_variance(per_token["old_values"], per_token["returns"], per_token["value_mask"])
            )
            if finished.any()
            else math.nan,
        }
        metrics.update({f"actor/{k}": v for k, v in actor.items()})
        metrics.update({f"critic/{k}": v for k, v in critic.items()})
        metrics.update(self._diagnostics(batch, retired, scores))
        return metrics

    def _diagnostics(
        self, batch: RolloutBatch, retired: list[Slot], scores: torch.Tensor
    ) -> dict[str, float]:
        """Truncation-bias diagnostics of this step (see :mod:`tppo.diagnostics`)."""
        per_token, step = batch.per_token, self.step - 1
        finished_scores = scores[batch.is_finished].tolist()
        errors: list[float] = []
        for slot, reward in zip(retired, finished_scores, strict=True):
            errors += bootstrap_errors(
                list(zip(slot.bootstrap_positions, slot.bootstrap_values, strict=True)),
                response_length=len(slot.response_ids),
                reward=reward,
                gamma=self.config.algorithm.gamma,
            )
        summary = summarize_errors(errors)
        versions = [policy_versions(s.token_steps) for s in retired]
        out = {
            "diagnostics/bootstrap_error_abs": summary["abs"],
            "diagnostics/bootstrap_error_signed": summary["signed"],
            "diagnostics/bootstrap_edges": float(len(errors)),
            "diagnostics/policy_versions_mean": sum(versions) / len(versions) if versions else math.nan,
            "diagnostics/stale_value_token_frac": stale_token_fraction(
                batch.token_steps, per_token["value_mask"], step=step
            ),
        }
        # the tail: the tokens policy_skip_tail leaves out (the last DIAGNOSTIC_TAIL when it is 0)
        skip = self.config.algorithm.policy_skip_tail or DIAGNOSTIC_TAIL
        tail = ~select_tokens(
            batch.token_steps, batch.response_mask, batch.is_finished, step=step, policy_skip_tail=skip
        ).policy_mask
        tails = tail_advantage_stats(
            per_token["raw_advantages"], batch.response_mask, batch.token_steps, tail, step=step
        )
        out.update({f"diagnostics/{k}": v for k, v in tails.items()})
        return out

    # ------------------------------------------------------------------ the loop
    def evaluate(self) -> EvalResult:
        """Held-out accuracy with a fixed sampling seed (the same random stream every time)."""
        e, r = self.config.eval, self.config.rollout
        sampling = SamplingParams(
            temperature=e.temperature if e.temperature is not None else r.temperature,
            top_p=e.top_p if e.top_p is not None else r.top_p,
            top_k=r.top_k,
        )
        state = self.engine.get_rng_state()
        self.engine.reseed(self.config.trainer.seed + 1)
        try:
            return evaluate(
                self.engine,
                self.vocabulary.tokenizer,
                self.scorer.score,
                self.eval_rows,
                sampling=sampling,
                max_response_length=e.max_response_length or r.max_response_length,
                samples_per_prompt=e.samples_per_prompt,
            )
        finally:
            self.engine.pop_stats()
            self.engine.set_rng_state(state)

    def train(self) -> list[dict[str, Any]]:
        """Run to ``trainer.total_steps`` (or the wall-clock budget); log, evaluate, save."""
        t = self.config.trainer
        self.output_dir.mkdir(parents=True, exist_ok=True)
        save_config(self.config, self.output_dir / "config.yaml")
        logger = MetricsLogger(self.output_dir, tensorboard=t.tensorboard)
        history: list[dict[str, Any]] = []
        bar = tqdm(total=t.total_steps, disable=not t.progress, desc="tppo", dynamic_ncols=True)
        last_eval: float | None = None
        try:
            if self._eval_due(final=False):
                last_eval = self._log_eval(logger, history)
            while self.step < t.total_steps and not self._out_of_time():
                start = time.perf_counter()
                metrics = self.train_step()
                self.train_seconds += time.perf_counter() - start
                metrics["time/train_elapsed_s"] = self.train_seconds
                done = self.step >= t.total_steps or self._out_of_time()
                if self._eval_due(final=done):
                    last_eval = self._log_eval(logger, history, into=metrics)
                logger.log(metrics)
                history.append(metrics)
                if t.checkpoint_every and self.step % t.checkpoint_every == 0:
                    self.save(self.output_dir / "checkpoints" / f"step_{self.step}")
                bar.total = expected_total_steps(
                    self.step,
                    total_steps=t.total_steps,
                    elapsed_s=self.train_seconds,
                    max_seconds=t.max_wall_seconds,
                )
                bar.update(1)
                bar.set_postfix(_headline(metrics, last_eval))
        finally:
            bar.close()
            logger.close()
            self.scorer.close()
        self.save(self.output_dir / "final")
        return history

    def _eval_due(self, *, final: bool) -> bool:
        every = self.config.trainer.eval_every
        if not every or not self.eval_rows:
            return False
        return final or self.step % every == 0

    def _log_eval(
        self, logger: MetricsLogger, history: list[dict[str, Any]], into: dict[str, Any] | None = None
    ) -> float:
        start = time.perf_counter()
        result = self.evaluate()
        eval_metrics = result.as_metrics()
        eval_metrics["time/eval_s"] = time.perf_counter() - start
        if into is None:  # the evaluation before the first step gets a row of its own
            row = {"step": -1, "time/train_elapsed_s": 0.0, **eval_metrics}
            logger.log(row)
            history.append(row)
        else:
            into.update(eval_metrics)
        return result.accuracy

    def _out_of_time(self) -> bool:
        limit = self.config.trainer.max_wall_seconds
        return limit is not None and self.train_seconds >= limit

    def save(self, directory: Path) -> None:
        """Policy (with tokenizer) and value model in Hugging Face format (safetensors)."""
        self.learner.save(directory)

    def close(self) -> None:
        """Release the roles (remote workers, engine processes)."""
        self.engine.close()
        self.learner.close()


def _record_bootstraps(active: list[Slot], batch: RolloutBatch) -> None:
    """Remember, on each unfinished slot, the value EGAE bootstrapped with at this window edge."""
    lengths = batch.response_mask.sum(dim=1).tolist()
    values = batch.per_token["old_values"]
    for row, slot in enumerate(active):
        if not slot.finished and lengths[row] > 0:
            position = int(lengths[row]) - 1
            slot.bootstrap_positions.append(position)
            slot.bootstrap_values.append(float(values[row, position]))


def _headline(metrics: dict[str, Any], last_eval: float | None) -> dict[str, str]:
    out = {
        "reward": f"{metrics['reward/mean']:.3f}",
        "carried": str(metrics["rollout/carried"]),
        "step_s": f"{metrics['time/step_s']:.1f}",
    }
    if last_eval is not None:
        out["eval_acc"] = f"{last_eval:.3f}"
    return out
