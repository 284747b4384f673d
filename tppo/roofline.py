"""The rollout roofline (paper Figure 5): FLOPs and bytes of one decode step, and accelerators' roofs.

A decode step runs every live row (a response still generating) through the model for one token.
Its work is a few matrix-vector products per row, sharing one read of the weights, plus attention
over each row's KV cache. With ``R`` live rows the weights are read once for ``R`` tokens, so the
arithmetic intensity (FLOPs per byte moved) grows with ``R``: T-PPO keeps its slots full (the paper:
249 FLOPs per byte against PPO's 84 on an H800), while PPO's batch drains as responses finish.

Counted (a model of the step, not a profile): the matrix multiplications of attention projections,
MLP and LM head (``2`` FLOPs per multiply-add), attention scores and weighted values; bytes of the
weight matrices (each read once per step), the KV cache read, and the new token's keys and values
written. Left out, all ``O(hidden)`` per row or per layer: biases, norms, softmax, activations,
rotary embeddings, the embedding lookup, and activations moved between kernels.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from tppo.registry import Registry


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a decoder-only transformer that set the cost of a decode step."""

    num_layers: int
    hidden_size: int
    num_heads: int
    """Query heads."""
    num_kv_heads: int
    """Key/value heads (fewer than ``num_heads`` with grouped-query attention)."""
    head_dim: int
    intermediate_size: int
    vocab_size: int
    dtype_bytes: int
    """Bytes per weight and per KV-cache entry (2 for bfloat16)."""
    mlp_matrices: int = 3
    """3 for a gated MLP (SwiGLU: gate, up, down; Llama, Qwen2), 2 for a plain one (GPT-2)."""

    def layer_matrix_params(self) -> int:
        """Weights of one layer's matrices: q, k, v, o projections and the MLP."""
        q_and_o = 2 * self.hidden_size * self.num_heads * self.head_dim
        k_and_v = 2 * self.hidden_size * self.num_kv_heads * self.head_dim
        return q_and_o + k_and_v + self.mlp_matrices * self.hidden_size * self.intermediate_size

    def matrix_params(self) -> int:
        """Weights a decode step reads: every layer's matrices and the LM head (``vocab x hidden``)."""
        return self.num_layers * self.layer_matrix_params() + self.vocab_size * self.hidden_size


_DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2, "float64": 8}


def _config_dtype_bytes(config: Any) -> int | None:
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if dtype is None:
        return None
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r} in the model config; pass dtype_bytes")
    return _DTYPE_BYTES[name]


def model_shape(config: Any, *, dtype_bytes: int | None = None) -> ModelShape:
    """The :class:`ModelShape` of a Hugging Face config (Qwen2, Llama, Mistral, GPT-2 and the like).

    Reads ``num_hidden_layers``, ``hidden_size``, ``num_attention_heads``, ``num_key_value_heads``
    (default: as many as the query heads), ``head_dim`` (default ``hidden_size / heads``),
    ``intermediate_size`` and ``vocab_size`` (HF's attribute maps give GPT-2's ``n_layer``, ``n_embd``
    and ``n_head`` under these names). A config without ``intermediate_size`` (GPT-2) has a plain
    two-matrix MLP of width ``n_inner`` (default ``4 * hidden_size``); one with it, a gated MLP.

    Args:
        config: a ``transformers.PretrainedConfig`` (or any object with those attributes).
        dtype_bytes: bytes per weight; default from the config's ``dtype`` (``torch_dtype``), and 2
            (bfloat16, how generation runs on an accelerator) when the config names none.
    """
    hidden = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    intermediate = getattr(config, "intermediate_size", None)
    mlp_matrices = 3
    if intermediate is None:
        intermediate = getattr(config, "n_inner", None) or 4 * hidden
        mlp_matrices = 2
    if dtype_bytes is None:
        dtype_bytes = _config_dtype_bytes(config) or 2
    return ModelShape(
        num_layers=int(config.num_hidden_layers),
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=int(kv_heads),
        head_dim=int(head_dim),
        intermediate_size=int(intermediate),
        vocab_size=int(config.vocab_size),
        dtype_bytes=int(dtype_bytes),
        mlp_matrices=mlp_matrices,
    )


