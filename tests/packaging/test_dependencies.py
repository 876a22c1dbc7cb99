"""The declared dependencies are exactly the third-party distributions the package imports.

An import that is not declared works in the dev venv (another package pulled it in) and
breaks for a user whose resolver picks a version without it; a declared dependency that is
never imported costs every user an install for nothing.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def imported_top_level_modules() -> set[str]:
    mods: set[str] = set()
    for f in (REPO_ROOT / "syncengine").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                mods |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods.add(node.module.split(".")[0])
    return {m for m in mods if m not in sys.stdlib_module_names and m != "syncengine"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_distributions() -> set[str]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    return {canonical(re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0]) for req in project["dependencies"]}


def test_declared_dependencies_are_exactly_the_imported_ones() -> None:
    by_module = importlib.metadata.packages_distributions()
    imported: set[str] = set()
    unknown = []
    for m in imported_top_level_modules():
        dists = by_module.get(m)
        if not dists:
            unknown.append(m)
        else:
            imported |= {canonical(d) for d in dists}
    assert not unknown, f"imported but installed by no distribution here: {unknown}"
    declared = declared_distributions()
    assert imported == declared, {
        "imported, not declared": sorted(imported - declared),
        "declared, never imported": sorted(declared - imported),
    }
