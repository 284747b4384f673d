"""Rollout engine on a plain Hugging Face causal LM: batched prefill + KV-cached decode loop.

Every call is a fresh generation (no KV cache survives between calls: the weights change between
training steps). One call:

1. sorts the prefixes by length and prefills them in groups of a bounded number of padded tokens
   (left padding: ``attention_mask`` zeros, explicit ``position_ids``), then stacks the groups' KV
   caches, left-padded to the longest prefix, into one :class:`transformers.DynamicCache`;
2. decodes one token per live row per forward pass;
3. drops each row out of the batch and the cache as soon as it emits EOS or spends its budget.

In single-process training the model is the policy itself, so :meth:`HFEngine.update_weights`
usually finds every tensor already in place and copies nothing.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache, PretrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache, DynamicLayer, LinearAttentionCacheLayerMixin

from tppo.engines.base import SeededEngine, check_requests
from tppo.engines.sampling import sample_tokens
from tppo.engines.types import LENGTH, STOP, Completion, FinishReason, Refill, SamplingParams


@dataclass
class _Row:
    """The output of one prefix while its batch decodes."""

    budget: int
    token_ids: list[int] = field(default_factory=list)
    log_probs: list[float] = field(default_factory=list)
    finish_reason: FinishReason = LENGTH

    def completion(self) -> Completion:
        return Completion(list(self.token_ids), list(self.log_probs), self.finish_reason)


_RowRefill = Callable[[list[_Row], int], list[tuple[_Row, list[int]]]]
"""Inside :meth:`HFEngine.generate_refilling`: the rows that ended at a decode step -> the new rows (with
their prefixes) that enter the running batch."""


class HFEngine(SeededEngine):
    """Generate with a Hugging Face decoder-only model held in this process (``rollout.engine: hf``).

    Tokens are drawn from, and log-probs reported under, :func:`~tppo.engines.sampling.processed_logits`
    (the log-prob contract of :mod:`tppo.engines.base`).

    Args:
        model: the causal LM to sample from (typically the policy being trained).
        eos_token_ids: tokens that end a response (kept as its last token).
        pad_token_id: id written into left padding (never attended to) and fed to finished rows
            of models whose cache cannot drop rows.
        seed: seed of the engine's sampling generator.
        max_batch_size: decode at most this many rows at once (``None``: all at once).
        prefill_chunk_tokens: prefill the (length-sorted) prefixes in groups of at most this many
            padded tokens (rows x longest prefix in the group), then stack the groups' caches for
            decoding: less padding than one padded pass over all K prefixes (2x less prefill time
            at K=64, prefixes of 9..250 tokens, on the project's 2-core CPU), and bounded memory.
            Raise it on a GPU.
    """

    samples_in_place = True

    def __init__(
        self,
        model: PreTrainedModel,
        *,
        eos_token_ids: Sequence[int],
        pad_token_id: int,
        seed: int = 0,
        max_batch_size: int | None = None,
        prefill_chunk_tokens: int = 1024,
    ) -> None:
        super().__init__()
        if not eos_token_ids:
            raise ValueError("eos_token_ids must name at least one token")
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1 or None, got {max_batch_size}")
        if prefill_chunk_tokens < 1:
            raise ValueError(f"prefill_chunk_tokens must be >= 1, got {prefill_chunk_tokens}")
        self.model = model
        self.eos_token_ids = frozenset(int(t) for t in eos_token_ids)
        self.pad_token_id = int(pad_token_id)
        self.max_batch_size = max_batch_size
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.device = next(model.parameters()).device
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self._keeps_logits_arg = "logits_to_keep" in inspect.signature(model.forward).parameters

    # ------------------------------------------------------------------ Engine API

    def generate(
        self,
        prefixes: Sequence[Sequence[int]],
        max_new_tokens: Sequence[int],
        sampling: SamplingParams,
    ) -> list[Completion]:
        """Continue ``prefixes[i]`` by at most ``max_new_tokens[i]`` tokens (see :class:`Engine`)."""
        check_requests(prefixes, max_new_tokens)
        rows = [_Row(budget=int(n)) for n in max_new_tokens]
        self._run(prefixes, rows, sampling, None)
        return [row.completion() for row in rows]

    def generate_refilling(
        self,
        prefixes: Sequence[Sequence[int]],
        max_new_tokens: Sequence[int],
        sampling: SamplingParams,
        refill: Refill,
    ) -> list[Completion]:
        """:meth:`Engine.generate_refilling` in flight: a row that ends leaves the batch and the KV cache,
        and the prefix ``refill`` returns for it is prefilled and merged into the running cache before
        the next decode step (models whose cache layers are not all plain full-attention ones refill
        in waves, the default)."""
        check_requests(prefixes, max_new_tokens)
        if not _can_merge(DynamicCache(config=self.model.config), filled=False):
            return super().generate_refilling(prefixes, max_new_tokens, sampling, refill)
        rows = [_Row(budget=int(n)) for n in max_new_tokens]
        number = {id(row): i for i, row in enumerate(rows)}

        def enter(ended: list[_Row], step: int) -> list[tuple[_Row, list[int]]]:
            entering = []
            while ended:
                row = ended.pop(0)
                request = refill(number[id(row)], row.completion(), step)
                if request is None:
                    continue
                check_requests([request.prefix], [request.max_new_tokens])
                new = _Row(budget=int(request.max_new_tokens))
                number[id(new)] = len(rows)
                rows.append(new)
                if new.budget == 0:
                    ended.append(new)  # an empty completion, final at once
                else:
                    entering.append((new, list(request.prefix)))
            return entering

        self._run(prefixes, rows, sampling, enter)  # ``enter`` appends the refills to ``rows``
        return [row.completion() for row in rows]

    def _run(
        self,
        prefixes: Sequence[Sequence[int]],
        rows: list[_Row],
        sampling: SamplingParams,
        refill: _RowRefill | None,
    ) -> None:
        """Decode ``rows`` (one per prefix), shortest prefixes first, at most ``max_batch_size`` at once;
        rows with a budget of 0 end at decode step 0 (and are offered to ``refill`` then)."""
        order = sorted((i for i, row in enumerate(rows) if row.budget > 0), key=lambda i: len(prefixes[i]))
        todo = [(prefixes[i], rows[i]) for i in order]
        if refill is not None:
            todo += [(prefix, row) for row, prefix in refill([row for row in rows if row.budget == 0], 0)]
        chunk = self.max_batch_size or max(len(todo), 1)
        started = time.perf_counter()
        with self._generation_mode():
            for lo in range(0, len(todo), chunk):
                batch = todo[lo : lo + chunk]
                self._generate_batch([p for p, _ in batch], [r for _, r in batch], sampling, refill)
        self.stats.generated_tokens += sum(len(row.token_ids) for row in rows)
        self.stats.extra["generate_s"] = self.stats.extra.get("generate_s", 0.0) + (
            time.perf_counter() - started
        )

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy tensors into the model's parameters (or buffers) by Hugging Face name.

        A tensor that already is the target (same device, storage address, shape and strides) is
        skipped; tied aliases such as ``lm_head.weight`` are accepted. Raises ``KeyError`` for an
        unknown name and ``ValueError`` for a shape mismatch.
        """
        targets = _named_targets(self.model)
        with torch.no_grad():
            for name, tensor in named_tensors:
                if name not in targets:
                    raise KeyError(
                        f"update_weights: the model has no parameter or buffer named {name!r} "
                        f"(it has {len(targets)}, e.g. {sorted(targets)[:3]})"
                    )
                target = targets[name]
                if _same_tensor(tensor, target):
                    continue
                if tensor.shape != target.shape:
                    raise ValueError(
                        f"update_weights: {name!r} has shape {tuple(tensor.shape)}, "
                        f"the model expects {tuple(target.shape)}"
                    )
                target.copy_(tensor)

    # ------------------------------------------------------------------ internals

    @contextmanager
    def _generation_mode(self) -> Iterator[None]:
        """``model.eval()`` under ``torch.inference_mode()``; every submodule's mode restored after."""
        modes = [(module, module.training) for module in self.model.modules()]
        self.model.eval()
        try:
            with torch.inference_mode():
                yield
        finally:
            for module, training in modes:
                module.training = training

    def _generate_batch(
        self,
        prefixes: Sequence[Sequence[int]],
        rows: list[_Row],
        sampling: SamplingParams,
        refill: _RowRefill | None = None,
    ) -> None:
        """Prefill ``B`` prefixes, then decode one token per live row per step until all have finished.

        ``rows[b]`` receives prefix ``b``'s tokens; ``live[j]`` is the row that batch row ``j`` fills
        (``None`` for a finished row kept in a cache that cannot drop rows). With ``refill``, the rows
        that end in a step are handed to it; the rows and prefixes it returns are prefilled, merged
        into the running cache, and decode with the others from the next step on.
        """
        logits, cache, attention_mask, position_ids = self._prefill(prefixes)
        live: list[_Row | None] = list(rows)
        steps = 0
        while True:
            tokens, log_probs = sample_tokens(logits, sampling, self.generator)
            steps += 1
            done = self._record(tokens.tolist(), log_probs.tolist(), live)
            ended = [row for row, d in zip(live, done, strict=True) if d and row is not None]
            entering = [] if refill is None else refill(ended, steps)
            if all(done) and not entering:
                break
            if any(done):
                keep = [j for j, d in enumerate(done) if not d]
                if _can_drop_rows(cache):
                    index = torch.tensor(keep, device=self.device, dtype=torch.long)
                    cache.batch_select_indices(index)
                    tokens, attention_mask = tokens[index], attention_mask[index]
                    position_ids = position_ids[index]
                    live = [live[j] for j in keep]
                else:
                    live = [None if d else row for row, d in zip(live, done, strict=True)]
                    tokens = tokens.masked_fill(torch.tensor(done, device=self.device), self.pad_token_id)
            if live:
                attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(live), 1)], dim=1)
                position_ids = position_ids[:, -1:] + 1
                logits, cache = self._forward(tokens.unsqueeze(1), attention_mask, position_ids, cache)
            if entering:
                logits, cache, attention_mask, position_ids = self._enter(
                    [prefix for _, prefix in entering], (logits, cache, attention_mask, position_ids), live
                )
                live = live + [row for row, _ in entering]
        self.stats.decode_steps += steps

    def _enter(
        self,
        prefixes: Sequence[Sequence[int]],
        running: tuple[torch.Tensor, Cache, torch.Tensor, torch.Tensor],
        live: Sequence[_Row | None],
    ) -> tuple[torch.Tensor, Cache, torch.Tensor, torch.Tensor]:
        """Prefill ``prefixes`` and append them, as new rows, to the ``running`` batch (logits, cache,
        attention mask, position ids) of the ``live`` rows; both sides left-padded to the wider."""
        logits, cache, attention_mask, position_ids = self._prefill(prefixes)
        if not live:
            return logits, cache, attention_mask, position_ids[:, -1:]
        old_logits, old_cache, old_mask, old_positions = running
        width = max(old_mask.shape[1], attention_mask.shape[1])
        merged = _stack_caches([old_cache, cache], width=width, config=self.model.config)
        masks = [nn.functional.pad(m, (width - m.shape[1], 0)) for m in (old_mask, attention_mask)]
        return (
            torch.cat([old_logits, logits]),
            merged,
            torch.cat(masks),
            torch.cat([old_positions[:, -1:], position_ids[:, -1:]]),
        )

    def _prefill(
        self, prefixes: Sequence[Sequence[int]]
    ) -> tuple[torch.Tensor, Cache, torch.Tensor, torch.Tensor]:
        """Run the prefixes through the model, in groups of at most ``prefill_chunk_tokens`` padded tokens.

        Each group is left-padded to its own longest prefix (little padding when the prefixes come
        sorted by length); the groups' KV caches are then left-padded to the longest prefix ``T`` and
        stacked into one cache. Models whose cache layers are not all plain full-attention
        :class:`DynamicLayer` s (sliding windows, linear attention) get one padded pass instead.

        Returns:
            last-position logits ``[B, V]``, the cache (``T`` positions), ``attention_mask [B, T]`` and
            ``position_ids [B, T]`` of the whole left-padded batch.
        """
        input_ids, attention_mask, position_ids = _left_pad(prefixes, self.pad_token_id, self.device)
        config = self.model.config
        groups = _prefill_groups([len(p) for p in prefixes], self.prefill_chunk_tokens)
        if len(groups) > 1 and _can_merge(DynamicCache(config=config), filled=False):
            parts = [
                self._forward(
                    *_left_pad(prefixes[lo:hi], self.pad_token_id, self.device), DynamicCache(config=config)
                )
                for lo, hi in groups
            ]
            if all(_can_merge(part_cache) for _, part_cache in parts):  # else: the model made its own kind
                stacked = _stack_caches([c for _, c in parts], width=input_ids.shape[1], config=config)
                return torch.cat([logits for logits, _ in parts]), stacked, attention_mask, position_ids
        logits, cache = self._forward(input_ids, attention_mask, position_ids, DynamicCache(config=config))
        return logits, cache, attention_mask, position_ids

    def _record(self, tokens: list[int], log_probs: list[float], live: list[_Row | None]) -> list[bool]:
        """Append batch row ``j``'s new token to ``live[j]``; return which batch rows are done."""
        done = []
        for token, log_prob, row in zip(tokens, log_probs, live, strict=True):
            if row is None:
                done.append(True)
                continue
            row.token_ids.append(token)
            row.log_probs.append(log_prob)
            if token in self.eos_token_ids:
                row.finish_reason = STOP
            done.append(row.finish_reason == STOP or len(row.token_ids) >= row.budget)
        return done

    def _forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, cache: Cache
    ) -> tuple[torch.Tensor, Cache]:
        """One forward pass over ``input_ids [B, T]`` (mask ``[B, past + T]``, positions ``[B, T]``).

        Returns the last position's logits ``[B, V]`` and the cache holding ``past + T`` positions.
        """
        kwargs: dict[str, Any] = {"logits_to_keep": 1} if self._keeps_logits_arg else {}
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            **kwargs,
        )
        new_cache = out.past_key_values if out.past_key_values is not None else cache
        return out.logits[:, -1, :], new_cache


