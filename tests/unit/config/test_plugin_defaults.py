"""The validated recipe records every plug-in's full kwargs, defaults included, once converted; a
checkpoint whose config predates that record still resumes."""

from pathlib import Path

import pytest
import yaml

from rlvr.config import ConfigError, apply_overrides, to_yaml, validate
from rlvr.config.load import checked_kwargs, plugin_choices
from rlvr.registry import ADVANTAGE
from rlvr.run.resume_policy import ResumeConflict, check_resume

BASE = {
    "model": {"path": "does/not/matter"},
    "data": {"train": {"path": "synthetic:succ"}},
    "reward": {"functions": [{"name": "exact"}]},
    "eval": {"at_start": False},
}

USER_PLUGIN = '''
import torch
from rlvr.types import AdvantageOutput

SENTINEL = object()

def centred(inp, *, scale: float = 1, shift=(0, 1), extra=SENTINEL, nan=float("nan"), num_prompts: int = 0,
            **more):
    return AdvantageOutput(scale * (inp.rewards - inp.rewards.mean()))
'''


def test_defaults_are_recorded_and_shown():
    cfg = validate(apply_overrides(BASE, ["advantage.epsilon=1e-4"]))
    assert cfg.advantage.kwargs == {"epsilon": 1e-4, "singleton": "raw"}  # the override converted: a float
    assert cfg.loss.policy.kwargs == {"clip_low": 0.2, "clip_high": 0.2, "dual_clip": None}
    assert cfg.sampling.sampler.kwargs == {"shuffle": True} and cfg.sampling.allocator.kwargs == {}
    shown = yaml.safe_load(to_yaml(cfg))
    assert shown["advantage"] == {"name": "grpo", "epsilon": 1e-4, "singleton": "raw"}
    assert shown["loss"]["policy"] == {"name": "ppo_clip", "clip_low": 0.2, "clip_high": 0.2, "dual_clip": None}
    assert cfg.advantage.target is ADVANTAGE.get("grpo")


def test_a_recorded_config_validates_to_itself():
    cfg = validate(apply_overrides(BASE, ["advantage.name=bnpo", "sampling.allocator.name=gvm"]))
    again = validate(yaml.safe_load(to_yaml(cfg)))
    assert to_yaml(again) == to_yaml(cfg)


def test_only_plain_defaults_of_a_user_plugin_are_recorded(tmp_path):
    (tmp_path / "mine.py").write_text(USER_PLUGIN)
    cfg = validate(apply_overrides(BASE, ["advantage={name: mine.py:centred, other: 3}"]), base_dir=tmp_path)
    # scale converted to its annotation; the object and NaN defaults and the context argument are not
    # recorded; a key taken by **more comes last, as given
    assert cfg.advantage.kwargs == {"scale": 1.0, "shift": (0, 1), "other": 3}
    assert yaml.safe_load(to_yaml(cfg))["advantage"] == {"name": "mine.py:centred", "scale": 1.0, "shift": [0, 1],
                                                         "other": 3}


def test_checked_kwargs_reports_what_plugin_kwargs_problems_reported():
    grpo = ADVANTAGE.get("grpo")
    kwargs, problems = checked_kwargs("advantage", grpo, {"epsilon": "tiny", "seed": 1})
    assert problems == ["advantage.epsilon: expected a valid number, unable to parse string as a number, got 'tiny'",
                        "advantage.seed: set by rlvr from the rest of the recipe, not here"]
    assert kwargs == {"singleton": "raw"}
    with pytest.raises(ConfigError):
        validate(apply_overrides(BASE, ["advantage.epsilon=tiny"]))


def test_plugin_choices_leave_out_the_defaults():
    cfg = validate(apply_overrides(BASE, ["advantage.epsilon=1e-4"])).model_dump(mode="json")
    chosen = plugin_choices(cfg)
    assert chosen["advantage"] == {"name": "grpo", "epsilon": 1e-4}
    assert chosen["loss"]["policy"] == {"name": "ppo_clip"}
    old = {"advantage": {"name": "grpo", "epsilon": "1e-4"}, "loss": {"policy": {"name": "ppo_clip"}}}
    assert plugin_choices(old)["advantage"] == chosen["advantage"]  # the old string override, converted
    unknown = {"advantage": {"name": "gone", "x": 1}}
    assert plugin_choices(unknown) == unknown


def _checkpoint(folder: Path, saved: dict) -> Path:
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(saved))
    return folder


def test_a_checkpoint_config_without_defaults_resumes(tmp_path):
    cfg = validate(BASE)
    saved = cfg.model_dump(mode="json")
    saved["advantage"] = {"name": "grpo"}  # as written before configs recorded the defaults
    saved["loss"]["policy"] = {"name": "ppo_clip", "clip_high": 0.2}  # a default set by hand
    saved["sampling"]["sampler"] = {"name": "uniform"}
    assert check_resume(cfg.model_dump(mode="json"), _checkpoint(tmp_path / "old", saved)) == []
    # a real change is still refused, named by what the recipe chose
    changed = validate(apply_overrides(BASE, ["advantage.epsilon=1e-4"])).model_dump(mode="json")
    with pytest.raises(ResumeConflict) as e:
        check_resume(changed, _checkpoint(tmp_path / "old2", saved))
    assert "  advantage.epsilon: (none) -> 0.0001\n" in str(e.value)
    # and a renamed plug-in is refused by its name alone, not by its defaults
    renamed = validate(apply_overrides(BASE, ["advantage.name=rloo"])).model_dump(mode="json")
    with pytest.raises(ResumeConflict) as e:
        check_resume(renamed, _checkpoint(tmp_path / "new", cfg.model_dump(mode="json")))
    assert "(advantage.name=grpo)" in str(e.value)
