"""The rollout side of a training step: the window of tokens it trains on, generated now or ahead.

Synchronous (the paper's T-PPO): step ``j`` fills the free slots, syncs the policy's weights into the
engine and generates window ``j``; then the learner trains on it.

With ``rollout.overlap_generation`` the engine works while the learner trains: once step ``j`` has
scored and selected its window, it fills the slots for window ``j + 1``, syncs the weights the
learner holds now (``pi_old`` of step ``j``, before its update) and generates window ``j + 1`` in a
background thread while the learner updates on window ``j``. Step ``j + 1`` then waits for it (if it
is not done already) and trains on tokens one policy version old: the policy loss is the decoupled
one (behaviour = the engine's log-probs, proximal = ``pi_old`` recomputed), see
:meth:`tppo.methods.ppo.PPOMethod.surrogate`. The next window continues this window's responses,
so one window ahead is as far as generation can run: every token is at most one version stale.

A window generated ahead is part of the run's state: before a checkpoint (and an evaluation, which
needs the engine) the runner waits for it, and :meth:`WindowRunner.state_dict` records which of the
pool's responses it holds, so that a resumed run trains on exactly that window.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from tppo.engines.types import Completion, EngineStats, Refill, Request, SamplingParams
from tppo.rollout.slot_pool import Slot, SlotPool
from tppo.roofline import context_token_sum

if TYPE_CHECKING:
    from tppo.engines.base import Engine

Phase = Callable[[str], AbstractContextManager[None]]
"""The trainer's phase timer (and crash point): ``with phase("generate"): ...``."""


@dataclass
class Window:
    """One step's generation.

    Attributes:
        step: the step that trains on it (its tokens carry this step id).
        slots: every response it continued or started, in engine row order (the slots occupied
            after the fill, then the refills).
        new_prompts: prompts its fill took.
        refilled: prompts that entered a slot freed within it.
        version: the training step whose ``pi_old`` generated it (``step``, or ``step - 1`` ahead).
        prompts_consumed: the prompt stream's position when it was done.
        stats: the engine's counters of its generation (and weight sync).
    """

    step: int
    slots: list[Slot]
    new_prompts: int
    refilled: int
    version: int
    prompts_consumed: int = 0
    stats: EngineStats = field(default_factory=EngineStats)


def window_staleness(step: int, version: int) -> int:
    """How many policy updates separate the weights that generated a window (``version``) from the
    ``pi_old`` of the step that trains on it (``step``)."""
    return step - version


