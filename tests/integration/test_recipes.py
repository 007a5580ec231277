"""Every recipe under recipes/ and recipes/debug/ runs end to end, produces sane numbers, and
shows the number it switches on (SWITCHED_ON: KL > 0 with KL on, GVM's allocation metrics with
GVM, ...). A recipe without an entry in SWITCHED_ON fails test_every_recipe_has_a_check."""

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.integration.conftest import ROOT, run_recipe

DEBUG = sorted((ROOT / "recipes" / "debug").glob("*.yaml"))
# every method recipe (SmolLM2 needs its converted model: scripts/prepare_smollm2.py); the vllm
# recipes are covered by tests/integration/test_vllm_engine.py and tests/faults/test_resume_kill.py
METHODS = sorted(p for p in (ROOT / "recipes").glob("*.yaml") if not p.name.startswith("smollm2"))
# GVM's recipe starts estimating at step 150; the short runs start it at once so stage 1 is exercised
# (its stage 1 samples and back-propagates every training prompt: 24 instead of 200 keep it to seconds)
EXTRA = {"gvm": ["sampling.allocator.start_step=1", "sampling.allocator.estimate_every=1",
                 "data.train.args.num_rows=24", "sampling.prompts_per_step=8"]}
# The method recipes' exact-match reward is almost never earned by the random tiny model: every
# group would be all-zero, every advantage 0 and every method-specific check vacuous. Their smoke
# runs score "the reply holds a digit 0-2" instead (earned ~60% of the time), so groups vary.
VARIED_REWARD = ["reward.functions=[{name: format, kwargs: {pattern: '.*[0-2].*'}}]"]
# debug recipes that need more than their 2 steps to show their number
DEBUG_EXTRA = {"dr_grpo_kl_reward": ["run.steps=3"]}  # step 1 earns no reward: the policy first moves at 2


def name(recipe: Path) -> str:
    return f"debug/{recipe.stem}" if recipe.parent.name == "debug" else recipe.stem


def _all(key: str, ok: Callable[[float], bool]) -> Callable[[list[dict]], bool]:
    """Every training line has `key` and its value passes `ok`."""
    return lambda rows: all(key in r and r[key] is not None and ok(r[key]) for r in rows)


def _centred(bound: float) -> Callable[[list[dict]], bool]:
    """Advantages that vary, sum to ~0 over the batch (group-centred) and stay within +-bound."""
    return lambda rows: all(r["advantage/std"] > 0 and abs(r["advantage/mean"]) < 1e-5
                            and max(r["advantage/max"], -r["advantage/min"]) <= bound + 1e-6 for r in rows)


def _unit(x: float) -> bool:
    return 0.0 <= x <= 1.0


