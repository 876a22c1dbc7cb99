"""The code style gates run in the suite, so CI refuses what `ruff` or `mypy` would flag."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "args",
    [("ruff", "check", "."), ("ruff", "format", "--check", "."), ("mypy",)],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_style_gate(args: tuple[str, ...], tmp_path: Path) -> None:
    if args[0] == "mypy":
        args = (*args, "--cache-dir", str(tmp_path / "mypy-cache"))
    r = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
