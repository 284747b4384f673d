"""The training role: policy and value models with their optimizers, and the phases that use them
(old_forward, actor, critic), plus the weights the rollout engines sync from.

One :class:`Learner` is one training process. In single-process mode the trainer holds one, with the
whole models. In distributed mode (``distributed.train_workers = M``) each of M workers holds one
whose models are sharded with FSDP2 (:mod:`tppo.distributed.fsdp`) and whose :class:`Shard` says which
piece of every minibatch it trains on; the code that runs is the same.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal, Protocol

import torch
from torch.distributed.tensor import DTensor
from transformers import PreTrainedModel

from tppo.algorithms.proximal import ewma_update
from tppo.config import TPPOConfig
from tppo.engines.base import Engine
from tppo.engines.types import SamplingParams
from tppo.methods import get_method
from tppo.models import Models, response_log_probs, response_values
from tppo.rollout.batch import RolloutBatch, shard_packs
from tppo.update import LossFn, Shard, UpdateSchedule, actor_loss_fn, critic_loss_fn, run_update


class LearnerRole(Protocol):
    """What the trainer asks of the training role (a :class:`Learner`, or a group of remote ones)."""

    device: torch.device

    def old_forward(self, batch: RolloutBatch) -> dict[str, torch.Tensor]: ...

    def set_learning_rates(self, actor_lr: float, critic_lr: float) -> None: ...

    def update_actor(self, batch: RolloutBatch) -> dict[str, float]: ...

    def update_critic(self, batch: RolloutBatch) -> dict[str, float]: ...

    def policy_weights(self) -> Iterable[tuple[str, torch.Tensor]]: ...

    def sync_weights(self, engine: Engine) -> None: ...

    def save(self, directory: Path) -> None: ...

    def close(self) -> None: ...


def build_optimizer(model: torch.nn.Module, lr: float, config: TPPOConfig) -> torch.optim.AdamW:
    o = config.optim
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=o.betas, weight_decay=o.weight_decay, eps=o.eps)


class Learner:
    """Policy and value model, their optimizers and the update shuffles of one training process.

    Args:
        config: the run's configuration (algorithm, optimizer, seed, sampling temperature).
        models: the models this process trains (whole, or FSDP-sharded in a distributed worker).
        shard: this process's rank among the training processes.
    """

    def __init__(self, config: TPPOConfig, models: Models, shard: Shard | None = None) -> None:
        self.config, self.models, self.shard = config, models, shard or Shard()
        self.device = next(models.policy.parameters()).device
        self.method = get_method(config.algorithm.name)
        self.proximal: PreTrainedModel | None = None
        """PPO-EWMA's proximal policy: an EWMA of the policy's weights (``algorithm.ewma_decay``)."""
        if self.method.needs_proximal:
            self.proximal = copy.deepcopy(models.policy).eval().requires_grad_(False)
        self.actor_optim = build_optimizer(models.policy, config.optim.actor_lr, config)
        self.critic_optim = (
            None if models.value is None else build_optimizer(models.value, config.optim.critic_lr, config)
        )
        # Every rank draws the same minibatch shuffles, so that they agree on each minibatch's rows.
        self.update_generator = torch.Generator().manual_seed(config.trainer.seed)

    @property
    def sampling(self) -> SamplingParams:
        """The rollout's sampling distribution: the actor's log-probs are computed under it."""
        r = self.config.rollout
        return SamplingParams(temperature=r.temperature, top_p=r.top_p, top_k=r.top_k)

    @torch.no_grad()
    def old_forward(self, batch: RolloutBatch) -> dict[str, torch.Tensor]:
        """What the update compares against, before it changes anything: ``old_values`` for every
        response token (with a value model), and ``old_log_probs``:

        * ``algorithm.recompute_old_log_probs: false``: the engine's log-probs (``batch.engine_log_probs``);
        * ``true``: recomputed with the policy under the same sampling distribution (the engines'
          log-prob contract), unless the actor's own first forward pass gives them (one epoch, one
          minibatch: then they are identical, and the key is absent).

        Returns ``Tensor[B, T]`` per key, on the batch's device, filled on this rank's rows (all rows
        in single-process mode) and zero elsewhere: the ranks' results add up to the whole.
        """
        a, home = self.config.algorithm, batch.input_ids.device
        batch = batch.to(self.device)
        packs, padding = self._packs(batch)
        out = {}
        if self.models.value is not None:
            self.models.value.eval()
            out["old_values"] = self._forward_pieces(
                response_values, self.models.value, batch, packs, padding
            )
        if not a.recompute_old_log_probs:
            pieces = [batch.engine_log_probs[p] for p in packs]
            out["old_log_probs"] = stitch(packs, pieces, batch.response_mask)
        elif a.ppo_epochs > 1 or a.num_minibatches > 1 or self.method.needs_old_log_probs:
            self.models.policy.eval()
            out["old_log_probs"] = self._log_probs_pieces(self.models.policy, batch, packs, padding)
        return {key: value.to(home) for key, value in out.items()}

    def reference_forward(self, batch: RolloutBatch) -> dict[str, torch.Tensor]:
        """``reference_log_probs``: the frozen reference policy's log-probs of the response tokens
        (under the rollout's sampling distribution), for ``algorithm.kl_coef``; ``{}`` without one."""
        if self.models.reference is None:
            return {}
        return {"reference_log_probs": self._log_probs_of(self.models.reference, batch)}

    def proximal_forward(self, batch: RolloutBatch) -> dict[str, torch.Tensor]:
        """``proximal_log_probs``: the EWMA policy's (``ppo_ewma``); ``{}`` without one."""
        if self.proximal is None:
            return {}
        return {"proximal_log_probs": self._log_probs_of(self.proximal, batch)}

    @torch.no_grad()
    def _log_probs_of(self, model: PreTrainedModel, batch: RolloutBatch) -> torch.Tensor:
        """Response log-probs of ``model``, packed as old_forward packs them, on the batch's device."""
        home, batch = batch.input_ids.device, batch.to(self.device)
        return self._log_probs_pieces(model, batch, *self._packs(batch)).to(home)

    def _packs(self, batch: RolloutBatch) -> tuple[list[torch.Tensor], int]:
        """This rank's micro-batches of the batch's rows, and the empty passes it must add."""
        rows = torch.arange(len(batch.is_finished), device=self.device)
        return shard_packs(
            rows,
            batch.lengths,
            max_tokens=self.config.algorithm.micro_batch_tokens,
            rank=self.shard.rank,
            world_size=self.shard.world_size,
        )

    def _log_probs_pieces(
        self, model: PreTrainedModel, batch: RolloutBatch, packs: list[torch.Tensor], padding: int
    ) -> torch.Tensor:
        """``model``'s response log-probs under the rollout's sampling distribution, stitched."""
        sampling = self.sampling

        def log_probs(m: PreTrainedModel, sub: RolloutBatch) -> torch.Tensor:
            return response_log_probs(m, sub, sampling=sampling)[0]

        return self._forward_pieces(log_probs, model, batch, packs, padding)

    def _forward_pieces(
        self,
        forward: Callable[[PreTrainedModel, RolloutBatch], torch.Tensor],
        model: PreTrainedModel,
        batch: RolloutBatch,
        packs: list[torch.Tensor],
        padding: int,
    ) -> torch.Tensor:
        pieces = [forward(model, batch.select(p)) for p in packs]
        for _ in range(padding):  # keep collective calls in step with the other ranks
            forward(model, batch.select([0]))
        return stitch(packs, pieces, batch.response_mask)

    def set_learning_rates(self, actor_lr: float, critic_lr: float) -> None:
        for optimizer, lr in ((self.actor_optim, actor_lr), (self.critic_optim, critic_lr)):
            for group in optimizer.param_groups if optimizer is not None else []:
                group["lr"] = lr

    def update_actor(self, batch: RolloutBatch) -> dict[str, float]:
        """The method's policy update on the batch's ``policy_mask`` tokens."""
        loss_fn = actor_loss_fn(
            sampling=self.sampling,
            surrogate=self.method.surrogate(self.config),
            kl_coef=self.config.algorithm.kl_coef,
            positive_lm_coef=self.method.positive_lm_coef(self.config),
        )
        weights = "token_weights" if "token_weights" in batch.per_token else None
        proximal, policy, decay = self.proximal, self.models.policy, self.config.algorithm.ewma_decay
        on_step = None if proximal is None else lambda: ewma_update(proximal, policy, decay=decay)
        return self._update(policy, self.actor_optim, batch, "policy_mask", loss_fn, weights, on_step)

    def update_critic(self, batch: RolloutBatch) -> dict[str, float]:
        """Monte-Carlo value regression on the ``value_mask`` tokens (none: no update; no value
        model: nothing at all, not even statistics)."""
        if self.models.value is None or self.critic_optim is None:
            return {}
        a = self.config.algorithm
        loss_fn = critic_loss_fn(value_clip_low=a.value_clip_low, value_clip_high=a.value_clip_high)
        return self._update(self.models.value, self.critic_optim, batch, "value_mask", loss_fn)

    def _update(
        self,
        model: PreTrainedModel,
        optimizer: torch.optim.Optimizer,
        batch: RolloutBatch,
        mask_key: str,
        loss_fn: LossFn,
        weight_key: str | None = None,
        on_step: Callable[[], None] | None = None,
    ) -> dict[str, float]:
        a = self.config.algorithm
        schedule = UpdateSchedule(
            a.ppo_epochs, a.num_minibatches, a.micro_batch_tokens, self.config.optim.max_grad_norm
        )
        return run_update(
            model,
            optimizer,
            batch.to(self.device),
            mask_key=mask_key,
            loss_fn=loss_fn,
            schedule=schedule,
            generator=self.update_generator,
            shard=self.shard,
            weight_key=weight_key,
            on_step=on_step,
        )

    def policy_weights(self) -> Iterable[tuple[str, torch.Tensor]]:
        """The policy's parameters by Hugging Face name, whole (sharded ones are gathered: every rank
        must call this together). In single-process mode: the live parameters, nothing copied."""
        if self.shard.world_size == 1 and not _is_sharded(self.models.policy):
            return self.models.policy.named_parameters()
        return list(full_tensors(self.models.policy.named_parameters()))

    def sync_weights(self, engine: Engine) -> None:
        """Put the policy's current weights into the rollout engine (in place)."""
        engine.update_weights(self.policy_weights())

    def gradients(self, role: Literal["policy", "value"]) -> dict[str, torch.Tensor]:
        """The current gradients of ``policy`` or ``value``, whole, on the CPU (for checks; sharded
        ones are gathered, so every rank must call this together)."""
        model = {"policy": self.models.policy, "value": self.models.value}[role]
        if model is None:
            return {}
        grads = [(n, p.grad) for n, p in model.named_parameters() if p.grad is not None]
        return {name: g.cpu() for name, g in full_tensors(grads)}

    def save(self, directory: Path) -> None:
        """Policy (with tokenizer), value model and EWMA policy (when there are) in Hugging Face format."""
        directory = Path(directory)
        if self.shard.rank == 0:
            directory.mkdir(parents=True, exist_ok=True)
        for name, model in (
            ("policy", self.models.policy),
            ("value", self.models.value),
            ("proximal", self.proximal),
        ):
            if model is not None:
                save_model(model, directory / name, is_writer=self.shard.rank == 0)
        if self.shard.rank == 0:
            self.models.tokenizer.save_pretrained(directory / "policy")

    def close(self) -> None:
        """Nothing to release in-process."""


def full_tensors(named: Iterable[tuple[str, torch.Tensor]]) -> Iterable[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` with sharded ``DTensor`` s gathered into whole plain tensors (collective)."""
    for name, tensor in named:
        if isinstance(tensor, DTensor):
            yield name, tensor.full_tensor().detach()
        else:
            yield name, tensor.detach()


def _is_sharded(model: torch.nn.Module) -> bool:
    return any(isinstance(p, DTensor) for p in model.parameters())


def save_model(model: PreTrainedModel, directory: Path, *, is_writer: bool = True) -> None:
    """``save_pretrained``, gathering sharded parameters first (all ranks call; ``is_writer`` writes)."""
    if not _is_sharded(model):
        if is_writer:
            model.save_pretrained(directory)
        return
    state = {name: tensor.cpu() for name, tensor in full_tensors(model.state_dict().items())}
    if not is_writer:
        return
    # FSDP2 swaps the model's class for a subclass; write with the original one (config.json's
    # `architectures` names the class), building it on the meta device and assigning the gathered tensors.
    cls = next(c for c in type(model).__mro__ if "FSDP" not in c.__name__ and issubclass(c, PreTrainedModel))
    with torch.device("meta"):
        plain = cls(model.config)
    plain.load_state_dict(state, assign=True, strict=False)
    plain.tie_weights()
    plain.save_pretrained(directory)


def stitch(packs: list[torch.Tensor], pieces: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """Put ``pieces[i]`` (``[len(packs[i]), T_i]``, trimmed by ``select``) back at rows ``packs[i]``
    of a zero ``Tensor[B, T] float32`` shaped like ``mask``; zero wherever ``mask`` is False (padding
    positions hold whatever the forward pass gave them, which depends on how rows were packed)."""
    out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    for rows, piece in zip(packs, pieces, strict=True):
        out[rows, : piece.shape[1]] = piece.float()
    return torch.where(mask, out, 0.0)
