"""GePPO (``algorithm.name: geppo``; Queeney, Paschalidis, Cassandras 2021, arXiv 2111.00072):
PPO/T-PPO that also trains, each step, on the tokens of the last ``M - 1`` steps again.

Choices for sequences (DESIGN.md section 5; the paper is written for fixed-length trajectories):

- What is reused is the *response*, as it stands now: a response that trained in one of the last
  ``M - 1`` steps and has since finished is kept (the slot pool has let it go), one still in flight is
  in the step's batch anyway. Its policy tokens are those generated in the last ``M`` steps
  (``token_steps > step - M``; this step's window as in T-PPO, ``policy_skip_tail`` included).
- Advantages of every token come from the current critic over the whole history, with V-trace's
  truncated importance weights ``min(pi_k / pi_behaviour, 1)`` (:func:`~tppo.algorithms.proximal.
  vtrace_egae`; this step's tokens have weight 1). Whitening, when on, is over all policy tokens.
- The value model trains, as in T-PPO, only on responses that finished in this step (Monte Carlo).
- VAPO's knobs (``length_adaptive_alpha``, ``positive_lm_coef``) apply as in ``ppo`` when set.
- The loss is :func:`~tppo.algorithms.proximal.geppo_policy_loss` around ``pi_k`` (``pi_old``
  recomputed at the step), with ``behaviour`` = the engine's log-probs of the step that generated
  each token (``pi_k`` itself for this step's tokens, so ``M = 1`` is PPO with a symmetric clip),
  and ``clip_eps`` = :func:`~tppo.algorithms.proximal.geppo_clip_eps` (``2 eps / (M + 1)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from tppo.algorithms import outcome_rewards, select_tokens
from tppo.algorithms.proximal import geppo_clip_eps, geppo_policy_loss, vtrace_egae
from tppo.config_loader import require
from tppo.methods.base import METHODS, TrainSet
from tppo.methods.ppo import PPOMethod
from tppo.rollout.slot_pool import slot_from_dict, slot_to_dict
from tppo.update import Surrogate, old_log_probs_of, weighted_advantages

if TYPE_CHECKING:
    from tppo.config import TPPOConfig
    from tppo.rollout.batch import RolloutBatch
    from tppo.rollout.slot_pool import Slot


class ReuseSelector:
    """This step's slots, plus the finished responses that trained in the last ``M - 1`` steps."""

    def __init__(self, reuse_steps: int) -> None:
        self.reuse_steps = reuse_steps
        self.kept: list[tuple[int, Slot]] = []
        """(the step it finished in, the response), oldest first."""

    def select(
        self, active: Sequence[Slot], scores: torch.Tensor, retired: Sequence[Slot], step: int
    ) -> TrainSet:
        self.kept = [(s, slot) for s, slot in self.kept if s > step - self.reuse_steps]
        reused = [slot for _, slot in self.kept]
        self.kept += [(step, slot) for slot in retired] if self.reuse_steps > 1 else []
        kept_scores = torch.tensor(
            [float(s.score or 0.0) for s in reused], dtype=scores.dtype, device=scores.device
        )
        metrics = {"rollout/reused_responses": float(len(reused))}
        return TrainSet([*active, *reused], torch.cat([scores, kept_scores]), metrics=metrics)

    def state_dict(self) -> dict[str, Any]:
        return {"kept": [[s, slot_to_dict(slot)] for s, slot in self.kept]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.kept = [(int(s), slot_from_dict(slot)) for s, slot in state.get("kept", [])]


@dataclass(frozen=True)
class GePPOMethod(PPOMethod):
    """GePPO on the PPO/T-PPO trainer (see the module docstring)."""

    name: str = "geppo"
    needs_old_log_probs: bool = True

    def check(self, config: TPPOConfig) -> None:
        super().check(config)
        require(
            config.distributed.train_workers == 0,
            "distributed.train_workers",
            "algorithm.name=geppo keeps reused responses in process: set it to 0",
        )
        require(
            config.algorithm.recompute_old_log_probs,
            "algorithm.recompute_old_log_probs",
            "algorithm.name=geppo needs pi_k's log-probs of the reused tokens: set it to true",
        )
        require(
            not config.rollout.overlap_generation,
            "rollout.overlap_generation",
            "algorithm.name=geppo weighs its own reused, off-policy tokens; it runs with synchronous "
            "generation: set it to false",
        )

    def selector(self, config: TPPOConfig) -> ReuseSelector:  # type: ignore[override]
        return ReuseSelector(config.algorithm.geppo_reuse_steps)

    def estimate(self, batch: RolloutBatch, train: TrainSet, *, step: int, config: TPPOConfig) -> None:
        a, per_token = config.algorithm, batch.per_token
        steps, mask = batch.token_steps, batch.response_mask
        this_step = mask & (steps == step)
        current = per_token["old_log_probs"]
        behaviour = torch.where(this_step, current, batch.engine_log_probs)
        rewards = outcome_rewards(train.scores, mask)
        raw = vtrace_egae(
            rewards,
            per_token["old_values"],
            mask,
            batch.is_finished,
            torch.where(mask, current - behaviour, 0.0),
            gamma=a.gamma,
            gae_lambda=self.policy_lambda(batch, config),
        )
        masks = select_tokens(steps, mask, batch.is_finished, step=step, policy_skip_tail=a.policy_skip_tail)
        earlier = mask & (steps > step - a.geppo_reuse_steps) & (steps < step)
        # the value model trains on the responses that finished in this step, not on reused ones
        # (which finished before and generated nothing in it)
        value_mask = masks.value_mask & this_step.any(dim=1, keepdim=True)
        per_token["behaviour_log_probs"] = behaviour
        self.finish_estimate(batch, train, raw, masks.policy_mask | earlier, value_mask, rewards, config)

    def surrogate(self, config: TPPOConfig) -> Surrogate:
        a = config.algorithm
        clip_eps = geppo_clip_eps(a.clip_eps_low, a.geppo_reuse_steps)

        def surrogate(log_probs: torch.Tensor, sub: RolloutBatch, token_count: float) -> Any:
            return geppo_policy_loss(
                log_probs,
                old_log_probs_of(sub, log_probs),
                sub.per_token["behaviour_log_probs"],
                weighted_advantages(sub),
                sub.per_token["policy_mask"],
                clip_eps=clip_eps,
                token_count=token_count,
            )

        return surrogate


METHODS.add("geppo", GePPOMethod())
