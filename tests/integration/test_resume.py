"""A run killed after a checkpoint resumes to exactly the numbers of a run that never stopped."""

import json

import pytest
import torch
from safetensors.torch import load_file

import rlvr.loop
from rlvr.learner import Learner
from tests.integration.conftest import ROOT, run_recipe

RECIPE = ROOT / "recipes" / "debug" / "grpo_kl_loss.yaml"
# sampled eval + KL + 2 mini-batches x 2 epochs: every RNG and every piece of state matters
OVERRIDES = ["run.steps=4", "checkpoint.every=2", "checkpoint.keep_last=3", "run.resume=auto", "eval.every=2"]
KEYS = ["learner/loss", "learner/pg_loss", "learner/kl", "learner/grad_norm", "reward/total/mean",
        "rollout/len_mean", "eval/accuracy", "eval/pass@4", "learner/lr"]


class Killed(Exception):
    pass


def metrics(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    merged = {}
    for r in rows:
        merged.setdefault(r["step"], {}).update({k: r[k] for k in KEYS if k in r})
    return merged


def kill_after_checkpoint(recipe, out, models_dir, monkeypatch, *args, step: int = 2) -> None:
    """Run `recipe` and crash it right after the checkpoint of `step` is written."""
    real_save = rlvr.loop.save_checkpoint

    def save_then_die(run_dir, at, **kw):
        path = real_save(run_dir, at, **kw)
        if at == step:
            raise Killed
        return path

    monkeypatch.setattr(rlvr.loop, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        run_recipe(recipe, out, models_dir, *args)
    monkeypatch.setattr(rlvr.loop, "save_checkpoint", real_save)


@pytest.mark.slow
def test_killed_run_resumes_to_identical_steps(tmp_path, models_dir, monkeypatch):
    straight = run_recipe(RECIPE, tmp_path / "straight", models_dir, *OVERRIDES)
    kill_after_checkpoint(RECIPE, tmp_path / "resumed", models_dir, monkeypatch, *OVERRIDES)
    # a half-written checkpoint from a crash mid-save must be ignored by resume: auto
    (tmp_path / "resumed" / "checkpoints" / ".tmp-step_0000003").mkdir()
    calls = []
    real_step = Learner.step
    monkeypatch.setattr(Learner, "step", lambda self, batch, **kw: calls.append(1) or real_step(self, batch, **kw))
    resumed = run_recipe(RECIPE, tmp_path / "resumed", models_dir, *OVERRIDES)
    assert len(calls) == 2  # steps 3 and 4 only: it resumed, it did not start over

    a, b = metrics(straight), metrics(resumed)
    assert sorted(a) == sorted(b) == [0, 1, 2, 3, 4]
    for step in a:
        for key in a[step]:
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-5, abs=1e-6), (step, key)
    wa = load_file(straight / "checkpoints" / "step_0000004" / "model" / "model.safetensors")
    wb = load_file(resumed / "checkpoints" / "step_0000004" / "model" / "model.safetensors")
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=1e-5, atol=1e-6)


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


STATEFUL = ["spo", "vas", "vade", "gvm", "dapo"]
EXTRA = {"gvm": ["sampling.allocator.start_step=1", "sampling.allocator.estimate_every=3"]}


@pytest.mark.slow
@pytest.mark.parametrize("name", STATEFUL)
def test_stateful_methods_resume_to_identical_steps(name, tmp_path, models_dir, monkeypatch):
    """Tracker, scores, posteriors, allocations and sampler RNGs all come back from the checkpoint."""
    recipe = ROOT / "recipes" / f"{name}.yaml"
    args = ["run.steps=4", "checkpoint.every=2", "eval.every=2", "eval.max_prompts=8", "metrics.sinks=[jsonl]",
            "metrics.plot=false", "sampling.prompts_per_step=8", *EXTRA.get(name, [])]
    straight = run_recipe(recipe, tmp_path / "straight", models_dir, *args)
    kill_after_checkpoint(recipe, tmp_path / "resumed", models_dir, monkeypatch, *args)
    resumed = run_recipe(recipe, tmp_path / "resumed", models_dir, *args)
    a, b = metrics(straight), metrics(resumed)
    assert sorted(a) == sorted(b) == [0, 1, 2, 3, 4]
    for step in a:
        for key in a[step]:
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-5, abs=1e-6), (name, step, key)
    # the plug-in's own metrics (e.g. sampling/vade_*, advantage/spo_*) agree too
    rows_a = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines() if '"step": 4' in x]
    rows_b = [json.loads(x) for x in (resumed / "metrics.jsonl").read_text().splitlines() if '"step": 4' in x]
    for ra, rb in zip(rows_a, rows_b):
        for k, v in ra.items():
            if k.startswith(("sampling/", "advantage/")) and isinstance(v, float):
                assert rb[k] == pytest.approx(v, rel=1e-5, abs=1e-6), (name, k)
