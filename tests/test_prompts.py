from __future__ import annotations

from collections import Counter

import pytest

from tppo.rollout.prompts import PromptRow, PromptStream


def rows(n):
    return [PromptRow(token_ids=(i,), ground_truth=str(i)) for i in range(n)]


def test_each_epoch_serves_every_row_samples_times_consecutively():
    stream = PromptStream(rows(5), samples_per_prompt=3, seed=1)
    draws = [stream.next() for _ in range(15)]
    assert Counter(d.row for d in draws) == {i: 3 for i in range(5)}
    for i in range(0, 15, 3):  # the samples of one prompt come together
        assert {d.row for d in draws[i : i + 3]} == {draws[i].row}
        assert [d.sample for d in draws[i : i + 3]] == [0, 1, 2]
    assert [d.uid for d in draws] == list(range(15))


def test_epochs_are_reshuffled_and_seeded():
    a = PromptStream(rows(20), samples_per_prompt=1, seed=3)
    b = PromptStream(rows(20), samples_per_prompt=1, seed=3)
    c = PromptStream(rows(20), samples_per_prompt=1, seed=4)
    first = [a.next().row for _ in range(20)]
    second = [a.next().row for _ in range(20)]
    assert first != second and sorted(first) == sorted(second) == list(range(20))
    assert [b.next().row for _ in range(20)] == first
    assert [c.next().row for _ in range(20)] != first


def test_resume_from_state_continues_exactly():
    a = PromptStream(rows(7), samples_per_prompt=2, seed=0)
    for _ in range(11):
        a.next()
    b = PromptStream(rows(7), samples_per_prompt=2, seed=0)
    b.load_state_dict(a.state_dict())
    assert [a.next() for _ in range(30)] == [b.next() for _ in range(30)]


def test_state_of_another_stream_is_refused():
    a = PromptStream(rows(7), samples_per_prompt=1, seed=0)
    with pytest.raises(ValueError, match="7 rows with seed 0"):
        PromptStream(rows(8), samples_per_prompt=1, seed=0).load_state_dict(a.state_dict())


def test_unshuffled_order_is_row_order():
    stream = PromptStream(rows(4), samples_per_prompt=1, seed=0, shuffle=False)
    assert [stream.next().row for _ in range(8)] == [0, 1, 2, 3, 0, 1, 2, 3]
