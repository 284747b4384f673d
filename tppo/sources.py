"""Prompt sources: local ``.jsonl`` / ``.parquet`` files and Hugging Face data sets.

Every row becomes a :class:`Problem` (the bare problem text, or chat messages, and the ground
truth) through one field mapping that handles, without per-file code:

- plain rows: ``problem`` or ``question`` or ``prompt`` (a string) for the text, ``answer`` or
  ``ground_truth`` for the target (AIME, MATH-500, ...);
- verl's layout: ``prompt`` is a list of chat messages, the target is ``reward_model.ground_truth``
  (DAPO-Math-17k as distributed with verl recipes);
- GSM8K: ``answer`` holds the worked solution ending in ``#### N``; the target is ``N`` (thousands
  separators removed).

A template then turns a problem into the prompt the model sees: the DAPO/T-PPO math instruction
(:data:`DAPO_MATH_TEMPLATE`, the default), any string with a ``{problem}`` field, and optionally
the tokenizer's own chat template (``apply_chat_template``). A malformed row is an error naming
the file, the row number (counted from 1; in a ``.jsonl`` file, its line) and the missing field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tppo.rollout.prompts import PromptRow

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

DAPO_MATH_TEMPLATE = (
    "Solve the following math problem step by step. The last line of your response should be of the "
    "form Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n{problem}\n\n"
    'Remember to put your answer on its own line after "Answer:".'
)
"""The DAPO / T-PPO math prompt; ``{problem}`` is the bare problem."""

TEMPLATES = {"dapo_math": DAPO_MATH_TEMPLATE, "none": "{problem}"}
"""Named prompt templates (``data.prompt_template``); any other value must contain ``{problem}``."""

PROMPT_KEYS = ("problem", "question", "prompt")
ANSWER_KEYS = ("reward_model.ground_truth", "ground_truth", "answer")
FILE_SUFFIXES = (".jsonl", ".parquet")
_GSM8K_ANSWER = re.compile(r"####\s*(.+?)\s*$", re.DOTALL)


class DataError(ValueError):
    """A data file or row that cannot be used; the message names the file, row and field."""


@dataclass(frozen=True)
class Problem:
    """One row, mapped.

    Attributes:
        messages: the chat messages (``role``, ``content``); plain rows give one user message
            holding the bare problem. The template applies to the last user message.
        ground_truth: what the reward compares the response's final answer against.
        source: ``file:row`` (for error messages and per-problem evaluation output).
    """

    messages: tuple[tuple[str, str], ...]
    ground_truth: str
    source: str

    @property
    def problem(self) -> str:
        """The last user message's text."""
        return next(content for role, content in reversed(self.messages) if role == "user")


# ---------------------------------------------------------------------------------- reading rows
def read_rows(source: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(row number from 1, row dict)`` of a ``.jsonl`` / ``.parquet`` file or a Hugging Face
    data set named ``NAME[:CONFIG][@SPLIT]`` (split ``train`` by default)."""
    path = Path(source).expanduser()
    if path.suffix in FILE_SUFFIXES or path.exists():
        if not path.is_file():
            raise DataError(f"data file {source!r} does not exist")
        if path.suffix == ".jsonl":
            yield from _read_jsonl(path)
        elif path.suffix == ".parquet":
            yield from _read_parquet(path)
        else:
            raise DataError(f"data file {source!r}: unsupported format (use {', '.join(FILE_SUFFIXES)})")
        return
    yield from _read_hf_dataset(source)


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in _lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}: row {number}: not valid JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}: row {number}: expected a JSON object, got {type(row).__name__}")
        yield number, row


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number from 1, text)``; a line that is not UTF-8 is a :class:`DataError` naming it."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataError(f"{path}: row {number}: not UTF-8 text ({error.reason})") from None


def _read_parquet(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as error:
        raise DataError(f"data file {str(path)!r} is not a readable parquet file ({error})") from None
    yield from enumerate(table.to_pylist(), start=1)


def _read_hf_dataset(spec: str) -> Iterator[tuple[int, dict[str, Any]]]:
    name, _, split = spec.partition("@")
    name, _, subset = name.partition(":")
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"data source {spec!r} is not a local file, so it is read as a Hugging Face data set, which "
            "needs the `datasets` package (pip install datasets); or point to a .jsonl/.parquet file"
        ) from None
    try:
        dataset = datasets.load_dataset(name, subset or None, split=split or "train")
    except Exception as error:  # the datasets package raises many kinds (not found, offline, bad split)
        first_line = (str(error).splitlines() or [""])[0]
        raise DataError(
            f"data source {spec!r} is not a local file and could not be loaded as a Hugging Face data "
            f"set ({type(error).__name__}: {first_line})"
        ) from None
    for number, row in enumerate(dataset, start=1):
        yield number, dict(row)


# ---------------------------------------------------------------------------------- field mapping
def _lookup(row: dict[str, Any], dotted: str) -> Any:
    """``row["a"]["b"]`` for ``"a.b"``; ``None`` when any part is missing."""
    node: Any = row
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _required(row: dict[str, Any], keys: Sequence[str], what: str, where: str) -> tuple[str, Any]:
    """The first of ``keys`` present in ``row``; else a :class:`DataError` naming them and the row's keys."""
    found = _first(row, keys)
    if found is None:
        raise DataError(
            f"{where}: missing field {' or '.join(map(repr, keys))} ({what}); row has {sorted(row)}"
        )
    return found


def _first(row: dict[str, Any], keys: Sequence[str]) -> tuple[str, Any] | None:
    for key in keys:
        value = _lookup(row, key)
        if value is not None:
            return key, value
    return None


def gsm8k_target(answer: str) -> str:
    """``"...\\n#### 1,080"`` -> ``"1080"``; other answers unchanged."""
    match = _GSM8K_ANSWER.search(answer)
    return match.group(1).replace(",", "") if match else answer.strip()


def map_row(
    row: dict[str, Any],
    where: str,
    *,
    prompt_key: str | None = None,
    answer_key: str | None = None,
) -> Problem:
    """A row -> :class:`Problem`; ``where`` (``file: row N``) prefixes every error."""
    key, value = _required(row, (prompt_key,) if prompt_key else PROMPT_KEYS, "the prompt", where)
    messages = _as_messages(value, f"{where}: field {key!r}")
    key, value = _required(row, (answer_key,) if answer_key else ANSWER_KEYS, "the ground truth", where)
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise DataError(f"{where}: field {key!r} must be a string or a number, got {type(value).__name__}")
    truth = gsm8k_target(str(value))
    if not truth:
        raise DataError(f"{where}: field {key!r} is empty")
    return Problem(messages=messages, ground_truth=truth, source=where)


def _as_messages(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where} is empty")
        return (("user", value),)
    if isinstance(value, list) and value:
        messages = []
        for i, message in enumerate(value):
            if not (
                isinstance(message, dict)
                and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)
            ):
                raise DataError(f"{where}: message {i} needs string 'role' and 'content'")
            messages.append((message["role"], message["content"]))
        if not any(role == "user" for role, _ in messages):
            raise DataError(f"{where}: no message with role 'user'")
        return tuple(messages)
    raise DataError(f"{where}: expected a string or a list of chat messages, got {type(value).__name__}")


