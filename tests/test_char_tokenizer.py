"""The character-level tokenizer: one token per character, exact round trips, save and load."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from transformers import AutoTokenizer, Qwen2Config

from tppo.tasks.char_tokenizer import build_char_tokenizer

ALPHABET = "0123456789=;#"


def test_ids_and_special_tokens() -> None:
    tokenizer = build_char_tokenizer(ALPHABET)
    assert len(tokenizer) == len(ALPHABET) + 2
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<pad>", 0)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<eos>", 1)
    assert tokenizer.bos_token is None
    # One token per character, in alphabet order from id 2; nothing added around the text.
    assert tokenizer.encode("0=#", add_special_tokens=True) == [2, 12, 14]
    assert tokenizer("72=")["input_ids"] == [9, 4, 12]
    assert tokenizer.encode("1<eos>", add_special_tokens=False) == [3, 1]
    assert tokenizer.decode([3, 1, 0]) == "1<eos><pad>"
    assert tokenizer.decode([3, 1, 0], skip_special_tokens=True) == "1"


def test_round_trip_is_exact() -> None:
    tokenizer = build_char_tokenizer(ALPHABET)
    rng = random.Random(0)
    for _ in range(200):
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 60)))
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert len(ids) == len(text)
        assert tokenizer.decode(ids) == text


def test_other_alphabets_and_errors() -> None:
    tokenizer = build_char_tokenizer("ab(c)")
    text = "a(b)cc)ba"
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    for bad in ("aa", "", "ab c", "a\n", "aé"):
        with pytest.raises(ValueError):
            build_char_tokenizer(bad)
    with pytest.raises(Exception):  # noqa: B017 - the tokenizers library raises its own type
        tokenizer.encode("x", add_special_tokens=False)


def _check_same(loaded, tokenizer) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(1)
    for _ in range(100):
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 40)))
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert loaded.encode(text, add_special_tokens=False) == ids
        assert loaded.encode(text) == ids  # add_special_tokens=True adds nothing
        assert loaded.decode([*ids, 1]) == text + "<eos>"
        assert loaded.decode([*ids, 1, 0], skip_special_tokens=True) == text
    assert (loaded.eos_token_id, loaded.pad_token_id, loaded.bos_token_id) == (1, 0, None)
    assert len(loaded) == len(tokenizer)
    assert loaded.get_vocab() == tokenizer.get_vocab()


def test_loads_back_beside_a_qwen2_config(tmp_path: Path) -> None:
    # With a Qwen2 config.json beside it, AutoTokenizer builds a Qwen2Tokenizer from the saved
    # vocabulary (as vLLM will): it must behave exactly like the original, with no added token.
    tokenizer = build_char_tokenizer(ALPHABET)
    tokenizer.save_pretrained(tmp_path)
    Qwen2Config(vocab_size=len(tokenizer), hidden_size=8, num_attention_heads=2).save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    _check_same(loaded, tokenizer)
    # ... and again after the loaded tokenizer is saved in turn.
    loaded.save_pretrained(tmp_path / "again")
    Qwen2Config(vocab_size=len(tokenizer), hidden_size=8, num_attention_heads=2).save_pretrained(
        tmp_path / "again"
    )
    _check_same(AutoTokenizer.from_pretrained(tmp_path / "again"), tokenizer)


def test_save_and_load(tmp_path: Path) -> None:
    tokenizer = build_char_tokenizer(ALPHABET)
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "72=72;28;14;#111"
    assert loaded.encode(text, add_special_tokens=False) == tokenizer.encode(text, add_special_tokens=False)
    assert loaded.decode(loaded.encode(text, add_special_tokens=False)) == text
    assert (loaded.eos_token_id, loaded.pad_token_id, loaded.bos_token_id) == (1, 0, None)
    assert loaded.encode(text) == tokenizer.encode(text)  # add_special_tokens=True adds nothing
    assert len(loaded) == len(tokenizer)
