"""The methods of the one trainer (``algorithm.name``): GRPO, DAPO and partial rollout on the demo task."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from conftest import SMALL_RUN

from tppo.config import ConfigError, load_config
from tppo.config_checks import check_names
from tppo.methods import METHODS, get_method
from tppo.trainer import Trainer

GROUPS = [*SMALL_RUN, "rollout.samples_per_prompt=4", "rollout.window_length=48"]
PARTIAL = [*SMALL_RUN, "rollout.samples_per_prompt=4", "algorithm.name=partial_rollout"]


def params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_the_registry_holds_every_method_and_names_the_known_ones():
    assert {"ppo", "grpo", "dapo", "partial_rollout", "vapo", "ppo_ewma"} <= set(METHODS)
    assert get_method("ppo").needs_critic and not get_method("grpo").needs_critic
    with pytest.raises(KeyError, match="grpo"):
        get_method("grpoo")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["algorithm.name=grpoo"], r"algorithm.name: .*grpo"),
        (["algorithm.name=grpo", "rollout.window_length=8"], r"rollout.window_length: algorithm.name=grpo"),
        (
            ["algorithm.name=dapo", "rollout.window_length=48", "rollout.num_slots=10"],
            r"rollout.num_slots: \(10\) must be a multiple of rollout.samples_per_prompt \(4\)",
        ),
        (["algorithm.name=partial_rollout", "distributed.train_workers=2"], r"distributed.train_workers"),
        (["algorithm.name=ppo_ewma", "distributed.train_workers=2"], r"distributed.train_workers"),
        (
            ["algorithm.name=geppo", "algorithm.recompute_old_log_probs=false"],
            r"algorithm.recompute_old_log_probs",
        ),
        (["algorithm.kl_coef=0.1", "distributed.train_workers=2"], r"algorithm.kl_coef"),
    ],
)
def test_bad_method_configs_name_the_key(overrides, message):
    config = load_config(None, [*SMALL_RUN, "rollout.samples_per_prompt=4", *overrides], validate=False)
    with pytest.raises(ConfigError, match=message):
        check_names(config)


@pytest.mark.slow
def test_grpo_loads_no_value_model_and_trains_the_policy(tmp_path):
    trainer = Trainer(load_config(None, [*GROUPS, "algorithm.name=grpo"]), tmp_path)
    assert trainer.models.value is None and trainer.learner.critic_optim is None
    assert trainer.models.reference is None
    before = params(trainer.models.policy)
    metrics = trainer.train_step()
    assert metrics["rollout/groups_completed"] == 3  # 12 slots, groups of 4, l = L
    assert metrics["rollout/waiting_responses"] == 0
    assert metrics["tokens/value"] == 0 and metrics["tokens/policy"] > 0
    assert not any(k.startswith("critic/") for k in metrics) and "time/critic_s" not in metrics
    assert any(not torch.equal(before[n], p) for n, p in trainer.models.policy.named_parameters())


@pytest.mark.slow
def test_a_dapo_step_whose_groups_are_all_degenerate_updates_nothing(tmp_path):
    # a reward that gives every response the same score: every group is degenerate
    trainer = Trainer(load_config(None, [*GROUPS, "algorithm.name=dapo"]), tmp_path)
    trainer.selector.cache_length = None  # (a truncated response would differ by its overlong penalty)
    trainer.scorer = lambda texts, truths: type(
        "R", (), {"scores": [1.0] * len(texts), "errors": 0, "timeouts": 0}
    )()
    before = params(trainer.models.policy)
    metrics = trainer.train_step()
    assert metrics["rollout/filtered_groups"] == 3 and metrics["rollout/groups_trained"] == 0
    assert metrics["actor/updates"] == 0 and metrics["tokens/policy"] == 0
    assert all(torch.equal(before[n], p) for n, p in trainer.models.policy.named_parameters())


@pytest.mark.slow
def test_dapo_waits_for_enough_informative_groups(tmp_path):
    trainer = Trainer(
        load_config(None, [*GROUPS, "algorithm.name=dapo", "algorithm.min_groups_per_update=100"]), tmp_path
    )
    metrics = trainer.train_step()
    kept = metrics["rollout/groups_completed"] - metrics["rollout/filtered_groups"]
    assert metrics["actor/updates"] == 0
    assert metrics["rollout/waiting_responses"] == 4 * kept  # held for a later update


@pytest.mark.slow
def test_partial_rollout_trains_each_group_once_when_complete(tmp_path):
    trainer = Trainer(load_config(None, [*PARTIAL, "algorithm.ppo_epochs=2"]), tmp_path)
    assert trainer.models.value is None
    trained: list[int] = []
    original = trainer.selector.select

    def spy(*args):
        out = original(*args)
        trained.extend(s.prompt.uid for s in out.slots)
        return out

    trainer.selector.select = spy
    rows = [trainer.train_step() for _ in range(6)]
    assert len(trained) == len(set(trained)) > 0  # nothing twice
    assert len(trained) % 4 == 0
    groups = {uid // 4 for uid in trained}
    assert all({4 * g + k for k in range(4)} <= set(trained) for g in groups)  # whole groups only
    assert any(r["diagnostics/policy_versions_mean"] > 1 for r in rows if r["tokens/policy"])
    assert all("actor/is_weight_mean" in r for r in rows if r["tokens/policy"])


def test_bench_methods_parse_to_runs_with_ppo_first():
    from tppo.bench import parse_methods

    runs = parse_methods(["grpo", "tppo@8", "partial_rollout", "dapo", "ppo"], 32)
    assert [(m.name, m.window, m.algorithm, m.is_ppo) for m in runs] == [
        ("ppo", 32, "ppo", True),
        ("grpo", 32, "grpo", False),
        ("tppo_l8", 8, "ppo", False),
        ("partial_rollout_l8", 8, "partial_rollout", False),
        ("dapo", 32, "dapo", False),
    ]
    with pytest.raises(ConfigError, match=r"--methods: 'grpoo'.*grpo"):
        parse_methods(["grpoo"], 32)
    with pytest.raises(ConfigError, match=r"--methods: 'tppo@x'"):
        parse_methods(["tppo@x"], 32)
    with pytest.raises(ConfigError, match=r"window 64 must be in \[1, 32\]"):
        parse_methods(["tppo@64"], 32)


def test_bench_methods_take_rollout_options():
    from tppo.bench import BenchSpec, parse_methods, run_config

    runs = parse_methods(["tppo@8+refill", "ppo+refill"], 32)
    assert [(m.name, m.window, m.options, m.is_ppo) for m in runs] == [
        ("ppo", 32, (), True),
        ("tppo_l8_refill", 8, ("refill",), False),
        ("ppo_refill", 32, ("refill",), False),
    ]
    assert [m.label for m in runs] == [
        "PPO (l = L = 32)",
        "T-PPO (l = 8, refill)",
        "PPO (l = L = 32, refill)",
    ]
    spec = BenchSpec(config=None, overrides=["rollout.max_response_length=32"], output_dir=Path("unused"))
    assert run_config(spec, runs[1], seed=0).rollout.refill_within_step
    assert not run_config(spec, runs[0], seed=0).rollout.refill_within_step
    with pytest.raises(ConfigError, match=r"--methods: 'tppo@8\+refil'.*unknown rollout option 'refil'"):
        parse_methods(["tppo@8+refil"], 32)


@pytest.mark.slow
def test_tiny_bench_of_the_methods(tmp_path, capsys):
    from tppo.cli import main

    tiny = [
        "rollout.num_slots=8",
        "rollout.max_response_length=32",
        "data.train_size=64",
        "data.eval_size=8",
        "trainer.total_steps=2",
        "trainer.eval_every=1",
        "trainer.progress=false",
        "trainer.tensorboard=false",
    ]
    out = tmp_path / "bench"
    argv = [
        "bench",
        *tiny,
        "--output-dir",
        str(out),
        "--seeds",
        "1",
        "--methods",
        "grpo",
        "partial_rollout@8",
    ]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["methods"]) == {"ppo", "grpo", "partial_rollout_l8"}
    config = (out / "runs" / "grpo" / "seed0" / "config.yaml").read_text()
    assert "name: grpo" in config and "samples_per_prompt: 4" in config
    assert "--methods grpo partial_rollout@8" in (out / "report.md").read_text()


@pytest.mark.slow
def test_partial_rollout_with_l_equal_to_L_is_grpo(tmp_path):
    # with the engine's log-probs as pi_old, proximal == behaviour: the decoupled loss is the clipped one
    same = [*GROUPS, "algorithm.recompute_old_log_probs=false", "algorithm.ppo_epochs=2"]
    runs = {}
    for name in ("grpo", "partial_rollout"):
        trainer = Trainer(load_config(None, [*same, f"algorithm.name={name}"]), tmp_path / name)
        rows = [trainer.train_step() for _ in range(2)]
        runs[name] = (params(trainer.models.policy), rows)
    grpo, partial = runs["grpo"], runs["partial_rollout"]
    assert all(torch.equal(grpo[0][n], partial[0][n]) for n in grpo[0])
    assert [r["actor/loss"] for r in grpo[1]] == [r["actor/loss"] for r in partial[1]]
    assert all(r["actor/is_weight_mean"] == 1.0 for r in partial[1])


@pytest.mark.slow
def test_a_kl_penalty_loads_a_frozen_reference_and_times_it(tmp_path):
    trainer = Trainer(load_config(None, [*GROUPS, "algorithm.name=grpo", "algorithm.kl_coef=0.1"]), tmp_path)
    reference = trainer.models.reference
    assert reference is not None and not any(p.requires_grad for p in reference.parameters())
    before = params(reference)
    rows = [trainer.train_step() for _ in range(2)]
    assert all("time/reference_s" in r for r in rows)
    assert rows[0]["actor/kl_ref"] == pytest.approx(0.0, abs=1e-6)  # the first update starts at the reference
    assert rows[1]["actor/kl_ref"] > 0
    assert all(torch.equal(before[n], p) for n, p in reference.named_parameters())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["grpo", "dapo", "partial_rollout", "vapo", "ppo_ewma", "geppo"])
def test_each_method_config_trains_through_the_cli(tmp_path, name):
    from pathlib import Path

    from tppo.cli import main
    from tppo.metrics import read_metrics

    config = Path(__file__).resolve().parents[1] / "configs" / f"demo_{name}.yaml"
    shipped = load_config(config)
    check_names(shipped)  # the shipped config as it is, with its method's checks
    critic = get_method(name).needs_critic
    assert shipped.algorithm.name == name and critic == (name in ("vapo", "ppo_ewma", "geppo"))
    small = [
        "rollout.num_slots=8",
        "rollout.max_response_length=32",
        "data.train_size=64",
        "data.eval_size=8",
    ]
    window = (
        "rollout.window_length=8"
        if name in ("partial_rollout", "vapo", "ppo_ewma")
        else "rollout.window_length=32"
    )
    argv = ["train", "--config", str(config), "--output-dir", str(tmp_path), *small, window]
    assert main([*argv, "trainer.total_steps=2", "trainer.eval_every=2", "trainer.progress=false"]) == 0
    rows = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r.get("step", -1) >= 0]
    assert len(rows) == 2 and (critic or all(r["tokens/value"] == 0 for r in rows))
    assert (tmp_path / "final" / "policy").is_dir() and (tmp_path / "final" / "value").exists() == critic


@pytest.mark.slow
def test_vapo_pretrains_the_value_then_adds_the_positive_lm_loss(tmp_path):
    overrides = [
        *SMALL_RUN,
        "rollout.window_length=48",
        "algorithm.name=vapo",
        "trainer.value_warmup_steps=1",
    ]
    trainer = Trainer(load_config(None, overrides), tmp_path)
    policy, value = params(trainer.models.policy), params(trainer.models.value)
    first = trainer.train_step()
    assert first["actor/updates"] == 0 and first["critic/updates"] > 0
    assert all(torch.equal(policy[n], p) for n, p in trainer.models.policy.named_parameters())
    assert any(not torch.equal(value[n], p) for n, p in trainer.models.value.named_parameters())
    rows = [trainer.train_step() for _ in range(3)]
    trained = [r for r in rows if r["actor/updates"] > 0]
    assert trained and all("actor/positive_lm_loss" in r for r in trained)
    positive = [r for r in trained if r["reward/mean"] > 0]
    assert positive and all(r["actor/positive_lm_loss"] > 0 for r in positive)


def test_vapo_lambda_is_length_adaptive_and_ppo_keeps_its_float():
    from tppo.rollout.batch import collate
    from tppo.rollout.prompts import Prompt
    from tppo.rollout.slot_pool import Slot

    slots = [
        Slot(Prompt(i, i, 0, 0, (1,), "x"), 0, response_ids=[2] * n, log_probs=[0.0] * n, token_steps=[0] * n)
        for i, n in enumerate((10, 40))
    ]
    batch = collate(slots, pad_token_id=0)
    config = load_config(None, ["algorithm.name=vapo"])
    lam = get_method("vapo").policy_lambda(batch, config)
    assert torch.allclose(lam, torch.tensor([1 - 1 / (0.05 * 10), 1 - 1 / (0.05 * 40)]).clamp(0, 1))
    assert get_method("ppo").policy_lambda(batch, load_config(None, [])) == 0.95


EWMA = [*SMALL_RUN, "algorithm.ppo_epochs=2", "algorithm.num_minibatches=2"]


@pytest.mark.slow
def test_ppo_ewma_with_decay_0_is_ppo(tmp_path):
    runs = {}
    for name in ("ppo", "ppo_ewma"):
        trainer = Trainer(
            load_config(None, [*EWMA, f"algorithm.name={name}", "algorithm.ewma_decay=0"]), tmp_path / name
        )
        rows = [trainer.train_step() for _ in range(3)]
        runs[name] = (params(trainer.models.policy), rows)
    ppo, ewma = runs["ppo"], runs["ppo_ewma"]
    assert all(torch.equal(ppo[0][n], ewma[0][n]) for n in ppo[0])
    assert [r["actor/loss"] for r in ppo[1]] == [r["actor/loss"] for r in ewma[1]]
    assert all("time/proximal_s" in r and r["actor/is_weight_mean"] == 1.0 for r in ewma[1])


@pytest.mark.slow
def test_ppo_ewma_averages_after_every_optimizer_step_and_resumes_with_it(tmp_path):
    from tppo.algorithms.proximal import ewma_update

    trainer = Trainer(
        load_config(None, [*EWMA, "algorithm.name=ppo_ewma", "algorithm.ewma_decay=0.5"]), tmp_path / "a"
    )
    proximal = trainer.learner.proximal
    assert proximal is not None and proximal is not trainer.models.policy
    expected = params(proximal)
    snapshots = []
    real = trainer.learner.actor_optim.step

    def step(*args, **kwargs):  # the policy after each optimizer step, to average by hand
        out = real(*args, **kwargs)
        snapshots.append(params(trainer.models.policy))
        return out

    trainer.learner.actor_optim.step = step
    trainer.train_step()
    assert len(snapshots) == 4  # 2 epochs x 2 minibatches
    for snapshot in snapshots:
        ewma_update(list(expected.values()), list(snapshot.values()), decay=0.5)
    assert all(torch.allclose(expected[n], p, atol=0, rtol=0) for n, p in proximal.named_parameters())
    # the EWMA weights are part of the checkpoint
    from tppo.metrics import MetricsLogger

    path = trainer.save_checkpoint(MetricsLogger(tmp_path / "a", tensorboard=False))
    other = Trainer(
        load_config(None, [*EWMA, "algorithm.name=ppo_ewma", "algorithm.ewma_decay=0.5"]), tmp_path / "b"
    )
    other.resume(path)
    assert all(
        torch.equal(p, q)
        for p, q in zip(proximal.parameters(), other.learner.proximal.parameters(), strict=True)
    )


@pytest.mark.slow
def test_geppo_with_one_step_is_ppo_with_a_symmetric_clip(tmp_path):
    same = [*EWMA, "algorithm.clip_eps_high=0.2", "algorithm.geppo_reuse_steps=1"]
    runs = {}
    for name in ("ppo", "geppo"):
        trainer = Trainer(load_config(None, [*same, f"algorithm.name={name}"]), tmp_path / name)
        rows = [trainer.train_step() for _ in range(3)]
        runs[name] = (params(trainer.models.policy), rows)
    ppo, geppo = runs["ppo"], runs["geppo"]
    assert all(torch.allclose(ppo[0][n], geppo[0][n], atol=1e-6) for n in ppo[0])
    assert [r["tokens/policy"] for r in ppo[1]] == [r["tokens/policy"] for r in geppo[1]]


@pytest.mark.slow
def test_geppo_trains_the_last_steps_tokens_again_and_keeps_them_in_the_checkpoint(tmp_path):
    overrides = [*SMALL_RUN, "algorithm.name=geppo", "algorithm.geppo_reuse_steps=3"]
    trainer = Trainer(load_config(None, overrides), tmp_path)
    ppo = Trainer(load_config(None, [*SMALL_RUN]), tmp_path / "ppo")
    rows = [trainer.train_step() for _ in range(4)]
    base = [ppo.train_step() for _ in range(4)]
    assert rows[0]["tokens/policy"] == base[0]["tokens/policy"]  # nothing to reuse yet
    assert all(r["tokens/policy"] > b["tokens/policy"] for r, b in zip(rows[1:], base[1:], strict=True))
    assert [r["tokens/value"] for r in rows] == [b["tokens/value"] for b in base]  # Monte Carlo on new ones
    assert sum(r["rollout/reused_responses"] for r in rows) > 0
    state = copy.deepcopy(trainer.state_dict())
    other = Trainer(load_config(None, overrides), tmp_path / "b")
    other.load_state_dict(state)
    assert [(s, slot.prompt.uid) for s, slot in other.selector.kept] == [
        (s, slot.prompt.uid) for s, slot in trainer.selector.kept
    ]


@pytest.mark.slow
def test_geppo_honours_the_positive_lm_loss_when_set(tmp_path):
    overrides = [
        *SMALL_RUN,
        "rollout.window_length=48",
        "algorithm.name=geppo",
        "algorithm.positive_lm_coef=0.1",
    ]
    trainer = Trainer(load_config(None, overrides), tmp_path)
    rows = [trainer.train_step() for _ in range(2)]
    assert all("actor/positive_lm_loss" in r for r in rows)
    assert any(r["actor/positive_lm_loss"] > 0 for r in rows if r["reward/mean"] > 0)
