"""Built-in plug-ins register by living in their seam's package; nothing else lists them."""

import subprocess
import sys
import textwrap

import pytest

from rlvr.registry import ADVANTAGE, SAMPLER, Registry, RegistryError


def _package(root, name, modules):
    """A package `name` under `root` whose __init__ holds a Registry walking the package itself."""
    pkg = root / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text(f"from rlvr.registry import Registry\nSEAM = Registry('demo', ({name!r},))\n")
    for mod, text in modules.items():
        (pkg / f"{mod}.py").write_text(textwrap.dedent(text))
    return pkg


@pytest.fixture
def on_path(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("demo_plugins")]:
        del sys.modules[name]


def test_a_module_dropped_into_the_package_registers_without_another_edit(on_path):
    _package(on_path, "demo_plugins", {
        "alpha": """
            from demo_plugins import SEAM

            @SEAM.register("alpha")
            def alpha(x, *, scale: float = 1.0):
                return scale * x
        """,
        "maths": "def helper():\n    return 1\n",  # registers nothing: simply imported
    })
    (on_path / "demo_plugins" / "sub").mkdir()
    (on_path / "demo_plugins" / "sub" / "__init__.py").write_text("")
    (on_path / "demo_plugins" / "sub" / "beta.py").write_text(
        "from demo_plugins import SEAM\n\n@SEAM.register('beta')\nclass Beta:\n    pass\n")
    import demo_plugins

    seam = demo_plugins.SEAM
    assert "demo_plugins.alpha" not in sys.modules  # importing the package imports none of its modules
    assert seam.get("alpha")(2) == 2
    assert seam.names() == ["alpha", "beta"]
    with pytest.raises(RegistryError) as e:
        seam.get("alpah")
    assert "unknown demo 'alpah'; built-ins are alpha, beta (did you mean 'alpha'?)" in str(e.value)


def test_a_broken_builtin_module_fails_the_lookup_and_is_retried(on_path):
    _package(on_path, "demo_plugins", {"bad": "raise RuntimeError('broken on purpose')\n"})
    import demo_plugins

    for _ in range(2):  # not marked loaded after a failure: the next look-up says it again
        with pytest.raises(RuntimeError, match="broken on purpose"):
            demo_plugins.SEAM.names()


def test_the_unknown_name_error_lists_the_real_builtins():
    with pytest.raises(RegistryError) as e:
        ADVANTAGE.get("sign")
    message = str(e.value)
    assert "unknown advantage 'sign'; built-ins are " in message
    for name in ("grpo", "dr_grpo", "rloo", "bnpo", "stratified", "delta_l", "spo"):
        assert name in message
    assert "spo" in SAMPLER.names() and "uniform" in SAMPLER.names()


def test_a_registry_without_packages_knows_only_what_registers_into_it():
    seam = Registry("empty")
    assert seam.names() == []
    seam.register("one")(len)
    assert seam.get("one") is len
    with pytest.raises(RegistryError, match="registered twice"):
        seam.register("one")(len)


def test_importing_rlvr_and_its_config_imports_no_builtin_plugin():
    code = ("import sys, rlvr.config, rlvr.registry\n"
            "loaded = [m for m in sys.modules if m.startswith(('rlvr.advantage', 'rlvr.sampling', "
            "'rlvr.learner.aggregation', 'rlvr.learner.policy_loss'))]\n"
            "assert not loaded, loaded\n")
    subprocess.run([sys.executable, "-c", code], check=True)
