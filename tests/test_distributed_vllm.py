"""The vLLM engine inside Ray rollout workers (CPU build): ``rollout.engine=vllm`` with
``distributed.rollout_workers=2`` trains 3 T-PPO steps; every sync reloads each worker's vLLM in place
(the same process and engine before and after), and after a sync each worker's greedy output is the
trained policy's, token for token (checked against the Hugging Face engine on the learner's weights).
One Ray cluster for the module; each worker takes one logical CPU."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does: idle OpenMP threads sleep

import pytest
import torch
from conftest import SMALL_RUN

ray = pytest.importorskip("ray")
pytest.importorskip("vllm")

from tppo.config import load_config  # noqa: E402
from tppo.engines import HFEngine, SamplingParams  # noqa: E402
from tppo.trainer import Trainer  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]

SMALL = [
    *SMALL_RUN,
    "trainer.num_threads=1",
    "trainer.total_steps=3",
    "rollout.engine=vllm",
    "rollout.max_response_length=16",
    "rollout.vllm.kv_cache_memory_gib=0.0625",
    "distributed.rollout_workers=2",
    "distributed.rollout.num_cpus=1",
]
GREEDY = SamplingParams(temperature=0.0)


def greedy_tokens(engine, prefixes, budget=12):
    return [c.token_ids for c in engine.generate(prefixes, [budget] * len(prefixes), GREEDY)]


def test_three_tppo_steps_with_vllm_in_two_rollout_workers_sync_in_place_to_the_trained_policy(tmp_path):
    trainer = Trainer(load_config(None, SMALL), tmp_path)
    try:
        group = trainer.engine
        assert type(group).__name__ == "RayRolloutGroup" and group.num_workers == 2
        before = group.identities()
        history = trainer.train()
        assert [row["step"] for row in history] == [0, 1, 2]
        assert sum(row["rollout/finished"] for row in history) > 0
        for worker in (0, 1):  # both workers continued carried-over responses
            assert sum(row[f"rollout/carried_worker{worker}"] for row in history[1:]) > 0
        assert group.identities() == before  # three syncs, no worker or engine rebuilt

        policy = trainer.learner.models.policy
        reference = HFEngine.from_config(trainer.config, policy, trainer.vocabulary, seed=0)
        prefixes = [list(slot.prompt.token_ids) for slot in trainer.pool.active()[:6]]
        assert group.workers_of(len(prefixes)) == [0, 0, 0, 1, 1, 1]
        group.update_weights(policy.named_parameters())
        assert greedy_tokens(group, prefixes) == greedy_tokens(reference, prefixes)

        # weights that change the greedy output reach both workers' vLLM too
        trained = greedy_tokens(reference, prefixes)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for param in policy.parameters():
                param.add_(0.5 * param.std().nan_to_num() * torch.randn(param.shape, generator=generator))
        perturbed = greedy_tokens(reference, prefixes)
        assert perturbed[:3] != trained[:3] and perturbed[3:] != trained[3:]  # each worker's share
        group.update_weights(policy.named_parameters())
        assert greedy_tokens(group, prefixes) == perturbed
        assert group.identities() == before
    finally:
        trainer.close()
