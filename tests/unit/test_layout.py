"""The code's shape, checked on every run: files stay short, and no module reaches into another's private names.

The layering itself (which package may import which) is import-linter's, run by ``make test`` from the
contracts in pyproject.toml.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(30)

PACKAGE = Path(__file__).resolve().parents[2] / "hfqueue"
MAX_LINES = 400


def modules() -> dict[Path, ast.Module]:
    return {path: ast.parse(path.read_text(), str(path)) for path in sorted(PACKAGE.rglob("*.py"))}


def private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def defined_privately(tree: ast.Module) -> set[str]:
    """The underscore names a module defines: functions, classes, assignments, and attributes it sets on objects."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
    return {n for n in names if private(n)}


def test_no_file_is_longer_than_the_limit() -> None:
    # given every module of the package
    # when their lines are counted
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines()))
            > MAX_LINES}
    # then none is over the limit (split one that grows past it by concept)
    assert long == {}


def test_no_module_uses_another_modules_private_names() -> None:
    # given the private names each module defines
    trees = modules()
    own = {path: defined_privately(tree) for path, tree in trees.items()}
    everyone = set().union(*own.values())
    # when each module's imports and attribute reads are looked at
    found = []
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hfqueue"):
                found += [f"{path.name}: from {node.module} import {a.name}" for a in node.names if private(a.name)]
            elif (isinstance(node, ast.Attribute) and private(node.attr) and node.attr in everyone
                  and node.attr not in own[path]
                  and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: .{node.attr}")
    # then none reaches into another module's private names: what others need is public
    assert found == []