# recipe -> (what it switches on, predicate on its training lines in step order). G = 8 samples.
SWITCHED_ON: dict[str, tuple[str, Callable[[list[dict]], bool]]] = {
    "quickstart": ("GRPO: group-centred advantages that vary", _centred(math.inf)),
    "rloo": ("RLOO: |A| <= G/(G-1) (leave-one-out baseline), centred, varying", _centred(8 / 7)),
    "dr_grpo": ("Dr. GRPO: no std division, so |A| <= 1 with rewards in [0, 1]", _centred(1.0)),
    "bnpo": ("BNPO's fitted Beta parameters, and the dual clip's fraction",
             lambda rows: _all("advantage/bnpo_alpha", lambda x: x > 0)(rows)
             and _all("advantage/bnpo_beta", lambda x: x > 0)(rows) and _all("learner/dual_clip_frac", _unit)(rows)),
    "delta_l": ("ΔL length weights around 1 (normalised over the batch)",
                lambda rows: all(0 < r["advantage/length_weight_min"] <= 1 <= r["advantage/length_weight_max"]
                                 for r in rows)),
    "stratified": ("the stratum function splits groups into several strata",
                   _all("advantage/num_strata", lambda x: x > 1)),
    "dapo": ("dynamic sampling: dropped fraction in [0, 1], every trained group informative",
             lambda rows: _all("sampling/dropped_frac", _unit)(rows) and _all("advantage/zero_std_frac",
                                                                              lambda x: x == 0)(rows)),
    "spo": ("SPO tracker: initialised offline, tracking every prompt",
            lambda rows: rows[0].get("advantage/spo_offline_prompts", 0) > 0
            and all(r["advantage/spo_tracked_prompts"] == rows[0]["advantage/spo_offline_prompts"] for r in rows)
            and _all("advantage/spo_rho_mean", lambda x: 0 < x <= 1)(rows)),
    "vas": ("VAS scoring pass at step 1: VPS in [0, 1], not every weight zero",
            lambda rows: _unit(rows[0]["sampling/vas_vps_mean"]) and rows[0]["sampling/vas_zero_weight_frac"] < 1),
    "vade": ("VADE posteriors: the seen fraction grows, posterior means in (0, 1)",
             lambda rows: 0 < rows[0]["sampling/vade_seen_frac"] < rows[-1]["sampling/vade_seen_frac"]
             and _all("sampling/vade_posterior_mean", lambda x: 0 < x < 1)(rows)),
    "gvm": ("GVM re-estimates every step from step 1 and allocates samples",
            lambda rows: [r.get("sampling/gvm_iteration") for r in rows] == [1.0, 2.0]
            and _all("sampling/gvm_samples_max", lambda x: x >= 1)(rows)
            and _all("sampling/gvm_zero_frac", _unit)(rows)),
    "lora": ("LoRA: KL to the base (the policy with its adapters off) is exactly 0 at step 1, where B = 0, "
             "and > 0 once the adapters moved", lambda rows: rows[0]["learner/kl"] == 0 and rows[-1]["learner/kl"] > 0),
    "debug/grpo_kl_loss": ("KL in the loss > 0; 2 mini-batches x 2 epochs, so later updates are off-policy "
                           "(ppo_kl != 0; one on-policy update gives exactly 0); dual clip; cosine decay",
                           lambda rows: _all("learner/kl", lambda x: x > 0)(rows)
                           and _all("learner/ppo_kl", lambda x: x != 0)(rows)
                           and _all("learner/dual_clip_frac", _unit)(rows)
                           and rows[-1]["learner/lr"] < rows[0]["learner/lr"]),
    "debug/dr_grpo_kl_reward": ("KL (k1, in the reward) is 0 while the policy is the reference, non-zero once "
                                "it moved", lambda rows: rows[0]["learner/kl"] == 0 and rows[-1]["learner/kl"] != 0),
    "debug/dynamic_sampling": ("dynamic sampling: dropped fraction in [0, 1], every trained group informative",
                               lambda rows: _all("sampling/dropped_frac", _unit)(rows)
                               and _all("advantage/zero_std_frac", lambda x: x == 0)(rows)),
    "debug/math_isolated": ("the math verifier (worker processes) and the user's reward from a file both scored "
                            "every sample, and the user's own metric arrived",
                            lambda rows: _all("reward/math/mean", _unit)(rows)
                            and _all("reward/math/failures", lambda x: x == 0)(rows)
                            and _all("reward/brevity/failures", lambda x: x == 0)(rows)
                            and _all("reward/brevity/chars", lambda x: x >= 0)(rows)),
}


def test_every_recipe_has_a_check():
    """A new recipe must say which number proves its switch is on."""
    assert sorted(SWITCHED_ON) == sorted(name(p) for p in METHODS + DEBUG)


def check_switched_on(recipe: Path, rows: list[dict]) -> None:
    what, ok = SWITCHED_ON[name(recipe)]
    assert ok(rows), f"{name(recipe)}: {what}: not seen in\n" + "\n".join(json.dumps(r) for r in rows)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", DEBUG, ids=[p.stem for p in DEBUG])
