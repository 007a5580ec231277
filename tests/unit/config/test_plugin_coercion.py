"""Plug-in kwargs given as overrides reach the plug-in with their annotated types."""

from rlvr.config.load import checked_kwargs
from rlvr.registry import ADVANTAGE, build_plugin


def test_an_override_in_exponent_notation_reaches_the_estimator_as_a_float():
    # yaml.safe_load("1e-4") is the string '1e-4' (YAML 1.1 floats need a dot)
    grpo = ADVANTAGE.get("grpo")
    est = build_plugin(grpo, checked_kwargs("advantage", grpo, {"epsilon": "1e-4"})[0], {})
    assert isinstance(est.epsilon, float) and est.epsilon == 1e-4


def test_overrides_of_a_recipe_build_typed_plugins():
    from pathlib import Path

    from rlvr.config import load_config
    from rlvr.run.build import make_plugins

    recipe = Path(__file__).resolve().parents[3] / "recipes" / "quickstart.yaml"
    cfg = load_config(recipe, ["advantage.epsilon=1e-4", "loss.policy.clip_high=3e-1"])
    from rlvr.types import Prompt

    plugins = make_plugins(cfg, [Prompt('p#0', '1+2=', [1, 2], '3', {})])
    assert plugins["advantage"].epsilon == 1e-4
    assert plugins["policy_loss"].keywords["clip_high"] == 0.3
