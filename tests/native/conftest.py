"""The sanitizer build of the C core, built once per test session for the tests that need it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[2]


class SanitizedBuild(NamedTuple):
    so: Path  # the extension built with SYNCENGINE_DEBUG_BUILD=1 (ASan + UBSan, assertions)
    runtime: str  # libasan to LD_PRELOAD into the Python that loads it


@pytest.fixture(scope="session")
def sanitized_native(tmp_path_factory: pytest.TempPathFactory) -> SanitizedBuild:
    runtime = subprocess.run(
        ["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True
    ).stdout.strip()
    if shutil.which("gcc") is None or not (os.path.isabs(runtime) and os.path.exists(runtime)):
        pytest.fail("gcc with AddressSanitizer (libasan) is required for the sanitized build tests")
    out = tmp_path_factory.mktemp("sanitized")
    build = subprocess.run(
        [
            sys.executable,
            "setup.py",
            "build_ext",
            "--build-lib",
            str(out / "lib"),
            "--build-temp",
            str(out / "tmp"),
        ],
        cwd=ROOT,
        env={**os.environ, "SYNCENGINE_DEBUG_BUILD": "1"},
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    return SanitizedBuild(next((out / "lib" / "syncengine").glob("_native*.so")), runtime)
