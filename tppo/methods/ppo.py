"""PPO and T-PPO (``algorithm.name: ppo``): a critic, EGAE over the partial responses, the clipped
objective on the tokens generated this step (paper Algorithm 1). PPO is ``l = L``.

``vapo`` is the same method with VAPO's knobs on by default (Yue et al. 2025): length-adaptive
lambda for the policy's advantages (alpha 0.05) and the positive-example LM loss (0.1); VAPO's
value pretraining is ``trainer.value_warmup_steps`` (``configs/demo_vapo.yaml``).

``ppo_ewma`` (Hilton, Cobbe, Schulman 2022) keeps an exponentially weighted moving average of the
policy's weights (``algorithm.ewma_decay``, updated after every optimizer step) as the proximal
policy of :func:`~tppo.algorithms.decoupled_policy_loss`; the behaviour policy is ``pi_old`` (the
generation is synchronous). Its log-probs come from one extra forward pass per step, in its own
phase (``time/proximal_s``), at the step's start. With ``ewma_decay = 0`` it is PPO."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from tppo.algorithms import (
    get_advantage_estimator,
    masked_whiten,
    monte_carlo_returns,
    outcome_rewards,
    select_tokens,
)
from tppo.algorithms.advantages import length_adaptive_lambda
from tppo.config_loader import require
from tppo.methods.base import METHODS, TrainSet
from tppo.update import (
    Surrogate,
    clipped_surrogate,
    decoupled_surrogate,
    engine_log_probs_of,
    ewma_log_probs_of,
    old_log_probs_of,
)

if TYPE_CHECKING:
    from tppo.config import TPPOConfig
    from tppo.rollout.batch import RolloutBatch
    from tppo.rollout.slot_pool import Slot


class StepSelector:
    """Every occupied slot trains in the step that generated its tokens (nothing to remember)."""

    def select(
        self, active: Sequence[Slot], scores: torch.Tensor, retired: Sequence[Slot], step: int
    ) -> TrainSet:
        return TrainSet(list(active), scores)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore."""


