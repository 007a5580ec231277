"""Reward configuration errors, found before any model loads."""

import pytest

from rlvr.reward import RewardRunner, RewardSpec, check_specs


def test_valid_specs_have_no_problems(user_file):
    specs = [RewardSpec("math"), RewardSpec("format", kwargs={"pattern": "x", "mode": "search"}),
             RewardSpec(f"{user_file}:length_bonus", kwargs={"scale": 2.0})]
    assert check_specs(specs) == []


def test_unknown_builtin_suggests_the_close_name():
    (problem,) = check_specs([RewardSpec("mth")])
    assert problem.startswith("reward.functions[0].name: unknown reward 'mth'")
    assert "did you mean 'math'?" in problem


def test_bad_kwarg_names_the_reward_and_the_close_keyword(user_file):
    (problem,) = check_specs([RewardSpec("exact"), RewardSpec(f"{user_file}:length_bonus", kwargs={"scael": 1})])
    assert problem == f"reward.functions[1] ({user_file}:length_bonus): unexpected keyword 'scael' (did you mean 'scale'?)"


def test_builtin_kwargs_are_checked():
    problems = check_specs([RewardSpec("format", kwargs={"patern": "x"}), RewardSpec("exact", kwargs={"case": 1})])
    assert problems == [
        "reward.functions[0] (format): unexpected keyword 'patern' (did you mean 'pattern'?)",
        "reward.functions[0] (format): missing keyword 'pattern'",
        "reward.functions[1] (exact): unexpected keyword 'case'; it takes ignore_case, strip",
    ]


def test_missing_file_and_missing_attribute(tmp_path, user_file):
    problems = check_specs([RewardSpec("nowhere.py:fn"), RewardSpec(f"{user_file}:nope")], base_dir=tmp_path)
    assert "reward.functions[0].name" in problems[0] and "file 'nowhere.py' not found" in problems[0]
    assert "reward.functions[1].name" in problems[1] and "has no attribute 'nope'" in problems[1]


def test_relative_file_resolves_against_base_dir(user_file, tmp_path):
    assert check_specs([RewardSpec("my_rewards.py:length_bonus")], base_dir=tmp_path) == []


def test_wrong_arity_duplicate_labels_accuracy_and_batched_builtin(tmp_path):
    (tmp_path / "two.py").write_text("def two(completion, answer):\n    return 1.0\n")
    specs = [RewardSpec(f"{tmp_path}/two.py:two"), RewardSpec("exact", batched=True),
             RewardSpec("exact", weight=float("nan"))]
    problems = check_specs(specs, accuracy="acc")
    assert any("(" + f"{tmp_path}/two.py:two): takes 2 positional arguments" in p for p in problems)
    assert "reward.functions[1].batched: built-in 'exact' scores one sample at a time" in problems
    assert any(p.startswith("reward.functions[2] (exact): label 'exact' is already used") for p in problems)
    assert "reward.functions[2].weight: expected a finite number, got nan" in problems
    assert problems[-1] == "reward.accuracy: 'acc' is not a reward label; labels are two, exact, exact"


def test_runner_reports_every_problem_at_once():
    with pytest.raises(ValueError) as info:
        RewardRunner([RewardSpec("mth"), RewardSpec("exact", kwargs={"x": 1})], on_failure="skip")
    message = str(info.value)
    assert "unknown reward 'mth'" in message and "unexpected keyword 'x'" in message
    assert "reward.on_failure: expected 'zero' or 'abort', got 'skip'" in message
