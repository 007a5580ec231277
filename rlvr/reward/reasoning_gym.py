"""The `reasoning_gym` reward: a reasoning-gym task's own `score_answer(answer, entry)`.

It scores rows of a `reasoning-gym:<task>` source (rlvr.data.reasoning_gym), which carry the
untouched item (`entry`) and the task config that made it under row["reasoning_gym"]. The task's
dataset is built again from that config once per process (a scorer may read its config, e.g.
puzzle24's number range), so the reward works the same inline and in a fresh worker process:
the row is plain picklable data and the function is found by its registered name.

The answer handed to the scorer is what reasoning-gym's own evaluation hands it: the text of the
last `<answer>...</answer>` (reasoning_gym.utils.extract_answer; None when there is none, which
scores 0), with `tag: answer`, the default, for prompts that ask for the tags. `tag: null` passes
the whole completion, stripped, for models that answer bare (a tiny model trained from scratch).
Scores are the scorer's, in [0, 1]; some give partial credit (chain_sum: 0.5 for "71" against "7").
`final_number: true` scores a reply that has no tag by its final number instead (as the `gsm8k`
reward reads it), for numeric tasks and small models that answer in prose ("2 - 0 is 2."): without
it SmolLM2-135M-Instruct never wrote the tags on basic_arithmetic and every reward was 0.
"""

from __future__ import annotations

from typing import Any

from rlvr.registry import REWARD
from rlvr.reward.builtins import final_number

_DATASETS: dict[tuple[str, str], Any] = {}  # (task, repr of its config) -> dataset, per process


def _dataset(task: str, config: dict[str, Any]) -> Any:
    """The task's dataset for one config, built once per process (some load word lists or tables)."""
    key = (task, repr(sorted(config.items())))
    if key not in _DATASETS:
        import reasoning_gym

        _DATASETS[key] = reasoning_gym.create_dataset(task, **config)
    return _DATASETS[key]


def answer_of(completion: str, tag: str | None = "answer") -> str | None:
    """The part of a completion the scorer judges: the last `<tag>...</tag>`'s text, or the stripped
    completion when `tag` is None.

        >>> answer_of("<think>3+4</think> <answer> 7 </answer>"), answer_of("7\\n", None)
        ('7', '7')
    """
    if tag is None:
        return completion.strip()
    from reasoning_gym.utils import extract_answer

    return extract_answer(completion, tag_name=tag)


@REWARD.register("reasoning_gym")
def reasoning_gym_score(prompt: str, completion: str, row: dict[str, Any], *, tag: str | None = "answer",
                        final_number: bool = False) -> float:
    """The task's `score_answer` of the completion's answer (see the module docstring), in [0, 1]."""
    scorer = row.get("reasoning_gym")
    if not isinstance(scorer, dict) or not {"task", "config", "entry"} <= set(scorer):
        raise ValueError("row has no 'reasoning_gym' entry {task, config, entry}: this reward scores rows of a "
                         "reasoning-gym:<task> data source")
    dataset = _dataset(scorer["task"], scorer["config"])
    answer = answer_of(completion, tag)
    if answer is None and final_number:
        answer = final_number_text(completion)
    return float(dataset.score_answer(answer, scorer["entry"]))


def final_number_text(completion: str) -> str | None:
    """The completion's final number (rlvr.reward.builtins.final_number) as text, integers without ".0".

        >>> final_number_text("63 - 65 = -2."), final_number_text("half is 2.5"), final_number_text("none")
        ('-2', '2.5', None)
    """
    x = final_number(completion)
    if x is None:
        return None
    return str(int(x)) if x.is_integer() else repr(x)
