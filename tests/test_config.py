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
