"""Every public function and method under rlvr/ has a docstring.

Public means: the name does not start with "_", and it is defined at module level or in a public class
(nested public classes included). Dunder methods, property setters/deleters and `@overload` stubs are exempt.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Paths (relative to the repository root) the check covers; a folder covers every module below it.
COVERED = ("rlvr",)

FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef


def _decorator_names(node: FunctionNode) -> set[str]:
    """Last dotted part of each decorator: `@x.setter` -> "setter", `@typing.overload` -> "overload"."""
    names = set()
    for deco in node.decorator_list:
        target = deco.func if isinstance(deco, ast.Call) else deco
        if isinstance(target, ast.Attribute):
            names.add(target.attr)
        elif isinstance(target, ast.Name):
            names.add(target.id)
    return names


def _exempt(node: FunctionNode) -> bool:
    if node.name.startswith("_"):  # private, and dunders
        return True
    return bool(_decorator_names(node) & {"setter", "deleter", "overload"})


def public_functions(tree: ast.Module) -> list[FunctionNode]:
    """Public functions of a module: module-level ones and methods of public classes, at any nesting of classes."""
    found: list[FunctionNode] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, FunctionNode) and not _exempt(node):
                found.append(node)
            elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                visit(node.body)

    visit(tree.body)
    return found


def covered_modules() -> list[Path]:
    """Python files under the covered paths, sorted."""
    files: set[Path] = set()
    for entry in COVERED:
        path = ROOT / entry
        assert path.exists(), f"covered path {entry} does not exist"
        files.update(path.rglob("*.py") if path.is_dir() else [path])
    return sorted(files)


def missing_docstrings() -> tuple[int, list[str]]:
    """(public functions seen, "path:line name" of each that has no docstring)."""
    total, missing = 0, []
    for path in covered_modules():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in public_functions(tree):
            total += 1
            if ast.get_docstring(node) is None:
                missing.append(f"{path.relative_to(ROOT).as_posix()}:{node.lineno} {node.name}")
    return total, missing


def test_public_functions_have_docstrings():
    total, missing = missing_docstrings()
    assert total > 0
    assert not missing, f"{len(missing)} of {total} public functions have no docstring:\n" + "\n".join(missing)


def test_walker_finds_and_exempts_the_right_nodes():
    source = '''
def documented():
    """Yes."""
def bare(): pass
def _private(): pass
class Public:
    def __init__(self): pass
    def method(self): pass
    @property
    def value(self):
        """The value."""
    @value.setter
    def value(self, v): pass
    @overload
    def over(self, x: int) -> int: ...
    class Inner:
        def deep(self): pass
class _Hidden:
    def method(self): pass
'''
    names = [(n.name, ast.get_docstring(n) is not None) for n in public_functions(ast.parse(source))]
    assert names == [("documented", True), ("bare", False), ("method", False), ("value", True), ("deep", False)]
