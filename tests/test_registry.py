import pytest

from tppo.algorithms import ADVANTAGE_ESTIMATORS
from tppo.engines import ENGINES
from tppo.registry import Registry
from tppo.rewards import REWARDS, get_reward
from tppo.tasks import TASKS, get_task


def test_register_get_and_mapping_view() -> None:
    things: Registry[int] = Registry("thing")

    @things.register("double")
    def double(x: int) -> int:
        return 2 * x

    things.add("one", 1)  # type: ignore[arg-type]
    assert things.get("double") is double
    assert things["one"] == 1
    assert sorted(things) == ["double", "one"]
    assert len(things) == 2 and "one" in things
    things.remove("one")
    assert "one" not in things


def test_duplicate_name_is_refused() -> None:
    things: Registry[int] = Registry("thing")
    things.add("a", 1)
    with pytest.raises(ValueError, match="thing named 'a' is already registered"):
        things.add("a", 2)
    assert things["a"] == 1
    with pytest.raises(ValueError, match="non-empty name"):
        things.add("", 3)


def test_unknown_name_lists_registered_and_suggests_the_closest() -> None:
    things: Registry[int] = Registry("rollout engine")
    things.add("vllm", 1)
    things.add("hf", 2)
    expected = r"unknown rollout engine 'vlm' \(did you mean 'vllm'\?\); registered: hf, vllm"
    with pytest.raises(KeyError, match=expected):
        things.get("vlm")
    with pytest.raises(KeyError) as info:
        things.get("zzzzzz")
    assert "did you mean" not in str(info.value)


def test_every_kind_of_plugin_uses_the_one_registry_type() -> None:
    for registry in (ADVANTAGE_ESTIMATORS, ENGINES, REWARDS, TASKS):
        assert isinstance(registry, Registry)
    with pytest.raises(KeyError, match="did you mean 'lcg'"):
        get_task("lgc")
    with pytest.raises(KeyError, match="or module:function"):
        get_reward("no-such-reward")
