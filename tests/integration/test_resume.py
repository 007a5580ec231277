"""A run killed after a checkpoint resumes to exactly the numbers of a run that never stopped.

Equality is bitwise (CPU, float32): every metric line, every final weight tensor, every optimiser,
scheduler, plug-in and RNG state (tests/integration/resume_check.py). The per-method matrix is in
test_resume_methods.py, a real SIGKILL at a random moment in tests/faults/test_resume_kill.py.
"""

import pytest

from rlvr.learner import Learner
from tests.integration.conftest import ROOT, run_recipe
from tests.integration.resume_check import assert_same_run, kill_after_checkpoint

RECIPE = ROOT / "recipes" / "debug" / "grpo_kl_loss.yaml"
# sampled eval + KL + 2 mini-batches x 2 epochs: every RNG and every piece of state matters
OVERRIDES = ["run.steps=4", "checkpoint.every=2", "checkpoint.keep_last=3", "run.resume=auto", "eval.every=2"]


@pytest.mark.slow
def test_killed_run_resumes_to_identical_steps(tmp_path, models_dir, monkeypatch):
    straight = run_recipe(RECIPE, tmp_path / "straight", models_dir, *OVERRIDES)
    kill_after_checkpoint(lambda: run_recipe(RECIPE, tmp_path / "resumed", models_dir, *OVERRIDES), monkeypatch)
    # a half-written checkpoint from a crash mid-save must be ignored by resume: auto
    (tmp_path / "resumed" / "checkpoints" / ".tmp-step_0000003").mkdir()
    calls = []
    real_step = Learner.step
    monkeypatch.setattr(Learner, "step", lambda self, batch, **kw: calls.append(1) or real_step(self, batch, **kw))
    resumed = run_recipe(RECIPE, tmp_path / "resumed", models_dir, *OVERRIDES)
    assert len(calls) == 2  # steps 3 and 4 only: it resumed, it did not start over
    assert_same_run(straight, resumed, RECIPE.stem)


@pytest.mark.slow
def test_keep_last_prunes_old_checkpoints(tmp_path, models_dir):
    run_dir = run_recipe(RECIPE, tmp_path / "r", models_dir, "run.steps=3", "checkpoint.every=1",
                         "checkpoint.keep_last=2", "eval.every=0", "eval.at_start=false")
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == ["step_0000002", "step_0000003"]


@pytest.mark.slow
def test_resume_never_refuses_to_overwrite(tmp_path, models_dir):
    args = ["run.steps=1", "eval.every=0", "eval.at_start=false"]
    run_recipe(RECIPE, tmp_path / "r", models_dir, *args)
    with pytest.raises(FileExistsError, match="run.output_dir"):
        run_recipe(RECIPE, tmp_path / "r", models_dir, *args, "run.resume=never")
