"""The T-PPO trainer: one step = the named phases of DESIGN.md section 1.

    fill -> sync -> generate -> reward -> retire + select -> old_forward [-> proximal] [-> reference]
         -> estimate -> actor [-> critic] -> log

With ``rollout.overlap_generation`` the first three phases of step ``j + 1`` run inside step ``j``,
after its select and before its old_forward, the generation itself on a background thread beside
the update (:mod:`tppo.rollout.runner`); step ``j + 1`` then starts by waiting for that window.

The method (``algorithm.name``, :mod:`tppo.methods`) decides which responses the step trains on
(``select``), their advantages (``estimate``) and the policy objective; the bracketed phases run
when it needs them (an EWMA policy, a KL reference, a value model).

Plain PPO is this same trainer with ``rollout.window_length == rollout.max_response_length``:
every response then finishes within its step and nothing carries over.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from tppo.checkpoint import latest_checkpoint, truncate_lines
from tppo.config import TPPOConfig, save_config, to_dict
from tppo.config_checks import check_config
from tppo.data import build_data
from tppo.engines.types import LENGTH, SamplingParams
from tppo.evaluation import EvalResult, evaluate
from tppo.faults import crash_point
from tppo.learner import Learner
from tppo.methods import get_method
from tppo.metrics import MetricsLogger, PhaseTimer, read_metrics
from tppo.models import Models, load_vocabulary
from tppo.recovery import restartable, train_with_restarts
from tppo.resume import ENGINE_RNG, load_checkpoint, save_checkpoint
from tppo.rewards import build_scorer
from tppo.roles import build_learner, build_rollout, decode_shape
from tppo.rollout.batch import RolloutBatch, collate
from tppo.rollout.prompts import PromptStream
from tppo.rollout.runner import WindowRunner
from tppo.rollout.slot_pool import Slot, SlotPool
from tppo.schedules import eval_due, expected_total_steps, lr_multiplier, run_progress
from tppo.step_metrics import headline, step_metrics, worker_metrics

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. non-finite updates in a row); the message says why and where
    the last good checkpoint is."""


