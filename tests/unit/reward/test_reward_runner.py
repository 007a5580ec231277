"""RewardRunner with inline rewards: weights, user code, metrics, faults.

User code runs in worker processes by default; these tests set `isolate=False` to test the inline path
(test_reward_isolation.py and tests/faults/test_reward_faults.py cover the pool).
"""

import threading

import pytest
import torch

from rlvr.reward import RewardError, RewardRunner, RewardSpec


def _rows(*answers):
    return [{"answer": a} for a in answers]


def test_weighted_total_and_components():
    completions = ["4", "5", "<b>4</b>", "x"]
    specs = [RewardSpec("exact", weight=0.7), RewardSpec("format", weight=0.3, kwargs={"pattern": r"\d"})]
    with RewardRunner(specs) as runner:
        res = runner.score([""] * 4, completions, _rows("4", "4", "<b>4</b>", "4"))
    exact, fmt = [1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]
    assert torch.equal(res.components["exact"], torch.tensor(exact))
    assert torch.equal(res.components["format"], torch.tensor(fmt))
    assert res.total.dtype == torch.float32
    assert torch.equal(res.total, torch.tensor([0.7 * e + 0.3 * f for e, f in zip(exact, fmt)]))
    assert res.correct.tolist() == [True, False, True, False]  # the first spec defines accuracy
    m = res.metrics
    assert m["reward/exact/mean"] == 0.5 and m["reward/exact/std"] == 0.5  # population std
    assert m["reward/total/mean"] == pytest.approx((1.0 + 0.3 + 0.7) / 4)
    assert m["reward/accuracy"] == 0.5
    assert m["reward/exact/failures"] == 0.0 and m["reward/format/timeouts"] == 0.0
    assert m["perf/reward_s"] > 0


def test_accuracy_label_and_threshold(user_file):
    specs = [RewardSpec("exact"),
             RewardSpec(f"{user_file}:length_bonus", isolate=False, kwargs={"scale": 0.5})]
    with RewardRunner(specs, accuracy="length_bonus", correct_threshold=1.0) as runner:
        res = runner.score(["", ""], ["a", "abc"], _rows("a", "a"))
    assert res.components["length_bonus"].tolist() == [0.5, 1.5]
    assert res.correct.tolist() == [False, True]


def test_user_file_per_sample_and_batched(user_file):
    specs = [RewardSpec(f"{user_file}:length_bonus", isolate=False, kwargs={"scale": 2.0}),
             RewardSpec(f"{user_file}:batched_length", isolate=False, batched=True, label="batched")]
    with RewardRunner(specs) as runner:
        res = runner.score(["p"] * 3, ["a", "bb", ""], _rows(1, 2, 3))
    assert res.components["length_bonus"].tolist() == [2.0, 4.0, 0.0]
    assert res.components["batched"].tolist() == [1.0, 2.0, 0.0]


def test_batched_wrong_length_fails_every_sample(user_file):
    with RewardRunner([RewardSpec(f"{user_file}:wrong_count", isolate=False, batched=True)]) as runner:
        res = runner.score(["p"] * 3, ["a", "b", "c"], _rows(1, 2, 3))
    assert res.metrics["reward/wrong_count/failures"] == 3.0
    assert res.total.tolist() == [0.0, 0.0, 0.0]


def test_extra_metrics_are_averaged(user_file):
    with RewardRunner([RewardSpec(f"{user_file}:with_extra", isolate=False)]) as runner:
        res = runner.score(["", ""], ["ab", "abcd"], _rows(1, 2))
    assert res.metrics["reward/with_extra/extra"] == 2.0
    assert res.metrics["reward/with_extra/length"] == 3.0
    assert res.components["with_extra"].tolist() == [1.0, 1.0]


def test_faults_zero_only_their_sample(user_file):
    completions = ["ok", "boom", "ok", "nan", "text"]
    with RewardRunner([RewardSpec(f"{user_file}:fragile", isolate=False)]) as runner:
        res = runner.score([""] * 5, completions, _rows(*range(5)))
    assert res.components["fragile"].tolist() == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert res.metrics["reward/fragile/failures"] == 3.0
    assert res.metrics["reward/fragile/timeouts"] == 0.0


def test_missing_gold_is_a_failure_not_a_crash():
    with RewardRunner([RewardSpec("exact")]) as runner:
        res = runner.score(["", ""], ["a", "a"], [{"answer": "a"}, {}])
    assert res.components["exact"].tolist() == [1.0, 0.0]
    assert res.metrics["reward/exact/failures"] == 1.0


def test_inline_timeout_on_the_main_thread(user_file):
    with RewardRunner([RewardSpec(f"{user_file}:sleepy", isolate=False)], timeout_s=0.2) as runner:
        res = runner.score([""] * 3, ["a", "sleep", "b"], _rows(1, 2, 3))
    assert res.components["sleepy"].tolist() == [1.0, 0.0, 1.0]
    assert res.metrics["reward/sleepy/timeouts"] == 1.0
    assert res.metrics["reward/sleepy/failures"] == 0.0


def test_inline_off_the_main_thread_runs_without_deadline():
    results = []
    with RewardRunner([RewardSpec("exact")], timeout_s=0.2) as runner:
        thread = threading.Thread(target=lambda: results.append(runner.score([""], ["a"], _rows("a"))))
        thread.start()
        thread.join()
    assert results[0].total.tolist() == [1.0]


@pytest.mark.parametrize(("completion", "cause"), [
    ("boom", "ZeroDivisionError: boom on purpose"),
    ("nan", "returned nan"),
    ("text", "returned str '1.0'"),
])
def test_abort_names_reward_function_sample_and_cause(user_file, completion, cause):
    specs = [RewardSpec("exact"), RewardSpec(f"{user_file}:fragile", isolate=False, label="frag")]
    with RewardRunner(specs, on_failure="abort") as runner, pytest.raises(RewardError) as info:
        runner.score([""] * 3, ["ok", "ok", completion], _rows(*range(3)))
    message = str(info.value)
    assert "'frag'" in message and f"{user_file}:fragile" in message and "sample 2" in message
    assert cause in message


def test_abort_on_inline_timeout(user_file):
    runner = RewardRunner([RewardSpec(f"{user_file}:sleepy", isolate=False)], timeout_s=0.2,
                          on_failure="abort")
    with runner, pytest.raises(RewardError, match=r"sample 1: timed out after 0\.2\d*s \(limit 0\.2s\)"):
        runner.score(["", ""], ["a", "sleep"], _rows(1, 2))


def test_mismatched_lengths_raise():
    with RewardRunner([RewardSpec("exact")]) as runner, pytest.raises(ValueError, match="2 prompts"):
        runner.score(["", ""], ["a"], _rows(1))
