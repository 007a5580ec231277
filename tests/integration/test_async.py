"""Asynchronous training with the in-process hf worker (rollout.mode: disaggregated) on the quickstart.

k = 0 is the synchronous run (same numbers, same final weights); k = 1 learns as the synchronous run
does, never trains on samples more than one version old; a killed asynchronous run resumes with the
same prompts per step; a reward that fails on the producer's thread stops the run with the reward
named, and the checkpoints already written survive.
"""

import json
from pathlib import Path

import pytest

import rlvr.loop
from tests.integration.conftest import ROOT, run_recipe
from tests.integration.resume_check import (
    final_checkpoint,
    kill_after_checkpoint,
    metric_rows,
    weight_differences,
)

pytestmark = [getattr(pytest.mark, "async"), pytest.mark.slow]  # async is a keyword in Python

RECIPE = ROOT / "recipes" / "quickstart.yaml"
QUIET = ["metrics.plot=false", "run.resume=never", "checkpoint.every=0"]
ASYNC = ["rollout.mode=disaggregated"]
# metrics only the disaggregated run has (staleness, buffer, producer), and the engine/learner
# log-prob gap: the worker's copy computes the same numbers in another batch, ~1e-8 apart
ONLY_ASYNC = ("rollout/staleness", "rollout/buffered", "rollout/version", "rollout/stale_", "rollout/aborted",
              "rollout/update_s", "rollout/sync_", "perf/", "learner/rollout_logprob", "learner/mismatch",
              "advantage/at_production")


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def spy_prompts(monkeypatch) -> dict[int, list[int]]:
    """The prompts each trained step used, as the loop's advantage stage gets them."""
    seen: dict[int, list[int]] = {}
    real = rlvr.loop.advantages

    def spy(run, scored, prompt_indices, step):
        seen[step] = list(prompt_indices)
        return real(run, scored, prompt_indices, step)

    monkeypatch.setattr(rlvr.loop, "advantages", spy)
    return seen


@pytest.mark.parametrize("estimator,produced", [
    ([], True),  # GRPO needs only each group: computed by the producer as it scores each batch
    (["advantage={name: delta_l}", "loss.aggregation={name: delta_l}"], False),  # batch-level: at the step
])
def test_staleness_zero_is_the_synchronous_run(tmp_path, models_dir, capfd, estimator, produced):
    args = ["run.steps=6", "eval.every=3", "checkpoint.at_end=true", *QUIET, *estimator]
    sync = run_recipe(RECIPE, tmp_path / "sync", models_dir, *args)
    k0 = run_recipe(RECIPE, tmp_path / "k0", models_dir, *args, *ASYNC, "rollout.max_staleness=0")
    a = [{k: v for k, v in r.items() if k != "time" and not k.startswith(ONLY_ASYNC)} for r in metric_rows(sync)]
    b = [{k: v for k, v in r.items() if k != "time" and not k.startswith(ONLY_ASYNC)} for r in metric_rows(k0)]
    assert len(a) == len(b) == 9  # 6 steps + 3 evaluations
    assert a == b  # every advantage/* statistic included
    assert not weight_differences(final_checkpoint(sync), final_checkpoint(k0))
    steps = [r for r in rows(k0) if "rollout/staleness_max" in r]
    assert [r["rollout/staleness_max"] for r in steps] == [0.0] * 6
    assert all(("advantage/at_production" in r) == produced for r in steps)
    said = capfd.readouterr().err
    assert ("computed as each batch is scored" in said) == produced
    assert ("batch-level: it waits for every group of the step" in said) == (not produced)


def test_one_step_stale_learns_like_the_synchronous_run(tmp_path, models_dir):
    # measured (2-core CPU): synchronous eval accuracy 1.0 at step 250; k = 1 with the ratio against
    # the behaviour policy (loss.old_policy auto) 0.8 at 200 and 1.0 at 250
    run_dir = run_recipe(RECIPE, tmp_path / "k1", models_dir, "run.steps=300", "eval.every=50",
                         "checkpoint.at_end=false", *QUIET, *ASYNC, "rollout.max_staleness=1")
    lines = rows(run_dir)
    evals = {r["step"]: r["eval/accuracy"] for r in lines if "eval/accuracy" in r}
    assert evals[0] <= 0.3 and max(evals.values()) >= 0.8, evals
    lags = [r["rollout/staleness_max"] for r in lines if "rollout/staleness_max" in r]
    assert len(lags) == 300 and max(lags) == 1.0
    assert lags.count(1.0) >= 150, "the producer hardly ever ran ahead: nothing overlapped"
    assert all(r["rollout/stale_dropped"] == 0 for r in lines if "rollout/stale_dropped" in r)


def test_killed_async_run_resumes_with_the_same_prompts(tmp_path, models_dir, monkeypatch):
    args = ["run.steps=8", "eval.every=0", "eval.at_start=false", "checkpoint.every=4", "checkpoint.at_end=false",
            "metrics.plot=false", "run.resume=auto", *ASYNC, "rollout.max_staleness=1"]
    straight_seen = spy_prompts(monkeypatch)
    run_recipe(RECIPE, tmp_path / "straight", models_dir, *args)
    straight = dict(straight_seen)
    killed_seen = spy_prompts(monkeypatch)
    # the producer has already drawn (maybe generated) step 5 when the checkpoint of step 4 is written
    kill_after_checkpoint(lambda: run_recipe(RECIPE, tmp_path / "resumed", models_dir, *args), monkeypatch, step=4)
    assert sorted(killed_seen) == [1, 2, 3, 4]
    resumed_seen = spy_prompts(monkeypatch)
    run_dir = run_recipe(RECIPE, tmp_path / "resumed", models_dir, *args)
    assert sorted(resumed_seen) == [5, 6, 7, 8]  # it resumed, it did not start over
    assert {**killed_seen, **resumed_seen} == straight
    lags = [r["rollout/staleness_max"] for r in rows(run_dir) if "rollout/staleness_max" in r]
    assert len(lags) == 8 and max(lags) <= 1.0


def test_reward_failing_on_the_producer_thread_stops_the_run(tmp_path, models_dir):
    # the 5th scoring call raises: the producer is then generating step 5 or 6 while the learner trains
    (tmp_path / "flaky.py").write_text(
        "calls = [0]\n"
        "def flaky(prompt, completion, row):\n"
        "    calls[0] += 1\n"
        "    if calls[0] > 4 * 32 * 8:\n"
        "        raise ValueError('the grader lost its database')\n"
        "    return float(completion.strip() == row['answer'])\n")
    reward = f"reward.functions=[{{name: '{tmp_path / 'flaky.py'}:flaky', isolate: false}}]"
    args = ["run.steps=10", "eval.every=0", "eval.at_start=false", "checkpoint.every=2", "checkpoint.at_end=false",
            "metrics.plot=false", "run.resume=never", "reward.on_failure=abort", reward, *ASYNC,
            "rollout.max_staleness=1"]
    with pytest.raises(Exception, match="the grader lost its database") as info:
        run_recipe(RECIPE, tmp_path / "run", models_dir, *args)
    assert "flaky" in str(info.value)
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert kept == ["step_0000002", "step_0000004"]  # written before the failure, intact
    assert max(r["step"] for r in rows(tmp_path / "run")) == 4
