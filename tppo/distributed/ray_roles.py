"""Ray actors for the two remote roles, and the groups the trainer drives in their place.

- :class:`RayRolloutGroup` is an :class:`~tppo.engines.base.Engine`: ``generate`` splits the occupied
  slots into contiguous shares (:func:`~tppo.algorithms.shard_rows`), one per :class:`RolloutWorker`,
  runs them in parallel and merges the completions back in slot order; ``update_weights`` puts the
  policy's tensors in Ray's object store once and every worker loads them.
- :class:`RayLearnerGroup` is a :class:`~tppo.learner.LearnerRole`: M :class:`LearnerWorker` s join
  one ``torch.distributed`` group, each holds a :class:`~tppo.learner.Learner` over FSDP2-sharded models,
  and every call runs on all of them at once (the same batch; each trains on its rows).

The controller (the trainer's process) holds neither models nor engines then: only the slot pool,
the rewards and the advantage estimation, which are cheap.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from tppo.algorithms import shard_rows
from tppo.checkpoint import STATE_FILE, read_state
from tppo.config import DistributedConfig, TPPOConfig, WorkerResources
from tppo.distributed.fsdp import device_mesh, free_port, init_process_group
from tppo.distributed.sharded_checkpoint import load_sharded, save_sharded
from tppo.distributed.sharded_loading import load_models_sharded
from tppo.distributed.weight_sync import (
    WEIGHT_SYNCS,
    SyncGroup,
    TensorSpec,
    empty_buffers,
    flatten_weights,
    sync_device,
    unflatten_weights,
    weight_specs,
)
from tppo.engines import get_engine_factory
from tppo.engines.base import Completion, Engine, EngineStats, SamplingParams
from tppo.faults import WorkerLost, crash_point, worker_env
from tppo.learner import Learner
from tppo.models import load_policy, load_vocabulary, resolve_device
from tppo.rollout.batch import RolloutBatch
from tppo.update import Shard

try:
    import ray
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "distributed.rollout_workers / distributed.train_workers need Ray: pip install 'tppo[distributed]'"
    ) from error

log = logging.getLogger(__name__)


def connect(config: DistributedConfig) -> None:
    """Start or join the Ray cluster named by ``distributed.ray_address`` (once per process)."""
    if ray.is_initialized():
        return
    if config.ray_address is not None:
        ray.init(address=config.ray_address)
        return
    # A new local cluster (never one that happens to run on this machine already): logical CPUs
    # are a scheduling budget, so grant at least what the workers ask.
    wanted = config.rollout_workers * config.rollout.num_cpus + config.train_workers * config.train.num_cpus
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, int(wanted + 0.999)), include_dashboard=False)


def _actor_class(cls: type, resources: WorkerResources) -> Any:
    options: dict[str, Any] = {"num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus}
    if worker_env():  # crash injection (tests) reaches the workers' processes
        options["runtime_env"] = {"env_vars": worker_env()}
    return ray.remote(**options)(cls)


DEATH_NOTICE_S = 30.0
"""How long a failed call waits for Ray to report a peer dead (a rank whose peer died mid-collective
fails with a connection error first)."""


def wait_all(refs: Sequence[Any], describe: Callable[[int], str]) -> list[Any]:
    """``ray.get(refs)``, but failing as soon as one worker is dead (the others may be blocked in a
    collective with it and never return): :class:`~tppo.faults.WorkerLost` naming
    ``describe(index)``. A call that fails otherwise re-raises its error, unless a peer died."""
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        try:
            ray.get(ready[0])
        except ray.exceptions.RayError as error:
            dead = isinstance(error, ray.exceptions.RayActorError)
            _raise_if_dead(refs, describe, timeout=0.0 if dead else DEATH_NOTICE_S)
            raise
    return list(ray.get(list(refs)))


def _raise_if_dead(refs: Sequence[Any], describe: Callable[[int], str], *, timeout: float) -> None:
    """:class:`~tppo.faults.WorkerLost` for the first call in ``refs`` whose worker died (waiting up to
    ``timeout`` seconds for every call to finish or fail)."""
    ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
    for index, ref in enumerate(refs):
        try:
            ray.get(ref, timeout=0)
        except ray.exceptions.RayActorError as error:
            raise WorkerLost(f"{describe(index)} died: {type(error).__name__}") from error
        except Exception:  # other failures, and calls still running: not a death
            continue


def peak_rss_bytes() -> int:
    """This process's peak resident memory (``VmHWM`` of ``/proc/self/status``; Linux), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise OSError("/proc/self/status has no VmHWM line")


