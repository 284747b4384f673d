"""Tests for tppo.roofline: decode-step FLOPs and bytes, arithmetic intensity, accelerator roofs."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

from tppo.roofline import (
    ACCELERATORS,
    DecodeCost,
    ModelShape,
    attainable_flops,
    context_token_sum,
    decode_arithmetic_intensity,
    decode_step_cost,
    model_shape,
    ridge_intensity,
    rollout_arithmetic_intensity,
    rollout_cost,
    rollout_roofline_metrics,
)

# One layer, hidden 4, 2 query heads and 1 key/value head of size 2, gated MLP of width 8, vocab 10,
# 2 bytes per value.
TINY = ModelShape(
    num_layers=1, hidden_size=4, num_heads=2, num_kv_heads=1, head_dim=2,
    intermediate_size=8, vocab_size=10, dtype_bytes=2,
)  # fmt: skip


def test_matrix_params_by_hand():
    # q: 4 * 2 * 2 = 16; k, v: 4 * 1 * 2 = 8 each; o: 16 -> 48. MLP: 3 * 4 * 8 = 96. Layer: 144.
    # LM head 10 * 4 = 40. Total 184.
    assert TINY.layer_matrix_params() == 144
    assert TINY.matrix_params() == 184


def test_decode_step_cost_by_hand():
    # Two live rows with 3 and 5 cached tokens.
    # flops: linear 2 * 2 * 184 = 736; attention 1 layer * 4 * 2 heads * 2 * ((3 + 1) + (5 + 1)) = 160.
    # weights: 184 * 2 = 368 bytes. KV read: 1 * 2 * (1 * 2) * (3 + 5) * 2 = 64. KV write: 1 * 2 rows *
    # 2 * 2 * 2 = 16. Bytes 448; intensity 896 / 448 = 2.
    cost = decode_step_cost(TINY, [3, 5])
    assert cost == DecodeCost(flops=896, weight_bytes=368, kv_read_bytes=64, kv_write_bytes=16)
    assert cost.bytes == 448
    assert decode_arithmetic_intensity(TINY, [3, 5]) == 2.0


def test_context_token_sum_by_hand():
    # a prefix of 3 and 4 generated tokens: contexts 3, 4, 5, 6 -> 18
    assert context_token_sum(3, 4) == 18
    assert context_token_sum(7, 0) == 0 and context_token_sum(0, 1) == 0
    with pytest.raises(ValueError, match=">= 0"):
        context_token_sum(-1, 2)


def test_rollout_cost_from_totals_equals_the_sum_of_its_steps():
    # rows with prefixes 3, 5, 2 generating 4, 1, 0 tokens: steps 0..3 with live rows
    # step 0: contexts [3, 5]; steps 1-3: [4], [5], [6]
    steps = [[3, 5], [4], [5], [6]]
    summed = [sum(values) for values in zip(*(decode_step_cost(TINY, s) for s in steps), strict=True)]
    totals = rollout_cost(
        TINY,
        decode_steps=4,
        row_steps=5,
        context_tokens=context_token_sum(3, 4) + context_token_sum(5, 1) + context_token_sum(2, 0),
    )
    assert list(totals) == summed
    metrics = rollout_roofline_metrics(TINY, decode_steps=4, row_steps=5, context_tokens=23)
    assert metrics["rollout/flops_per_byte"] == pytest.approx(rollout_arithmetic_intensity(TINY, steps))
    assert metrics["rollout/decode_flops"] == summed[0] and metrics["rollout/decode_bytes"] == sum(summed[1:])
    unknown = rollout_roofline_metrics(TINY, decode_steps=4, row_steps=5, context_tokens=float("nan"))
    assert all(value != value for value in unknown.values())


def test_no_live_rows_is_an_empty_step():
    assert decode_step_cost(TINY, []) == DecodeCost(0, 0, 0, 0)
    assert decode_arithmetic_intensity(TINY, []) == 0.0
    with pytest.raises(ValueError, match=">= 0"):
        decode_step_cost(TINY, [3, -1])


def test_rollout_intensity_is_total_flops_over_total_bytes():
    # Steps [3, 5] (896 FLOPs, 448 bytes) and [6]: linear 2 * 184 = 368, attention 16 * 7 = 112 ->
    # 480 FLOPs; bytes 368 + 2 * 2 * 6 * 2 = 48 read + 8 written = 424. Total 1376 / 872.
    assert rollout_arithmetic_intensity(TINY, [[3, 5], [6], []]) == pytest.approx(1376 / 872)
    assert rollout_arithmetic_intensity(TINY, [[], []]) == 0.0


# A 32B-class shape (Qwen2.5-32B: 64 layers, hidden 5120, 40 heads, 8 KV heads of 128, MLP 27648,
# vocab 152064) in bfloat16, as in the paper's rollouts.
LARGE = ModelShape(
    num_layers=64, hidden_size=5120, num_heads=40, num_kv_heads=8, head_dim=128,
    intermediate_size=27648, vocab_size=152064, dtype_bytes=2,
)  # fmt: skip


def test_more_live_rows_raise_intensity():
    """T-PPO keeps slots full, PPO's batch drains: more live rows at the same context, more FLOPs/byte."""
    intensities = [decode_arithmetic_intensity(LARGE, [2048] * rows) for rows in (1, 8, 64, 256, 512)]
    assert intensities == sorted(intensities) and len(set(intensities)) == len(intensities)
    # One row: ~2 FLOPs per weight, 2 bytes per weight, so about 1 FLOP per byte.
    assert 0.9 < intensities[0] < 1.1
    # Rows share the weight read but each brings its own KV cache: growth is sublinear in the rows.
    assert intensities[-1] < 512 * intensities[0]


