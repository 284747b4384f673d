from __future__ import annotations

import pytest

from tppo.config import ConfigError, TPPOConfig, load_config, parse_overrides, to_dict


def test_defaults_are_the_papers_objective():
    a = load_config().algorithm
    assert (a.gamma, a.gae_lambda, a.clip_eps_low, a.clip_eps_high) == (1.0, 0.95, 0.2, 0.28)
    assert (a.value_clip_low, a.value_clip_high) == (0.5, 0.6)


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("rollout:\n  window_length: 32\n  num_slots: 8\noptim:\n  betas: [0.8, 0.9]\n")
    config = load_config(path, ["rollout.window_length=16", "algorithm.dual_clip=3"])
    assert config.rollout.window_length == 16 and config.rollout.num_slots == 8
    assert config.optim.betas == (0.8, 0.9)
    assert config.algorithm.dual_clip == 3.0 and isinstance(config.algorithm.dual_clip, float)


def test_unknown_key_names_it_and_the_closest_valid_ones():
    with pytest.raises(
        ConfigError, match=r"unknown config key 'rollout.window_lenght'.*rollout.window_length"
    ):
        load_config(None, ["rollout.window_lenght=8"])
    with pytest.raises(ConfigError, match=r"unknown config key 'algoritm'.*did you mean algorithm"):
        load_config(None, ["algoritm.gamma=1"])


def test_wrong_type_is_refused_with_the_key():
    with pytest.raises(ConfigError, match=r"rollout.num_slots: expected int, got 'many'"):
        load_config(None, ["rollout.num_slots=many"])
    with pytest.raises(ConfigError, match=r"trainer.progress: expected bool"):
        load_config(None, ["trainer.progress=3"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("rollout.window_length=1024", r"rollout.window_length.*must not exceed rollout.max_response_length"),
        ("rollout.num_slots=0", r"rollout.num_slots: must be > 0"),
        ("algorithm.gamma=1.5", r"algorithm.gamma"),
        ("rollout.temperature=0", r"rollout.temperature"),
    ],
)
def test_impossible_values_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rollout: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_overrides_parse_yaml_values_and_reject_malformed():
    assert parse_overrides(["a.b=1", "a.c=[1, 2]", "d=null"]) == {"a": {"b": 1, "c": [1, 2]}, "d": None}
    with pytest.raises(ConfigError, match="not of the form"):
        parse_overrides(["rollout.window_length"])


def test_to_dict_round_trips(tmp_path):
    import yaml

    config = load_config(None, ["rollout.window_length=64"])
    path = tmp_path / "resolved.yaml"
    path.write_text(yaml.safe_dump(to_dict(config)))
    assert load_config(path) == config
    assert isinstance(load_config(path), TPPOConfig)


def test_shipped_configs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    tppo, ppo = load_config(root / "demo_tppo.yaml"), load_config(root / "demo_ppo.yaml")
    assert tppo.rollout.window_length < tppo.rollout.max_response_length
    assert ppo.rollout.window_length == ppo.rollout.max_response_length
    # the baseline differs from T-PPO only in the window
    tppo.rollout.window_length = ppo.rollout.window_length
    assert to_dict(tppo) == to_dict(ppo)


