"""The update phase: micro-batching and accumulation change memory, not the result."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_tiny_qwen2

from tppo.config import load_config
from tppo.engines.hf import HFEngine
from tppo.engines.types import SamplingParams
from tppo.learner import Learner
from tppo.models import disable_dropout, load_models
from tppo.rollout.batch import collate
from tppo.rollout.prompts import Prompt
from tppo.rollout.slot_pool import Slot
from tppo.update import UpdateSchedule, actor_loss_fn, clipped_surrogate, critic_loss_fn, run_update


def make_batch(seed=0):
    gen = torch.Generator().manual_seed(seed)
    slots = []
    for i, (p, t) in enumerate([(3, 9), (5, 2), (2, 14), (4, 6), (6, 11)]):
        prompt = Prompt(uid=i, row=i, sample=0, epoch=0, token_ids=tuple(range(2, 2 + p)), ground_truth="")
        response = torch.randint(2, 30, (t,), generator=gen).tolist()
        steps = [0] * (t // 2) + [1] * (t - t // 2)
        slots.append(Slot(prompt, 0, response, [0.0] * t, steps, "stop" if i % 2 else None))
    batch = collate(slots, pad_token_id=0)
    shape = batch.response_mask.shape
    batch.per_token["advantages"] = torch.randn(shape, generator=gen)
    batch.per_token["old_log_probs"] = -torch.rand(shape, generator=gen) - 2.5
    batch.per_token["policy_mask"] = batch.response_mask & (batch.token_steps == 1)
    batch.per_token["returns"] = torch.rand(shape, generator=gen)
    batch.per_token["old_values"] = torch.rand(shape, generator=gen)
    batch.per_token["value_mask"] = batch.response_mask & batch.is_finished[:, None]
    return batch


def train_once(loss_fn, mask_key, micro_batch_tokens, minibatches=1):
    model = make_tiny_qwen2(vocab_size=32, seed=4)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = UpdateSchedule(epochs=1, num_minibatches=minibatches, micro_batch_tokens=micro_batch_tokens)
    stats = run_update(
        model,
        optimizer,
        make_batch(),
        mask_key=mask_key,
        loss_fn=loss_fn,
        schedule=schedule,
        generator=torch.Generator().manual_seed(0),
    )
    return model, stats


ACTOR = actor_loss_fn(
    sampling=SamplingParams(temperature=1.0),
    surrogate=clipped_surrogate(clip_eps_low=0.2, clip_eps_high=0.28, dual_clip=None),
)
CRITIC = critic_loss_fn(value_clip_low=0.5, value_clip_high=0.6)


def test_actor_micro_batches_give_the_same_update_as_one_pass():
    whole, whole_stats = train_once(ACTOR, "policy_mask", None)
    pieces, piece_stats = train_once(ACTOR, "policy_mask", 20)  # forces one or two rows per pass
    for (name, a), (_, b) in zip(whole.named_parameters(), pieces.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
    assert abs(whole_stats["loss"] - piece_stats["loss"]) < 1e-5
    untouched = make_tiny_qwen2(vocab_size=32, seed=4)
    assert any(not torch.equal(a, b) for a, b in zip(whole.parameters(), untouched.parameters(), strict=True))


def test_critic_trains_only_rows_with_value_tokens_and_micro_batches_agree():
    from transformers import Qwen2ForTokenClassification

    def value_model():
        causal = make_tiny_qwen2(vocab_size=32, seed=5)
        config = copy.deepcopy(causal.config)
        config.num_labels = 1
        model = Qwen2ForTokenClassification(config)
        model.model.load_state_dict(causal.model.state_dict())
        torch.nn.init.normal_(model.score.weight, std=0.1, generator=torch.Generator().manual_seed(0))
        disable_dropout(model)  # the classifier's dropout (0.1 by default) would make runs differ
        return model

    results = []
    for tokens in (None, 16):
        model = value_model()
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        stats = run_update(
            model,
            optimizer,
            make_batch(),
            mask_key="value_mask",
            loss_fn=CRITIC,
            schedule=UpdateSchedule(micro_batch_tokens=tokens),
            generator=torch.Generator().manual_seed(0),
        )
        results.append((model, stats))
    (a, sa), (b, sb) = results
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=1e-5, msg=name)
    assert sa["updates"] == 1.0 and abs(sa["loss"] - sb["loss"]) < 1e-5


def test_no_tokens_no_update():
    batch = make_batch()
    batch.per_token["policy_mask"] = torch.zeros_like(batch.per_token["policy_mask"])
    model = make_tiny_qwen2(vocab_size=32, seed=4)
    before = [p.detach().clone() for p in model.parameters()]
    stats = run_update(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        batch,
        mask_key="policy_mask",
        loss_fn=ACTOR,
        schedule=UpdateSchedule(),
        generator=torch.Generator().manual_seed(0),
    )
    assert stats == {"updates": 0.0}
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_minibatches_make_several_optimizer_steps():
    _, stats = train_once(ACTOR, "policy_mask", None, minibatches=2)
    assert stats["updates"] == 2.0


FILTERED = ["rollout.temperature=0.8", "rollout.top_p=0.9", "rollout.top_k=8"]


def learner_and_rollouts(*overrides: str) -> tuple[Learner, object]:
    """A demo-model learner (4 epochs x 2 minibatches, a high learning rate) and a batch the HF engine
    sampled from its policy (so the engine's log-probs are the policy's), random advantages."""
    config = load_config(
        None,
        [
            "rollout.num_slots=8",
            "algorithm.ppo_epochs=4",
            "algorithm.num_minibatches=2",
            "optim.actor_lr=2e-2",
            "trainer.seed=3",
            *overrides,
        ],
    )
    learner = Learner(config, load_models(config.model))
    r = config.rollout
    engine = HFEngine(
        learner.models.policy, eos_token_ids=learner.models.eos_token_ids, pad_token_id=0, seed=5
    )
    prompts = [tuple(range(3, 3 + n)) for n in (2, 5, 3, 6, 4, 2, 7, 3)]
    sampling = SamplingParams(temperature=r.temperature, top_p=r.top_p, top_k=r.top_k)
    completions = engine.generate([list(p) for p in prompts], [12] * len(prompts), sampling)
    slots = []
    for i, (prompt_ids, c) in enumerate(zip(prompts, completions, strict=True)):
        prompt = Prompt(uid=i, row=i, sample=0, epoch=0, token_ids=prompt_ids, ground_truth="")
        slots.append(Slot(prompt, 0, c.token_ids, c.log_probs, [0] * len(c.token_ids), c.finish_reason))
    batch = collate(slots, pad_token_id=0)
    batch.per_token["advantages"] = torch.randn(
        batch.response_mask.shape, generator=torch.Generator().manual_seed(1)
    )
    batch.per_token["policy_mask"] = batch.response_mask.clone()
    return learner, batch


def test_recompute_off_takes_old_log_probs_from_the_engine_and_keeps_the_trust_region():
    learner, batch = learner_and_rollouts("algorithm.recompute_old_log_probs=false", *FILTERED)
    old = learner.old_forward(batch)
    mask = batch.response_mask
    assert torch.equal(old["old_log_probs"][mask], batch.engine_log_probs[mask])
    assert torch.all(old["old_log_probs"][~mask] == 0)
    batch.per_token.update(old)
    stats = learner.update_actor(batch)
    assert stats["updates"] == 8
    # the policy moves away from pi_old after the first minibatch: the ratio leaves 1 and clipping acts
    assert stats["ratio_max"] > 1.01 and stats["approx_kl"] > 1e-4 and stats["clipfrac"] > 0


@pytest.mark.parametrize("sampling", [[], FILTERED], ids=["unfiltered", "top-k+top-p"])
def test_recomputed_old_log_probs_are_the_engines_under_the_same_distribution(sampling):
    """Engine and trainer share one log-prob contract: recomputing gives the engine's log-probs (to
    float noise), so recompute on and off take the same update."""
    results = []
    for recompute in ("true", "false"):
        learner, batch = learner_and_rollouts(
            f"algorithm.recompute_old_log_probs={recompute}", "optim.actor_lr=2e-3", *sampling
        )
        old = learner.old_forward(batch)
        mask = batch.response_mask
        torch.testing.assert_close(
            old["old_log_probs"][mask], batch.engine_log_probs[mask], atol=1e-4, rtol=0
        )
        batch.per_token.update(old)
        results.append(learner.update_actor(batch))
    on, off = results
    for key in ("loss", "ratio_max", "clipfrac", "approx_kl"):
        assert on[key] == pytest.approx(off[key], rel=1e-3, abs=1e-5), key
