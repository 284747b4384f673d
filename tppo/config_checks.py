"""Checks of a :class:`~tppo.config.TPPOConfig` beyond types and ranges, before anything loads.

- :func:`check_names`: every name against its registry (method, with the method's own checks;
  advantage estimator, rollout engine, task, reward, prompt template, device form); run by
  :func:`tppo.config.load_config`.
- :func:`check_inputs`: what the run reads exists (model and tokenizer sources, data files, the
  configured device); run by the CLI and by :class:`tppo.trainer.Trainer` before any model loads.

Each failure is a :class:`~tppo.config.ConfigError` (or, for a data file,
:class:`~tppo.sources.DataError`) whose message starts with the key.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tppo.config_loader import ConfigError, require

if TYPE_CHECKING:
    from tppo.config import TPPOConfig
    from tppo.registry import Registry

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
"""``model.device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
HUB_REPO_ID = re.compile(r"([A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*")
"""What a Hugging Face repo id looks like: ``org/name``, or a bare ``name`` (``gpt2``); a path that starts
with ``/``, ``.`` or ``~`` is a local folder, never a repo id."""


def check_config(config: TPPOConfig) -> None:
    """Every name of ``config`` against its registry, then its inputs (nothing is loaded): what a
    command checks after :func:`tppo.config.load_config` and before any model or data set loads."""
    check_names(config)
    check_inputs(config)


# ------------------------------------------------------------------------------ names
def check_names(config: TPPOConfig) -> None:
    """Every name in ``config`` against its registry; a :class:`ConfigError` naming the key."""
    from tppo.algorithms.advantages import ADVANTAGE_ESTIMATORS
    from tppo.engines import ENGINES
    from tppo.methods import METHODS
    from tppo.tasks import TASKS

    algorithm = config.algorithm
    check_registered("algorithm.name", algorithm.name, METHODS)
    METHODS.get(algorithm.name).check(config)
    require(
        algorithm.kl_coef == 0 or config.distributed.train_workers == 0,
        "algorithm.kl_coef",
        "a KL penalty keeps its reference policy in process: set distributed.train_workers to 0",
    )
    check_overlap(config)
    check_registered("algorithm.advantage_estimator", algorithm.advantage_estimator, ADVANTAGE_ESTIMATORS)
    check_registered("rollout.engine", config.rollout.engine, ENGINES)
    check_registered("data.task", config.data.task, TASKS)
    if config.reward.name is not None:
        check_reward("reward.name", config.reward.name)
    check_template("data.prompt_template", config.data.prompt_template)
    check_device_name("model.device", config.model.device)


def check_overlap(config: TPPOConfig) -> None:
    """``rollout.overlap_generation``: the stale tokens need ``pi_old`` recomputed as the proximal
    policy, a staleness bound of at least 1, and (for now) in-process roles."""
    r, d = config.rollout, config.distributed
    if not r.overlap_generation:
        return
    require(
        r.max_staleness >= 1,
        "rollout.max_staleness",
        "0 allows no stale token, and a window generated ahead is one version old: set it to 1 "
        "or rollout.overlap_generation to false",
    )
    require(
        config.algorithm.recompute_old_log_probs,
        "algorithm.recompute_old_log_probs",
        "rollout.overlap_generation trains on tokens of the previous weights, with pi_old "
        "recomputed as the proximal policy: set it to true",
    )
    require(
        d.rollout_workers == 0 and d.train_workers == 0,
        "rollout.overlap_generation",
        "runs with the in-process engine and learner only: set distributed.rollout_workers and "
        "distributed.train_workers to 0",
    )


def check_registered(key: str, name: str, registry: Registry[Any]) -> None:
    require(name in registry, key, registry.unknown_message(name))