def test_longer_contexts_lower_intensity():
    short = decode_arithmetic_intensity(LARGE, [512] * 64)
    long = decode_arithmetic_intensity(LARGE, [8192] * 64)
    assert long < short


def test_model_shape_of_a_qwen2_config_counts_the_models_matrices():
    config = Qwen2Config(
        vocab_size=50, hidden_size=16, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True, dtype="float32",
    )  # fmt: skip
    shape = model_shape(config)
    assert shape == ModelShape(
        num_layers=2, hidden_size=16, num_heads=4, num_kv_heads=2, head_dim=4,
        intermediate_size=40, vocab_size=50, dtype_bytes=4, mlp_matrices=3,
    )  # fmt: skip
    model = Qwen2ForCausalLM(config)
    matrices = sum(p.numel() for p in model.parameters() if p.dim() == 2)  # tied: embedding = LM head
    assert shape.matrix_params() == matrices
    assert model_shape(config, dtype_bytes=2).dtype_bytes == 2


def test_model_shape_of_a_gpt2_config():
    config = GPT2Config(vocab_size=30, n_positions=64, n_embd=12, n_layer=2, n_head=3)
    shape = model_shape(config, dtype_bytes=2)
    assert (shape.num_kv_heads, shape.head_dim, shape.intermediate_size, shape.mlp_matrices) == (3, 4, 48, 2)
    model = GPT2LMHeadModel(config)
    # 2-D weights minus the position embeddings (a decode step reads one row of them).
    matrices = sum(p.numel() for name, p in model.named_parameters() if p.dim() == 2 and "wpe" not in name)
    assert shape.matrix_params() == matrices


def test_model_shape_reads_a_torch_dtype():
    config = Qwen2Config(
        vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2,
        dtype=torch.bfloat16,
    )  # fmt: skip
    assert model_shape(config).dtype_bytes == 2


def test_accelerator_roofs_by_hand():
    h800, h200 = ACCELERATORS.get("H800"), ACCELERATORS.get("H200")
    # Ridge = peak / bandwidth: 989.4e12 / 3.35e12 = 295.3; 989.4e12 / 4.8e12 = 206.1.
    assert ridge_intensity(h800) == pytest.approx(295.34, abs=0.01)
    assert ridge_intensity(h200) == pytest.approx(206.13, abs=0.01)
    # Below the ridge memory-bound: 84 FLOPs/byte * 3.35e12 B/s = 281.4 TFLOP/s (the paper's PPO);
    # 249 * 3.35e12 = 834.15 TFLOP/s (T-PPO). Above it, the peak.
    assert attainable_flops(84, h800) == pytest.approx(281.4e12)
    assert attainable_flops(249, h800) == pytest.approx(834.15e12)
    assert attainable_flops(1000, h800) == h800.peak_flops
    assert attainable_flops(0, h200) == 0.0
    with pytest.raises(ValueError):
        attainable_flops(-1, h200)
    with pytest.raises(KeyError):
        ACCELERATORS.get("H900")


def test_the_cpu_measurement_script_writes_its_figures(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "roofline_cpu.py"
    out = tmp_path / "cpu.json"
    args = ["--n", "64", "--copy-mib", "4", "--repeats", "1", "--json", str(out)]
    result = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, check=True)
    assert "command:" in result.stdout and "GFLOP/s" in result.stdout
    figures = json.loads(out.read_text())
    assert figures["matmul_n"] == 64 and figures["threads"] == 1
    for key in ("matmul_gflops", "copy_gb_s", "read_gb_s", "ridge_flops_per_byte"):
        assert figures[key] > 0
