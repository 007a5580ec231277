"""The reasoning_gym reward: the task's own scorer, on the answer inside <answer> tags (or the whole
reply with tag: null), the same inline and in a fresh worker process."""

from __future__ import annotations

import pytest

from rlvr.data.reasoning_gym import generate
from rlvr.registry import REWARD
from rlvr.reward import RewardRunner, RewardSpec
from rlvr.reward.reasoning_gym import answer_of, reasoning_gym_score

# word_sorting's scorer reads the item's metadata (the sorted word list), not its answer string
TASKS = {"chain_sum": {"max_digits": 2}, "basic_arithmetic": {"max_digits": 2}, "word_sorting": {"max_words": 4}}
WRONG = {"chain_sum": "xyz", "basic_arithmetic": "xyz", "word_sorting": "zzz, yyy"}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_gold_scores_one_and_a_wrong_answer_zero(task):
    for row in generate(task, size=5, seed=0, **TASKS[task]):
        gold = row["answer"]
        assert reasoning_gym_score("", f"<think>easy</think>\n<answer>{gold}</answer>", row) == 1.0
        assert reasoning_gym_score("", f"<answer>{WRONG[task]}</answer>", row) == 0.0
        assert reasoning_gym_score("", gold, row) == 0.0  # no tags: no answer, as reasoning-gym scores it
        assert reasoning_gym_score("", f"  {gold}\n", row, tag=None) == 1.0


def test_partial_credit_is_the_scorers():
    row = generate("chain_sum", size=1, seed=0, max_digits=2)[0]
    gold = row["answer"]
    # chain_sum gives len(gold) / len(reply) when the reply contains the gold answer
    assert reasoning_gym_score("", f"<answer>{gold}9</answer>", row) == pytest.approx(len(gold) / (len(gold) + 1))


def test_final_number_scores_untagged_prose_by_its_last_number():
    rows = generate("basic_arithmetic", size=20, seed=0, max_digits=2, min_terms=2, max_terms=2)
    negative = next(r for r in rows if r["answer"].startswith("-"))  # a minus sign survives the extraction
    for row in (rows[0], negative):
        gold = row["answer"]
        prose = f"To calculate it, 12 and 3 give {gold}."
        assert reasoning_gym_score("", prose, row) == 0.0  # the default: no tags, no answer
        assert reasoning_gym_score("", prose, row, final_number=True) == 1.0
        assert reasoning_gym_score("", f"so {int(gold) + 1}", row, final_number=True) == 0.0
        # a tagged answer still decides when there is one
        assert reasoning_gym_score("", f"<answer>{int(gold) + 1}</answer> {gold}", row, final_number=True) == 0.0
    assert reasoning_gym_score("", "no number at all", rows[0], final_number=True) == 0.0


def test_answer_is_the_last_tagged_one():
    assert answer_of("<answer>1</answer> no, <answer> 2 </answer>") == "2"
    assert answer_of("no tags here") is None
    assert answer_of(" 7 \n", None) == "7"


def test_a_row_not_from_reasoning_gym_fails_the_sample_with_a_reason():
    with RewardRunner([RewardSpec("reasoning_gym", isolate=False)]) as runner:
        result = runner.score(["p"], ["<answer>4</answer>"], [{"prompt": "2+2", "answer": "4"}])
    assert result.metrics["reward/reasoning_gym/failures"] == 1.0
    with pytest.raises(ValueError, match="row has no 'reasoning_gym' entry"):
        reasoning_gym_score("p", "<answer>4</answer>", {"answer": "4"})


@pytest.mark.slow  # starting the worker pool takes seconds (the fork server imports torch and rlvr)
def test_worker_process_scores_like_inline():
    """Isolated by default: the rows are pickled to a fresh worker, which finds the reward by its name."""
    assert "reasoning_gym" in REWARD.names()
    rows = [r for task in sorted(TASKS) for r in generate(task, size=3, seed=1, **TASKS[task])]
    completions = [f"<answer>{r['answer']}</answer>" if i % 2 == 0 else "<answer>xyz</answer>"
                   for i, r in enumerate(rows)]
    prompts = [r["prompt"] for r in rows]
    with RewardRunner([RewardSpec("reasoning_gym")], workers=1) as pooled:
        isolated = pooled.score(prompts, completions, rows)
    with RewardRunner([RewardSpec("reasoning_gym", isolate=False)]) as runner:
        inline = runner.score(prompts, completions, rows)
    expected = [1.0 if i % 2 == 0 else 0.0 for i in range(len(rows))]
    assert isolated.components["reasoning_gym"].tolist() == expected
    assert inline.components["reasoning_gym"].tolist() == expected
    assert isolated.metrics["reward/reasoning_gym/failures"] == 0.0