def check_reward(key: str, name: str) -> None:
    """``name`` names a reward (:func:`tppo.rewards.check_reward_name`: resolved, not built, so math-verify
    is not imported here)."""
    from tppo.rewards import check_reward_name

    try:
        check_reward_name(name)
    except ImportError as error:
        raise ConfigError(f"{key}: reward {name!r}: cannot import its module ({error})") from None
    except (KeyError, ValueError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        raise ConfigError(f"{key}: {message}") from None


def check_template(key: str, template: str) -> None:
    from tppo.sources import DataError, resolve_template

    try:
        resolve_template(template)
    except DataError as error:
        raise ConfigError(f"{key}: {error}") from None


def check_device_name(key: str, device: str) -> None:
    require(
        DEVICE_PATTERN.fullmatch(device) is not None,
        key,
        f"must be auto, cpu, cuda or cuda:N, got {device!r}",
    )


# ------------------------------------------------------------------------------ inputs
def check_inputs(config: TPPOConfig) -> None:
    """The model sources, the device and the data files of ``config`` exist (nothing is loaded)."""
    model = config.model
    check_model_source("model.policy_path", model.policy_path)
    for key, name in (("model.value_path", model.value_path), ("model.tokenizer_path", model.tokenizer_path)):
        if name is not None:
            check_model_source(key, name)
    tokenizer_key = "model.tokenizer_path" if model.tokenizer_path else "model.policy_path"
    check_tokenizer_source(tokenizer_key, model.tokenizer_path or model.policy_path)
    if not config.distributed.uses_ray:  # remote workers have devices of their own
        check_device("model.device", model.device)
    for i, source in enumerate(config.data.train_files):
        check_data_source(f"data.train_files[{i}]", source)
    if config.data.eval_file is not None:
        check_data_source("data.eval_file", config.data.eval_file)


def _builtin_models() -> set[str]:
    from tppo.models import BUILTIN_MODELS
    from tppo.pretrained import PRETRAINED

    return {*BUILTIN_MODELS, *PRETRAINED}


def check_model_source(key: str, name: str) -> None:
    """A built-in name, an existing local folder, or something shaped like a Hub repo id (``org/name``
    whose first part is not a local folder, or a bare ``name``)."""
    builtin = _builtin_models()
    if name in builtin or Path(name).expanduser().is_dir():
        return
    first = name.split("/", 1)[0]
    looks_hub = HUB_REPO_ID.fullmatch(name) is not None and not Path(first).is_dir()
    require(
        looks_hub,
        key,
        f"{name!r} is neither a built-in model ({', '.join(sorted(builtin))}), an existing local "
        "folder, nor a Hugging Face repo id (org/name or name)",
    )


def check_tokenizer_source(key: str, name: str) -> None:
    """A local folder must hold tokenizer files (see :func:`tppo.models.check_tokenizer_folder`)."""
    from tppo.models import TOKENIZER_FILES

    folder = Path(name).expanduser()
    if name in _builtin_models() or not folder.is_dir():
        return
    require(
        any((folder / file).is_file() for file in TOKENIZER_FILES),
        key,
        f"folder {name!r} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save one there or "
        "name one with model.tokenizer_path",
    )


def check_device(key: str, device: str) -> None:
    """``cuda`` / ``cuda:N`` needs that CUDA device."""
    check_device_name(key, device)
    if not device.startswith("cuda"):
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.partition(":")[2] or 0)
    require(
        index < count,
        key,
        f"{device!r} but {'no CUDA device is' if count == 0 else f'only {count} CUDA device(s) are'} "
        "available; use cpu or auto",
    )


def check_data_source(key: str, source: str) -> None:
    """A local ``.jsonl`` / ``.parquet`` file that exists, or a Hugging Face data set name (which
    needs the ``datasets`` package); else a :class:`~tppo.sources.DataError` naming key and file."""
    from tppo.sources import FILE_SUFFIXES, DataError

    path = Path(source).expanduser()
    if path.suffix in FILE_SUFFIXES or path.exists() or source.startswith((".", "/", "~")):
        if not path.is_file():
            raise DataError(f"{key}: data file {source!r} does not exist")
        if path.suffix not in FILE_SUFFIXES:
            raise DataError(f"{key}: data file {source!r} is not {' or '.join(FILE_SUFFIXES)}")
    elif importlib.util.find_spec("datasets") is None:
        raise DataError(
            f"{key}: {source!r} is not a local file, so it is read as a Hugging Face data set, which "
            "needs the `datasets` package (pip install datasets); or point to a .jsonl/.parquet file"
        )
