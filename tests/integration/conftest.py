from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """Tiny models are built here once per session by the recipes' `model.build_tiny`."""
    return tmp_path_factory.mktemp("models")


def run_recipe(recipe: Path, out: Path, models: Path, *overrides: str):
    """Train `recipe` with its model and outputs redirected into test folders."""
    from rlvr.config import load_config
    from rlvr.loop import train

    name = Path(load_config(recipe).model.path).name
    cfg = load_config(recipe, [f"model.path={models / name}", f"run.output_dir={out}", *overrides])
    return train(cfg, recipe.parent)