def _set_threads(resources: WorkerResources) -> None:
    torch.set_num_threads(max(1, int(resources.num_cpus)))


# ---------------------------------------------------------------------------------------- rollout


class RolloutWorker:
    """One Ray actor holding a rollout engine over its own copy of the policy."""

    def __init__(self, config: TPPOConfig, index: int) -> None:
        _set_threads(config.distributed.rollout)
        vocabulary = load_vocabulary(config.model)
        # the configured engine, as tppo.roles builds it in process (that module wires this one)
        self.engine = get_engine_factory(config.rollout.engine).from_config(
            config, load_policy(config.model), vocabulary, seed=config.trainer.seed + index
        )
        self.index = index
        self.sync_group: SyncGroup | None = None

    def ready(self) -> int:
        return self.index

    def generate(
        self,
        prefixes: Sequence[Sequence[int]],
        budgets: Sequence[int],
        sampling: SamplingParams,
        call: int = 0,
        attempt: int = 0,
    ) -> tuple[list[Completion], EngineStats]:
        """Continue the prefixes; ``call`` counts the group's generations, ``attempt`` the redos of
        this share after a worker died (crash injection fires on the first attempt only)."""
        if attempt == 0:
            crash_point(f"rollout{self.index}_generate", call)
        completions = self.engine.generate(prefixes, budgets, sampling)
        return completions, self.engine.pop_stats()

    def update_weights(self, weights: dict[str, torch.Tensor]) -> Any:
        """Load the weights; returns the engine's RNG state (a replacement starts from it)."""
        self.engine.update_weights(weights.items())
        return self.engine.get_rng_state()

    def join_sync_group(self, host: str, port: int, rank: int, size: int, backend: str) -> None:
        """Join the ``broadcast`` weight sync's group as receiver ``rank`` (replacing any earlier one)."""
        self.sync_group = SyncGroup(host, port, rank, size, backend)

    def receive_weights(self, specs: list[TensorSpec], step: int = 0) -> Any:
        """Receive the policy broadcast by training rank 0 (in training step ``step``) and load it;
        returns the engine's RNG state."""
        assert self.sync_group is not None, "join_sync_group() first"
        crash_point(f"rollout{self.index}_receive", step)
        buffers = empty_buffers(specs, sync_device(self.sync_group.backend))
        self.sync_group.broadcast(buffers)
        self.engine.update_weights(unflatten_weights(specs, buffers))
        return self.engine.get_rng_state()

    def checksums(self) -> dict[str, float]:
        """``sum`` of every parameter of the engine's model (to check that weights arrived)."""
        model = getattr(self.engine, "model", None)
        if model is None:
            raise NotImplementedError(f"{type(self.engine).__name__} exposes no model to checksum")
        return {n: float(p.detach().double().sum()) for n, p in model.named_parameters()}

    def get_rng_state(self) -> Any:
        return self.engine.get_rng_state()

    def identity(self) -> tuple[int, int]:
        """``(process id, id of the engine)``: unchanged across weight syncs when they load in place."""
        return os.getpid(), id(self.engine)

    def peak_rss_bytes(self) -> int:
        return peak_rss_bytes()

    def set_rng_state(self, state: Any) -> None:
        self.engine.set_rng_state(state)

    def reseed(self, seed: int) -> None:
        self.engine.reseed(seed)


