"""Crash-safe checkpoints: atomic directories with a checksummed manifest, the last k kept.

Layout under a run's output directory::

    checkpoints/
        step_00000012/            one complete checkpoint (what ``write`` put there)
            manifest.json         step, and the size and sha256 of every other file
            ...
        .tmp-step_00000016-4711/  a write in progress (or one killed mid-write): never read

A checkpoint is written into a temporary directory beside the others, every file is fsync'ed,
the manifest is written last, and only then is the directory renamed to its final name (an atomic
rename on one file system) and the parent directory fsync'ed. A process killed at any moment
leaves either the complete new checkpoint or none; loading checks every checksum and falls back
to the previous checkpoint, saying so, when the newest is torn or corrupted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tppo.faults import crash_point

log = logging.getLogger(__name__)

PREFIX = "step_"
TMP_PREFIX = ".tmp-"
MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or used; the message names the directory and why."""


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """``(step, directory)`` of the finished checkpoints under ``root``, oldest first (unverified)."""
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        suffix = path.name.removeprefix(PREFIX)
        if path.is_dir() and path.name.startswith(PREFIX) and suffix.isdigit():
            found.append((int(suffix), path))
    return sorted(found)


def write_checkpoint(root: Path, step: int, write: Callable[[Path], None], *, keep: int) -> Path:
    """Write the checkpoint of ``step`` atomically and keep the newest ``keep`` (0: keep all).

    ``write(directory)`` fills a fresh temporary directory. If it (or anything after it) fails,
    the temporary directory is removed, the existing checkpoints are untouched, and
    :class:`CheckpointError` says so. A valid checkpoint of the same step (a run that resumed from
    an earlier one reaches it again) is kept as it is; a damaged one is replaced.
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = root / f"{TMP_PREFIX}{checkpoint_name(step)}-{os.getpid()}"
    if final.exists():
        try:
            verify_checkpoint(final)
        except CheckpointError as error:
            log.warning("%s; writing it again", error)
            final.rename(root / f"{TMP_PREFIX}damaged-{checkpoint_name(step)}-{os.getpid()}")
        else:
            log.info("checkpoint %s exists and is valid: kept", final)
            prune_checkpoints(root, keep)
            return final
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        write(tmp)
        crash_point("checkpoint_write", step)
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest = {
            "format_version": FORMAT_VERSION,
            "step": step,
            "created_unix": time.time(),
            "files": {
                str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": sha256(p)} for p in files
            },
        }
        for path in files:
            _fsync_file(path)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        _fsync_file(tmp / MANIFEST)
        for directory in {tmp, *(p.parent for p in files)}:
            _fsync_dir(directory)
        tmp.rename(final)
        _fsync_dir(root)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(error, Exception):
            raise CheckpointError(
                f"could not write checkpoint {str(final)!r}: {type(error).__name__}: {error}"
            ) from error
        raise
    crash_point("checkpoint_written", step)
    prune_checkpoints(root, keep)
    return final


def prune_checkpoints(root: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints (0: none), and leftovers of killed writes
    by processes that are gone. Returns what was deleted."""
    removed = []
    checkpoints = list_checkpoints(root)
    if keep > 0:
        for _, path in checkpoints[: max(len(checkpoints) - keep, 0)]:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    for path in root.glob(f"{TMP_PREFIX}*"):
        pid = path.name.rsplit("-", 1)[-1]
        if not (pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """The manifest of ``path`` after checking that every file it lists has its size and sha256;
    :class:`CheckpointError` naming the first problem otherwise."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} has no {MANIFEST} (torn write?)")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"checkpoint {str(path)!r}: unreadable {MANIFEST}: {error}") from error
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint {str(path)!r}: file {name!r} is missing")
        if file.stat().st_size != expected["bytes"]:
            raise CheckpointError(
                f"checkpoint {str(path)!r}: file {name!r} has {file.stat().st_size} bytes, "
                f"the manifest says {expected['bytes']}"
            )
        if sha256(file) != expected["sha256"]:
            raise CheckpointError(f"checkpoint {str(path)!r}: file {name!r} fails its sha256 checksum")
    return dict(manifest)


def latest_checkpoint(root: Path) -> Path | None:
    """The newest checkpoint under ``root`` that passes :func:`verify_checkpoint`; each newer one that
    fails is logged (and left in place for inspection) and the previous one tried."""
    for _, path in reversed(list_checkpoints(root)):
        try:
            verify_checkpoint(path)
        except CheckpointError as error:
            log.warning("%s; using the previous checkpoint", error)
            continue
        return path
    return None


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------- random number generators


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """Python's, NumPy's and torch's global RNG states, and those of the named generators."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    assert isinstance(keys, np.ndarray)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.copy()), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
        "generators": {name: g.get_state() for name, g in generators.items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    """Restore what :func:`rng_state` captured; a generator missing from ``state`` is an error."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, generator in generators.items():
        if name not in state["generators"]:
            raise CheckpointError(f"checkpoint has no state for the random generator {name!r}")
        generator.set_state(state["generators"][name])


# ---------------------------------------------------------------------- files


def truncate_lines(path: Path, lines: int) -> int:
    """Keep the first ``lines`` lines of a text file (a torn last line is dropped too); returns how
    many it had. Fewer lines than ``lines`` is an error (the file lost rows the checkpoint counts)."""
    if not path.exists():
        if lines:
            raise CheckpointError(f"{str(path)!r} is missing but the checkpoint counts {lines} rows in it")
        return 0
    data = path.read_bytes()
    rows = data.split(b"\n")
    complete = len(rows) - 1  # the part after the last newline is torn (or empty)
    if complete < lines:
        raise CheckpointError(f"{str(path)!r} has {complete} rows but the checkpoint counts {lines}")
    with path.open("r+b") as handle:
        handle.truncate(sum(len(r) + 1 for r in rows[:lines]))
        handle.flush()
        os.fsync(handle.fileno())
    return complete


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems do not fsync directories
        _fsync_file(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------------- training state

STATE_FILE = "trainer_state.json"
RNG_FILE = "rng.pt"
OPTIMIZERS_FILE = "optimizers.pt"
SHARDED_DIR = "sharded"
"""What remote training workers write with ``torch.distributed.checkpoint`` in place of
``optimizers.pt`` (see :mod:`tppo.distributed.sharded_checkpoint`)."""

RESUMABLE_CHANGES = (
    "trainer.total_steps",
    "trainer.max_wall_seconds",
    "trainer.eval_every",
    "trainer.checkpoint_every",
    "trainer.keep_checkpoints",
    "trainer.max_consecutive_bad_updates",
    "trainer.reward_timeout_s",
    "trainer.num_threads",
    "trainer.progress",
    "trainer.tensorboard",
    "trainer.max_restarts",
    "eval.",
    "distributed.train_workers",  # between positive counts: the sharded state reshards on load
    "distributed.train.",
    "distributed.ray_address",
)
"""Config keys a resumed run may change; any other difference is refused (it would not continue
the same run)."""


def load_model_weights(model: torch.nn.Module, directory: Path) -> None:
    """Copy the safetensors weights in ``directory`` into ``model`` (same architecture). Tied weights
    that the file leaves out (``lm_head.weight`` beside the embeddings) are fine; anything else
    missing or unexpected is an error naming the keys."""
    from safetensors.torch import load_file

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{str(directory)!r} holds no .safetensors weights")
    weights: dict[str, torch.Tensor] = {}
    for file in files:
        weights.update(load_file(str(file)))
    try:
        result = model.load_state_dict(weights, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise CheckpointError(f"weights in {str(directory)!r} do not fit the model: {error}") from error
    loaded = {id(t) for name, t in model.state_dict(keep_vars=True).items() if name in weights}
    state = model.state_dict(keep_vars=True)
    missing = [k for k in result.missing_keys if id(state[k]) not in loaded]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"weights in {str(directory)!r} do not fit the model: missing {missing[:5]}, "
            f"unexpected {list(result.unexpected_keys)[:5]}"
        )


def write_training_state(
    directory: Path,
    *,
    optimizers: dict[str, torch.optim.Optimizer] | None,
    rng: dict[str, Any],
    state: dict[str, Any],
) -> None:
    """``optimizers.pt`` (state dicts; ``None``: not written, the training workers save theirs
    sharded), ``rng.pt`` and ``trainer_state.json`` (JSON-able ``state``: step, slot pool, prompt
    stream, metrics position, config ...)."""
    if optimizers is not None:
        torch.save({name: opt.state_dict() for name, opt in optimizers.items()}, directory / OPTIMIZERS_FILE)
    torch.save(rng, directory / RNG_FILE)
    (directory / STATE_FILE).write_text(json.dumps(state))


def read_training_state(directory: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``(optimizer state dicts, rng state, trainer state)`` as :func:`write_training_state` wrote them
    (no ``optimizers.pt``: ``{}``)."""
    path = directory / OPTIMIZERS_FILE
    optimizers = torch.load(path, weights_only=True) if path.is_file() else {}
    rng = torch.load(directory / RNG_FILE, weights_only=True)
    state = json.loads((directory / STATE_FILE).read_text())
    return optimizers, rng, state


def read_state(directory: Path) -> dict[str, Any]:
    """Only ``trainer_state.json`` (cheap: for checks before anything loads)."""
    return dict(json.loads((directory / STATE_FILE).read_text()))


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted keys whose value differs between two ``to_dict`` configs and that a resumed run may
    not change (see :data:`RESUMABLE_CHANGES`), as ``key: saved -> current``."""
    out = []
    for key, (old, new) in _diff(saved, current, "").items():
        if not any(key == r or (r.endswith(".") and key.startswith(r)) for r in RESUMABLE_CHANGES):
            out.append(f"{key}: {old!r} -> {new!r}")
    return out


def _diff(a: Any, b: Any, prefix: str) -> dict[str, tuple[Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: dict[str, tuple[Any, Any]] = {}
        for key in sorted(set(a) | set(b)):
            out.update(_diff(a.get(key), b.get(key), f"{prefix}{key}."))
        return out
    return {} if a == b else {prefix.rstrip("."): (a, b)}
