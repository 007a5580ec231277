"""`rlvr serve`: the worker it runs, from flags or from a recipe (what `rlvr train` would start)."""

import pytest

from rlvr import cli

RECIPE = """
model: {path: models/policy}
data: {train: {path: "synthetic:succ"}}
reward: {functions: [{name: exact}]}
rollout:
  engine: vllm
  mode: disaggregated
  vllm: {dtype: float32, tensor_parallel_size: 2, max_model_len: 512, kv_cache_gb: 3.0}
run: {seed: 11}
eval: {at_start: false}
"""


def spec_of(*argv: str):
    return cli._serve_spec(cli._parser().parse_args(["serve", *argv]))


def test_a_recipe_gives_its_model_and_vllm_settings_and_flags_replace_them(tmp_path):
    (tmp_path / "models" / "policy").mkdir(parents=True)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    spec = spec_of(str(recipe), "rollout.vllm.max_model_len=1024", "--port", "9001", "--seed", "5")
    assert spec.model_path == str(tmp_path / "models" / "policy")  # relative to the recipe, as in train
    assert (spec.dtype, spec.tensor_parallel_size, spec.max_model_len, spec.kv_cache_gb) == ("float32", 2, 1024, 3.0)
    assert (spec.port, spec.host, spec.seed, spec.enforce_eager) == (9001, "0.0.0.0", 5, False)
    assert spec_of(str(recipe)).seed == 11  # the recipe's run.seed, as the first started worker gets it


def test_a_model_folder_takes_the_flags_or_vllm_defaults():
    spec = spec_of("Qwen/Qwen3-0.6B", "--tensor-parallel-size", "4", "--enforce-eager")
    assert (spec.model_path, spec.tensor_parallel_size, spec.enforce_eager, spec.dtype, spec.seed) == (
        "Qwen/Qwen3-0.6B", 4, True, "auto", 0)
    with pytest.raises(ValueError, match=r"overrides \(run.seed=1\) need a recipe"):
        spec_of("Qwen/Qwen3-0.6B", "run.seed=1")


def test_a_bad_override_names_the_key(tmp_path):
    (tmp_path / "models" / "policy").mkdir(parents=True)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    assert cli.main(["serve", str(recipe), "rollout.vllm.tensor_parallel_size=0"]) == 2
