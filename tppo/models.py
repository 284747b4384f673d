"""Policy and value models: loading, and the two forward passes the trainer needs.

The policy is any ``AutoModelForCausalLM``. The value model is an
``AutoModelForTokenClassification`` with one label: the LM backbone plus a scalar head, which
may start from a different checkpoint than the policy (the paper starts it from a reward
model). ``V(s_t)``, the value of the state before response token ``t``, is the head's output at
the position of the token before ``t``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForTokenClassification,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from tppo.config import ModelConfig
from tppo.engines.sampling import token_log_probs_and_entropy
from tppo.engines.types import SamplingParams
from tppo.pretrained import PRETRAINED
from tppo.rollout.batch import RolloutBatch

log = logging.getLogger(__name__)

BUILTIN_MODELS = {
    "tppo-demo": Path(__file__).parent / "assets" / "demo_base",
    "tppo-collatz": Path(__file__).parent / "assets" / "collatz_base",
    "tppo-sort": Path(__file__).parent / "assets" / "sort_base",
}
"""Names that resolve to checkpoints shipped inside the package."""

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model_path(name: str) -> str:
    """A built-in name (``tppo-demo``) or a pretrained alias (``smollm2-135m-instruct``, see
    :mod:`tppo.pretrained`) -> its folder; a local path must exist; anything else is a Hub name."""
    if name in BUILTIN_MODELS:
        return str(BUILTIN_MODELS[name])
    if name in PRETRAINED:
        return str(PRETRAINED[name]())
    looks_local = name.startswith((".", "/", "~")) or Path(name).expanduser().exists()
    if looks_local and not Path(name).expanduser().exists():
        raise FileNotFoundError(f"model path {name!r} does not exist")
    return str(Path(name).expanduser()) if looks_local else name


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class Vocabulary:
    """What the controller needs of the tokenizer: decoding, and the ids that end or pad a response."""

    tokenizer: PreTrainedTokenizerBase
    eos_token_ids: list[int]
    pad_token_id: int


@dataclass
class Models:
    """What one training process holds: the policy, the value model (``None`` for a critic-free
    method) and a frozen reference policy (only with ``algorithm.kl_coef > 0``)."""

    tokenizer: PreTrainedTokenizerBase
    policy: PreTrainedModel
    value: PreTrainedModel | None
    eos_token_ids: list[int]
    pad_token_id: int
    reference: PreTrainedModel | None = None

    @property
    def vocabulary(self) -> Vocabulary:
        return Vocabulary(self.tokenizer, self.eos_token_ids, self.pad_token_id)


def load_vocabulary(config: ModelConfig) -> Vocabulary:
    """The tokenizer, with the EOS ids of the tokenizer and of the policy's generation config
    (no weights are loaded: a distributed controller needs only this)."""
    tokenizer_path = resolve_model_path(config.tokenizer_path or config.policy_path)
    check_tokenizer_folder(tokenizer_path)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer of {config.tokenizer_path or config.policy_path!r} has no EOS token")
    eos_ids = {int(tokenizer.eos_token_id)}
    try:
        generation_eos = GenerationConfig.from_pretrained(resolve_model_path(config.policy_path)).eos_token_id
    except OSError:  # the checkpoint has no generation_config.json
        generation_eos = None
    if generation_eos is not None:
        eos_ids.update([generation_eos] if isinstance(generation_eos, int) else generation_eos)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return Vocabulary(tokenizer, sorted(eos_ids), int(pad))


def load_policy(config: ModelConfig) -> PreTrainedModel:
    """The policy alone, on the configured device, dropout off (what a rollout worker holds)."""
    policy = AutoModelForCausalLM.from_pretrained(
        resolve_model_path(config.policy_path), dtype=DTYPES[config.dtype]
    )
    policy.to(resolve_device(config.device))  # type: ignore[arg-type]  # stubs type `.to` for the model
    disable_dropout(policy)
    return policy


def load_models(config: ModelConfig, *, value: bool = True, reference: bool = False) -> Models:
    """Tokenizer, policy and (``value``) value model on the configured device, dropout off; with
    ``reference``, a second, frozen copy of the initial policy (for a KL penalty)."""
    vocabulary = load_vocabulary(config)
    policy = load_policy(config)
    value_model = None
    if value:
        value_model = load_value_model(
            resolve_model_path(config.value_path or config.policy_path), DTYPES[config.dtype]
        )
        value_model.to(resolve_device(config.device))  # type: ignore[arg-type]
        disable_dropout(value_model)
    reference_model = None
    if reference:
        reference_model = load_policy(config).eval()
        reference_model.requires_grad_(False)
    return Models(
        vocabulary.tokenizer,
        policy,
        value_model,
        vocabulary.eos_token_ids,
        vocabulary.pad_token_id,
        reference=reference_model,
    )


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def check_tokenizer_folder(path: str) -> None:
    """A local folder must hold tokenizer files: without them ``AutoTokenizer`` quietly builds an
    empty tokenizer from the model's config, which turns every prompt into nothing."""
    folder = Path(path)
    if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"model folder {path!r} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save the "
            "tokenizer there (tokenizer.save_pretrained) or name one with model.tokenizer_path"
        )