def test_cli_refuses_a_bad_key_before_loading_anything(tmp_path, capsys):
    from tppo.cli import main

    assert main(["train", "--output-dir", str(tmp_path / "run"), "rollout.window_lenght=8"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'rollout.window_lenght'" in err and "rollout.window_length" in err
    assert not (tmp_path / "run").exists()


def test_cli_hands_sft_flags_to_the_sft_parser(capsys):
    from tppo.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["sft", "--help"])
    assert exit_info.value.code == 0
    assert "--output-dir" in capsys.readouterr().out


def test_distributed_defaults_keep_one_process_and_bad_worker_settings_are_refused():
    d = TPPOConfig().distributed
    assert (d.rollout_workers, d.train_workers, d.uses_ray) == (0, 0, False)
    config = load_config(None, ["distributed.train_workers=2", "distributed.train.num_gpus=1"])
    assert config.distributed.resolved_backend() == "nccl" and config.distributed.uses_ray
    assert load_config(None, ["distributed.train_workers=2"]).distributed.resolved_backend() == "gloo"
    for overrides, message in [
        (["distributed.rollout_workers=-1"], "distributed.rollout_workers"),
        (["rollout.num_slots=4", "distributed.rollout_workers=5"], "must not exceed rollout.num_slots"),
        (["distributed.train.num_cpus=-1"], "distributed.train.num_cpus"),
        (["distributed.train_workers=2", "distributed.backend=nccl"], "nccl needs GPUs"),
        (["distributed.backend=mpi"], "is not one of"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(None, overrides)
    with pytest.raises(ConfigError, match=r"did you mean distributed\.rollout\.num_gpus"):
        load_config(None, ["distributed.rollout.num_gpu=1"])


# ---------------------------------------------------------------------- every value, at load time
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("algorithm.clip_eps_low=1.5", r"^algorithm\.clip_eps_low: must be in \[0, 1\), got 1\.5$"),
        ("algorithm.clip_eps_high=-0.1", r"^algorithm\.clip_eps_high: must be >= 0"),
        ("algorithm.dual_clip=0.5", r"^algorithm\.dual_clip: must be > 1 or null, got 0\.5$"),
        ("algorithm.value_clip_low=-1", r"^algorithm\.value_clip_low: must be >= 0"),
        ("algorithm.advantage_clip=0", r"^algorithm\.advantage_clip: must be > 0 or null"),
        ("algorithm.micro_batch_tokens=0", r"^algorithm\.micro_batch_tokens: must be > 0 or null"),
        ("algorithm.truncated_reward=.nan", r"^algorithm\.truncated_reward: must be a finite number"),
        ("rollout.top_k=-3", r"^rollout\.top_k: must be >= 0, got -3$"),
        ("rollout.max_batch_size=0", r"^rollout\.max_batch_size: must be > 0 or null"),
        ("rollout.vllm.max_model_len=0", r"^rollout\.vllm\.max_model_len: must be > 0 or null"),
        ("optim.actor_lr=0", r"^optim\.actor_lr: must be > 0, got 0\.0$"),
        ("optim.critic_lr=-1e-4", r"^optim\.critic_lr: must be > 0"),
        ("optim.betas=[0.9,1.0]", r"^optim\.betas\[1\]: must be in \[0, 1\), got 1\.0$"),
        ("optim.eps=0", r"^optim\.eps: must be > 0"),
        ("optim.max_grad_norm=0", r"^optim\.max_grad_norm: must be > 0 or null"),
        ("optim.weight_decay=-0.1", r"^optim\.weight_decay: must be >= 0"),
        ("data.max_prompt_length=0", r"^data\.max_prompt_length: must be > 0"),
        ("data.train_files=['a.jsonl', '']", r"^data\.train_files\[1\]: must not be empty"),
        ("trainer.num_threads=0", r"^trainer\.num_threads: must be > 0 or null"),
        ("trainer.max_wall_seconds=0", r"^trainer\.max_wall_seconds: must be > 0 or null"),
        ("trainer.critic_warmup_steps=-1", r"^trainer\.critic_warmup_steps: must be >= 0"),
        ("trainer.seed=-1", r"^trainer\.seed: must be in \[0, 4294967296\)"),
        ("eval.temperature=0", r"^eval\.temperature: must be > 0 or null"),
        ("eval.top_p=1.5", r"^eval\.top_p: must be in \(0, 1\] or null, got 1\.5$"),
        ("eval.samples_per_prompt=0", r"^eval\.samples_per_prompt: must be > 0"),
        ("distributed.rollout.num_gpus=-1", r"^distributed\.rollout\.num_gpus: must be >= 0"),
    ],
)
def test_every_value_is_checked_at_load_time(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])
    with pytest.raises(ConfigError, match=message):  # also where only combinations are left unchecked
        load_config(None, [override], validate=False)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "algorithm.advantage_estimator=egea",
            r"^algorithm\.advantage_estimator: unknown advantage estimator 'egea' \(did you mean 'egae'\?\)",
        ),
        ("rollout.engine=vlm", r"^rollout\.engine: unknown rollout engine 'vlm' \(did you mean 'vllm'\?\)"),
        ("data.task=lgc", r"^data\.task: unknown task 'lgc' \(did you mean 'lcg'\?\)"),
        ("reward.name=maht", r"^reward\.name: unknown reward 'maht' \(did you mean 'math'\?\)"),
        ("reward.name=task:colatz", r"^reward\.name: unknown task 'colatz'"),
        (
            "reward.name=no_such_module_xyz:score",
            r"^reward\.name: reward 'no_such_module_xyz:score': cannot import",
        ),
        ("reward.name=math_verify:no_such_function", r"^reward\.name: reward .* has no callable"),
        (
            "data.prompt_template=Solve this",
            r"^data\.prompt_template: prompt template 'Solve this' is neither",
        ),
        ("model.device=gpu", r"^model\.device: must be auto, cpu, cuda or cuda:N, got 'gpu'$"),
        ("model.dtype=fp16", r"^model\.dtype: 'fp16' is not one of"),
        ("optim.lr_schedule=cosin", r"^optim\.lr_schedule: 'cosin' is not one of .*did you mean 'cosine'"),
        ("rollout.vllm.dtype=float64", r"^rollout\.vllm\.dtype: 'float64' is not one of"),
    ],
)
def test_every_name_is_checked_against_its_registry(override, message):
    from tppo.config_checks import check_names

    with pytest.raises(ConfigError, match=message):
        check_names(load_config(None, [override]))


