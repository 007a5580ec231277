"""Every method recipe, killed right after its step-2 checkpoint and resumed, equals the run that
never stopped: every metric line (timing keys aside), every weight tensor of the final checkpoint,
and every optimiser, scheduler, plug-in and RNG state in it, all bitwise (CPU, float32).

The matrix is every recipe in recipes/*.yaml and recipes/debug/*.yaml (a new recipe joins it by
existing), at 4 steps with a checkpoint at 2 and eval at 2 and 4 (and a check that the weights
moved between steps 2 and 4, so the comparison is not of untouched tensors). Recipes whose stateful work is
periodic get overrides: VAS re-scores at steps 1 and 4 (one pass after the resume); GVM estimates
once, at step 1, so a resume that lost its allocation would re-estimate and differ.
"""

from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, run_recipe
from tests.integration.resume_check import assert_same_run, kill_after_checkpoint, weight_differences
from tests.integration.test_recipes import VARIED_REWARD

RECIPES = sorted(
    [p for p in (ROOT / "recipes").glob("*.yaml") if not p.name.startswith("smollm2")]  # needs a converted model
    + list((ROOT / "recipes" / "debug").glob("*.yaml"))
)
COMMON = ["run.steps=4", "checkpoint.every=2", "checkpoint.keep_last=3", "checkpoint.at_end=true", "run.resume=auto",
          "metrics.sinks=[jsonl]", "metrics.plot=false"]
EVAL = ["eval.every=2", "eval.max_prompts=8"]  # sampled eval draws from the RNGs too: it must resume alike
# method recipes train 32+ prompts a step; 8 keep the matrix fast (debug recipes are already small)
SMALLER = ["sampling.prompts_per_step=8"]
EXTRA = {
    # scoring passes at steps 1 and 4 (one after the resume) over 64 prompts instead of 400
    "vas": ["sampling.sampler.refresh_every=3", "data.train.args.num_rows=64"],
    # one estimation pass, at step 1, over 24 prompts (it back-propagates every prompt's samples, the
    # costliest pass of any recipe): a resume that lost the allocation would estimate again and differ
    "gvm": ["sampling.allocator.start_step=1", "sampling.allocator.estimate_every=0", "data.train.args.num_rows=24"],
    "spo": ["data.train.args.num_rows=64"],  # the offline pass samples every prompt 8 times
}


def overrides(recipe: Path) -> list[str]:
    from rlvr.config import load_config

    # method recipes: a reward the random tiny model earns, so advantages are not all 0 and the
    # policy really moves (with the exact-match reward most runs would compare unchanged weights)
    small = [*SMALLER, *VARIED_REWARD] if recipe.parent.name == "recipes" else []
    evals = EVAL if load_config(recipe).data.eval else ["eval.every=0", "eval.at_start=false"]
    return [*COMMON, *evals, *small, *EXTRA.get(recipe.stem, [])]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES, ids=[f"{p.parent.name}/{p.stem}" for p in RECIPES])
def test_killed_after_checkpoint_resumes_bitwise(recipe, tmp_path, models_dir, monkeypatch):
    args = overrides(recipe)
    straight = run_recipe(recipe, tmp_path / "straight", models_dir, *args)
    kill_after_checkpoint(lambda: run_recipe(recipe, tmp_path / "resumed", models_dir, *args), monkeypatch)
    assert [p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()] == ["step_0000002"]
    resumed = run_recipe(recipe, tmp_path / "resumed", models_dir, *args)
    assert_same_run(straight, resumed, recipe.stem)
    ckpts = straight / "checkpoints"
    # the policy moved after the resume point: the comparison of the final weights proves something
    trained = "adapter" if (ckpts / "step_0000002" / "adapter").is_dir() else "model"  # LoRA: the adapter only
    assert weight_differences(ckpts / "step_0000002", ckpts / "step_0000004", trained), \
        f"{recipe.stem}: weights never moved"
