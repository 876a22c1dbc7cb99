"""The compiled core is the one in use, and the switch to the reference works."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import IN_CI, native_module


def _implementation(env: dict[str, str]) -> str:
    code = "import syncengine; print(syncengine.IMPLEMENTATION)"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_native_is_selected_when_built() -> None:
    native_module()
    env = {k: v for k, v in os.environ.items() if k != "SYNCENGINE_NO_EXTENSIONS"}
    assert _implementation(env) == "native"


def test_no_extensions_env_selects_reference() -> None:
    assert _implementation({**os.environ, "SYNCENGINE_NO_EXTENSIONS": "1"}) == "python"


def test_ci_refuses_silent_fallback() -> None:
    # Hide the extension by running from a directory where `syncengine` resolves to the sources
    # without a built `_native`; under CI=true importing must fail loudly.
    src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'syncengine._native': raise ImportError('blocked for the test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import syncengine\n"
    )
    env = {**os.environ, "CI": "true", "PYTHONPATH": src}
    env.pop("SYNCENGINE_NO_EXTENSIONS", None)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode != 0
    assert "compiled core syncengine._native is missing" in r.stderr
    env["CI"] = "false"
    r = subprocess.run(
        [sys.executable, "-c", code + "print(syncengine.IMPLEMENTATION)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert r.stdout.strip() == "python"
    assert IN_CI in {True, False}