def load_value_model(path: str, dtype: torch.dtype) -> PreTrainedModel:
    """A one-label token-classification model; a missing head starts at zero, and we say so."""
    value, info = AutoModelForTokenClassification.from_pretrained(
        path, num_labels=1, dtype=dtype, output_loading_info=True
    )
    head = _value_head(value)
    missing = [k for k in info["missing_keys"] if any(k.endswith(n) for n, _ in head.named_parameters())]
    if missing:
        log.warning("value head not found in %s: initialised to zero (%s)", path, ", ".join(missing))
        with torch.no_grad():
            for param in head.parameters():
                param.zero_()
    return value


def _value_head(model: PreTrainedModel) -> nn.Module:
    return getattr(model, _value_head_name(model))


def _value_head_name(model: PreTrainedModel) -> str:
    for name in ("score", "classifier"):
        if isinstance(getattr(model, name, None), nn.Module):
            return name
    raise ValueError(f"{type(model).__name__} has no 'score' or 'classifier' head to use as the value head")


def value_head_parameter_names(model: PreTrainedModel) -> tuple[str, ...]:
    """The full names of the value head's parameters (``score.weight``, ``score.bias``)."""
    prefix = _value_head_name(model)
    return tuple(f"{prefix}.{name}" for name, _ in _value_head(model).named_parameters())


def disable_dropout(model: nn.Module) -> None:
    """RL needs the same function at sampling and training time: zero every dropout."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def response_log_probs(
    policy: PreTrainedModel, batch: RolloutBatch, *, sampling: SamplingParams
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs ``Tensor[B, T]`` of the response tokens, and the entropy ``Tensor[B, T]``, under the
    distribution the engines sample from (``logits / temperature``, top-k, top-p, renormalised:
    :func:`~tppo.engines.sampling.processed_logits`, the engines' log-prob contract), at each
    response position. Each response token is kept in the filtered support, so its log-prob stays
    finite after an update moves the nucleus (for the weights that sampled it, that changes nothing)."""
    width_t = batch.response_width
    logits = policy(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask.long(),
        position_ids=batch.position_ids,
        logits_to_keep=width_t + 1,
        use_cache=False,
    ).logits[:, :-1]  # [B, T, V]: column t predicts response token t
    return token_log_probs_and_entropy(logits, batch.response_tokens, sampling)


def response_values(value: PreTrainedModel, batch: RolloutBatch) -> torch.Tensor:
    """``Tensor[B, T]``: ``V(s_t)``, the head's output at the token before response token t."""
    out = value(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask.long(),
        position_ids=batch.position_ids,
        use_cache=False,
    ).logits  # [B, P + T, 1]
    p, t = batch.prompt_width, batch.response_width
    return out[:, p - 1 : p - 1 + t, 0].float()
