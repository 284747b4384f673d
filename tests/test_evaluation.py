from __future__ import annotations

import json

import pytest

from tppo.cli import main
from tppo.engines.base import Completion, Engine, SamplingParams
from tppo.evaluation import avg_at_k, evaluate, pass_at_k
from tppo.rewards import ScoredBatch
from tppo.rollout.prompts import PromptRow
from tppo.tasks import get_task


def test_avg_and_pass_at_k_by_hand():
    scores = [[1, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 1]]
    # avg@4 = mean(2/4, 0/4, 4/4) = 0.5; pass@4 = 2 of 3 problems have a correct sample
    assert avg_at_k(scores) == pytest.approx(0.5)
    assert pass_at_k(scores) == pytest.approx(2 / 3)


class ScriptedEngine(Engine):
    """Answers prefix ``[p]`` with the tokens of ``responses[p]`` in turn (a fake for unit tests)."""

    def __init__(self, responses):
        super().__init__()
        self.responses, self.calls = responses, []

    def generate(self, prefixes, max_new_tokens, sampling):
        self.calls.append(len(prefixes))
        return [Completion(self.responses[p[0]].pop(0), [0.0] * 1, "stop") for p in prefixes]

    def update_weights(self, named_tensors):
        pass


class DigitTokenizer:
    def batch_decode(self, ids, skip_special_tokens=True):
        return [str(i[0]) for i in ids]


def test_evaluate_groups_k_samples_per_row_and_batches_rows():
    engine = ScriptedEngine({0: [[7], [3], [7]], 1: [[5], [5], [5]], 2: [[1], [2], [3]]})
    rows = [PromptRow((0,), "7"), PromptRow((1,), "5"), PromptRow((2,), "9")]
    seen = []

    def score(responses, truths):
        return ScoredBatch([float(r == t) for r, t in zip(responses, truths, strict=True)], 0, timeouts=1)

    result = evaluate(
        engine,
        DigitTokenizer(),
        score,
        rows,
        sampling=SamplingParams(),
        max_response_length=4,
        samples_per_prompt=3,
        prompts_per_batch=2,
        on_batch=lambda so_far, n: seen.append((len(so_far.scores), n)),
    )
    assert engine.calls == [6, 3] and seen == [(2, 2), (3, 1)]
    assert result.scores == [[1.0, 0.0, 1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    assert result.responses[0] == ["7", "3", "7"]
    assert result.avg_at_k == pytest.approx((2 / 3 + 1 + 0) / 3) and result.pass_at_k == pytest.approx(2 / 3)
    metrics = result.as_metrics()
    assert metrics["eval/avg_at_k"] == metrics["eval/accuracy"] == result.avg_at_k
    assert metrics["eval/reward_timeouts"] == 2.0  # one per batch from the scorer


def test_tppo_eval_writes_results_and_summary(tmp_path, capsys):
    task = get_task("lcg")
    data = tmp_path / "lcg.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": e.prompt, "answer": e.answer}) + "\n" for e in task.examples(3, 1))
    )
    out = tmp_path / "eval"
    argv = ["eval", "--model", "tppo-demo", "--data", str(data), "--samples", "2", "--max-tokens", "48"]
    argv += ["--reward", "task:lcg", "--template", "none", "--output-dir", str(out), "--device", "cpu"]
    argv += ["--prompts-per-batch", "2"]  # results.jsonl is written batch by batch
    assert main(argv) == 0
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    assert [r["index"] for r in lines] == [0, 1, 2]
    assert all(len(r["scores"]) == len(r["responses"]) == 2 for r in lines)
    assert lines[0]["ground_truth"] == task.examples(3, 1)[0].answer
    assert summary["problems"] == 3 and summary["k"] == 2 and summary["samples_per_s"] > 0
    assert summary["avg_at_k"] == pytest.approx(sum(r["avg"] for r in lines) / 3)
    assert summary["pass_at_k"] == pytest.approx(sum(r["pass"] for r in lines) / 3)
    assert "avg@2" in capsys.readouterr().out


def test_tppo_eval_names_a_malformed_row(tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "1=", "answer": "1"}\n{"prompt": "2="}\n')
    argv = ["eval", "--model", "tppo-demo", "--data", str(data), "--output-dir", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "bad.jsonl: row 2: missing field" in capsys.readouterr().err


def test_trainer_evaluates_a_held_out_file_every_n_steps(tmp_path):
    from tppo.config import load_config
    from tppo.trainer import Trainer

    task = get_task("lcg")
    train, held = tmp_path / "train.jsonl", tmp_path / "held.jsonl"
    train.write_text(
        "".join(json.dumps({"prompt": e.prompt, "answer": e.answer}) + "\n" for e in task.examples(8, 1))
    )
    held.write_text(
        "".join(json.dumps({"question": e.prompt, "answer": e.answer}) + "\n" for e in task.examples(5, 2))
    )
    overrides = [
        f"data.train_files=[{train}]",
        f"data.eval_file={held}",
        "data.eval_size=3",
        "data.prompt_template=none",
        "reward.name=task:lcg",
        "rollout.num_slots=4",
        "rollout.window_length=16",
        "rollout.max_response_length=32",
        "eval.samples_per_prompt=2",
        "trainer.total_steps=2",
        "trainer.eval_every=1",
        "trainer.progress=false",
        "trainer.tensorboard=false",
        "model.device=cpu",
    ]
    history = Trainer(load_config(None, overrides), tmp_path / "run").train()
    evals = [row for row in history if "eval/avg_at_k" in row]
    assert [row["step"] for row in evals] == [-1, 0, 1]  # before training, then every step
    assert all(0 <= row["eval/avg_at_k"] <= row["eval/pass_at_k"] <= 1 for row in evals)
    assert all(row["reward/timeouts"] == 0 for row in history if row["step"] >= 0)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert "eval/avg_at_k" in lines
