from pathlib import Path

import pytest
import yaml

from rlvr.cli import main
from rlvr.config import ConfigError, apply_overrides, load_config, validate

BASE = {
    "model": {"path": "does/not/matter"},
    "data": {"train": {"path": "synthetic:succ"}},
    "reward": {"functions": [{"name": "exact"}]},
    "eval": {"at_start": False},
}


def problems(raw) -> list[str]:
    with pytest.raises(ConfigError) as e:
        validate(raw)
    return e.value.problems


def test_minimal_recipe_gets_documented_defaults():
    cfg = validate(BASE)
    assert cfg.advantage.name == "grpo"
    assert cfg.loss.aggregation.name == "token_mean"
    assert cfg.loss.kl.coef == 0.0
    assert cfg.sampling.samples_per_prompt == 8


def test_all_problems_reported_at_once_with_full_keys():
    raw = apply_overrides(BASE, ["learner.lr=-1", "learner.mini_batchs_per_step=2", "rollout.top_p=1.5",
                                 "sampling.prompts_per_step=abc", "loss.kl.estimator=k9"])
    got = problems(raw)
    assert len(got) == 5, got
    text = "\n".join(got)
    assert "learner.lr: expected greater than 0, got -1" in text
    assert "learner.mini_batchs_per_step: unknown key (did you mean 'mini_batches_per_step'?)" in text
    assert "rollout.top_p: expected less than or equal to 1, got 1.5" in text
    assert "sampling.prompts_per_step: expected a valid integer" in text
    assert "loss.kl.estimator: expected 'k1', 'abs', 'k2', 'k3' or 'k3+', got 'k9'" in text


def test_key_in_wrong_section_is_pointed_at():
    got = problems(apply_overrides(BASE, ["model.lr=1e-5"]))
    assert got == ["model.lr: unknown key (did you mean 'learner.lr'?)"]


def test_missing_required_sections():
    got = problems({"model": {"path": "x"}})
    assert "data: required key is missing" in got and "reward: required key is missing" in got


def test_plugin_kwargs_are_checked_against_the_signature():
    raw = apply_overrides(BASE, ["advantage.epsilon=tiny", "advantage.scale=2", "loss.policy.clip_lo=0.1",
                                 "loss.policy.dual_clip=0.5", "sampling.sampler.name=unifrom"])
    text = "\n".join(problems(raw))
    assert "advantage.epsilon: expected a valid number" in text
    assert "advantage.scale: unknown key for GRPO" in text
    assert "loss.policy.clip_lo: unknown key for ppo_clip (did you mean 'clip_low'?)" in text
    assert "loss.policy.dual_clip: expected greater than 1, got 0.5" in text
    assert "sampling.sampler.name: unknown sampler 'unifrom'" in text and "did you mean 'uniform'" in text


def test_reward_problems_are_reported(tmp_path):
    raw = apply_overrides(BASE, ["reward.functions=[{name: mth}]"])
    assert any("mth" in p and "math" in p for p in problems(raw))


def test_cross_field_checks():
    raw = apply_overrides(BASE, ["eval.at_start=true", "eval.samples=2", "eval.ks=[1,4]"])
    text = "\n".join(problems(raw))
    assert "data.eval: required" in text
    assert "eval.ks: every k must be <= eval.samples (2)" in text


def test_user_plugin_from_file_is_validated(tmp_path):
    (tmp_path / "my_adv.py").write_text(
        "import torch\nfrom rlvr.types import AdvantageOutput\n"
        "def centred(inp, *, scale: float = 1.0):\n    return AdvantageOutput(scale * (inp.rewards - inp.rewards.mean()))\n"
    )
    raw = apply_overrides(BASE, ["advantage={name: my_adv.py:centred, scale: 2.0}"])
    assert validate(raw, base_dir=tmp_path).advantage.kwargs == {"scale": 2.0}
    bad = apply_overrides(BASE, ["advantage={name: my_adv.py:centred, scael: 2.0}"])
    with pytest.raises(ConfigError) as e:
        validate(bad, base_dir=tmp_path)
    assert "advantage.scael: unknown key for centred (did you mean 'scale'?)" in e.value.problems


def test_overrides_parse_yaml_values_and_list_items():
    raw = apply_overrides(BASE, ["reward.functions.0.weight=0.5", "rollout.stop=[\"\\n\", \"##\"]", "run.name=x y"])
    assert raw["reward"]["functions"][0]["weight"] == 0.5
    assert raw["rollout"]["stop"] == ["\n", "##"]
    assert raw["run"]["name"] == "x y"
    with pytest.raises(ConfigError, match="reward.functions.3"):
        apply_overrides(BASE, ["reward.functions.3.weight=1"])


def test_cli_validate_and_show(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    # `config validate` checks that the model exists (BASE's placeholder does not): a tiny model to build
    recipe.write_text(yaml.safe_dump({**BASE, "model": {"path": str(tmp_path / "m"), "build_tiny": {}}}))
    assert main(["config", "validate", str(recipe)]) == 0
    assert main(["config", "show", str(recipe), "learner.lr=2e-5"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out.split("valid\n", 1)[1])
    assert shown["learner"]["lr"] == 2e-5 and shown["advantage"]["name"] == "grpo"
    assert main(["config", "validate", str(recipe), "learner.lr=0"]) == 2
    assert "learner.lr: expected greater than 0, got 0" in capsys.readouterr().err


def test_every_shipped_recipe_validates():
    root = Path(__file__).resolve().parents[3] / "recipes"
    recipes = sorted(root.rglob("*.yaml"))
    recipes = [r for r in recipes if "accelerate" not in r.parts]
    assert recipes
    for r in recipes:
        load_config(r)


def test_base_recipe_is_merged_under_the_recipe(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({**BASE, "learner": {"lr": 1e-4, "max_grad_norm": 0.5}}))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "r.yaml").write_text("base: ../base.yaml\nlearner: {lr: 2.0e-5}\nadvantage: {name: dr_grpo}\n")
    cfg = load_config(tmp_path / "sub" / "r.yaml")
    assert cfg.learner.lr == 2e-5 and cfg.learner.max_grad_norm == 0.5 and cfg.advantage.name == "dr_grpo"
    (tmp_path / "base.yaml").write_text("base: sub/r.yaml\n")
    with pytest.raises(ConfigError, match="include each other"):
        load_config(tmp_path / "sub" / "r.yaml")
