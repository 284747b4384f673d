"""The critic-free group methods: GRPO, DAPO and partial rollout with importance sampling.

All three train a response only when its whole group (the ``samples_per_prompt`` responses to one
prompt draw) has finished, on every token of it, with the group-relative advantage of its reward
(:func:`~tppo.algorithms.group_advantages`). They differ in:

- ``grpo``: clipped objective, ``l = L`` (each group is generated within one step, by one policy).
- ``dapo``: GRPO plus DAPO's soft overlong punishment and dynamic sampling (groups whose rewards are
  all equal are dropped; an update waits for ``algorithm.min_groups_per_update`` informative groups).
  Clip-higher and the token-mean loss are the config's (``configs/demo_dapo.yaml``).
- ``partial_rollout``: windows of ``l < L`` carried over as in T-PPO, so a response's tokens come
  from several policy versions; the objective is :func:`~tppo.algorithms.decoupled_policy_loss`
  with the engine's log-probs as behaviour, ``pi_old`` recomputed at the training step as proximal,
  and the importance weight capped at ``algorithm.is_cap``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from tppo.algorithms import degenerate_groups, group_advantages, overlong_penalty, sequence_token_weights
from tppo.config_loader import require
from tppo.methods.base import METHODS, TrainSet
from tppo.rollout.groups import GroupBuffer, group_id
from tppo.update import Surrogate, clipped_surrogate, decoupled_surrogate

if TYPE_CHECKING:
    from tppo.config import TPPOConfig
    from tppo.rollout.batch import RolloutBatch
    from tppo.rollout.slot_pool import Slot


class GroupSelector:
    """Holds finished members until their group completes; with dynamic sampling, drops the
    degenerate groups and holds informative ones until there are ``min_groups`` of them.

    Args:
        group_size: ``rollout.samples_per_prompt``.
        dynamic_sampling: drop degenerate groups and wait for ``min_groups`` informative ones.
        min_groups: the fewest informative groups an update trains on (dynamic sampling only).
        max_length, cache_length: the overlong punishment's ``L`` and ``L_cache`` (``None``: off).
    """

    def __init__(
        self,
        *,
        group_size: int,
        dynamic_sampling: bool,
        min_groups: int,
        max_length: int,
        cache_length: int | None,
    ) -> None:
        self.buffer = GroupBuffer(group_size)
        self.dynamic_sampling, self.min_groups = dynamic_sampling, min_groups
        self.max_length, self.cache_length = max_length, cache_length

    def rewards(self, slots: Sequence[Slot]) -> torch.Tensor:
        """``Tensor[B]``: each response's score plus, when on, the overlong punishment."""
        scores = torch.tensor([float(s.score or 0.0) for s in slots], dtype=torch.float32)
        if self.cache_length is None or not slots:
            return scores
        lengths = torch.tensor([len(s.response_ids) for s in slots])
        return scores + overlong_penalty(lengths, max_length=self.max_length, cache_length=self.cache_length)

    def select(
        self, active: Sequence[Slot], scores: torch.Tensor, retired: Sequence[Slot], step: int
    ) -> TrainSet:
        completed = self.buffer.add(retired)
        filtered = 0
        if self.dynamic_sampling:
            for group in completed:
                rewards = self.rewards(group)
                if bool(degenerate_groups(rewards, torch.zeros(len(group), dtype=torch.long)).all()):
                    filtered += 1
                else:
                    self.buffer.ready.append(group)
            groups: list[list[Slot]] = []
            if len(self.buffer.ready) >= self.min_groups:
                groups, self.buffer.ready = self.buffer.ready, []
        else:
            groups = completed
        slots = [slot for group in groups for slot in group]
        ids = torch.tensor([group_id(s, self.buffer.group_size) for s in slots], dtype=torch.long)
        metrics = {
            "rollout/groups_completed": float(len(completed)),
            "rollout/groups_trained": float(len(groups)),
            "rollout/filtered_groups": float(filtered),
            "rollout/waiting_responses": float(self.buffer.num_waiting),
        }
        return TrainSet(slots, self.rewards(slots), ids, metrics)

    def state_dict(self) -> dict[str, Any]:
        return self.buffer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state)


