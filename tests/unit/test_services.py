"""Plug-ins reach the trainer only through the `Services` Protocol, and the trainer's class provides it."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from types import SimpleNamespace

from rlvr.run.services import TrainerServices
from rlvr.types import Services

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_FOLDERS = ("rlvr/sampling", "rlvr/advantage")
FORBIDDEN = {"learner", "engine", "rewards"}


def protocol_members() -> set[str]:
    """Names the Protocol declares (methods and properties), without the ones every class has."""
    return {name for name in vars(Services) if not name.startswith("_")}


def services_attributes(path: Path) -> list[tuple[int, str]]:
    """(line, attribute) of every `services.<attribute>` in a module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        (node.lineno, node.attr)
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "services"
    ]


def plugin_modules() -> list[Path]:
    """Every module of the plug-in folders."""
    return sorted(p for folder in PLUGIN_FOLDERS for p in (ROOT / folder).rglob("*.py"))


def test_plugins_never_reach_past_services():
    bad = []
    for path in plugin_modules():
        rel = path.relative_to(ROOT)
        bad += [f"{rel}:{line}: services.{attr}" for line, attr in services_attributes(path) if attr in FORBIDDEN]
        bad += [f"{rel}: mentions services.{name}" for name in FORBIDDEN if f"services.{name}" in path.read_text()]
    assert not bad, "plug-ins must go through rlvr.types.Services, not the trainer's parts:\n" + "\n".join(bad)


def test_plugins_use_only_what_the_protocol_declares():
    allowed = protocol_members()
    bad = [
        f"{path.relative_to(ROOT)}:{line}: services.{attr}"
        for path in plugin_modules()
        for line, attr in services_attributes(path)
        if attr not in allowed
    ]
    assert not bad, f"not in rlvr.types.Services ({sorted(allowed)}):\n" + "\n".join(bad)


def test_the_check_sees_a_plugin_hook():
    # guards the two tests above against passing because they look at nothing
    used = {attr for path in plugin_modules() for _, attr in services_attributes(path)}
    assert {"sample_prompts", "prompts", "logprobs", "grad_norms", "pad_id"} <= used


def test_trainer_services_satisfies_the_protocol():
    learner = SimpleNamespace(pad_id=7)
    services = TrainerServices(engine=None, learner=learner, rewards=None, prompts=[], params=None, rank=0, world=1)
    assert isinstance(services, Services)
    assert services.pad_id == 7 and services.prompts == []


def test_trainer_services_methods_accept_the_protocol_calls():
    # isinstance only checks that the names exist; the Protocol's arguments must also be accepted,
    # and anything the trainer's method adds must have a default
    for name, member in vars(Services).items():
        if name.startswith("_") or not inspect.isfunction(member):
            continue
        declared = list(inspect.signature(member).parameters.values())
        actual = list(inspect.signature(getattr(TrainerServices, name)).parameters.values())
        assert [p.name for p in actual[: len(declared)]] == [p.name for p in declared], name
        assert all(p.default is not inspect.Parameter.empty for p in actual[len(declared) :]), name