@dataclass(frozen=True)
class PPOMethod:
    """PPO / T-PPO with a value model (DESIGN.md section 5, first two rows, and VAPO's knobs).

    Attributes:
        name: its ``algorithm.name``.
        default_alpha: ``algorithm.length_adaptive_alpha`` when the config leaves it unset.
        default_lm_coef: ``algorithm.positive_lm_coef`` when the config leaves it unset.
    """

    name: str = "ppo"
    default_alpha: float | None = None
    default_lm_coef: float = 0.0
    needs_critic: bool = True
    needs_proximal: bool = False
    needs_old_log_probs: bool = False
    """``pi_old``'s log-probs are recomputed even with one epoch and one minibatch (GePPO)."""
    """``ppo_ewma``: an EWMA copy of the policy is the proximal policy of the decoupled objective."""

    def positive_lm_coef(self, config: TPPOConfig) -> float:
        coef = config.algorithm.positive_lm_coef
        return self.default_lm_coef if coef is None else coef

    def policy_lambda(self, batch: RolloutBatch, config: TPPOConfig) -> float | torch.Tensor:
        """``gae_lambda``, or VAPO's length-adaptive lambda per response (lengths so far)."""
        a = config.algorithm
        alpha = a.length_adaptive_alpha if a.length_adaptive_alpha is not None else self.default_alpha
        if alpha is None:
            return a.gae_lambda
        return length_adaptive_lambda(batch.response_mask.sum(dim=1), alpha=alpha)

    def check(self, config: TPPOConfig) -> None:
        """Every combination the config itself accepts (PPO-EWMA: the in-process learner only)."""
        require(
            not self.needs_proximal or config.distributed.train_workers == 0,
            "distributed.train_workers",
            f"algorithm.name={self.name} keeps its EWMA policy in process: set it to 0",
        )

    def selector(self, config: TPPOConfig) -> StepSelector:
        return StepSelector()

    def estimate(self, batch: RolloutBatch, train: TrainSet, *, step: int, config: TPPOConfig) -> None:
        """EGAE advantages (over each response's history; only this window's are trained),
        Monte-Carlo returns, the policy/value token masks; and, on each unfinished slot, the value
        EGAE bootstrapped with at this window edge (for the truncation diagnostics)."""
        a, per_token = config.algorithm, batch.per_token
        rewards = outcome_rewards(train.scores, batch.response_mask)
        estimator = get_advantage_estimator(a.advantage_estimator)
        advantages = estimator(
            rewards,
            per_token["old_values"],
            batch.response_mask,
            batch.is_finished,
            gamma=a.gamma,
            gae_lambda=self.policy_lambda(batch, config),
        )
        masks = select_tokens(
            batch.token_steps,
            batch.response_mask,
            batch.is_finished,
            step=step,
            policy_skip_tail=a.policy_skip_tail,
        )
        self.finish_estimate(batch, train, advantages, masks.policy_mask, masks.value_mask, rewards, config)

    def finish_estimate(
        self,
        batch: RolloutBatch,
        train: TrainSet,
        raw_advantages: torch.Tensor,
        policy_mask: torch.Tensor,
        value_mask: torch.Tensor,
        rewards: torch.Tensor,
        config: TPPOConfig,
    ) -> None:
        """What every critic method does with its raw advantages and token masks: whitening and
        clipping over the policy tokens, Monte-Carlo returns, VAPO's positive-example mask, and
        the bootstrap values of the unfinished slots."""
        a, per_token = config.algorithm, batch.per_token
        per_token["raw_advantages"] = advantages = raw_advantages
        if a.whiten_advantages and policy_mask.sum() > 1:
            advantages = masked_whiten(advantages, policy_mask, shift_mean=a.whiten_shift_mean)
        if a.advantage_clip is not None:
            advantages = advantages.clamp(-a.advantage_clip, a.advantage_clip)
        per_token["advantages"] = advantages
        per_token["returns"] = monte_carlo_returns(rewards, batch.response_mask, gamma=a.gamma)
        per_token["policy_mask"], per_token["value_mask"] = policy_mask, value_mask
        if self.positive_lm_coef(config) > 0:
            positive = batch.is_finished & (train.scores.to(batch.is_finished.device) == 1)
            per_token["positive_mask"] = policy_mask & positive[:, None]
        record_bootstraps(train.slots, batch)

    def surrogate(self, config: TPPOConfig) -> Surrogate:
        """The clipped objective around ``pi_old``; decoupled when the proximal policy is not the one
        that generated the tokens: PPO-EWMA's EWMA (behaviour ``pi_old``), or, with
        ``rollout.overlap_generation``, ``pi_old`` (or the EWMA) over the engine's stale weights
        (behaviour = the engine's log-probs, importance weights capped at ``algorithm.is_cap``)."""
        a = config.algorithm
        ahead = config.rollout.overlap_generation
        if not self.needs_proximal and not ahead:
            return clipped_surrogate(
                clip_eps_low=a.clip_eps_low, clip_eps_high=a.clip_eps_high, dual_clip=a.dual_clip
            )
        return decoupled_surrogate(
            clip_eps_low=a.clip_eps_low,
            clip_eps_high=a.clip_eps_high,
            dual_clip=a.dual_clip,
            is_cap=a.is_cap if ahead else None,
            proximal=ewma_log_probs_of if self.needs_proximal else old_log_probs_of,
            behaviour=engine_log_probs_of if ahead else old_log_probs_of,
        )


def record_bootstraps(slots: Sequence[Slot], batch: RolloutBatch) -> None:
    """Remember, on each unfinished slot, the value EGAE bootstrapped with at this window edge."""
    lengths = batch.response_mask.sum(dim=1).tolist()
    values = batch.per_token["old_values"]
    for row, slot in enumerate(slots):
        if not slot.finished and lengths[row] > 0:
            position = int(lengths[row]) - 1
            slot.bootstrap_positions.append(position)
            slot.bootstrap_values.append(float(values[row, position]))


METHODS.add("ppo", PPOMethod())
METHODS.add("ppo_ewma", PPOMethod("ppo_ewma", needs_proximal=True))
METHODS.add("vapo", PPOMethod("vapo", default_alpha=0.05, default_lm_coef=0.1))
