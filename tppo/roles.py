"""Wiring the trainer's two roles, in-process or remote; the trainer's phases are the same either way.

- rollout (sync + generate): an :class:`~tppo.engines.base.Engine`. In-process, the configured engine
  over the learner's own policy; with ``distributed.rollout_workers = N``, a
  :class:`~tppo.distributed.ray_roles.RayRolloutGroup` of N Ray actors sharing the slots.
- learning (score, actor, critic, and the weights to sync): a :class:`~tppo.learner.LearnerRole`.
  In-process, a :class:`~tppo.learner.Learner`; with ``distributed.train_workers = M``, a
  :class:`~tppo.distributed.ray_roles.RayLearnerGroup` of M FSDP2 processes.
"""

from __future__ import annotations

import copy

from transformers import PreTrainedModel

from tppo.config import TPPOConfig
from tppo.engines import get_engine_factory
from tppo.engines.base import Engine
from tppo.learner import Learner, LearnerRole
from tppo.methods import get_method
from tppo.models import DTYPES, Models, Vocabulary, load_models, load_policy, resolve_model_path
from tppo.roofline import ModelShape, model_shape


def build_engine(config: TPPOConfig, policy: PreTrainedModel, vocabulary: Vocabulary, *, seed: int) -> Engine:
    """The configured rollout engine, generating with ``policy``'s weights (see ``Engine.from_config``)."""
    return get_engine_factory(config.rollout.engine).from_config(config, policy, vocabulary, seed=seed)


def build_learner(config: TPPOConfig, models: Models | None = None) -> LearnerRole:
    """The training role: in-process (``train_workers = 0``) or M remote FSDP2 processes."""
    if config.distributed.train_workers == 0:
        if models is None:
            method = get_method(config.algorithm.name)
            models = load_models(
                config.model, value=method.needs_critic, reference=config.algorithm.kl_coef > 0
            )
        return Learner(config, models)
    from tppo.distributed.ray_roles import RayLearnerGroup

    return RayLearnerGroup(config)


def build_rollout(config: TPPOConfig, learner: LearnerRole, vocabulary: Vocabulary) -> Engine:
    """The rollout role: in-process (``rollout_workers = 0``) or N Ray actors sharing the slots.

    In-process with an in-process learner, the engine samples from the very policy being trained
    (syncing copies nothing), or from a copy with ``rollout.overlap_generation``; with remote training
    workers it holds a copy, synced every step.
    """
    if config.distributed.rollout_workers == 0:
        policy = learner.models.policy if isinstance(learner, Learner) else load_policy(config.model)
        if config.rollout.overlap_generation and get_engine_factory(config.rollout.engine).samples_in_place:
            policy = copy.deepcopy(policy)  # it generates while the learner updates its own
        return build_engine(config, policy, vocabulary, seed=config.trainer.seed)
    from tppo.distributed.ray_roles import RayRolloutGroup

    return RayRolloutGroup(config)


def decode_shape(config: TPPOConfig) -> ModelShape:
    """The policy's :class:`~tppo.roofline.ModelShape` (from its ``config.json``) in the dtype the
    rollout generates in (vLLM's ``dtype`` when set, else ``model.dtype``): the input of the
    rollout's roofline figures."""
    from transformers import AutoConfig

    dtype = (config.rollout.engine == "vllm" and config.rollout.vllm.dtype) or config.model.dtype
    hf_config = AutoConfig.from_pretrained(resolve_model_path(config.model.policy_path))
    return model_shape(hf_config, dtype_bytes=DTYPES[dtype].itemsize)