def test_names_that_exist_are_accepted():
    from tppo.config_checks import check_names

    config = load_config(
        None,
        [
            "algorithm.advantage_estimator=gae",
            "rollout.engine=vllm",
            "data.task=collatz",
            "reward.name=task:lcg",
            "data.prompt_template='Q: {problem}'",
            "model.device=cuda:1",  # the form; whether the device exists is an input check
            "algorithm.dual_clip=3",
        ],
    )
    check_names(config)
    assert (config.rollout.engine, config.reward.name, config.algorithm.dual_clip) == (
        "vllm",
        "task:lcg",
        3.0,
    )


def _config_classes():
    import dataclasses
    import typing

    seen, todo = set(), [TPPOConfig]
    while todo:
        cls = todo.pop()
        seen.add(cls)
        todo += [t for t in typing.get_type_hints(cls).values() if dataclasses.is_dataclass(t)]
    return seen


def test_every_numeric_field_declares_its_range():
    """A new numeric field without a constraint in its type fails here (a free float or int would
    be accepted at any value)."""
    import dataclasses
    import typing

    unbounded = {("AlgorithmConfig", "truncated_reward")}  # any reward; NaN/inf are still refused
    missing = []
    for cls in _config_classes():
        hints = typing.get_type_hints(cls, include_extras=True)
        plain = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            args = [plain[f.name], *typing.get_args(plain[f.name])]
            numeric = any(a in (int, float) for a in args) or typing.get_origin(plain[f.name]) is tuple
            if numeric and "Annotated" not in repr(hints[f.name]) and (cls.__name__, f.name) not in unbounded:
                missing.append(f"{cls.__name__}.{f.name}")
    assert missing == []


def test_a_nested_section_is_walked_by_the_config_classes():
    names = {cls.__name__ for cls in _config_classes()}
    assert {"VLLMConfig", "WorkerResources", "DistributedConfig"} <= names


# ---------------------------------------------------------------------- inputs, before any model
def test_model_sources_are_checked_without_loading(tmp_path, monkeypatch):
    from tppo.config_checks import check_inputs

    monkeypatch.chdir(tmp_path)
    for override, key in [
        ("model.policy_path=/no/such/model", "model.policy_path"),
        ("model.policy_path=./runs/base", "model.policy_path"),
        ("model.value_path=/no/such/value", "model.value_path"),
        ("model.tokenizer_path=not a repo id", "model.tokenizer_path"),
    ]:
        with pytest.raises(ConfigError, match=rf"^{key}: '.*' is neither a built-in model \(.*tppo-demo"):
            check_inputs(load_config(None, [override]))
    (tmp_path / "runs").mkdir()  # "runs/base" would be a Hub id, but runs/ is a local folder
    with pytest.raises(ConfigError, match=r"^model\.policy_path: 'runs/base' is neither"):
        check_inputs(load_config(None, ["model.policy_path=runs/base"]))
    (tmp_path / "weights").mkdir()
    with pytest.raises(ConfigError, match=r"^model\.policy_path: folder 'weights' has no tokenizer"):
        check_inputs(load_config(None, ["model.policy_path=weights"]))
    for accepted in [
        "model.policy_path=HuggingFaceTB/SmolLM2-135M",
        "model.policy_path=smollm2-135m-instruct",
        "model.policy_path=gpt2",  # a bare Hub name (no organisation)
    ]:
        check_inputs(load_config(None, [accepted]))


def test_data_files_are_checked_without_loading(tmp_path):
    from tppo.config_checks import check_inputs
    from tppo.sources import DataError

    missing = tmp_path / "train.jsonl"
    with pytest.raises(DataError, match=rf"^data\.train_files\[0\]: data file '{missing}' does not exist$"):
        check_inputs(load_config(None, [f"data.train_files=[{missing}]"]))
    with pytest.raises(DataError, match=r"^data\.eval_file: data file '/no/eval\.parquet' does not exist$"):
        check_inputs(load_config(None, ["data.eval_file=/no/eval.parquet"]))
    missing.write_text('{"problem": "1+1", "answer": "2"}\n')
    check_inputs(load_config(None, [f"data.train_files=[{missing}]"]))


def test_a_cuda_device_without_cuda_is_refused():
    import torch

    from tppo.config_checks import check_inputs

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match=r"^model\.device: 'cuda:0' but no CUDA device is available"):
        check_inputs(load_config(None, ["model.device=cuda:0"]))
    check_inputs(load_config(None, ["model.device=auto"]))


def test_public_names_still_import_from_tppo_config():
    import tppo.config as config

    for name in (
        "TPPOConfig",
        "load_config",
        "ConfigError",
        "from_dict",
        "to_dict",
        "parse_overrides",
        "merge",
        "save_config",
        "ModelConfig",
        "DataConfig",
        "DistributedConfig",
        "WorkerResources",
    ):
        assert hasattr(config, name), name