class Trainer:
    """The controller: owns the slot pool and drives the two roles, the rollout engine (sync,
    generate) and the learner (old_forward, actor, critic), in process or remote (``distributed.*``,
    see :mod:`tppo.roles`); ``train()`` runs the loop."""

    def __init__(self, config: TPPOConfig, output_dir: Path, *, models: Models | None = None) -> None:
        self.config, self.output_dir = config, Path(output_dir)
        if config.trainer.num_threads:
            torch.set_num_threads(config.trainer.num_threads)
        random.seed(config.trainer.seed)  # every global generator, so a checkpoint's RNG states
        np.random.seed(config.trainer.seed)  # are the same in a resumed and an uninterrupted run
        torch.manual_seed(config.trainer.seed)
        check_config(config)  # the names (reward included) and the inputs, before anything loads
        self.vocabulary = models.vocabulary if models is not None else load_vocabulary(config.model)
        data = build_data(config.data, self.vocabulary.tokenizer, seed=config.trainer.seed)
        self.eval_rows = data.held_out  # every row is read and checked before the models load
        self.learner = build_learner(config, models)
        self.device = self.learner.device
        self.scorer = build_scorer(
            config.reward.name or data.default_reward,
            num_workers=config.reward.num_workers,
            timeout_s=config.trainer.reward_timeout_s,
        )
        self.skipped_prompts = (  # data.overlong_prompts=skip (built-in tasks)
            0 if config.data.train_files else config.data.train_size - len(data.train)
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
        self.method = get_method(config.algorithm.name)
        self.selector = self.method.selector(config)
        """Which responses train in each step (groups waiting for their last member, ...)."""
        self.sampling = SamplingParams(temperature=r.temperature, top_p=r.top_p, top_k=r.top_k)
        self.decode_shape = decode_shape(config)  # the rollout's roofline figures
        self.engine = build_rollout(config, self.learner, self.vocabulary)
        self.rollout = WindowRunner(
            self.pool,
            self.engine,
            self.sampling,
            self.vocabulary.eos_token_ids,
            lambda: self.learner.sync_weights(
                self.engine
            ),  # the learner of the moment (a rebuild replaces it)
            refill=r.refill_within_step,
            overlap=r.overlap_generation,
            max_staleness=r.max_staleness,
        )
        """Each step's window: generated in the step, or ahead while the previous one trains."""
        self.step = 0
        self.train_seconds = 0.0
        self.last_eval_s: float | None = None  # training seconds at the last evaluation
        self.bad_steps = {"actor": 0, "critic": 0}
        """Consecutive steps in which all of a model's updates were skipped (non-finite)."""
        self.stop_signal: int | None = None
        """SIGTERM/SIGINT received: finish the step, write a checkpoint, stop."""
        self.resumed_from: Path | None = None
        self.metrics_rows = 0
        """Rows in ``metrics.jsonl`` when the last checkpoint was written (its metrics position)."""
        self.checkpointed_step: int | None = None

    @property
    def checkpoint_dir(self) -> Path:
        return self.output_dir / "checkpoints"

    @property
    def models(self) -> Models:
        """The in-process models (single-process training only)."""
        if not isinstance(self.learner, Learner):
            raise AttributeError("the models live in the training workers (distributed.train_workers > 0)")
        return self.learner.models

    # ------------------------------------------------------------------ the step
    def train_step(self) -> dict[str, Any]:
        """One step (Algorithm 1, lines 2-10, with the method's choices); returns its metrics."""
        timer, step = PhaseTimer(), self.step

        def phase(name: str) -> AbstractContextManager[None]:
            return self._phase(timer, name)

        window = self.rollout.window(step, phase)  # fill -> sync -> generate (or the one made ahead)
        active = window.slots
        with phase("reward"):
            scores, reward_problems = self._reward(active)
        finished = torch.tensor([slot.finished for slot in active], dtype=torch.bool)
        retired = self.pool.retire()
        train = self.selector.select(active, scores, retired, step)
        batch = (
            collate(train.slots, pad_token_id=self.vocabulary.pad_token_id).to(self.device)
            if train.slots
            else None
        )
        if step + 1 < self.config.trainer.total_steps:
            self.rollout.launch(step + 1, phase)  # overlap: the next window generates meanwhile
        actor: dict[str, float] = {"updates": 0.0}
        critic: dict[str, float] = {"updates": 0.0} if self.method.needs_critic else {}
        lr_factor = self._set_learning_rates()
        if batch is not None:
            with self._phase(timer, "old_forward"):
                batch.per_token.update(self.learner.old_forward(batch))
            if self.method.needs_proximal:
                with self._phase(timer, "proximal"):
                    batch.per_token.update(self.learner.proximal_forward(batch))  # type: ignore[attr-defined]
            if self.config.algorithm.kl_coef > 0:
                with self._phase(timer, "reference"):
                    batch.per_token.update(self.learner.reference_forward(batch))  # type: ignore[attr-defined]
            with self._phase(timer, "estimate"):
                self.method.estimate(batch, train, step=step, config=self.config)
            with self._phase(timer, "actor"):
                actor = self._update_actor(batch)
            if self.method.needs_critic:
                with self._phase(timer, "critic"):
                    critic = self._update_critic(batch)
        self.step += 1
        a = self.config.algorithm
        metrics = step_metrics(
            batch,
            retired,
            finished=finished,
            active_scores=scores,
            step=step,
            new_prompts=window.new_prompts,
            prompts_consumed=window.prompts_consumed,
            num_slots=self.pool.num_slots,
            engine=window.stats,
            actor=actor,
            critic=critic,
            gamma=a.gamma,
            policy_skip_tail=a.policy_skip_tail,
            recomputed_old_log_probs=a.recompute_old_log_probs,
            refilled=window.refilled,
            ahead=self.config.rollout.overlap_generation,
            decode_shape=self.decode_shape,
        )
        metrics.update(train.metrics)
        metrics.update(timer.as_metrics())
        metrics.update(worker_metrics(self.engine.workers_of(len(active)), active, step))
        metrics["time/step_s"] = sum(timer.seconds.values())
        metrics["reward/errors"], metrics["reward/timeouts"] = reward_problems
        metrics["optim/lr_factor"] = lr_factor
        metrics["data/skipped_prompts"] = self.skipped_prompts
        return metrics

    @contextmanager
    def _phase(self, timer: PhaseTimer, name: str) -> Iterator[None]:
        crash_point(name, self.step)
        with timer(name):
            yield

    def _reward(self, active: list[Slot]) -> tuple[torch.Tensor, tuple[int, int]]:
        """Scores ``Tensor[B]``: the outcome reward of finished slots (also kept as ``slot.score``),
        0 for unfinished ones; and how many rewards raised and timed out (both scored 0)."""
        finished = [i for i, slot in enumerate(active) if slot.finished]
        decode = self.vocabulary.tokenizer.decode
        texts = [str(decode(active[i].response_ids, skip_special_tokens=True)) for i in finished]
        result = self.scorer(texts, [active[i].prompt.ground_truth for i in finished])
        scores = torch.zeros(len(active), dtype=torch.float32)
        truncated_reward = self.config.algorithm.truncated_reward
        for i, score in zip(finished, result.scores, strict=True):
            if truncated_reward is not None and active[i].finish == LENGTH:
                score = truncated_reward
            scores[i] = score
            active[i].score = float(scores[i])
        return scores.to(self.device), (result.errors, result.timeouts)

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
        """The method's policy update on the batch's policy tokens (none during critic warm-up)."""
        t = self.config.trainer
        if self.step < max(t.critic_warmup_steps, t.value_warmup_steps):
            return {"updates": 0.0}
        return self.learner.update_actor(batch)

    def _update_critic(self, batch: RolloutBatch) -> dict[str, float]:
        """Monte-Carlo value regression on finished responses; no finished response, no update."""
        return self.learner.update_critic(batch)

    # ------------------------------------------------------------------ the loop
    def evaluate(self) -> EvalResult:
        """Held-out accuracy with a fixed sampling seed (the same random stream every time)."""
        e, r = self.config.eval, self.config.rollout
        sampling = SamplingParams(
            temperature=e.temperature if e.temperature is not None else r.temperature,
            top_p=e.top_p if e.top_p is not None else r.top_p,
            top_k=r.top_k,
        )
        self.rollout.wait()  # the engine is free, and holds the weights being evaluated:
        self.learner.sync_weights(self.engine)
        state = self.engine.get_rng_state()
        self.engine.reseed(self.config.trainer.seed + 1)
        try:
            return evaluate(
                self.engine,
                self.vocabulary.tokenizer,
                self.scorer,
                self.eval_rows,
                sampling=sampling,
                max_response_length=e.max_response_length or r.max_response_length,
                samples_per_prompt=e.samples_per_prompt,
            )
        finally:
            self.engine.pop_stats()
            self.engine.set_rng_state(state)

    def train(self) -> list[dict[str, Any]]:
        """Run to ``trainer.total_steps`` (or the wall-clock budget); log, evaluate, checkpoint.

        Returns every metrics row of the run (a resumed run's earlier rows included). On SIGTERM
        or SIGINT the step in progress is finished, a checkpoint written, and ``stop_signal`` set;
        a second signal abandons the step (the previous checkpoint stays the newest). A remote
        worker that dies (:class:`~tppo.faults.WorkerLost`): see :func:`tppo.recovery.train_with_restarts`.
        """
        return train_with_restarts(self, self._train)

    def _train(self) -> list[dict[str, Any]]:
        t = self.config.trainer
        self.output_dir.mkdir(parents=True, exist_ok=True)
        save_config(self.config, self.output_dir / "config.yaml")
        purge = self.step if self.resumed_from is not None else None
        logger = MetricsLogger(self.output_dir, tensorboard=t.tensorboard, purge_step=purge)
        history = read_metrics(logger.path) if logger.rows else []
        bar = tqdm(
            total=t.total_steps, initial=self.step, disable=not t.progress, desc="tppo", dynamic_ncols=True
        )
        last_eval: float | None = None
        evals = [r for r in history if r.get("eval/accuracy") is not None]
        self.last_eval_s = float(evals[-1].get("time/train_elapsed_s", 0.0)) if evals else None
        handlers = self._catch_stop_signals()
        try:
            if self.step == 0 and logger.rows == 0 and self._eval_due(final=False):
                last_eval = self._log_eval(logger, history)
            if restartable(self) and latest_checkpoint(self.checkpoint_dir) is None:
                self.save_checkpoint(logger)  # what a rebuilt training group starts from
            while self.step < t.total_steps and not self._out_of_time() and self.stop_signal is None:
                start = time.perf_counter()
                metrics = self.train_step()
                self.train_seconds += time.perf_counter() - start
                metrics["time/train_elapsed_s"] = self.train_seconds
                done = self.step >= t.total_steps or self._out_of_time()
                if self._eval_due(final=done):
                    last_eval = self._log_eval(logger, history, into=metrics)
                logger.log(metrics)
                history.append(metrics)
                crash_point("logged", self.step - 1)
                self._check_bad_updates(metrics)
                if (t.checkpoint_every and self.step % t.checkpoint_every == 0) or self.stop_signal:
                    self.save_checkpoint(logger)
                bar.total = expected_total_steps(
                    self.step,
                    total_steps=t.total_steps,
                    elapsed_s=self.train_seconds,
                    max_seconds=t.max_wall_seconds,
                )
                bar.update(1)
                bar.set_postfix(headline(metrics, last_eval))
            if self.stop_signal is None:
                self.save_checkpoint(logger)
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
            bar.close()
            logger.close()
            self.scorer.close()
        if self.stop_signal is not None:
            name = signal.Signals(self.stop_signal).name
            log.warning("stopped by %s after step %d; resume with the same command", name, self.step)
        else:
            self.save(self.output_dir / "final")
        return history

    def _catch_stop_signals(self) -> dict[int, Any]:
        """SIGTERM/SIGINT -> :meth:`_on_stop_signal`; returns the previous handlers (none outside
        the main thread, where Python cannot install them)."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {s: signal.signal(s, self._on_stop_signal) for s in (signal.SIGTERM, signal.SIGINT)}

    def _on_stop_signal(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.stop_signal is not None:
            log.warning("%s again: abandoning step %d without a checkpoint", name, self.step)
            raise KeyboardInterrupt
        self.stop_signal = signum
        log.warning("%s: finishing step %d, then writing a checkpoint and stopping", name, self.step)

    def _check_bad_updates(self, metrics: dict[str, Any]) -> None:
        """Count steps in which all of a model's updates were skipped as non-finite; raise
        :class:`TrainingError` at ``trainer.max_consecutive_bad_updates`` in a row."""
        limit = self.config.trainer.max_consecutive_bad_updates
        for model in ("actor", "critic"):
            updates = metrics.get(f"{model}/updates", 0.0)
            skipped = metrics.get(f"{model}/skipped_updates", 0.0)
            if updates and skipped == updates:
                self.bad_steps[model] += 1
            elif updates:
                self.bad_steps[model] = 0
            if self.bad_steps[model] >= limit:
                last = latest_checkpoint(self.checkpoint_dir)
                raise TrainingError(
                    f"{model}: every update of the last {self.bad_steps[model]} steps had a non-finite "
                    f"loss or gradient and was skipped (trainer.max_consecutive_bad_updates={limit}); "
                    f"stopped at step {self.step}. Last good checkpoint: {last or 'none'}"
                )

    def _eval_due(self, *, final: bool) -> bool:
        t = self.config.trainer
        if not self.eval_rows:
            return False
        due = eval_due(
            self.step, self.train_seconds, self.last_eval_s, t.eval_every, t.eval_every_seconds, final
        )
        if due:
            self.last_eval_s = self.train_seconds
        return due

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

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The trainer's own state, what a checkpoint adds to the learner's (see :mod:`tppo.resume`):
        the step counter, training wall-clock, consecutive non-finite update counts, the
        ``metrics.jsonl`` position, the slot pool with the prompt stream, the config (JSON-able),
        and the rollout engine's RNG state (under :data:`tppo.resume.ENGINE_RNG`)."""
        return {
            "step": self.step,
            "train_seconds": self.train_seconds,
            "metrics_rows": self.metrics_rows,
            "bad_steps": dict(self.bad_steps),
            "rollout": self.rollout.state_dict(),  # first: waits for the window generated ahead
            "pool": self.pool.state_dict(),
            "method": self.selector.state_dict(),
            "config": to_dict(self.config),
            ENGINE_RNG: self.engine.get_rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (the config is checked, not loaded: see
        :func:`tppo.resume.check_resumable`)."""
        self.pool.load_state_dict(state["pool"])
        self.rollout.load_state_dict(state.get("rollout") or {})
        self.selector.load_state_dict(state.get("method") or self.selector.state_dict())
        self.engine.set_rng_state(state[ENGINE_RNG])
        self.step, self.train_seconds = int(state["step"]), float(state["train_seconds"])
        self.bad_steps = dict(state["bad_steps"])
        self.metrics_rows = int(state["metrics_rows"])

    def save_checkpoint(self, logger: MetricsLogger) -> Path | None:
        """Write ``checkpoints/step_N`` (see :mod:`tppo.resume`), once per step; a failed write is
        logged and returns ``None`` (training goes on, the previous checkpoint still the newest)."""
        if self.checkpointed_step == self.step:
            return latest_checkpoint(self.checkpoint_dir)
        logger.sync()
        self.metrics_rows = logger.rows
        path = save_checkpoint(
            self.checkpoint_dir,
            self.learner,
            self.state_dict(),
            step=self.step,
            keep=self.config.trainer.keep_checkpoints,
        )
        if path is not None:
            self.checkpointed_step = self.step
        return path

    def resume(self, checkpoint: Path | None) -> None:
        """Continue from ``checkpoint`` and cut ``metrics.jsonl`` back to the rows it had written
        (``None``: run again from step 0 in this directory, its metrics dropped)."""
        self.resumed_from = checkpoint or self.output_dir
        metrics = self.output_dir / "metrics.jsonl"
        if checkpoint is None:
            truncate_lines(metrics, 0)
            return
        self.load_state_dict(load_checkpoint(checkpoint, self.learner, self.config))
        truncate_lines(metrics, self.metrics_rows)
        self.checkpointed_step = self.step
        log.warning("resumed from %s at step %d", checkpoint, self.step)

    def close(self) -> None:
        """Release the roles (remote workers, engine processes, the reward worker)."""
        self.rollout.close()
        self.engine.close()
        self.learner.close()
        self.scorer.close()