class DecodeCost(NamedTuple):
    """FLOPs and bytes of one decode step (or of many, summed)."""

    flops: int
    weight_bytes: int
    kv_read_bytes: int
    kv_write_bytes: int

    @property
    def bytes(self) -> int:
        """Every byte moved: weights, KV cache read and written."""
        return self.weight_bytes + self.kv_read_bytes + self.kv_write_bytes

    @property
    def intensity(self) -> float:
        """FLOPs per byte; 0 for an empty step."""
        return self.flops / self.bytes if self.bytes else 0.0


def decode_step_cost(shape: ModelShape, context_lengths: Sequence[int]) -> DecodeCost:
    """FLOPs and bytes of one decode step over the live rows whose context lengths are given.

    ``R = len(context_lengths)`` live rows; ``c_r`` tokens (prompt and response so far) in row ``r``'s
    KV cache before the step. With ``P`` = :meth:`ModelShape.matrix_params`, ``L`` layers, ``H``
    query heads, ``K`` key/value heads, head size ``d`` and ``s`` bytes per value:

        flops          = 2 * R * P + L * sum_r 4 * H * d * (c_r + 1)   (q.k and p.v over c_r + 1 keys)
        weight_bytes   = P * s                                          (read once, shared by the rows)
        kv_read_bytes  = L * sum_r 2 * K * d * c_r * s                 (keys and values of the cache)
        kv_write_bytes = L * R * 2 * K * d * s                          (the new token's key and value)

    No live rows: no step, all zeros.
    """
    if any(c < 0 for c in context_lengths):
        raise ValueError(f"context lengths must be >= 0, got {list(context_lengths)}")
    rows = len(context_lengths)
    cached = sum(int(c) for c in context_lengths)
    return rollout_cost(shape, decode_steps=1 if rows else 0, row_steps=rows, context_tokens=cached)


def decode_arithmetic_intensity(shape: ModelShape, context_lengths: Sequence[int]) -> float:
    """FLOPs per byte of one decode step (:func:`decode_step_cost`); 0 with no live rows."""
    return decode_step_cost(shape, context_lengths).intensity


def rollout_arithmetic_intensity(shape: ModelShape, steps: Iterable[Sequence[int]]) -> float:
    """FLOPs per byte of a whole generation: total FLOPs over total bytes of its decode steps.

    ``steps``: for each decode step, the context lengths of its live rows (as recorded by the
    rollout). A method's point on the roofline; 0 when no step had a live row.
    """
    total = [0, 0, 0, 0]
    for context_lengths in steps:
        for i, value in enumerate(decode_step_cost(shape, context_lengths)):
            total[i] += value
    return DecodeCost(*total).intensity


@dataclass(frozen=True)
class Accelerator:
    """A roof: peak compute and memory bandwidth."""

    name: str
    peak_flops: float
    """FLOP/s at the roof's flat part (dense, in the dtype generation uses)."""
    memory_bandwidth: float
    """Bytes/s from main memory (HBM)."""
    source: str
    """Where the two figures come from (a datasheet, or the command that measured them)."""


ACCELERATORS: Registry[Accelerator] = Registry("accelerator")
"""Named accelerators; add a measured one with ``ACCELERATORS.add(name, Accelerator(...))``."""

