"""Folders a `put` of a working folder usually logs by mistake, named in one warning each.

Only the top level of each logged folder is looked at (one listing each): that is where
`get` writes its downloads and where builds and environments leave their output when a
`put .` is run in a project folder. The folders are still logged; the warning says how to
leave them out. Version-control folders need no warning: the scan skips them (`VCS_DIRS`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from syncengine.scan import excluded

_DOWNLOAD_DIR = re.compile(r".+-v[0-9]+")

# Top-level folder name -> what makes it. `*.egg-info` is matched apart (its name varies).
_MADE_BY_TOOLS = {
    "build": "build output",
    "dist": "build output (packages)",
    "__pycache__": "Python's bytecode cache",
    "node_modules": "installed npm packages",
    **dict.fromkeys(
        (".hypothesis", ".mypy_cache", ".nox", ".pytest_cache", ".ruff_cache", ".tox"), "a tool's cache"
    ),
}


def suspect_folders(paths: Sequence[str], include: Sequence[str], exclude: Sequence[str]) -> list[str]:
    """One warning line per suspect folder the scan of ``paths`` logs; none when ``include``
    patterns are given (then the user chose the files)."""
    if include:
        return []
    found: list[str] = []
    for p in paths:
        try:
            names = sorted(os.listdir(p))
        except OSError:
            continue  # a file, or unreadable: the put reports what matters
        for name in names:
            folder = os.path.join(p, name)
            if not os.path.isdir(folder) or excluded(name, exclude, is_dir=True):
                continue
            if name == "artifacts":
                found += _downloads(folder, exclude)
                continue
            what = _what_made(name, folder)
            if what is not None:
                pattern = "*.egg-info/" if name.endswith(".egg-info") else f"{name}/"
                found.append(f"logged {folder}, {what}; --exclude '{pattern}' leaves it out")
    return found


def _what_made(name: str, folder: str) -> str | None:
    if name.endswith(".egg-info"):
        return "build output (packaging metadata)"
    if os.path.isfile(os.path.join(folder, "pyvenv.cfg")):
        return "a Python virtual environment"
    return _MADE_BY_TOOLS.get(name)


def _downloads(parent: str, exclude: Sequence[str]) -> list[str]:
    """``artifacts/<name>-v<N>``: where `get` writes by default (the W&B layout), so usually
    logged by a `put .` after a `get`."""
    try:
        names = sorted(n for n in os.listdir(parent) if _DOWNLOAD_DIR.fullmatch(n))
    except OSError:
        return []
    return [
        f"logged {os.path.join(parent, n)}, a folder `syncengine get` writes downloads to by "
        "default; --exclude 'artifacts/' leaves such folders out"
        for n in names
        if os.path.isdir(os.path.join(parent, n)) and not excluded(f"artifacts/{n}", exclude, is_dir=True)
    ]
