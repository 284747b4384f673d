"""The built-in tasks: reference solutions, reward, determinism and the length distribution.

``lcg`` is the demo task; ``collatz`` is kept as a second task with a natural long tail.
"""

from __future__ import annotations

import itertools
import random

import pytest

from tppo.tasks import TASKS, Example, extract_answer, get_task
from tppo.tasks.base import stratified_held_out
from tppo.tasks.collatz import ALPHABET, CollatzTask
from tppo.tasks.lcg import ALPHABET as LCG_ALPHABET
from tppo.tasks.lcg import LcgTask
from tppo.tasks.sort_letters import ALPHABET as SORT_ALPHABET


def _reverse(text: str) -> int:
    # Written here, not imported: an independent reading of least-significant-digit-first numbers.
    assert text.isdigit(), text
    return int(text[::-1])


def test_registered() -> None:
    assert "collatz" in TASKS
    assert isinstance(get_task("collatz"), CollatzTask)
    assert isinstance(get_task("lcg"), LcgTask)


# --- lcg: the demo task --------------------------------------------------------------------------


def test_lcg_hand_worked_example() -> None:
    # 125 -> 3 * 125 + 7 = 382 -> 1153 mod 1000 = 153 -> 466; written LSD-first with fixed widths.
    task = get_task("lcg")
    example = task.example(125, 3)
    assert example == Example(prompt="30:521=", solution="20:283;10:351;00#664", answer="664")
    # One step, with zero padding: 3 * 0 + 7 = 7 -> "700".
    assert task.example(0, 1) == Example(prompt="10:000=", solution="00#700", answer="700")
    # Countdowns past 9 (k = 12 -> "21"; then 11, 10, 9): 5 -> 22 -> 73 -> 226.
    assert task.example(5, 12).prompt == "21:500="
    assert task.example(5, 12).solution.startswith("11:220;01:370;90:622;")


def test_lcg_every_step_is_correct() -> None:
    task = get_task("lcg")
    for example in task.examples(300, seed=1):
        assert set(example.prompt + example.solution) <= set(LCG_ALPHABET)
        head, start = example.prompt.removesuffix("=").split(":")
        k, x = _reverse(head), _reverse(start)
        lines = example.solution.split(";")
        assert len(lines) == k and all(len(line) == 6 for line in lines)
        for countdown, line in zip(range(k - 1, -1, -1), lines, strict=True):
            x = (3 * x + 7) % 1000
            marker = "#" if countdown == 0 else ":"
            assert line == str(countdown).zfill(2)[::-1] + marker + str(x).zfill(3)[::-1], line
        assert example.answer == str(x).zfill(3)[::-1]
        assert example.solution.count("#") == 1


def test_lcg_starts_never_repeat_within_a_response() -> None:
    task = get_task("lcg")
    assert len(task.starts) == 800  # the values on the cycles of length 100
    for example in task.examples(200, seed=3):
        values = [line[3:] for line in example.solution.split(";")] + [example.prompt[3:6]]
        assert len(set(values)) == len(values)
    with pytest.raises(ValueError):
        LcgTask(multiplier=5)


def test_lcg_reward() -> None:
    task = get_task("lcg")
    for example in task.examples(50, seed=2):
        solution, answer = example.solution, example.answer
        assert task.reward(solution, answer) == 1.0
        assert task.reward(solution + "<eos>", answer) == 1.0
        wrong = str((_reverse(answer) + 1) % 1000).zfill(3)[::-1]
        assert task.reward(solution[:-3] + wrong, answer) == 0.0
        assert task.reward(solution[: solution.rindex("#")], answer) == 0.0  # truncated
        assert task.reward(solution[:-1], answer) == 0.0  # truncated inside the answer
        assert task.reward(solution + ";", answer) == 0.0
    for garbage in ["", "#", "###", "<eos>", ":;=#", "00#", "00#12", "00#1234", "#abc", "00:123"]:
        assert task.reward(garbage, "123") == 0.0, garbage
    assert task.reward("00#321", "321") == 1.0  # only the final answer is graded


def test_lcg_examples_are_deterministic_per_seed() -> None:
    task = get_task("lcg")
    assert task.examples(100, seed=7) == task.examples(100, seed=7)
    assert task.examples(100, seed=7) != task.examples(100, seed=8)


