"""Alarms for silent failures (rlvr/run/alarms.py): hand-made metric sequences fire each alarm exactly
when its condition has held for its window, and never on healthy sequences; one real run with a
reward that always returns 0 stops through the zero_reward alarm with its message and a checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlvr.config.schema import AlarmsConfig
from rlvr.run.alarms import Alarms

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[2]


def alarms(**overrides: dict) -> Alarms:
    return Alarms(AlarmsConfig.model_validate(overrides))


def healthy(step: int) -> dict[str, float]:
    """A step of a run that learns: reward rising from 0 (some early steps all zero), entropy falling
    from 2.4 nats, a tiny mismatch, no failures; shaped after the quickstart's metrics."""
    reward = 0.0 if step in (1, 8) else min(0.99, 0.002 * step)
    return {"reward/total/mean": reward, "reward/total/std": 0.3 if reward else 0.0, "reward/accuracy": reward,
            "reward/exact/failures": 0.0, "reward/exact/timeouts": 0.0, "reward/samples": 256.0,
            "rollout/samples": 256.0, "advantage/nonfinite_frac": 0.0, "learner/entropy": 2.4 * 0.995 ** step,
            "learner/mismatch_k3": 1e-9}


def feed(a: Alarms, rows: list[dict[str, float]], start: int = 1) -> dict[int, list]:
    """{step: firings} for the steps where something fired."""
    out = {}
    for i, row in enumerate(rows, start):
        if fired := a.update(i, row):
            out[i] = fired
    return out


def test_healthy_run_fires_nothing():
    assert feed(alarms(), [healthy(s) for s in range(1, 1001)]) == {}


def test_the_real_quickstart_fires_nothing():
    """The metrics the alarms read, from a full `rlvr train recipes/quickstart.yaml` (1000 steps, before
    the alarms existed; 4 significant digits). It ends converged: entropy ~0.008 nats, accuracy ~0.99."""
    cols = json.loads((Path(__file__).parent / "data" / "quickstart_metrics.json").read_text())
    rows = [{k: v[i] for k, v in cols.items() if k != "step"} for i in range(len(cols["step"]))]
    assert len(rows) == 1000 and min(r["learner/entropy"] for r in rows) < 0.01
    assert feed(alarms(), rows) == {}


def test_zero_reward_fires_exactly_after_its_window_once_per_episode():
    zero = {**healthy(100), "reward/total/mean": 0.0, "reward/total/std": 0.0}
    rows = [healthy(50)] * 2 + [zero] * 6 + [healthy(100)] + [zero] * 4
    fired = feed(alarms(zero_reward={"window": 4, "action": "warn"}), rows)
    # zero from step 3: full window at 6, firing 6-8, cleared at 9, again at 13
    assert sorted(fired) == [6, 7, 8, 13]
    assert [f.first for s in sorted(fired) for f in fired[s]] == [True, False, False, True]
    f = fired[6][0]
    assert (f.name, f.action, f.step) == ("zero_reward", "warn", 6)
    assert "alarm zero_reward at step 6" in f.message and f.silence == "alarms.zero_reward.action=off"
    assert "threshold 0" in f.message


def test_zero_reward_is_all_rewards_zero_not_a_zero_mean():
    balanced = {**healthy(100), "reward/total/mean": 0.0, "reward/total/std": 1.0}  # +1 and -1 rewards
    assert feed(alarms(zero_reward={"window": 3}), [balanced] * 10) == {}


def test_reward_failures_counts_failures_and_timeouts_over_the_window():
    def row(failures: float, timeouts: float) -> dict[str, float]:
        return {**healthy(100), "reward/exact/failures": failures, "reward/exact/timeouts": timeouts,
                "reward/fmt/failures": 0.0, "reward/fmt/timeouts": 0.0, "reward/samples": 8.0}

    a = alarms(reward_failures={"window": 3})
    fired = feed(a, [row(8, 0), row(4, 4), row(7, 0), row(0, 8), row(8, 0), row(6, 2), row(8, 0)])
    # 23 of 24 samples lost in the windows ending at steps 3, 4 and 5; all 24 from step 6 on
    assert sorted(fired) == [6, 7]
    f = fired[6][0]
    assert f.action == "stop" and "reward 'exact' failed or timed out on 100% of samples" in f.message
    half = alarms(reward_failures={"window": 3, "threshold": 0.5})
    assert sorted(feed(half, [row(4, 0)] * 4)) == [3, 4]


def test_reward_failures_share_uses_the_samples_the_rewards_scored():
    # dynamic sampling trains on fewer samples than it scored: the share is of scored samples
    row = {**healthy(100), "reward/exact/failures": 4.0, "reward/samples": 8.0, "rollout/samples": 4.0}
    assert feed(alarms(reward_failures={"window": 2}), [row] * 5) == {}


