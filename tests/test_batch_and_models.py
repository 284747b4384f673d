"""The padded batch layout and the log-prob / value forward passes over it."""

from __future__ import annotations

import random

import torch
from conftest import make_tiny_qwen2
from transformers import Qwen2ForTokenClassification

from tppo.engines.types import SamplingParams
from tppo.models import disable_dropout, load_value_model, response_log_probs, response_values
from tppo.rollout.batch import collate
from tppo.rollout.prompts import Prompt
from tppo.rollout.slot_pool import Slot

PAD = 0


def slot(prompt, response, steps=None, finish=None):
    p = Prompt(uid=0, row=0, sample=0, epoch=0, token_ids=tuple(prompt), ground_truth="")
    return Slot(
        prompt=p,
        start_step=0,
        response_ids=list(response),
        log_probs=[-1.0] * len(response),
        token_steps=steps or [0] * len(response),
        finish=finish,
    )


SLOTS = [
    slot([5, 6, 7], [8, 9], steps=[0, 1], finish="stop"),
    slot([11], [12, 13, 14, 15], steps=[1, 1, 2, 2]),
    slot([21, 22], [23]),
]


def test_collate_layout():
    batch = collate(SLOTS, pad_token_id=PAD)
    assert batch.prompt_width == 3 and batch.response_width == 4
    assert batch.input_ids.tolist() == [
        [5, 6, 7, 8, 9, PAD, PAD],
        [PAD, PAD, 11, 12, 13, 14, 15],
        [PAD, 21, 22, 23, PAD, PAD, PAD],
    ]
    assert batch.response_mask.tolist() == [
        [True, True, False, False],
        [True, True, True, True],
        [True, False, False, False],
    ]
    assert batch.position_ids[1].tolist()[2:] == [0, 1, 2, 3, 4]
    assert batch.token_steps.tolist() == [[0, 1, -1, -1], [1, 1, 2, 2], [0, -1, -1, -1]]
    assert batch.is_finished.tolist() == [True, False, False]


def test_select_trims_padding_and_keeps_per_token_tensors_aligned():
    batch = collate(SLOTS, pad_token_id=PAD)
    batch.per_token["x"] = torch.arange(12.0).reshape(3, 4)
    sub = batch.select([0, 2])
    assert sub.prompt_width == 3 and sub.response_width == 2
    assert sub.input_ids.tolist() == [[5, 6, 7, 8, 9], [PAD, 21, 22, 23, PAD]]
    assert sub.per_token["x"].tolist() == [[0.0, 1.0], [8.0, 9.0]]
    only_second = batch.select([1])
    assert only_second.input_ids.tolist() == [[11, 12, 13, 14, 15]]


def test_response_log_probs_equal_each_row_run_alone():
    model = make_tiny_qwen2(vocab_size=32, seed=1)
    batch = collate(SLOTS, pad_token_id=PAD)
    log_probs, entropy = response_log_probs(model, batch, sampling=SamplingParams(temperature=0.7))
    for i, s in enumerate(SLOTS):
        ids = torch.tensor([[*s.prompt.token_ids, *s.response_ids]])
        logits = model(ids).logits[0] / 0.7
        p = len(s.prompt.token_ids)
        expected = torch.log_softmax(logits[p - 1 : -1], -1)
        n = len(s.response_ids)
        gathered = expected.gather(-1, torch.tensor(s.response_ids)[:, None]).squeeze(-1)
        torch.testing.assert_close(log_probs[i, :n], gathered, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(entropy[i, :n], -(expected.exp() * expected).sum(-1), atol=1e-5, rtol=1e-5)


def test_response_values_read_the_position_before_each_token(tmp_path):
    causal = make_tiny_qwen2(vocab_size=32, seed=2)
    causal.save_pretrained(tmp_path)
    value = load_value_model(str(tmp_path), torch.float32)
    assert isinstance(value, Qwen2ForTokenClassification)
    assert torch.count_nonzero(value.score.weight) == 0  # missing head starts at zero
    with torch.no_grad():
        value.score.weight.normal_()
        value.score.bias.fill_(0.5)
    disable_dropout(value)
    value.eval()
    batch = collate(SLOTS, pad_token_id=PAD)
    values = response_values(value, batch)
    for i, s in enumerate(SLOTS):
        ids = torch.tensor([[*s.prompt.token_ids, *s.response_ids]])
        alone = value(ids).logits[0, :, 0]
        p, n = len(s.prompt.token_ids), len(s.response_ids)
        torch.testing.assert_close(values[i, :n], alone[p - 1 : p - 1 + n], atol=1e-5, rtol=1e-5)


def test_value_backbone_comes_from_the_checkpoint(tmp_path):
    causal = make_tiny_qwen2(vocab_size=32, seed=3)
    causal.save_pretrained(tmp_path)
    value = load_value_model(str(tmp_path), torch.float32)
    torch.testing.assert_close(value.model.embed_tokens.weight, causal.model.embed_tokens.weight)


def test_pack_rows_sorts_longest_first_and_respects_the_budget():
    from tppo.rollout.batch import pack_rows

    lengths = torch.tensor([5, 50, 20, 20, 7, 100])
    rows = torch.tensor([0, 1, 2, 3, 4])  # row 5 not asked for
    packs = pack_rows(rows, lengths, max_tokens=60)
    assert [p.tolist() for p in packs] == [[1], [2, 3, 4], [0]]  # 1 x 50; 3 x 20 (row 4 padded to 20); 1 x 5
    for pack in packs:
        assert len(pack) * int(lengths[pack].max()) <= 60
    assert [p.tolist() for p in pack_rows(rows, lengths, max_tokens=None)] == [[0, 1, 2, 3, 4]]
    assert [p.tolist() for p in pack_rows(torch.tensor([5]), lengths, max_tokens=10)] == [
        [5]
    ]  # over budget: alone


def test_builtin_base_models_resolve_and_speak_their_tasks_alphabet():
    from transformers import AutoTokenizer

    from tppo.models import BUILTIN_MODELS, resolve_model_path
    from tppo.tasks import get_task

    for name, task in (("tppo-demo", "lcg"), ("tppo-collatz", "collatz")):
        path = resolve_model_path(name)
        assert path == str(BUILTIN_MODELS[name])
        tokenizer = AutoTokenizer.from_pretrained(path)
        example = get_task(task).sample(random.Random(0))
        ids = tokenizer(example.prompt + example.solution, add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == example.prompt + example.solution