def test_debug_recipe_two_steps(recipe, tmp_path, models_dir):
    extra = DEBUG_EXTRA.get(recipe.stem, [])
    run_dir = run_recipe(recipe, tmp_path / "run", models_dir, *extra)
    rows = read_metrics(run_dir)
    train_rows = [r for r in rows if "learner/loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3][: 3 if extra else 2]
    check_switched_on(recipe, train_rows)
    for r in train_rows:
        assert math.isfinite(r["learner/loss"]) and math.isfinite(r["learner/grad_norm"])
        assert 0.0 <= r["reward/accuracy"] <= 1.0
        assert 0.0 <= r["advantage/zero_std_frac"] <= 1.0
        assert r["rollout/len_mean"] >= 1
        assert r["perf/step_s"] > 0
    assert (run_dir / "checkpoints").is_dir()
    last = sorted((run_dir / "checkpoints").iterdir())[-1]
    assert (last / "model" / "model.safetensors").is_file() and (last / "state.pt").is_file()


@pytest.mark.slow
def test_standalone_eval_reproduces_the_in_training_eval(tmp_path, models_dir, capsys):
    from rlvr.cli import main

    recipe = ROOT / "recipes" / "debug" / "grpo_kl_loss.yaml"
    run_dir = run_recipe(recipe, tmp_path / "run", models_dir, "eval.samples=0", "eval.ks=[1]")
    in_training = [r for r in read_metrics(run_dir) if "eval/accuracy" in r and r["step"] == 2][0]
    model = run_dir / "checkpoints" / "step_0000002" / "model"
    capsys.readouterr()
    overrides = [f"model.path={models_dir / 'tiny-qwen2'}", "eval.samples=0", "eval.ks=[1]"]
    assert main(["eval", str(model), str(recipe), *overrides]) == 0
    standalone = json.loads(capsys.readouterr().out)
    for key in ("eval/accuracy", "eval/len_mean", "eval/reward_mean"):
        assert standalone[key] == pytest.approx(in_training[key]), key


@pytest.mark.slow
def test_cli_train_and_plot(tmp_path, models_dir):
    from rlvr.cli import main

    recipe = ROOT / "recipes" / "debug" / "dr_grpo_kl_reward.yaml"
    out = tmp_path / "run"
    args = [f"model.path={models_dir / 'tiny-llama'}", f"run.output_dir={out}", "run.steps=1", "metrics.sinks=[jsonl]"]
    assert main(["train", str(recipe), *args]) == 0
    assert [r["step"] for r in read_metrics(out) if "learner/loss" in r] == [1]
    assert main(["plot", str(out), "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 10_000


@pytest.mark.slow
def test_dynamic_sampling_keeps_only_informative_groups(tmp_path, models_dir):
    run_dir = run_recipe(ROOT / "recipes" / "debug" / "dynamic_sampling.yaml", tmp_path / "run", models_dir)
    rows = [r for r in read_metrics(run_dir) if "learner/loss" in r]
    for r in rows:
        assert r["sampling/groups"] == 8 and r["rollout/samples"] == 32
        assert r["advantage/zero_std_frac"] == 0.0  # every trained group carries signal
        assert r["sampling/generated_groups"] >= 8 and 0.0 <= r["sampling/dropped_frac"] < 1.0
        assert r["sampling/generated_groups"] == 8 * r["sampling/rounds"]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", METHODS, ids=[p.stem for p in METHODS])
def test_method_recipe_two_steps(recipe, tmp_path, models_dir):
    run_dir = run_recipe(recipe, tmp_path / "run", models_dir, "run.steps=2", "eval.every=2", "eval.max_prompts=8",
                         "checkpoint.every=1", "metrics.sinks=[jsonl]", "metrics.plot=false", *VARIED_REWARD,
                         *EXTRA.get(recipe.stem, []))
    rows = read_metrics(run_dir)
    train_rows = [r for r in rows if "learner/loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2]
    for r in train_rows:
        assert math.isfinite(r["learner/loss"]) and math.isfinite(r["learner/grad_norm"])
        assert math.isfinite(r["advantage/mean"]) and math.isfinite(r["advantage/std"])
    check_switched_on(recipe, train_rows)
    assert [r["step"] for r in rows if "eval/accuracy" in r] == [0, 2]
    assert (run_dir / "checkpoints" / "step_0000002" / "state.pt").is_file()


@pytest.mark.slow
def test_user_estimator_from_a_file_trains(tmp_path, models_dir, monkeypatch):
    """examples/my_estimator.py plugs in by name from YAML, with no edit inside rlvr."""
    import rlvr.run.step

    seen = []
    real = rlvr.run.step.gather_step

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.append(out[0])
        return out

    monkeypatch.setattr(rlvr.run.step, "gather_step", spy)
    est = ROOT / "examples" / "my_estimator.py"
    run_dir = run_recipe(ROOT / "recipes" / "quickstart.yaml", tmp_path / "run", models_dir, "run.steps=2",
                         f"advantage={{name: '{est}:MedianBaseline', scale: 2.0}}", "eval.at_start=false",
                         "eval.every=0", "metrics.sinks=[jsonl]", "metrics.plot=false")
    rows = [r for r in read_metrics(run_dir) if "learner/loss" in r]
    assert len(rows) == 2 and all("advantage/median_nonzero_frac" in r for r in rows)
    # the logged advantages are exactly the user's formula on the step's rewards
    inp = seen[-1]
    want = torch.zeros_like(inp.rewards)
    for g in inp.group.unique():
        m = inp.group == g
        want[m] = 2.0 * (inp.rewards[m] - inp.rewards[m].median())
    assert rows[-1]["advantage/mean"] == pytest.approx(float(want.mean()), abs=1e-6)
    assert rows[-1]["advantage/max"] == pytest.approx(float(want.max()), abs=1e-6)


USER_LOSS = """
from rlvr.learner import ppo_clip


def declared(logprobs, old_logprobs, advantages, mask, *, clip_low: float = 0.2, clip_high: float = 0.2):
    return ppo_clip(logprobs, old_logprobs, advantages, mask, clip_low=clip_low, clip_high=clip_high)


def undeclared(logprobs, old_logprobs, advantages, mask, *, clip_low: float = 0.2, clip_high: float = 0.2):
    return ppo_clip(logprobs, old_logprobs, advantages, mask, clip_low=clip_low, clip_high=clip_high)


declared.zero_at_zero_advantage = True
"""


@pytest.mark.parametrize("overrides,skips", [
    ((), True),
    (("loss.kl={coef: 0.01, estimator: k3, where: loss}",), False),  # a KL term acts on every sample
    (("learner.skip_zero_advantage=false",), False),
    (("loss.policy.name={losses}:declared",), True),  # a plug-in loss that says it is 0 at A = 0
    (("loss.policy.name={losses}:undeclared",), False),  # one that does not: every sample
])
def test_zero_advantage_samples_skip_the_update_only_where_exact(tmp_path, models_dir, overrides, skips):
    losses = tmp_path / "my_losses.py"
    losses.write_text(USER_LOSS)
    run_dir = run_recipe(ROOT / "recipes" / "quickstart.yaml", tmp_path / "run", models_dir, "run.steps=2",
                         "eval.at_start=false", "eval.every=0", "metrics.sinks=[jsonl]", "metrics.plot=false",
                         *(o.replace("{losses}", str(losses)) for o in overrides))
    rows = [r for r in read_metrics(run_dir) if "learner/loss" in r]
    assert len(rows) == 2
    if not skips:
        assert not any("learner/zero_adv_skipped" in r for r in rows)
        return
    for r in rows:  # the random model scores 0 on most groups of 8: their samples are left out, but one
        # row is always kept, so the optimiser step runs even when every group agrees
        n = r["rollout/samples"]
        assert r["learner/zero_adv_skipped"] == pytest.approx(min(r["advantage/zero_std_frac"], 1 - 1 / n), abs=1e-6)
        assert r["learner/zero_adv_skipped"] > 0.5