def load_problems(
    source: str,
    *,
    prompt_key: str | None = None,
    answer_key: str | None = None,
    limit: int | None = None,
) -> list[Problem]:
    """The rows of ``source`` (see :func:`read_rows`) mapped to problems; at most ``limit``."""
    problems: list[Problem] = []
    for number, row in read_rows(source):
        if limit is not None and len(problems) >= limit:
            break
        problems.append(map_row(row, f"{source}: row {number}", prompt_key=prompt_key, answer_key=answer_key))
    if not problems:
        raise DataError(f"data source {source!r} holds no rows")
    return problems


# ---------------------------------------------------------------------------------- templates
def resolve_template(template: str) -> str:
    """A named template or a format string with a ``{problem}`` field."""
    text = TEMPLATES.get(template, template)
    if "{problem}" not in text:
        raise DataError(
            f"prompt template {template!r} is neither a named template ({', '.join(TEMPLATES)}) "
            "nor a string containing '{problem}'"
        )
    return text


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(
    problem: Problem, tokenizer: PreTrainedTokenizerBase, *, template: str, chat: bool | None
) -> str:
    """The prompt text: the template applied to the last user message, then the tokenizer's chat
    template (``chat=None``: when the tokenizer has one) with the generation prompt appended;
    without a chat template, the messages' contents joined by blank lines."""
    text = resolve_template(template)
    last_user = max(i for i, (role, _) in enumerate(problem.messages) if role == "user")
    messages = [
        {"role": role, "content": text.replace("{problem}", content) if i == last_user else content}
        for i, (role, content) in enumerate(problem.messages)
    ]
    use_chat = has_chat_template(tokenizer) if chat is None else chat
    if use_chat:
        if not has_chat_template(tokenizer):
            raise DataError("data.chat_template is true but the tokenizer has no chat template")
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    return "\n\n".join(m["content"] for m in messages)


def problem_rows(
    problems: Sequence[Problem],
    tokenizer: PreTrainedTokenizerBase,
    *,
    template: str,
    chat: bool | None,
    max_prompt_length: int,
) -> list[PromptRow]:
    """Tokenised prompt rows; a prompt over ``max_prompt_length`` tokens is an error naming its row."""
    texts = [render_prompt(problem, tokenizer, template=template, chat=chat) for problem in problems]
    token_ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []  # one batched call
    rows = []
    for problem, text, ids in zip(problems, texts, token_ids, strict=True):
        if len(ids) > max_prompt_length:
            raise DataError(
                f"{problem.source}: prompt of {len(ids)} tokens exceeds data.max_prompt_length="
                f"{max_prompt_length}"
            )
        rows.append(PromptRow(token_ids=tuple(ids), ground_truth=problem.ground_truth, text=text))
    return rows
