from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tppo.config import DataConfig, load_config
from tppo.data import build_data
from tppo.sources import (
    DAPO_MATH_TEMPLATE,
    DataError,
    gsm8k_target,
    load_problems,
    problem_rows,
    render_prompt,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def word_tokenizer(chat: bool = False) -> PreTrainedTokenizerFast:
    """A real fast tokenizer over whitespace-split words (unknown words -> [UNK])."""
    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "<eos>": 1}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", unk_token="[UNK]")
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_plain_rows_take_problem_question_or_prompt_and_answer_or_ground_truth(tmp_path):
    path = write_jsonl(
        tmp_path / "plain.jsonl",
        [
            {"problem": "1+1?", "answer": "2"},
            {"question": "2+2?", "ground_truth": 4},
            {"prompt": "3+3?", "answer": "025"},  # zero-padded AIME style: kept as written
        ],
    )
    problems = load_problems(str(path))
    assert [p.problem for p in problems] == ["1+1?", "2+2?", "3+3?"]
    assert [p.ground_truth for p in problems] == ["2", "4", "025"]
    assert problems[1].source == f"{path}: row 2"


def test_gsm8k_answer_ends_in_hashes_and_the_target_is_the_number(tmp_path):
    assert gsm8k_target("She makes 9 * 2 = $18.\n#### 18") == "18"
    assert gsm8k_target("...\n#### 1,080") == "1080"  # thousands separators dropped
    assert gsm8k_target(" 42 ") == "42"  # no hashes: unchanged (stripped)
    path = write_jsonl(tmp_path / "gsm8k.jsonl", [{"question": "Q?", "answer": "2 + 3 = 5\n#### 5"}])
    assert load_problems(str(path))[0].ground_truth == "5"


def test_verl_layout_from_parquet(tmp_path):
    rows = [
        {
            "data_source": "DAPO-17k",
            "prompt": [{"content": "Find x.", "role": "user"}],
            "reward_model": {"ground_truth": "34", "style": "rule"},
        },
        {
            "data_source": "DAPO-17k",
            "prompt": [{"content": "Be brief.", "role": "system"}, {"content": "Find y.", "role": "user"}],
            "reward_model": {"ground_truth": "7", "style": "rule"},
        },
    ]
    path = tmp_path / "verl.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    problems = load_problems(str(path))
    assert [p.problem for p in problems] == ["Find x.", "Find y."]
    assert [p.ground_truth for p in problems] == ["34", "7"]
    assert problems[1].messages == (("system", "Be brief."), ("user", "Find y."))


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not beside this checkout")
def test_the_shared_data_sets_load():
    dapo = load_problems(str(SHARED_DATA / "dapo_math_17k.parquet"), limit=3)
    assert dapo[0].ground_truth == "34" and dapo[0].problem.startswith("In triangle $ABC$")
    gsm = load_problems(str(SHARED_DATA / "gsm8k_test.jsonl"), limit=2)
    assert gsm[0].ground_truth == "18" and gsm[0].problem.startswith("Janet")
    aime = load_problems(str(SHARED_DATA / "aime24.jsonl"))
    assert len(aime) == 30 and all(p.ground_truth.isdigit() for p in aime)


def test_malformed_rows_name_file_row_and_missing_field(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"problem": "ok", "answer": "1"}, {"problem": "no answer"}])
    with pytest.raises(DataError, match=r"bad\.jsonl: row 2: missing field 'reward_model\.ground_truth' or "):
        load_problems(str(path))
    path = write_jsonl(tmp_path / "noprompt.jsonl", [{"text": "x", "answer": "1"}])
    with pytest.raises(
        DataError,
        match=r"noprompt\.jsonl: row 1: missing field 'problem' or 'question'.*\['answer', 'text'\]",
    ):
        load_problems(str(path))
    path = tmp_path / "broken.jsonl"
    path.write_text('{"problem": "a", "answer": "1"}\n\n{"problem": \n')
    with pytest.raises(DataError, match=r"broken\.jsonl: row 3: not valid JSON"):
        load_problems(str(path))
    path = write_jsonl(tmp_path / "msgs.jsonl", [{"prompt": [{"role": "user"}], "answer": "1"}])
    with pytest.raises(DataError, match=r"msgs\.jsonl: row 1: field 'prompt': message 0 needs"):
        load_problems(str(path))
    with pytest.raises(DataError, match=r"missing\.jsonl' does not exist"):
        load_problems(str(tmp_path / "missing.jsonl"))