def _left_pad(
    prefixes: Sequence[Sequence[int]], pad_token_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad token lists to one batch.

    Returns:
        ``input_ids [B, T]`` (``T`` = longest prefix; padding = ``pad_token_id``),
        ``attention_mask [B, T]`` (0 on padding, long) and ``position_ids [B, T]``
        (``cumsum(mask) - 1``, clamped to 0 on the padding so that absolute-position tables work).
    """
    width = max(len(p) for p in prefixes)
    input_ids = torch.full((len(prefixes), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prefixes), width), dtype=torch.long)
    for b, prefix in enumerate(prefixes):
        if prefix:
            input_ids[b, width - len(prefix) :] = torch.as_tensor(list(prefix), dtype=torch.long)
            attention_mask[b, width - len(prefix) :] = 1
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp_(min=0)
    return input_ids.to(device), attention_mask.to(device), position_ids.to(device)


def _prefill_groups(lengths: Sequence[int], max_tokens: int) -> list[tuple[int, int]]:
    """Split rows ``0..B-1`` into consecutive ``[lo, hi)`` groups of at most ``max_tokens`` padded tokens
    (``rows x longest prefix``; a single row longer than that forms its own group)."""
    groups: list[tuple[int, int]] = []
    lo, longest = 0, 0
    for i, length in enumerate(lengths):
        longest = max(longest, length)
        if i > lo and (i + 1 - lo) * longest > max_tokens:
            groups.append((lo, i))
            lo, longest = i, length
    groups.append((lo, len(lengths)))
    return groups


def _can_merge(cache: Cache, *, filled: bool = True) -> bool:
    """Whether ``cache`` holds only plain full-attention :class:`DynamicLayer` s (``keys [B, H, T, D]``),
    already holding tensors if ``filled``."""
    if not isinstance(cache, DynamicCache) or not cache.layers:
        return False
    return all(
        type(layer) is DynamicLayer and (layer.keys is not None or not filled) for layer in cache.layers
    )


def _stack_caches(caches: Sequence[Cache], width: int, config: PretrainedConfig) -> DynamicCache:
    """Stack per-group caches along the batch, each left-padded with zeros to ``width`` positions.

    The padded positions are masked out by the batch's attention mask, as the groups' own padding is.
    """
    per_layer = []
    for layer_idx in range(len(caches[0].layers)):
        keys, values = [], []
        for cache in caches:
            layer = cache.layers[layer_idx]
            assert isinstance(layer, DynamicLayer) and layer.keys is not None and layer.values is not None
            pad = (0, 0, width - layer.keys.shape[-2], 0)
            keys.append(nn.functional.pad(layer.keys, pad))
            values.append(nn.functional.pad(layer.values, pad))
        per_layer.append((torch.cat(keys), torch.cat(values)))
    return DynamicCache(per_layer, config=config)


def _can_drop_rows(cache: Cache) -> bool:
    """Whether ``cache.batch_select_indices`` drops rows correctly: plain (or sliding-window) KV layers only.

    Linear-attention / recurrent layers also hold states that ``batch_select_indices`` would not select.
    """
    layers = getattr(cache, "layers", None)
    if not isinstance(cache, DynamicCache) or not layers:
        return False
    return all(
        isinstance(layer, DynamicLayer) and not isinstance(layer, LinearAttentionCacheLayerMixin)
        for layer in layers
    )


def _named_targets(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``model`` by name, tied aliases included."""
    targets: dict[str, torch.Tensor] = dict(model.named_buffers(remove_duplicate=False))
    targets.update(model.named_parameters(remove_duplicate=False))
    return targets


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` view the same memory the same way (copying would be a no-op)."""
    return (
        a.device == b.device
        and a.data_ptr() == b.data_ptr()
        and a.shape == b.shape
        and a.stride() == b.stride()
        and a.dtype == b.dtype
    )
