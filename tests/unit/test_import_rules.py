"""Which part of rlvr may import which: the picture in docs/architecture.md, enforced.

Every module under rlvr/ is parsed with `ast`; every import counts, at module level or inside a
function (a lazy import is still a dependency) or under `if TYPE_CHECKING:` (a stage that needs
another stage's type finds it in rlvr/types.py instead). Each `rlvr.X...` import is mapped to the
part that holds X and checked against ALLOWED. Heavy third-party libraries are checked against
HEAVY_HOMES the same way.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "rlvr"
DOC = ROOT / "docs" / "architecture.md"
DOC_HEADING = "### Who may import whom"

STAGES = ("sampling", "rollout", "reward", "advantage", "buffer", "learner")

# part -> the other parts it may import (a part may always import itself). A part is a top-level
# module or subpackage of rlvr, except that rlvr/eval/standalone.py (the `rlvr eval` command) is an
# entry point of its own: it builds a model through set-up, while set-up's step runs evaluate.py.
# metrics/ holds measures with no model or stage in them (statistics, pass@k, diversity), so the
# stages may use it; buffer/ knows only the records of types.py.
# docs/architecture.md holds the same table; test_doc_table_matches keeps the two equal.
ALLOWED: dict[str, frozenset[str]] = {
    "__init__": frozenset(),
    "__main__": frozenset({"cli"}),
    "cli": frozenset({"loop", "run", "eval.standalone", "eval", "config", "data", "metrics", "registry",
                      "types", "errors", "rollout"}),  # rollout: `rlvr serve` starts a rollout worker
    # the loop names the stages through run/step.py; it imports no stage itself
    "loop": frozenset({"run", "config"}),
    "eval.standalone": frozenset({"run", "eval", "config", "rollout", "metrics", "types", "errors"}),
    "run": frozenset({"eval", "config", "data", "models", "metrics", *STAGES, "env", "registry", "types",
                      "errors"}),
    "eval": frozenset({"rollout", "reward", "metrics", "types", "errors"}),
    # stage 1 of a multi-turn run: plays episodes through any engine's generate
    "env": frozenset({"rollout", "data", "processes", "registry", "types", "errors"}),  # data: a collection's JSON-lines reader
    # config asks the learner which strategy a launch will run (plug-ins that need whole gradients)
    "config": frozenset({"data", "models", "reward", "learner", "registry", "types", "errors"}),
    # SPO's sampler draws by the success estimates the SPO estimator's tracker keeps.
    "sampling": frozenset({"advantage", "metrics", "registry", "types", "errors"}),
    "rollout": frozenset({"metrics", "types", "errors"}),
    "reward": frozenset({"metrics", "processes", "registry", "types", "errors"}),
    "advantage": frozenset({"metrics", "registry", "types", "errors"}),
    "buffer": frozenset({"types"}),
    "learner": frozenset({"buffer", "metrics", "registry", "types", "errors"}),
    "data": frozenset({"types", "errors"}),
    "models": frozenset(),
    "metrics": frozenset({"types", "errors"}),
    "registry": frozenset({"errors"}),
    "processes": frozenset(),
    "types": frozenset(),
    "errors": frozenset(),
}

# Imports that break a rule above and are waiting for a fix: (file, imported module). Each entry
# is a debt, not a permission; remove it together with the import.
KNOWN_EXCEPTIONS: frozenset[tuple[str, str]] = frozenset()

# Heavy third-party libraries and the only places that may import them (a path under rlvr/, a
# folder when it ends in "/"). torch.distributed also counts when used as `torch.distributed.x`.
HEAVY_HOMES: dict[str, tuple[str, ...]] = {
    "vllm": ("rollout/vllm.py", "rollout/transfer.py"),
    "deepspeed": ("learner/",),
    "peft": ("learner/lora.py",),
    "transformers": ("models/", "rollout/", "learner/", "run/", "config/preflight.py"),
    "accelerate": ("learner/", "rollout/", "run/", "eval/", "loop.py"),
    "torch.distributed": ("learner/", "rollout/", "run/", "eval/", "loop.py"),
    "datasets": ("data/",),
    "reasoning_gym": ("data/reasoning_gym.py", "reward/reasoning_gym.py"),
    "math_verify": ("reward/",),
    "matplotlib": ("metrics/plot.py",),
    "wandb": ("metrics/",),
    "torch.utils.tensorboard": ("metrics/",),
}


def module_name(path: Path) -> str:
    """Dotted module name of a file under rlvr/ (a package's __init__.py is the package)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def part_of(module: str) -> str | None:
    """The part holding `module` ('rlvr.eval.standalone' -> 'eval.standalone', 'rlvr.run.build' ->
    'run', 'rlvr' -> '__init__'), by the longest matching name in ALLOWED; None if none matches."""
    if module == "rlvr":
        return "__init__"
    inner = module.removeprefix("rlvr.")
    matches = [p for p in ALLOWED if inner == p or inner.startswith(p + ".")]
    return max(matches, key=len) if matches else None


def is_module(dotted: str) -> bool:
    """Whether `dotted` (rlvr.x.y) names a module or package in the source tree."""
    base = ROOT.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in the file, at any depth. `from a import b` gives a.b when
    that is a module, else a; relative imports are resolved against the file's package."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.append((node.lineno, full if base.startswith("rlvr") and is_module(full) else base))
                if not base.startswith("rlvr"):
                    found.append((node.lineno, full))
    return sorted(set(found))


def distributed_attributes(path: Path) -> list[int]:
    """Lines that use `torch.distributed` as an attribute (no import statement needed for that)."""
    return [node.lineno for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Attribute) and node.attr == "distributed"
            and isinstance(node.value, ast.Name) and node.value.id == "torch"]