def test_explicit_keys_override_the_mapping(tmp_path):
    path = write_jsonl(tmp_path / "k.jsonl", [{"q": "What?", "meta": {"target": "9"}, "answer": "no"}])
    (problem,) = load_problems(str(path), prompt_key="q", answer_key="meta.target")
    assert (problem.problem, problem.ground_truth) == ("What?", "9")
    with pytest.raises(DataError, match=r"row 1: missing field 'meta\.other'"):
        load_problems(str(path), prompt_key="q", answer_key="meta.other")


def test_hugging_face_names_need_the_datasets_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(DataError, match=r"needs the `datasets` package"):
        load_problems("openai/gsm8k:main@test")


def test_hugging_face_name_config_and_split_reach_load_dataset(monkeypatch):
    calls = []

    def load_dataset(name, subset, split):
        calls.append((name, subset, split))
        return [{"question": "Q", "answer": "x\n#### 3"}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    assert load_problems("openai/gsm8k:main@test")[0].ground_truth == "3"
    load_problems("my/set")
    assert calls == [("openai/gsm8k", "main", "test"), ("my/set", None, "train")]


def test_templates_dapo_default_custom_and_chat():
    problem = _problem("What is 2+3?")
    plain = render_prompt(problem, word_tokenizer(), template="dapo_math", chat=None)
    assert plain == DAPO_MATH_TEMPLATE.format(problem="What is 2+3?")
    assert plain.startswith("Solve the following math problem step by step.")
    assert render_prompt(problem, word_tokenizer(), template="Q: {problem}\nA:", chat=None) == (
        "Q: What is 2+3?\nA:"
    )
    chat = render_prompt(problem, word_tokenizer(chat=True), template="none", chat=None)
    assert chat == "<|user|>What is 2+3?<|end|><|assistant|>"  # the tokenizer's template, by default
    assert render_prompt(problem, word_tokenizer(chat=True), template="none", chat=False) == "What is 2+3?"
    with pytest.raises(DataError, match=r"no chat template"):
        render_prompt(problem, word_tokenizer(), template="none", chat=True)
    with pytest.raises(DataError, match=r"containing '\{problem\}'"):
        render_prompt(problem, word_tokenizer(), template="dapo", chat=None)


def test_prompt_over_the_limit_names_its_row(tmp_path):
    path = write_jsonl(
        tmp_path / "long.jsonl", [{"problem": "a b", "answer": "1"}, {"problem": "a b c d", "answer": "1"}]
    )
    problems = load_problems(str(path))
    rows = problem_rows(problems[:1], word_tokenizer(), template="none", chat=False, max_prompt_length=3)
    assert len(rows[0].token_ids) == 2 and rows[0].ground_truth == "1"
    with pytest.raises(
        DataError, match=r"long\.jsonl: row 2: prompt of 4 tokens exceeds data.max_prompt_length=3"
    ):
        problem_rows(problems, word_tokenizer(), template="none", chat=False, max_prompt_length=3)


def test_config_wires_files_into_the_trainers_data(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"problem": f"p {i}", "answer": str(i)} for i in range(5)])
    held = write_jsonl(
        tmp_path / "test.jsonl", [{"question": f"q {i}", "answer": f"#### {i}"} for i in range(9)]
    )
    config = load_config(
        None,
        [
            f"data.train_files={train}",
            f"data.eval_file={held}",
            "data.eval_size=4",
            "data.prompt_template=none",
        ],
    )
    assert config.data.train_files == [str(train)]  # one value becomes a list of one
    data = build_data(config.data, word_tokenizer(), seed=0)
    assert [r.ground_truth for r in data.train] == ["0", "1", "2", "3", "4"]
    assert [r.ground_truth for r in data.held_out] == ["0", "1", "2", "3"]  # the first eval_size rows
    assert data.default_reward == "math"
    assert (
        build_data(DataConfig(train_size=3, eval_size=2), word_tokenizer(), seed=0).default_reward
        == "task:lcg"
    )


def _problem(text: str):
    from tppo.sources import Problem

    return Problem(messages=(("user", text),), ground_truth="5", source="t: row 1")