# NVIDIA Hopper (H100 SXM5 datasheet and Hopper architecture whitepaper): BF16 tensor core
# 989.4 TFLOP/s dense (1,979 with 2:4 sparsity, the figure datasheets headline); HBM3 3.35 TB/s.
# The H800 SXM5 is the H100 SXM5 with NVLink cut to 400 GB/s: same compute and HBM.
ACCELERATORS.add(
    "H800",
    Accelerator(
        name="H800",
        peak_flops=989.4e12,
        memory_bandwidth=3.35e12,
        source="NVIDIA H100/H800 SXM5 datasheet: BF16 989.4 TFLOP/s dense, HBM3 3.35 TB/s",
    ),
)
# NVIDIA H200 SXM datasheet: the same GH100 compute (BF16 989.4 TFLOP/s dense, 1,979 sparse),
# 141 GB HBM3e at 4.8 TB/s.
ACCELERATORS.add(
    "H200",
    Accelerator(
        name="H200",
        peak_flops=989.4e12,
        memory_bandwidth=4.8e12,
        source="NVIDIA H200 SXM datasheet: BF16 989.4 TFLOP/s dense, HBM3e 4.8 TB/s",
    ),
)


def ridge_intensity(accelerator: Accelerator) -> float:
    """The intensity (FLOPs per byte) where the roof turns flat: ``peak_flops / memory_bandwidth``."""
    return accelerator.peak_flops / accelerator.memory_bandwidth


def attainable_flops(intensity: float, accelerator: Accelerator) -> float:
    """The roofline: ``min(peak_flops, intensity * memory_bandwidth)`` FLOP/s at ``intensity``."""
    if intensity < 0:
        raise ValueError(f"intensity must be >= 0, got {intensity}")
    return min(accelerator.peak_flops, intensity * accelerator.memory_bandwidth)


def context_token_sum(prefix_length: int, generated: int) -> int:
    """Sum over a row's ``generated`` decode steps of the tokens in its KV cache before each step:
    ``prefix_length + t`` for ``t = 0..generated-1``, i.e. ``g * p + g * (g - 1) / 2``."""
    if prefix_length < 0 or generated < 0:
        raise ValueError(f"prefix_length and generated must be >= 0, got {prefix_length}, {generated}")
    return generated * prefix_length + generated * (generated - 1) // 2


def rollout_cost(shape: ModelShape, *, decode_steps: int, row_steps: int, context_tokens: int) -> DecodeCost:
    """FLOPs and bytes of a generation's decode steps from three totals (the formula of
    :func:`decode_step_cost`, which is this for one step), exact because every term is linear in
    the rows or in their contexts: ``decode_steps`` steps with a live row
    (each reads the weights once), ``row_steps`` live rows summed over the steps (the generated
    tokens), ``context_tokens`` their context lengths summed (:func:`context_token_sum` per row)."""
    if min(decode_steps, row_steps, context_tokens) < 0:
        raise ValueError(f"totals must be >= 0, got {decode_steps}, {row_steps}, {context_tokens}")
    layers, kv_width = shape.num_layers, shape.num_kv_heads * shape.head_dim
    return DecodeCost(
        flops=2 * row_steps * shape.matrix_params()
        + layers * 4 * shape.num_heads * shape.head_dim * (context_tokens + row_steps),
        weight_bytes=decode_steps * shape.matrix_params() * shape.dtype_bytes,
        kv_read_bytes=layers * 2 * kv_width * context_tokens * shape.dtype_bytes,
        kv_write_bytes=layers * row_steps * 2 * kv_width * shape.dtype_bytes,
    )


def rollout_roofline_metrics(
    shape: ModelShape, *, decode_steps: int, row_steps: int, context_tokens: float
) -> dict[str, float]:
    """A step's ``rollout/decode_flops``, ``rollout/decode_bytes`` and ``rollout/flops_per_byte``
    (:func:`rollout_cost`); NaNs when the context count is unknown (an engine that did not count it)."""
    if context_tokens != context_tokens:  # NaN
        nan = float("nan")
        return {"rollout/decode_flops": nan, "rollout/decode_bytes": nan, "rollout/flops_per_byte": nan}
    cost = rollout_cost(
        shape, decode_steps=decode_steps, row_steps=row_steps, context_tokens=int(context_tokens)
    )
    return {
        "rollout/decode_flops": float(cost.flops),
        "rollout/decode_bytes": float(cost.bytes),
        "rollout/flops_per_byte": cost.intensity,
    }