@dataclass(frozen=True)
class GroupMethod:
    """A critic-free group method (see the module docstring).

    Attributes:
        name: its ``algorithm.name``.
        one_window: requires ``l = L`` (every group generated within one step).
        dynamic_sampling: DAPO's dynamic sampling.
        overlong_by_default: the overlong punishment is on without ``algorithm.overlong_cache_length``
            (at ``L // 4``).
        decoupled: the decoupled objective with truncated importance sampling (else clipped).
    """

    name: str
    one_window: bool = True
    dynamic_sampling: bool = False
    overlong_by_default: bool = False
    decoupled: bool = False
    needs_critic: bool = False
    needs_proximal: bool = False
    needs_old_log_probs: bool = False

    def check(self, config: TPPOConfig) -> None:
        r, d = config.rollout, config.distributed
        if self.one_window:
            require(
                r.window_length == r.max_response_length,
                "rollout.window_length",
                f"algorithm.name={self.name} generates every group within one step: set it to "
                f"rollout.max_response_length ({r.max_response_length}), or use"
                " algorithm.name=partial_rollout",
            )
            require(
                r.num_slots % r.samples_per_prompt == 0,
                "rollout.num_slots",
                f"({r.num_slots}) must be a multiple of rollout.samples_per_prompt ({r.samples_per_prompt}) "
                f"for algorithm.name={self.name}, so that no group is split across steps",
            )
            require(
                not r.refill_within_step,
                "rollout.refill_within_step",
                f"algorithm.name={self.name} trains whole responses generated within one step; a refill "
                "would carry a response over to the next step: set it to false, or use"
                " algorithm.name=partial_rollout",
            )
        require(
            d.train_workers == 0,
            "distributed.train_workers",
            f"algorithm.name={self.name} (no value model) runs with the in-process learner only; set it to 0",
        )

    def positive_lm_coef(self, config: TPPOConfig) -> float:
        return config.algorithm.positive_lm_coef or 0.0

    def cache_length(self, config: TPPOConfig) -> int | None:
        a, r = config.algorithm, config.rollout
        if a.overlong_cache_length is not None:
            return min(a.overlong_cache_length, r.max_response_length)
        return max(1, r.max_response_length // 4) if self.overlong_by_default else None

    def selector(self, config: TPPOConfig) -> GroupSelector:
        return GroupSelector(
            group_size=config.rollout.samples_per_prompt,
            dynamic_sampling=self.dynamic_sampling,
            min_groups=config.algorithm.min_groups_per_update,
            max_length=config.rollout.max_response_length,
            cache_length=self.cache_length(config),
        )

    def estimate(self, batch: RolloutBatch, train: TrainSet, *, step: int, config: TPPOConfig) -> None:
        """Group-relative advantages on every token of each (finished) response; no value tokens."""
        a, per_token = config.algorithm, batch.per_token
        if train.group_ids is None:
            raise ValueError(f"{self.name}: the train set has no group ids")
        advantages = group_advantages(train.scores, train.group_ids, scale_by_std=a.group_scale_by_std)
        mask = batch.response_mask
        per_token_adv = torch.where(mask, advantages.to(mask.device)[:, None], 0.0).float()
        per_token["raw_advantages"] = per_token["advantages"] = per_token_adv
        per_token["policy_mask"] = mask.clone()
        if self.positive_lm_coef(config) > 0:
            per_token["positive_mask"] = mask & (train.scores.to(mask.device) == 1)[:, None]
        if a.loss_aggregation == "seq_mean_token_mean":
            per_token["token_weights"] = sequence_token_weights(mask)

    def surrogate(self, config: TPPOConfig) -> Surrogate:
        a = config.algorithm
        if self.decoupled or config.rollout.overlap_generation:  # tokens not from pi_old
            return decoupled_surrogate(
                clip_eps_low=a.clip_eps_low,
                clip_eps_high=a.clip_eps_high,
                dual_clip=a.dual_clip,
                is_cap=a.is_cap,
            )
        return clipped_surrogate(
            clip_eps_low=a.clip_eps_low, clip_eps_high=a.clip_eps_high, dual_clip=a.dual_clip
        )


METHODS.add("grpo", GroupMethod("grpo"))
METHODS.add("dapo", GroupMethod("dapo", dynamic_sampling=True, overlong_by_default=True))
METHODS.add("partial_rollout", GroupMethod("partial_rollout", one_window=False, decoupled=True))
