"""A resumed run uses what its recipe says, or refuses to start: never a silent disagreement.

A 2-step quickstart run with checkpoints is resumed in-process with changed keys: a new
learner.lr reaches the loaded optimiser (seen inside the update itself) and is announced, and
the run's and the next checkpoint's config.yaml record it; a changed advantage.name (and
prompts_per_step) is refused with every key listed and the run folder left byte for byte as it
was. The decision table covers every key of the schema.
"""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest
import yaml

from rlvr.config import load_config
from rlvr.learner import Learner
from rlvr.loop import train
from rlvr.run.resume_policy import HONOUR, REFUSE, RULES, ResumeConflict, decision, flatten
from tests.faults.lifecycle_runs import FAST, RECIPE, build_tiny, step_lines

pytestmark = pytest.mark.faults


def _cfg(run_dir: Path, models: Path, *overrides: str):
    return load_config(RECIPE, [f"run.output_dir={run_dir}", f"model.path={models / 'tiny-digits'}", *FAST,
                                "checkpoint.every=1", "checkpoint.keep_last=5", *overrides])


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models")
    build_tiny(path)
    return path


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory, models) -> Path:
    run_dir = tmp_path_factory.mktemp("base") / "run"
    train(_cfg(run_dir, models, "run.steps=2"), RECIPE.parent)
    return run_dir


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_changed_lr_reaches_the_optimiser_and_is_recorded(tmp_path, models, two_steps, monkeypatch, capfd):
    run_dir = tmp_path / "run"
    shutil.copytree(two_steps, run_dir)
    seen = []
    real_step = Learner.step
    monkeypatch.setattr(Learner, "step", lambda self, batch, *a, **kw: seen.append(
        [g["lr"] for g in self.scheduler.optimizer.param_groups]) or real_step(self, batch, *a, **kw))
    handlers = [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)]

    train(_cfg(run_dir, models, "run.steps=3", "learner.lr=1e-3"), RECIPE.parent)

    assert seen == [[1e-3]]  # step 3's update ran at the new lr (the checkpoint's optimiser said 3e-4)
    err = capfd.readouterr().err
    assert "rlvr: resuming with learner.lr 0.001 (checkpoint: 0.0003)" in err
    assert "rlvr: resuming with run.steps 3 (checkpoint: 2)" in err
    for config in (run_dir / "config.yaml", run_dir / "checkpoints" / "step_0000003" / "config.yaml"):
        assert yaml.safe_load(config.read_text())["learner"]["lr"] == 1e-3
    assert step_lines(run_dir) == [1, 2, 3]
    assert [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)] == handlers


@pytest.mark.slow
def test_changed_objective_is_refused_and_nothing_is_touched(tmp_path, models, two_steps):
    run_dir = tmp_path / "run"
    shutil.copytree(two_steps, run_dir)
    before = _files(run_dir)
    with pytest.raises(ResumeConflict) as refused:
        train(_cfg(run_dir, models, "run.steps=3", "advantage.name=rloo", "sampling.prompts_per_step=16",
                   "learner.lr=1e-3"), RECIPE.parent)
    message = str(refused.value)
    assert "the recipe changes 2 key(s) that cannot change in the middle of a run" in message
    assert "  advantage.name: grpo -> rloo\n" in message and "  sampling.prompts_per_step: 8 -> 16\n" in message
    assert "learner.lr" not in message  # honoured keys are not part of the refusal
    assert "(advantage.name=grpo sampling.prompts_per_step=8)" in message and "another run.output_dir" in message
    assert refused.value.exit_code == 2
    assert _files(run_dir) == before


def test_every_key_of_the_schema_has_a_rule():
    cfg = load_config(RECIPE, ["eval.every=0"])
    keys = flatten(cfg.model_dump(mode="json"))
    unruled = [k for k in keys if not any(k == r or k.startswith(r + ".") for r in RULES)]
    assert unruled == []
    # the examples of the docs
    assert decision("learner.lr") == HONOUR and decision("checkpoint.every") == HONOUR
    assert decision("advantage.name") == REFUSE and decision("learner.strategy") == REFUSE
    assert decision("rollout.vllm.gpu_memory_utilization") == HONOUR and decision("rollout.vllm.dtype") == REFUSE
