"""Synthetic tasks: deterministic, correct, train/test disjoint, answers uniform over ten digits."""

from __future__ import annotations

from collections import Counter

import pytest

from rlvr.data import DataError
from rlvr.data.synthetic import TASKS, generate, split_pool


def test_same_arguments_same_rows_and_seed_changes_them():
    assert generate("mod_sum", num_rows=200, seed=7) == generate("mod_sum", num_rows=200, seed=7)
    assert generate("mod_sum", num_rows=200, seed=7) != generate("mod_sum", num_rows=200, seed=8)


@pytest.mark.parametrize("split", ["train", "test"])
def test_answers_are_correct(split):
    for row in generate("mod_sum", split=split, num_rows=500, seed=1):
        assert row["prompt"] == f"{row['a']}+{row['b']}="
        assert row["answer"] == str((row["a"] + row["b"]) % 10)
        assert 0 <= row["a"] <= 99 and 0 <= row["b"] <= 99
    for row in generate("succ", split=split, num_rows=500, seed=1):
        assert row["prompt"] == f"{row['a']}>"
        assert row["answer"] == str((row["a"] + 1) % 10)


@pytest.mark.parametrize("task", ["mod_sum", "succ"])
def test_train_and_test_never_share_a_prompt_whatever_the_seeds(task):
    train = {r["prompt"] for r in generate(task, split="train", num_rows=2000, seed=0)}
    test = {r["prompt"] for r in generate(task, split="test", num_rows=2000, seed=1)}
    assert train and test and not train & test


def test_split_membership_does_not_depend_on_num_rows_or_seed():
    test_pairs = set(split_pool("mod_sum", "test"))
    assert len(test_pairs) == 2000 and not test_pairs & set(split_pool("mod_sum", "train"))
    for num_rows, seed in [(50, 0), (2000, 0), (3000, 5)]:
        rows = generate("mod_sum", split="test", num_rows=num_rows, seed=seed)
        assert {(r["a"], r["b"]) for r in rows} <= test_pairs


def test_each_split_has_every_answer_equally_often():
    for task, per_digit in [("mod_sum", {"train": 800, "test": 200}), ("succ", {"train": 8, "test": 2})]:
        for split, n in per_digit.items():
            rows = [TASKS[task].make_row(*ops) for ops in split_pool(task, split)]
            assert Counter(r["answer"] for r in rows) == {str(d): n for d in range(10)}, (task, split)


def test_split_seed_changes_the_partition():
    assert set(split_pool("mod_sum", "test", split_seed=1)) != set(split_pool("mod_sum", "test"))


def test_rows_are_distinct_while_the_split_is_large_enough():
    rows = generate("mod_sum", split="train", num_rows=5000, seed=2)
    assert len({r["prompt"] for r in rows}) == 5000


def test_small_split_is_drawn_evenly_with_replacement():
    rows = generate("succ", split="test", num_rows=1000, seed=0)
    counts = Counter(r["prompt"] for r in rows)
    assert len(counts) == len(split_pool("succ", "test")) == 20
    assert max(counts.values()) - min(counts.values()) <= 1


@pytest.mark.parametrize("task", ["mod_sum", "succ"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_answer_digits_are_roughly_uniform(task, split):
    counts = Counter(r["answer"] for r in generate(task, split=split, num_rows=2000, seed=0))
    assert set(counts) == set("0123456789")
    assert all(0.05 <= c / 2000 <= 0.15 for c in counts.values()), counts


def test_bad_arguments_are_all_reported():
    with pytest.raises(
        DataError, match=r"split must be .*; num_rows must be at least 1, got 0; test_fraction"
    ):
        generate("succ", split="dev", num_rows=0, test_fraction=1.0)
    with pytest.raises(DataError, match=r"the test split is empty"):
        generate("succ", split="test", max_operand=0, test_fraction=0.01)


@pytest.mark.parametrize("task", ["sum", "product"])
def test_worked_rows_call_the_calculator_as_the_env_parses_it(task):
    # data may not import env, so synthetic.py writes the call text itself: it must stay the
    # env's own format, or the warm-up would teach a call the calculator env does not parse
    from rlvr.env.tool_calls import format_tool_call, parse_tool_calls

    row = generate(task, num_rows=1, seed=3, pad_width=2)[0]
    call, answer = row["demonstration"]
    expression = row["prompt"].removesuffix("=")
    assert call == format_tool_call("calculator", {"expression": expression})
    assert answer == row["answer"] == str(row["a"] + row["b"] if task == "sum" else row["a"] * row["b"])
    assert [(c.name, c.arguments) for c in parse_tool_calls(call)] == [("calculator", {"expression": expression})]
