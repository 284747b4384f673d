"""A tiny randomly initialised Qwen2 causal LM for the built-in synthetic tasks.

The default size (hidden 128, 4 layers, 4 heads, MLP 512, tied embeddings) has about 1.05M
parameters with a 15-token vocabulary: small enough to train and sample on a laptop CPU, and a
standard architecture that Hugging Face and vLLM both load from its ``config.json``.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase, Qwen2Config, Qwen2ForCausalLM


def build_tiny_qwen2(
    tokenizer: PreTrainedTokenizerBase,
    *,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int = 512,
    max_position_embeddings: int = 1024,
    rope_theta: float = 10000.0,
    seed: int = 0,
) -> Qwen2ForCausalLM:
    """A freshly initialised float32 ``Qwen2ForCausalLM`` sized for ``tokenizer``.

    Args:
        tokenizer: supplies the vocabulary size and the EOS and PAD ids (it must have both).
        hidden_size: width of the residual stream; divisible by ``num_heads``.
        num_layers: number of decoder layers.
        num_heads: attention heads (as many key/value heads: no grouped-query attention).
        intermediate_size: width of each SwiGLU MLP.
        max_position_embeddings: longest sequence (prompt + response) the model is meant for;
            the default 1024 covers a short prompt plus 512 response tokens with room to spare.
        rope_theta: base of the rotary position embedding.
        seed: the initialisation seed; the same seed gives the same weights. The global torch RNG
            is left as it was.

    Returns:
        The model in eval mode, input and output embeddings tied.
    """
    if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer needs an EOS and a PAD token")
    if hidden_size % num_heads != 0:
        raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        tie_word_embeddings=True,
        use_sliding_window=False,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.float()  # float32 whatever the default dtype
    model.generation_config.bos_token_id = None
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model
