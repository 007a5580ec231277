"""Every recipe under recipes/debug/ runs two steps end to end and produces sane numbers."""

import json
import math
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, run_recipe

DEBUG = sorted((ROOT / "recipes" / "debug").glob("*.yaml"))


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", DEBUG, ids=[p.stem for p in DEBUG])
def test_debug_recipe_two_steps(recipe, tmp_path, models_dir):
    run_dir = run_recipe(recipe, tmp_path / "run", models_dir)
    rows = read_metrics(run_dir)
    train_rows = [r for r in rows if "learner/loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2]
    for r in train_rows:
        assert math.isfinite(r["learner/loss"]) and math.isfinite(r["learner/grad_norm"])
        assert 0.0 <= r["reward/accuracy"] <= 1.0
        assert 0.0 <= r["advantage/zero_std_frac"] <= 1.0
        assert r["rollout/len_mean"] >= 1
        assert r["perf/step_s"] > 0
    assert (run_dir / "checkpoints").is_dir()
    last = sorted((run_dir / "checkpoints").iterdir())[-1]
    assert (last / "model" / "model.safetensors").is_file() and (last / "state.pt").is_file()
