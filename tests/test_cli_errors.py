"""Bad input through the command line: exit code 2, one stderr line naming the key (or file, row
and field), no traceback, and no model loaded (the loaders are replaced by ones that fail)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tppo.cli import main

TINY = ["rollout.num_slots=4", "rollout.window_length=8", "rollout.max_response_length=16"]


@pytest.fixture
def no_models(monkeypatch):
    """Any model load fails the test: bad input must be refused before one."""
    import tppo.models
    import tppo.roles
    import tppo.trainer

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was refused")

    for module, name in [
        (tppo.models, "load_models"),
        (tppo.models, "load_policy"),
        (tppo.roles, "load_models"),
        (tppo.roles, "load_policy"),
        (tppo.trainer, "build_learner"),
    ]:
        monkeypatch.setattr(module, name, refuse)


def refused(argv: list[str], capsys) -> str:
    """Run ``tppo ARGV``; it must exit 2 with one stderr line and no traceback; returns the line."""
    code = main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    return lines[0]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# ---------------------------------------------------------------------- tppo train
@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("algorithm.clip_eps_low=1.5", "algorithm.clip_eps_low"),
        ("algorithm.dual_clip=0.5", "algorithm.dual_clip"),
        ("algorithm.advantage_estimator=egea", "algorithm.advantage_estimator"),
        ("rollout.engine=vlm", "rollout.engine"),
        ("rollout.top_k=-3", "rollout.top_k"),
        ("reward.name=maht", "reward.name"),
        ("model.policy_path=/no/such/model", "model.policy_path"),
        ("model.device=gpu", "model.device"),
        ("data.prompt_template=oops", "data.prompt_template"),
        ("rollout.window_length", "rollout.window_length"),  # not key=value
        ("optim.betas=[0.9", "optim.betas"),  # not a YAML value
    ],
)
def test_train_refuses_a_bad_setting_before_any_model_loads(override, key, tmp_path, capsys, no_models):
    line = refused(["train", "--output-dir", str(tmp_path / "run"), *TINY, override], capsys)
    assert line.startswith("tppo: config error: ") and key in line
    assert not (tmp_path / "run").exists()


def test_train_refuses_a_missing_config_file(tmp_path, capsys, no_models):
    line = refused(["train", "--config", str(tmp_path / "nope.yaml"), "--output-dir", str(tmp_path)], capsys)
    assert f"config file '{tmp_path / 'nope.yaml'}' does not exist" in line


def test_overwrite_with_a_bad_config_deletes_nothing(tmp_path, capsys, no_models):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("{}\n")
    refused(["train", "--output-dir", str(run), "--overwrite", "rollout.top_k=-3"], capsys)
    assert (run / "metrics.jsonl").is_file()


def test_train_refuses_a_missing_data_file_naming_it(tmp_path, capsys, no_models):
    missing = tmp_path / "train.jsonl"
    line = refused(
        ["train", "--output-dir", str(tmp_path / "run"), *TINY, f"data.train_files=[{missing}]"], capsys
    )
    assert line == f"tppo: data error: data.train_files[0]: data file '{missing}' does not exist"


def test_train_refuses_a_row_without_its_field_naming_file_row_and_field(tmp_path, capsys, no_models):
    data = write_jsonl(tmp_path / "train.jsonl", [{"problem": "12=", "answer": "3"}, {"problem": "7="}])
    line = refused(
        ["train", "--output-dir", str(tmp_path / "run"), *TINY, f"data.train_files=[{data}]"], capsys
    )
    assert line.startswith(f"tppo: data error: {data}: row 2: missing field ")
    assert "'answer'" in line


def test_train_refuses_an_overlong_prompt_naming_its_row(tmp_path, capsys, no_models):
    data = write_jsonl(
        tmp_path / "train.jsonl", [{"problem": "1=", "answer": "1"}, {"problem": "9" * 80, "answer": "2"}]
    )
    overrides = [f"data.train_files=[{data}]", "data.prompt_template=none", "data.chat_template=false"]
    line = refused(["train", "--output-dir", str(tmp_path / "run"), *TINY, *overrides], capsys)
    assert re.fullmatch(
        rf"tppo: data error: {re.escape(str(data))}: row 2: prompt of \d+ tokens exceeds "
        r"data\.max_prompt_length=64",
        line,
    )


def test_train_refuses_an_overlong_task_prompt(tmp_path, capsys, no_models):
    line = refused(
        ["train", "--output-dir", str(tmp_path / "run"), *TINY, "data.max_prompt_length=2"], capsys
    )
    assert line.startswith("tppo: data error: task 'lcg' example 0: prompt of ")
    assert "data.max_prompt_length=2" in line


# ---------------------------------------------------------------------- tppo eval
@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--samples", "0"], "--samples (eval.samples_per_prompt): must be > 0"),
        (["--top-p", "1.5"], "--top-p (eval.top_p): must be in (0, 1]"),
        (["--temperature", "0"], "--temperature (eval.temperature): must be > 0"),
        (["--max-tokens", "0"], "--max-tokens"),
        (["--engine", "vlm"], "--engine (rollout.engine): unknown rollout engine 'vlm'"),
        (["--reward", "maht"], "--reward (reward.name): unknown reward 'maht'"),
        (["--template", "oops"], "--template (data.prompt_template)"),
        (["--dtype", "fp16"], "--dtype (model.dtype)"),
        (["--limit", "0"], "--limit: must be > 0"),
        (["--prompts-per-batch", "0"], "--prompts-per-batch: must be > 0"),
        (["--model", "/no/such/model"], "--model (model.policy_path): '/no/such/model' is neither"),
    ],
)
def test_eval_refuses_a_bad_flag_before_the_model_loads(flags, named, tmp_path, capsys, no_models):
    data = write_jsonl(tmp_path / "test.jsonl", [{"problem": "1+1", "answer": "2"}])
    line = refused(
        ["eval", "--model", "tppo-demo", "--data", str(data), "--output-dir", str(tmp_path / "o"), *flags],
        capsys,
    )
    assert line.startswith("tppo: config error: ") and named in line


def test_eval_refuses_missing_or_malformed_data_before_the_model_loads(tmp_path, capsys, no_models):
    out = ["--output-dir", str(tmp_path / "o")]
    line = refused(["eval", "--model", "tppo-demo", "--data", str(tmp_path / "nope.jsonl"), *out], capsys)
    assert (
        line
        == f"tppo: data error: --data (data.eval_file): data file '{tmp_path / 'nope.jsonl'}' does not exist"
    )
    data = write_jsonl(tmp_path / "test.jsonl", [{"question": "1+1"}])
    line = refused(["eval", "--model", "tppo-demo", "--data", str(data), *out], capsys)
    assert line.startswith(f"tppo: data error: {data}: row 1: missing field ")


# ---------------------------------------------------------------------- tppo bench, bench-engines
@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--seeds", "0"], "--seeds: must be >= 1"),
        (["--first-seed", "-1"], "--first-seed: must be >= 0"),
        (["--jobs", "0"], "--jobs: must be >= 1"),
        (["--budget-s", "0"], "--budget-s: must be > 0"),
        (["--target", "-0.5"], "--target: must be >= 0"),
        (["--windows", "9999"], "--windows: 9999 must be in"),
        (["rollout.engine=vlm"], "rollout.engine"),
        (
            ["data.train_files=[/no/train.jsonl]"],
            "data.train_files[0]: data file '/no/train.jsonl' does not exist",
        ),
    ],
)
def test_bench_refuses_bad_input_before_any_run(args, named, tmp_path, capsys, no_models):
    line = refused(["bench", "--output-dir", str(tmp_path / "bench"), *args], capsys)
    assert named in line


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--repeats", "0"], "--repeats: must be >= 1"),
        (["rollout.top_k=-3"], "rollout.top_k"),
        (["model.policy_path=/no/such/model"], "model.policy_path"),
    ],
)
def test_bench_engines_refuses_bad_input_before_any_model(args, named, capsys, no_models):
    line = refused(["bench-engines", *args], capsys)
    assert named in line


def test_the_trainer_checks_names_and_inputs_itself(tmp_path, no_models):
    """A config built in code (not by load_config) is checked too, before the models load."""
    from tppo.config import ConfigError, load_config
    from tppo.sources import DataError
    from tppo.trainer import Trainer

    config = load_config(None, TINY)
    config.reward.name = "maht"
    with pytest.raises(ConfigError, match=r"^reward\.name: unknown reward 'maht'"):
        Trainer(config, tmp_path)
    config.reward.name = None
    config.data.train_files = [str(tmp_path / "missing.jsonl")]
    with pytest.raises(
        DataError, match=r"^data\.train_files\[0\]: data file .*missing\.jsonl' does not exist"
    ):
        Trainer(config, tmp_path)


def test_a_real_process_exits_2_with_one_line(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tppo.cli",
            "train",
            "--output-dir",
            str(tmp_path),
            "algorithm.clip_eps_low=1.5",
        ],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)},
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "tppo: config error: algorithm.clip_eps_low: must be in [0, 1), got 1.5"
    ]


def test_plot_refuses_a_directory_without_metrics_and_mismatched_labels(tmp_path, capsys):
    line = refused(["plot", str(tmp_path / "nope"), "--output", str(tmp_path / "p.png")], capsys)
    assert (
        line
        == f"tppo: data error: run directory '{tmp_path / 'nope'}' holds no metrics.jsonl (not a tppo run)"
    )
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    line = refused(["plot", str(tmp_path / "run"), "--labels", "a", "b"], capsys)
    assert line.startswith("tppo: config error: --labels: needs one label per run directory (1), got 2")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.jsonl", b'{"problem": "1=", "answer": "1"}\n\xff\xfe\n', r": row 2: not UTF-8 text"),
        ("bad.parquet", b"not a parquet file", r"bad\.parquet' is not a readable parquet file"),
    ],
)
def test_an_unreadable_data_file_is_named(name, content, message, tmp_path, capsys, no_models):
    data = tmp_path / name
    data.write_bytes(content)
    line = refused(
        ["train", "--output-dir", str(tmp_path / "run"), *TINY, f"data.train_files=[{data}]"], capsys
    )
    assert line.startswith("tppo: data error: ") and re.search(message, line), line


def test_a_hugging_face_data_set_that_cannot_load_is_named(tmp_path, capsys, no_models, monkeypatch):
    import sys
    import types

    def load_dataset(*args, **kwargs):
        raise FileNotFoundError("Couldn't find a dataset script at no/such\nmore detail")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    import importlib.util

    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "datasets" else None
    )
    line = refused(
        ["train", "--output-dir", str(tmp_path / "run"), *TINY, "data.train_files=[no/such@test]"], capsys
    )
    assert line == (
        "tppo: data error: data source 'no/such@test' is not a local file and could not be loaded as a "
        "Hugging Face data set (FileNotFoundError: Couldn't find a dataset script at no/such)"
    )
