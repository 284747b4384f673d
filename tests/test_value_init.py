"""The value model may start from another checkpoint than the policy (a reward model, in the paper)."""

from __future__ import annotations

import logging

import torch
from conftest import make_tiny_qwen2
from transformers import Qwen2Config, Qwen2ForTokenClassification

from tppo.config import ModelConfig
from tppo.models import load_models


def test_value_from_a_reward_model_keeps_its_head_and_backbone(tmp_path, caplog):
    policy_dir, reward_dir = tmp_path / "policy", tmp_path / "reward"
    make_tiny_qwen2(vocab_size=32, seed=1).save_pretrained(policy_dir)
    config = Qwen2Config(**make_tiny_qwen2(vocab_size=32, seed=2).config.to_dict())
    config.num_labels = 1
    torch.manual_seed(5)
    reward_model = Qwen2ForTokenClassification(config)
    with torch.no_grad():
        reward_model.score.weight.normal_()
    reward_model.save_pretrained(reward_dir)

    with caplog.at_level(logging.WARNING, logger="tppo.models"):
        models = load_models(
            ModelConfig(
                policy_path=str(policy_dir),
                value_path=str(reward_dir),
                tokenizer_path="tppo-demo",
                device="cpu",
            )
        )
    torch.testing.assert_close(models.value.score.weight, reward_model.score.weight)  # the head is kept
    torch.testing.assert_close(models.value.model.embed_tokens.weight, reward_model.model.embed_tokens.weight)
    assert not torch.equal(models.value.model.embed_tokens.weight, models.policy.model.embed_tokens.weight)
    assert "value head not found" not in caplog.text

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tppo.models"):
        models = load_models(
            ModelConfig(policy_path=str(policy_dir), tokenizer_path="tppo-demo", device="cpu")
        )
    assert torch.count_nonzero(models.value.score.weight) == 0
    assert "value head not found" in caplog.text and "initialised to zero" in caplog.text