class RayRolloutGroup(Engine):
    """``distributed.rollout_workers`` Ray actors sharing the slots; an :class:`Engine` to the trainer.

    A worker whose process dies is replaced: the new one gets the last synced weights and the RNG
    state its predecessor had when the weights arrived (or after the last reseed / RNG restore), and
    redoes the lost share of the generation from the prefixes this controller holds; nothing is lost
    or repeated. Counted in ``faults/rollout_worker_restarts`` (per step); a share whose worker dies
    more than ``trainer.max_restarts`` times in a row ends the run (:class:`~tppo.faults.WorkerLost`).
    """

    def __init__(self, config: TPPOConfig) -> None:
        super().__init__()
        d = config.distributed
        connect(d)
        self.config, self.actor = config, _actor_class(RolloutWorker, d.rollout)
        self.workers = [self.actor.remote(config, index) for index in range(d.rollout_workers)]
        ray.get([w.ready.remote() for w in self.workers])
        self.calls = 0
        self.weights: Any = None
        """The object-store reference of the last synced weights (a replacement loads them)."""
        self.rng_states: list[Any] = self.get_rng_state()
        self.version = 0
        """Counts replaced workers (a ``broadcast`` sync group must then be formed again)."""
        self.weights_source: Callable[[], Iterable[tuple[str, torch.Tensor]]] | None = None
        """Where a replacement gets the current weights when they were broadcast, not stored."""
        self.stats.extra["faults/rollout_worker_restarts"] = 0

    def pop_stats(self) -> EngineStats:
        stats = super().pop_stats()
        self.stats.extra["faults/rollout_worker_restarts"] = 0
        return stats

    @property
    def num_workers(self) -> int:
        return len(self.workers)

    def workers_of(self, num_rows: int) -> list[int]:
        """The worker that continues each of ``num_rows`` rows (contiguous shares, in row order)."""
        owner = [0] * num_rows
        for worker, rows in enumerate(shard_rows(torch.arange(num_rows), self.num_workers)):
            for row in rows.tolist():
                owner[row] = worker
        return owner

    def generate(
        self, prefixes: Sequence[Sequence[int]], max_new_tokens: Sequence[int], sampling: SamplingParams
    ) -> list[Completion]:
        shares = [rows.tolist() for rows in shard_rows(torch.arange(len(prefixes)), self.num_workers)]
        call, self.calls = self.calls, self.calls + 1

        def submit(index: int, attempt: int) -> Any:
            rows = shares[index]
            return self.workers[index].generate.remote(
                [prefixes[i] for i in rows], [max_new_tokens[i] for i in rows], sampling, call, attempt
            )

        calls = {index: submit(index, 0) for index, rows in enumerate(shares) if rows}
        out: list[Completion | None] = [None] * len(prefixes)
        seconds = []
        for index, ref in calls.items():
            completions, stats = self._result(index, ref, functools.partial(submit, index))
            for row, completion in zip(shares[index], completions, strict=True):
                out[row] = completion
            self.stats.generated_tokens += stats.generated_tokens
            seconds.append(stats.extra.get("generate_s", 0.0))
            # workers decode in parallel: the step's decode passes are the busiest worker's
            self.stats.decode_steps = max(self.stats.decode_steps, stats.decode_steps)
        self.stats.extra["generate_s"] = self.stats.extra.get("generate_s", 0.0) + max(seconds, default=0.0)
        assert all(c is not None for c in out)
        return [c for c in out if c is not None]

    def _result(self, index: int, ref: Any, resubmit: Callable[[int], Any]) -> Any:
        """``ray.get(ref)``; a dead worker is replaced and its share resubmitted (attempt 1, 2 ...)."""
        for attempt in range(1, self.config.trainer.max_restarts + 2):
            try:
                return ray.get(ref)
            except ray.exceptions.RayActorError as error:
                if attempt > self.config.trainer.max_restarts:
                    raise WorkerLost(
                        f"rollout worker {index} died {attempt} times in one generation "
                        f"(trainer.max_restarts={self.config.trainer.max_restarts})"
                    ) from error
                log.warning("rollout worker %d died (%s); replacing it", index, type(error).__name__)
                self._replace(index)
                ref = resubmit(attempt)
        raise AssertionError("unreachable")

    def _replace(self, index: int) -> None:
        """A new worker ``index`` with the last synced weights and its predecessor's RNG state."""
        ray.kill(self.workers[index], no_restart=True)
        worker = self.actor.remote(self.config, index)
        ray.get(worker.ready.remote())
        if self.weights is None and self.weights_source is not None:  # broadcast: fetch them now
            self.weights = ray.put({name: t.detach().cpu() for name, t in self.weights_source()})
        if self.weights is not None:
            ray.get(worker.update_weights.remote(self.weights))
        ray.get(worker.set_rng_state.remote(self.rng_states[index]))
        self.workers[index] = worker
        self.version += 1
        self.stats.extra["faults/rollout_worker_restarts"] += 1

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Put the tensors in the object store once; every worker loads them in place (a dead one
        is replaced, and the replacement loads them)."""
        self.weights = ray.put({name: tensor.detach().cpu() for name, tensor in named_tensors})
        refs = [w.update_weights.remote(self.weights) for w in self.workers]

        def resubmit(index: int) -> Callable[[int], Any]:
            return lambda attempt: self.workers[index].update_weights.remote(self.weights)

        self.rng_states = [self._result(i, ref, resubmit(i)) for i, ref in enumerate(refs)]

    def join_sync_group(self, host: str, port: int, backend: str) -> list[Any]:
        """The calls that make worker ``i`` receiver ``i + 1`` of a new sync group (rank 0 sends)."""
        size = self.num_workers + 1
        return [
            w.join_sync_group.remote(host, port, i + 1, size, backend) for i, w in enumerate(self.workers)
        ]

    def receive_weights(
        self, specs: list[TensorSpec], step: int, source: Callable[[], Iterable[tuple[str, torch.Tensor]]]
    ) -> list[Any]:
        """The calls that receive a broadcast policy; ``source`` gives a replacement the weights later."""
        self.weights, self.weights_source = None, source
        return [w.receive_weights.remote(specs, step) for w in self.workers]

    def replace_dead(self) -> None:
        """Replace every worker whose process died, without weights (the next sync brings them)."""
        source, self.weights_source = self.weights_source, None
        try:
            for index, worker in enumerate(self.workers):
                try:
                    ray.get(worker.ready.remote(), timeout=DEATH_NOTICE_S)
                except ray.exceptions.RayActorError:
                    self._replace(index)
        finally:
            self.weights_source = source

    def checksums(self) -> list[dict[str, float]]:
        """Per worker: the sum of each parameter (see :meth:`RolloutWorker.checksums`)."""
        return list(ray.get([w.checksums.remote() for w in self.workers]))

    def get_rng_state(self) -> list[Any]:
        return list(ray.get([w.get_rng_state.remote() for w in self.workers]))

    def identities(self) -> list[tuple[int, int]]:
        """Per worker: its process and engine (see :meth:`RolloutWorker.identity`)."""
        return list(ray.get([w.identity.remote() for w in self.workers]))

    def set_rng_state(self, state: Any) -> None:
        ray.get([w.set_rng_state.remote(s) for w, s in zip(self.workers, state, strict=True)])
        self.rng_states = list(state)

    def reseed(self, seed: int) -> None:
        """Worker ``i`` restarts from ``seed + i``."""
        ray.get([w.reseed.remote(seed + i) for i, w in enumerate(self.workers)])
        self.rng_states = self.get_rng_state()

    def close(self) -> None:
        for worker in self.workers:
            ray.kill(worker)
        self.workers = []


# ---------------------------------------------------------------------------------------- training


class LearnerWorker:
    """One training process: rank ``rank`` of ``world_size``, a :class:`Learner` over sharded models."""

    def __init__(self, config: TPPOConfig, rank: int, world_size: int) -> None:
        _set_threads(config.distributed.train)
        self.config, self.shard = config, Shard(rank, world_size)
        self.learner: Learner | None = None
        self.load_rss = (0, 0)
        """This process's peak resident memory (bytes) before and after loading the models."""
        self.sync_group: SyncGroup | None = None

    def rendezvous_address(self) -> tuple[str, int]:
        return ray.util.get_node_ip_address(), free_port()

    def setup(self, master_addr: str, master_port: int) -> None:
        d = self.config.distributed
        init_process_group(
            backend=d.resolved_backend(),
            rank=self.shard.rank,
            world_size=self.shard.world_size,
            master_addr=master_addr,
            master_port=master_port,
        )
        torch.manual_seed(self.config.trainer.seed)
        device = resolve_device(self.config.model.device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        mesh = device_mesh(device, self.shard.world_size)
        # built on meta and read shard by shard (critic-free methods are refused with training workers)
        before = peak_rss_bytes()
        models = load_models_sharded(self.config.model, mesh)
        self.load_rss = (before, peak_rss_bytes())
        self.learner = Learner(self.config, models, self.shard)

    def call(self, method: str, step: int, *args: Any) -> Any:
        """Run ``Learner.<method>(*args)`` in training step ``step``; whole-model results come back
        from rank 0 only."""
        assert self.learner is not None, "setup() first"
        crash_point(f"train{self.shard.rank}_{method}", step)
        result = getattr(self.learner, method)(*args)
        if method in ("policy_weights", "gradients"):
            return (
                list(result.items() if isinstance(result, dict) else result) if self.shard.rank == 0 else None
            )
        return result

    def join_sync_group(self, host: str, port: int, size: int, backend: str) -> list[TensorSpec]:
        """(Rank 0) host and join the ``broadcast`` weight sync's group as its sender; returns the
        layout of the policy's weights (:func:`~tppo.distributed.weight_sync.weight_specs`)."""
        assert self.learner is not None, "setup() first"
        self.sync_group = SyncGroup(host, port, 0, size, backend)
        return weight_specs(self.learner.models.policy.named_parameters())

    def broadcast_weights(self, step: int) -> None:
        """Gather the policy (every rank) and broadcast it from rank 0 to the sync group."""
        assert self.learner is not None, "setup() first"
        crash_point(f"train{self.shard.rank}_broadcast", step)
        weights = self.learner.policy_weights()
        if self.shard.rank == 0:
            assert self.sync_group is not None, "join_sync_group() first"
            _, buffers = flatten_weights(weights, sync_device(self.sync_group.backend))
            self.sync_group.broadcast(buffers)

    def save_sharded(self, checkpoint: Path) -> None:
        """This rank's shards of weights and optimizer states into ``checkpoint/sharded`` (DCP)."""
        assert self.learner is not None, "setup() first"
        save_sharded(self.learner, checkpoint)

    def load_sharded(self, checkpoint: Path) -> None:
        assert self.learner is not None, "setup() first"
        load_sharded(self.learner, checkpoint)

    def peak_rss_bytes(self) -> int:
        return peak_rss_bytes()

    def load_rss_bytes(self) -> tuple[int, int]:
        return self.load_rss

    def shutdown(self) -> None:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


class RayLearnerGroup:
    """``distributed.train_workers`` :class:`LearnerWorker` s; a :class:`~tppo.learner.LearnerRole`.

    A worker that dies fails the call in progress with :class:`~tppo.faults.WorkerLost` (the others,
    blocked in a collective with it, are not waited for); the group is then broken (as after any
    failed call) and only :meth:`close` is left, which kills the workers without waiting for them
    (the trainer builds a new group from the last checkpoint).
    """

    device = torch.device("cpu")

    def __init__(self, config: TPPOConfig) -> None:
        d = config.distributed
        connect(d)
        actor = _actor_class(LearnerWorker, d.train)
        self.workers = [actor.remote(config, rank, d.train_workers) for rank in range(d.train_workers)]
        self.step, self.broken = 0, False
        """The training step being run (for the workers' crash points); whether a worker died."""
        self.config = config
        self.sync_formed_with: tuple[int, int] | None = None
        """The rollout group (and its version) the ``broadcast`` sync group was formed with."""
        self.specs: list[TensorSpec] = []
        master_addr, master_port = ray.get(self.workers[0].rendezvous_address.remote())
        self._wait([w.setup.remote(master_addr, master_port) for w in self.workers])

    def _wait(self, refs: list[Any]) -> list[Any]:
        try:
            return wait_all(refs, lambda rank: f"training worker {rank}")
        except Exception:  # a dead worker, or a failed call that may leave peers in a collective
            self.broken = True
            raise

    def _all(self, method: str, *args: Any) -> list[Any]:
        refs = [ray.put(a) if isinstance(a, RolloutBatch) else a for a in args]
        return self._wait([w.call.remote(method, self.step, *refs) for w in self.workers])

    def old_forward(self, batch: RolloutBatch) -> dict[str, torch.Tensor]:
        """Each rank fills its rows (zeros elsewhere): the sum is the whole batch's."""
        parts = self._all("old_forward", batch)
        return {key: torch.stack([p[key] for p in parts]).sum(dim=0) for key in parts[0]}

    def set_learning_rates(self, actor_lr: float, critic_lr: float) -> None:
        self._all("set_learning_rates", actor_lr, critic_lr)

    def update_actor(self, batch: RolloutBatch) -> dict[str, float]:
        return dict(self._all("update_actor", batch)[0])

    def update_critic(self, batch: RolloutBatch) -> dict[str, float]:
        result = dict(self._all("update_critic", batch)[0])
        self.step += 1  # the last training phase of a step
        return result

    def policy_weights(self) -> list[tuple[str, torch.Tensor]]:
        return list(self._all("policy_weights")[0])

    def gradients(self, role: Literal["policy", "value"]) -> dict[str, torch.Tensor]:
        return dict(self._all("gradients", role)[0])

    def sync_weights(self, engine: Engine) -> None:
        """The policy into the rollout engine, as ``distributed.weight_sync`` says."""
        WEIGHT_SYNCS.get(self.config.distributed.weight_sync)(self, engine)

    def broadcast_weights(self, rollout: RayRolloutGroup) -> None:
        """Rank 0 broadcasts the policy to every rollout worker (the ``broadcast`` weight sync); the
        sync group is formed first, and again after a rollout worker was replaced."""
        if self.sync_formed_with != (id(rollout), rollout.version):
            host, port = ray.get(self.workers[0].rendezvous_address.remote())
            backend = self.config.distributed.resolved_backend()
            size = rollout.num_workers + 1
            sender = self.workers[0].join_sync_group.remote(host, port, size, backend)
            self._wait_with(rollout, [sender, *rollout.join_sync_group(host, port, backend)])
            self.specs = ray.get(sender)
            self.sync_formed_with = (id(rollout), rollout.version)
        senders = [w.broadcast_weights.remote(self.step) for w in self.workers]
        receivers = rollout.receive_weights(self.specs, self.step, self.policy_weights)
        try:
            rollout.rng_states = self._wait_with(rollout, [*senders, *receivers])[len(senders) :]
        except WorkerLost:  # this group is broken now (the trainer rebuilds it from a checkpoint):
            rollout.replace_dead()  # a rollout worker lost in the sync is replaced first
            raise

    def _wait_with(self, rollout: RayRolloutGroup, refs: list[Any]) -> list[Any]:
        """Wait for calls on training and rollout workers together (the first ``len(self.workers)``
        are the training workers'); a death breaks this group (its rank 0 may be stuck in the sync)."""
        train = len(self.workers)

        def describe(index: int) -> str:
            return f"training worker {index}" if index < train else f"rollout worker {index - train}"

        try:
            return wait_all(refs, describe)
        except Exception:
            self.broken = True
            raise

    def save(self, directory: Path) -> None:
        self._all("save", Path(directory))

    def save_sharded(self, checkpoint: Path) -> None:
        """Every worker writes its shards of the training state (see
        :mod:`tppo.distributed.sharded_checkpoint`) into ``checkpoint/sharded``."""
        self._wait([w.save_sharded.remote(Path(checkpoint)) for w in self.workers])

    def load_sharded(self, checkpoint: Path) -> None:
        """Every worker reads the pieces its shards need (any number of workers may have written them)."""
        self._wait([w.load_sharded.remote(Path(checkpoint)) for w in self.workers])
        if (Path(checkpoint) / STATE_FILE).is_file():  # a trainer's checkpoint: its step
            self.step = int(read_state(Path(checkpoint))["step"])

    def peak_rss_bytes(self) -> list[int]:
        """Each training worker's peak resident memory (bytes), by rank."""
        return list(ray.get([w.peak_rss_bytes.remote() for w in self.workers]))

    def load_rss_bytes(self) -> list[tuple[int, int]]:
        """Each training worker's peak resident memory before and after loading its models, by rank."""
        return list(ray.get([w.load_rss_bytes.remote() for w in self.workers]))

    def close(self) -> None:
        if not self.broken:
            ray.get([w.shutdown.remote() for w in self.workers])
        for worker in self.workers:
            ray.kill(worker)
        self.workers = []
