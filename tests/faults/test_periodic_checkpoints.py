"""Periodic checkpoints are on by default, by step count and by time, so a run killed without
warning (kill -9, a node failure) loses at most that much."""

from __future__ import annotations

import pytest

from rlvr.config import load_config
from rlvr.config.schema import CheckpointConfig
from rlvr.loop import train
from tests.faults.lifecycle_runs import FAST, RECIPE, build_tiny

pytestmark = pytest.mark.faults


def test_defaults_checkpoint_periodically():
    defaults = CheckpointConfig()
    assert (defaults.every, defaults.every_minutes, defaults.at_end) == (100, 30.0, True)


@pytest.mark.slow
def test_time_based_checkpoints(tmp_path):
    build_tiny(tmp_path / "models")
    run_dir = tmp_path / "run"
    # every_minutes of 1 ms: due at the end of every step (the step count rule is off)
    cfg = load_config(RECIPE, [f"run.output_dir={run_dir}", f"model.path={tmp_path / 'models' / 'tiny-digits'}",
                               *FAST, "run.steps=3", "checkpoint.every=0", "checkpoint.every_minutes=0.00002",
                               "checkpoint.at_end=false", "checkpoint.keep_last=5"])
    train(cfg, RECIPE.parent)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "step_0000001", "step_0000002", "step_0000003"]