def sources() -> list[Path]:
    """Every Python file of the package."""
    return sorted(PACKAGE.rglob("*.py"))


def rel(path: Path) -> str:
    """Path as the failure messages print it: rlvr/a/b.py."""
    return path.relative_to(ROOT).as_posix()


def test_every_module_belongs_to_a_part():
    loose = [rel(p) for p in sources() if part_of(module_name(p)) is None]
    assert not loose, f"modules in no part (add them to ALLOWED and docs/architecture.md): {loose}"


def test_imports_follow_the_allowed_table():
    offences = []
    for path in sources():
        part = part_of(module_name(path))
        for line, target in imports(path):
            if target != "rlvr" and not target.startswith("rlvr."):
                continue
            other = part_of(target)
            if (rel(path), target) in KNOWN_EXCEPTIONS:
                continue
            if other is None or (other != part and other not in ALLOWED.get(part, frozenset())):
                may = ", ".join(sorted(ALLOWED.get(part, frozenset()))) or "nothing"
                offences.append(f"{rel(path)}:{line} imports {target} (part {part} may import: {may})")
    assert not offences, "imports the architecture forbids:\n" + "\n".join(offences)


def test_heavy_libraries_stay_home():
    offences = []
    for path in sources():
        inside = rel(path).removeprefix("rlvr/")
        used = [(line, lib) for line, target in imports(path) for lib in HEAVY_HOMES
                if target == lib or target.startswith(lib + ".")]
        used += [(line, "torch.distributed") for line in distributed_attributes(path)]
        for line, lib in sorted(set(used)):
            homes = HEAVY_HOMES[lib]
            if not any(inside == h or (h.endswith("/") and inside.startswith(h)) for h in homes):
                offences.append(f"{rel(path)}:{line} uses {lib} (only in: {', '.join('rlvr/' + h for h in homes)})")
    assert not offences, "heavy libraries outside their homes:\n" + "\n".join(offences)


def test_table_keeps_the_rules():
    """The table itself must not drift from the rules it exists for."""
    assert {p for p, may in ALLOWED.items() if "loop" in may} == {"cli"}
    assert {p for p, may in ALLOWED.items() if "cli" in may} == {"__main__"}
    for stage in STAGES:
        assert not ALLOWED[stage] & {"run", "loop", "cli", "config", "eval", "eval.standalone"}, stage
    assert not ALLOWED["advantage"] & {"sampling", "learner", "rollout", "reward"}
    assert not ALLOWED["reward"] & {"learner", "rollout", "models"}
    assert "rollout" not in ALLOWED["learner"]
    assert "learner" not in ALLOWED["rollout"]
    assert not ALLOWED["sampling"] & {"learner", "rollout", "reward"}
    assert ALLOWED["buffer"] == {"types"}
    for lib in ("transformers", "accelerate", "torch.distributed", "vllm", "deepspeed"):
        assert not any(h.startswith(("advantage/", "reward/", "sampling/", "buffer/")) for h in HEAVY_HOMES[lib])


def doc_table() -> dict[str, frozenset[str]]:
    """The table under the doc's DOC_HEADING, as {part: parts it may import}; its rows read
    "| `part` | `a`, `b` | why |" (the first column's name, the second column's names)."""
    lines = DOC.read_text().split(DOC_HEADING + "\n", 1)[1].splitlines()
    end = next((i for i, line in enumerate(lines) if line.startswith("#")), len(lines))
    rows = [line for line in lines[:end] if line.startswith("| `")]
    table = {}
    for row in rows:
        cells = row.split("|")
        table[cells[1].strip().strip("`")] = frozenset(re.findall(r"`([\w.]+)`", cells[2]))
    return table


def test_doc_table_matches():
    doc = doc_table()
    missing = sorted(set(ALLOWED) - set(doc))
    assert not missing, f"parts missing from docs/architecture.md's import table: {missing}"
    differ = {p: (sorted(doc[p]), sorted(ALLOWED[p])) for p in ALLOWED if doc[p] != ALLOWED[p]}
    assert not differ, f"docs/architecture.md table differs from ALLOWED (doc, test): {differ}"