def test_nonfinite_advantages_fires_when_every_advantage_was_nonfinite():
    bad = {**healthy(50), "advantage/nonfinite_frac": 1.0}
    half = {**healthy(50), "advantage/nonfinite_frac": 0.5}
    assert feed(alarms(nonfinite_advantages={"window": 3}), [half] * 10) == {}
    fired = feed(alarms(nonfinite_advantages={"window": 3}), [half, bad, bad, bad])
    assert sorted(fired) == [4] and "100% of advantages were NaN/inf" in fired[4][0].message


def test_policy_collapse_needs_low_entropy_and_a_reward_that_does_not_rise():
    def row(entropy: float, reward: float, accuracy: float | None = None) -> dict[str, float]:
        return {**healthy(100), "learner/entropy": entropy, "reward/total/mean": reward,
                "reward/total/std": 0.1, "reward/accuracy": reward if accuracy is None else accuracy}

    a = dict(policy_collapse={"window": 4})
    # what learner.lr=10 does: entropy 0 (even slightly negative from rounding), reward flat at 0
    collapsed = [row(0.0, 0.0), row(-0.0003, 0.0), row(0.0, 0.0), row(0.0, 0.0), row(0.0, 0.0)]
    fired = feed(alarms(**a), collapsed)
    assert sorted(fired) == [4, 5] and fired[4][0].action == "warn"
    assert "mean token entropy" in fired[4][0].message
    assert feed(alarms(**a), [row(0.0, r) for r in (0.1, 0.2, 0.3, 0.4, 0.5)]) == {}  # still learning
    assert feed(alarms(**a), [row(0.5, 0.0)] * 6) == {}  # exploring
    assert feed(alarms(**a), [row(0.001, 1.0)] * 6) == {}  # converged: every answer right


def test_mismatch_fires_when_sustained_above_threshold_not_on_a_spike():
    def row(k3: float) -> dict[str, float]:
        return {**healthy(100), "learner/mismatch_k3": k3}

    a = dict(mismatch={"window": 3, "threshold": 0.01})
    assert feed(alarms(**a), [row(0.001), row(0.5), row(0.001), row(0.002)]) == {}
    fired = feed(alarms(**a), [row(0.001), row(0.02), row(0.05), row(0.1)])
    assert sorted(fired) == [4] and "lowest 0.02" in fired[4][0].message


def test_nan_steps_and_off_alarms_never_fire():
    nan = {**healthy(100), "learner/entropy": float("nan"), "reward/total/mean": float("nan"),
           "learner/mismatch_k3": float("nan"), "advantage/nonfinite_frac": float("nan")}
    assert feed(alarms(policy_collapse={"window": 2}, mismatch={"window": 2}), [nan] * 5) == {}
    zero = {**healthy(100), "reward/total/mean": 0.0, "reward/total/std": 0.0}
    assert feed(alarms(zero_reward={"window": 2, "action": "off"}), [zero] * 5) == {}


def test_windows_survive_a_checkpoint():
    zero = {**healthy(100), "reward/total/mean": 0.0, "reward/total/std": 0.0}
    rows = [healthy(50)] + [zero] * 6
    straight = feed(alarms(zero_reward={"window": 4}), rows)
    first = alarms(zero_reward={"window": 4})
    feed(first, rows[:3])
    state = json.loads(json.dumps(first.state_dict()))  # plain data: lists, dicts, numbers
    resumed = alarms(zero_reward={"window": 4})
    resumed.load_state_dict(state)
    assert feed(resumed, rows[3:], start=4).keys() == straight.keys() == {5, 6, 7}


def test_yaml_off_is_off():
    import yaml

    raw = yaml.safe_load("zero_reward: {action: off}")  # YAML 1.1 reads a bare off as false
    cfg = AlarmsConfig.model_validate(raw)
    assert cfg.zero_reward.action == "off" and cfg.zero_reward.window == 50  # the alarm's own defaults stay


ZERO_REWARD = '''
def always_zero(prompt, completion, row):
    return 0.0
'''


@pytest.mark.slow
def test_a_reward_that_is_always_zero_stops_the_run_with_a_checkpoint(tmp_path):
    (tmp_path / "zero_reward.py").write_text(ZERO_REWARD)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "rlvr", "train", str(ROOT / "recipes" / "quickstart.yaml"),
           f"run.output_dir={out}", f"model.path={tmp_path / 'tiny-digits'}", "run.steps=20",
           "eval.at_start=false", "eval.every=0", "metrics.sinks=[jsonl]", "metrics.plot=false",
           "sampling.prompts_per_step=4", "sampling.samples_per_prompt=2", "checkpoint.every=0",
           f"reward.functions=[{{name: '{tmp_path / 'zero_reward.py'}:always_zero', isolate: false}}]",
           "alarms.zero_reward.window=3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    said = f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"
    assert proc.returncode == 3, said
    assert "alarm zero_reward at step 3" in proc.stderr, said
    assert "alarms.zero_reward.action=off" in proc.stderr, said
    assert "checkpoint written at step 3" in proc.stderr, said
    assert "Traceback" not in proc.stderr, said
    assert (out / "checkpoints" / "step_0000003" / "model").is_dir(), said
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "reward/total/mean" in r] == [1, 2, 3]
    assert lines[-1].get("alarm/zero_reward") == 1.0