class WindowRunner:
    """Generates each step's window into a :class:`SlotPool` (see the module docstring).

    Args:
        pool: the slots.
        engine: the rollout engine; with ``overlap`` it must hold its own copy of the weights.
        sampling: how tokens are drawn.
        eos_token_ids: tokens that end a response.
        sync: puts the learner's current policy weights into ``engine`` (the sync phase).
        refill: ``rollout.refill_within_step``.
        overlap: ``rollout.overlap_generation``.
        max_staleness: ``rollout.max_staleness``: a window older than that is an error.
    """

    def __init__(
        self,
        pool: SlotPool,
        engine: Engine,
        sampling: SamplingParams,
        eos_token_ids: Sequence[int],
        sync: Callable[[], None],
        *,
        refill: bool,
        overlap: bool,
        max_staleness: int = 1,
    ) -> None:
        self.pool, self.engine, self.sampling = pool, engine, sampling
        self.eos_token_ids = list(eos_token_ids)
        self.sync, self.refill, self.max_staleness = sync, refill, max_staleness
        # a new thread starts with OpenMP's default thread count (all cores), not the one torch was
        # given (trainer.num_threads): give the rollout thread the same
        self.executor = (
            ThreadPoolExecutor(
                1,
                thread_name_prefix="tppo-rollout",
                initializer=torch.set_num_threads,
                initargs=(torch.get_num_threads(),),
            )
            if overlap
            else None
        )
        self.pending: Future[Window] | None = None
        self.ready: Window | None = None

    def window(self, step: int, phase: Phase) -> Window:
        """Step ``step``'s window: the one generated ahead (waited for in phase ``wait_rollout``), or
        fill + sync + generate now."""
        if self.pending is not None or self.ready is not None:
            with phase("wait_rollout"):
                window = self.wait()
            self.ready = None
            if window is None or window.step != step:
                raise RuntimeError(
                    f"the window generated ahead is for step {window and window.step}, not {step}"
                )
            if window_staleness(step, window.version) > self.max_staleness:
                raise RuntimeError(
                    f"step {step}: its window came from the weights of step {window.version}, more than "
                    f"rollout.max_staleness={self.max_staleness} updates ago"
                )
            return window
        new_prompts = self._fill_and_sync(step, phase)
        with phase("generate"):
            return self._generate(step, new_prompts, version=step)

    def launch(self, step: int, phase: Phase) -> None:
        """With overlap: fill the slots for step ``step``, sync the weights the learner holds now
        (those of step ``step - 1``) and start generating its window in the background."""
        if self.executor is None:
            return
        new_prompts = self._fill_and_sync(step, phase)
        self.pending = self.executor.submit(self._generate, step, new_prompts, step - 1)

    def _fill_and_sync(self, step: int, phase: Phase) -> int:
        """Fill the free slots for step ``step`` and sync the learner's weights into the engine;
        returns how many prompts the fill took."""
        with phase("fill"):
            new_prompts = self.pool.fill(step)
        with phase("sync"):
            self.sync()
        return new_prompts

    def wait(self) -> Window | None:
        """The window generated ahead, once it is done (``None`` when there is none): before a
        checkpoint, an evaluation, or the step that trains on it."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            self.ready = pending.result()
        return self.ready

    def _generate(self, step: int, new_prompts: int, version: int) -> Window:
        if self.refill:
            refilling = self.pool.refilling(step, self.eos_token_ids)
            prefixes, budgets = refilling.prefixes, refilling.budgets
            counted = _ContextCount(refilling, prefixes)
            self.engine.generate_refilling(prefixes, budgets, self.sampling, counted)
            slots, refilled, context_tokens = refilling.slots, refilling.refilled, counted.total
        else:
            slots = self.pool.active()
            prefixes, budgets = self.pool.requests()
            completions = self.engine.generate(prefixes, budgets, self.sampling)
            self.pool.record(step, completions, self.eos_token_ids)
            refilled = 0
            context_tokens = sum(
                context_token_sum(len(p), len(c.token_ids))
                for p, c in zip(prefixes, completions, strict=True)
            )
        position = self.pool.stream.position
        stats = self.engine.pop_stats()
        stats.extra["context_tokens"] = float(context_tokens)  # the roofline's input (tppo.roofline)
        return Window(step, slots, new_prompts, refilled, version, position, stats)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The window generated ahead, if any (waited for): its figures and where the pool keeps each
        of its responses (``["slot", i]`` or ``["left", i]``); the responses themselves are the pool's."""
        window = self.wait()
        if window is None:
            return {"ready": None}
        return {
            "ready": {
                "step": window.step,
                "new_prompts": window.new_prompts,
                "refilled": window.refilled,
                "version": window.version,
                "prompts_consumed": window.prompts_consumed,
                "stats": asdict(window.stats),
                "rows": [self._where(slot) for slot in window.slots],
            }
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (after the pool's own state)."""
        self.pending = None
        ready = state.get("ready")
        if ready is None:
            self.ready = None
            return
        places: dict[str, Sequence[Slot | None]] = {"slot": self.pool.slots, "left": self.pool.left}
        slots = [places[kind][index] for kind, index in ready["rows"]]
        if any(slot is None for slot in slots):
            raise ValueError("the checkpoint's window ahead names an empty slot")
        stats = EngineStats(**ready["stats"])
        self.ready = Window(
            int(ready["step"]),
            [slot for slot in slots if slot is not None],
            int(ready["new_prompts"]),
            int(ready["refilled"]),
            int(ready["version"]),
            int(ready["prompts_consumed"]),
            stats,
        )

    def _where(self, slot: Slot) -> list[Any]:
        for kind, places in (("slot", self.pool.slots), ("left", self.pool.left)):
            for index, other in enumerate(places):
                if other is slot:
                    return [kind, index]
        raise ValueError(f"prompt draw {slot.prompt.uid}: a response of the window is not in the pool")

    def close(self) -> None:
        """Wait for the window in flight, then stop the background thread."""
        if self.executor is not None:
            self.wait()
            self.executor.shutdown()


class _ContextCount:
    """A refill that passes every call on to ``inner`` and sums, over the rows, the context tokens of
    their decode steps (:func:`tppo.roofline.context_token_sum`): rows are numbered as
    :data:`~tppo.engines.types.Refill` says (the prefixes, then the refills in the order returned),
    and each row is offered once, when its completion is final."""

    def __init__(self, inner: Refill, prefixes: Sequence[Sequence[int]]) -> None:
        self.inner = inner
        self.prefix_lengths = [len(p) for p in prefixes]
        self.total = 0

    def __call__(self, row: int, completion: Completion, decode_step: int) -> Request | None:
        self.total += context_token_sum(self.prefix_lengths[row], len(completion.token_ids))
        request = self.inner(row, completion, decode_step)
        if request is not None:
            self.prefix_lengths.append(len(request.prefix))
        return request