def test_lcg_length_distribution_has_a_long_tail() -> None:
    task = get_task("lcg")
    lengths = sorted(len(example.solution) for example in task.examples(2000, seed=0))
    median, p90 = lengths[len(lengths) // 2], lengths[int(0.9 * len(lengths))]
    assert lengths[-1] <= 500 and lengths[0] == 6
    assert 35 <= median <= 75, median
    assert p90 >= 4 * median and p90 >= 250, (median, p90)
    assert 90 <= sum(lengths) / len(lengths) <= 130


# --- collatz -------------------------------------------------------------------------------------


def test_hand_worked_example() -> None:
    # 6 -> 3 -> 10 -> 5 -> 16 -> 8 -> 4 -> 2 -> 1: eight steps; 10 and 16 are written "01", "61".
    example = CollatzTask().example(6)
    assert example == Example(prompt="6=", solution="6;3;01;5;61;8;4;2;1;#8", answer="8")
    # 27 takes 111 steps (a palindrome, so LSD-first changes nothing); 12 -> 6: "21" -> "6".
    assert CollatzTask().example(27).answer == "111"
    assert CollatzTask().example(12).solution.startswith("21;6;3;01;")
    assert CollatzTask(echo_start=False).example(6).solution == "3;01;5;61;8;4;2;1;#8"


def test_every_step_is_correct() -> None:
    task = get_task("collatz")
    for example in task.examples(300, seed=1):
        assert set(example.prompt + example.solution) <= set(ALPHABET)
        assert example.prompt.endswith("=")
        start = _reverse(example.prompt[:-1])
        body, answer = example.solution.split(";#")
        numbers = [_reverse(part) for part in body.split(";")]
        assert numbers[0] == start  # the echo
        for before, after in itertools.pairwise(numbers):
            assert after == (before // 2 if before % 2 == 0 else 3 * before + 1), (before, after)
        assert numbers[-1] == 1 and 1 not in numbers[:-1]
        assert answer == example.answer
        assert _reverse(answer) == len(numbers) - 1


def test_reward_scores_reference_and_rejects_the_rest() -> None:
    task = get_task("collatz")
    for example in task.examples(50, seed=2):
        solution, answer = example.solution, example.answer
        assert task.reward(solution, answer) == 1.0
        assert task.reward(solution + "<eos>", answer) == 1.0
        # A wrong final answer: one more step than the truth.
        wrong = str(_reverse(answer) + 1)[::-1]
        assert task.reward(solution[: solution.rindex("#") + 1] + wrong, answer) == 0.0
        # Truncated before the answer line (as at the maximum length): no '#', reward 0.
        assert task.reward(solution[: solution.rindex("#")], answer) == 0.0
        assert task.reward(solution[: len(solution) // 2], answer) == 0.0
        # Junk after the answer.
        assert task.reward(solution + ";", answer) == 0.0
    for garbage in ["", "#", "###", "<eos>", "abc", "1;2;3", "#<eos>", " # ", "#88", "#8a"]:
        assert task.reward(garbage, "8") == 0.0, garbage
    # Only the last '#' counts, and only the final answer is graded (an outcome reward).
    assert task.reward("#8;#9", "9") == 1.0
    assert task.reward("#8;#9", "8") == 0.0
    assert task.reward("nonsense;#8", "8") == 1.0


def test_extract_answer() -> None:
    assert extract_answer("4;2;1;#3<eos>") == "3"
    assert extract_answer("4;2;1;#3<eos><eos>") == "3"
    assert extract_answer("4;2;1;") is None
    assert extract_answer("#") == ""


def test_examples_are_deterministic_per_seed() -> None:
    task = get_task("collatz")
    assert task.examples(100, seed=7) == task.examples(100, seed=7)
    assert task.examples(100, seed=7) != task.examples(100, seed=8)
    # sample() only reads the RNG it is given.
    rng_a, rng_b = random.Random(3), random.Random(3)
    assert [task.sample(rng_a) for _ in range(20)] == [task.sample(rng_b) for _ in range(20)]


def test_length_distribution_has_a_long_tail() -> None:
    task = get_task("collatz")
    lengths = sorted(len(example.solution) for example in task.examples(2000, seed=0))
    median, p90 = lengths[len(lengths) // 2], lengths[int(0.9 * len(lengths))]
    assert lengths[-1] <= 500
    assert 30 <= median <= 80, median
    assert p90 >= 4 * median, (median, p90)
    assert p90 >= 300, p90
    assert lengths[0] <= 16  # short responses exist too


def test_cap_is_respected_with_a_small_cap() -> None:
    task = CollatzTask(max_start=1000, max_response_chars=60)
    assert max(len(example.solution) for example in task.examples(300, seed=0)) <= 60
    with pytest.raises(ValueError):
        CollatzTask(max_start=1)


def test_stratified_split_holds_one_in_five_of_every_stretch_by_hand() -> None:
    # ten prompts whose keys order them p0 < p1 < ... < p9: positions 2 and 7 are held out
    keys = {f"p{i}": (i // 2,) for i in range(10)}
    assert stratified_held_out(keys) == {"p2", "p7"}


def test_collatz_held_out_split_covers_every_range_of_response_lengths() -> None:
    from tppo.data import draw_split

    task = CollatzTask()
    held = draw_split(task, size=512, seed=1, held_out=True)
    train = draw_split(task, size=512, seed=0, held_out=False)
    assert not {e.prompt for e in held} & {e.prompt for e in train}
    lengths = sorted(len(e.solution) for e in train)
    quintiles = [lengths[len(lengths) * q // 5] for q in range(1, 5)]
    strata = [
        sum(1 for e in held if sum(len(e.solution) > edge for edge in quintiles) == k) for k in range(5)
    ]
    # every fifth of the training lengths, the shortest included, is evaluated on
    assert all(count >= 40 for count in strata), strata
    shortest = min(lengths)
    assert any(len(e.solution) <= 2 * shortest for e in held)


def test_sort_hand_worked_example_and_reward() -> None:
    task = get_task("sort")
    example = task.example("dcab")
    assert (example.prompt, example.solution, example.answer) == ("dcab=", "abcd", "abcd")
    assert task.reward("abcd", "abcd") == 1.0 and task.reward("abcd<eos>", "abcd") == 1.0
    assert task.reward("abdc", "abcd") == 0.0 and task.reward("abc", "abcd") == 0.0
    assert task.reward("abcd#", "abcd") == 0.0  # every letter is graded, nothing after


def test_sort_examples_are_sorted_deterministic_and_long_tailed() -> None:
    task = get_task("sort")
    examples = task.examples(4000, seed=3)
    assert examples == task.examples(4000, seed=3)
    for example in examples[:200]:
        word = example.prompt.removesuffix("=")
        assert example.solution == "".join(sorted(word)) and set(word) <= set(SORT_ALPHABET)
    lengths = sorted(len(e.solution) for e in examples)
    assert lengths[0] >= 2 and lengths[-1] <= 24
    median, p90 = lengths[len(lengths) // 2], lengths[9 * len(lengths) // 10]
    assert median <= 8 and p90 >= 2 * median  # mostly short words, a tail of long ones
