"""Rewards in the worker pool: same results as inline, timeouts, kills, crashes, reuse."""

import os

import pytest

from rlvr.reward import RewardError, RewardRunner, RewardSpec

MATH_CASES = [
    (r"so \boxed{1/2}", "0.5"),
    (r"\frac{1}{2}", "0.5"),
    (r"\boxed{12}", r"12\pi"),
    (r"\boxed{12\pi}", r"12\pi"),
    (r"\boxed{\frac{3}{4}}", "0.75"),
    (r"\boxed{0.7}", "0.75"),
    (r"\boxed{x^2+1}", "1+x^2"),
    (r"\boxed{\{1,3\}}", r"\{1,2\}"),
    ("no answer", "3"),
    (r"\boxed{3}", None),  # no gold: a failure in both places
]


def test_math_in_workers_matches_inline():
    completions = [c for c, _ in MATH_CASES]
    rows = [{"answer": g} for _, g in MATH_CASES]
    prompts = [""] * len(rows)
    with RewardRunner([RewardSpec("math")], workers=2) as pooled:  # math is isolated by default
        isolated = pooled.score(prompts, completions, rows)
    with RewardRunner([RewardSpec("math", isolate=False)]) as runner:
        inline = runner.score(prompts, completions, rows)
    assert isolated.components["math"].tolist() == [1, 1, 0, 1, 1, 0, 1, 0, 0, 0]
    assert isolated.components["math"].tolist() == inline.components["math"].tolist()
    assert isolated.metrics["reward/math/failures"] == inline.metrics["reward/math/failures"] == 1.0


def test_pool_is_reused_across_steps_with_one_torch_thread(user_file):
    with RewardRunner([RewardSpec(f"{user_file}:whoami", isolate=True)], workers=1) as runner:
        first = runner.score(["", ""], ["a", "b"], [{}, {}]).metrics
        second = runner.score(["", ""], ["a", "b"], [{}, {}]).metrics
    assert first["reward/whoami/pid"] == second["reward/whoami/pid"] != os.getpid()
    assert first["reward/whoami/torch_threads"] == 1.0


def test_user_file_and_faults_in_a_worker(user_file):
    specs = [RewardSpec(f"{user_file}:fragile", isolate=True),
             RewardSpec(f"{user_file}:batched_length", batched=True, isolate=True, weight=0.5)]
    with RewardRunner(specs, workers=2) as runner:
        res = runner.score([""] * 4, ["ok", "boom", "nan", "okay"], [{}] * 4)
    assert res.components["fragile"].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert res.metrics["reward/fragile/failures"] == 2.0
    assert res.components["batched_length"].tolist() == [2.0, 4.0, 3.0, 4.0]
    assert res.total.tolist() == [2.0, 2.0, 1.5, 3.0]


def test_sleep_past_timeout_is_cut_by_the_worker_timer(user_file):
    with RewardRunner([RewardSpec(f"{user_file}:sleepy", isolate=True)], timeout_s=0.3, workers=2) as runner:
        res = runner.score([""] * 8, ["a"] * 3 + ["sleep"] + ["a"] * 4, [{}] * 8)
        assert res.components["sleepy"].tolist() == [1.0] * 3 + [0.0] + [1.0] * 4
        assert res.metrics["reward/sleepy/timeouts"] == 1.0
        assert runner.score(["", ""], ["a", "sleep"], [{}, {}]).metrics["reward/sleepy/timeouts"] == 1.0


def test_unstoppable_hang_kills_the_worker_and_costs_only_its_sample(user_file):
    # 1 worker, 8 samples: chunks of 2. Sample 2 hangs past every signal, so the worker is killed:
    # sample 2 times out, sample 3 (the rest of that chunk) goes to the fresh worker and is scored.
    spec = RewardSpec(f"{user_file}:stubborn", isolate=True)
    with RewardRunner([spec], timeout_s=0.3, workers=1) as runner:
        res = runner.score([""] * 8, ["a", "a", "hang"] + ["a"] * 5, [{}] * 8)
        assert res.components["stubborn"].tolist() == [1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]
        assert res.metrics["reward/stubborn/timeouts"] == 1.0
        again = runner.score([""] * 4, ["a"] * 4, [{}] * 4)  # the replacement worker carries on
        assert again.total.tolist() == [1.0] * 4


def test_crashed_worker_fails_its_sample_and_is_replaced(user_file):
    with RewardRunner([RewardSpec(f"{user_file}:crash", isolate=True)], workers=1) as runner:
        res = runner.score([""] * 8, ["a"] * 4 + ["crash"] + ["a"] * 3, [{}] * 8)
        assert res.components["crash"].tolist() == [1.0] * 4 + [0.0] + [1.0] * 3
        assert res.metrics["reward/crash/failures"] == 1.0
        assert runner.score([""], ["a"], [{}]).total.tolist() == [1.0]


def test_abort_on_worker_timeout_names_the_function(user_file):
    runner = RewardRunner([RewardSpec(f"{user_file}:sleepy", isolate=True)], timeout_s=0.3, on_failure="abort")
    with runner, pytest.raises(RewardError, match=r"'sleepy' \(.*my_rewards.py:sleepy\) failed on sample 1: timed"):
        runner.score(["", ""], ["a", "sleep"], [{}, {}])
