"""A character-level tokenizer for the built-in synthetic tasks.

One token per character of a small alphabet, plus two special tokens: ``<pad>`` (id 0) and
``<eos>`` (id 1). There is no BOS token, no unknown token (a character outside the alphabet is an
error) and no normalisation: ``decode(encode(s)) == s`` for every string over the alphabet, with no
spaces inserted. It is a plain ``tokenizers`` tokenizer wrapped in
:class:`~transformers.PreTrainedTokenizerFast`, so ``save_pretrained`` writes a ``tokenizer.json``
that ``AutoTokenizer.from_pretrained`` (and a vLLM engine) loads back.

One trap, handled here: in a folder whose ``config.json`` is a Qwen2 model's, transformers 5 ignores
the saved tokenizer class and rebuilds the tokenizer as a ``Qwen2Tokenizer`` from the saved vocabulary
(byte-level BPE with Qwen's pre-tokenizer, which also adds an unknown token ``<|endoftext|>`` unless
the config names none). For an alphabet of printable ASCII characters other than space, that
rebuilt tokenizer gives the same ids and texts as this one, and with ``unk_token`` and ``bos_token``
saved as null it adds no token. The alphabet is therefore restricted to those characters.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD_TOKEN = "<pad>"
EOS_TOKEN = "<eos>"


def build_char_tokenizer(alphabet: str) -> PreTrainedTokenizerFast:
    """A tokenizer with ids ``<pad>`` = 0, ``<eos>`` = 1, then ``alphabet[i]`` = ``i + 2``.

    Args:
        alphabet: the characters, each once, in id order: printable ASCII, no whitespace. ``<``
            and ``>`` are allowed, but a text holding the literal string ``<eos>`` or ``<pad>``
            encodes it as the special token.

    Returns:
        A fast tokenizer with ``eos_token="<eos>"`` and ``pad_token="<pad>"``; right padding.
    """
    if not alphabet:
        raise ValueError("the alphabet is empty")
    if len(set(alphabet)) != len(alphabet):
        raise ValueError(f"the alphabet repeats a character: {alphabet!r}")
    if not all(char.isascii() and char.isprintable() and not char.isspace() for char in alphabet):
        raise ValueError(f"the alphabet must be printable ASCII without whitespace: {alphabet!r}")
    vocab = {PAD_TOKEN: 0, EOS_TOKEN: 1}
    for char in alphabet:
        vocab[char] = len(vocab)
    # WordLevel over single characters: the pre-tokenizer isolates every character, the model maps
    # it to its id, and the Fuse decoder joins tokens with no separator.
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=None,  # saved as null, so that a Qwen2Tokenizer loading it adds no token
        bos_token=None,
        clean_up_tokenization_spaces=False,
        padding_side="right",
    )
    return tokenizer
