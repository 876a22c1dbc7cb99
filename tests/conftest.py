"""Shared fixtures: both hashing implementations, and a private stat-cache dir per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from syncengine.hashing import reference

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def native_module() -> ModuleType:
    """The compiled core; in CI its absence fails the test instead of skipping it."""
    try:
        from syncengine import _native
    except ImportError as e:
        if IN_CI:
            pytest.fail(f"CI=true but the compiled core is missing: {e}")
        pytest.skip(f"compiled core not built: {e}")
    return _native


@pytest.fixture(params=["native", "python"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    """Each test using it runs over the C core and the pure-Python reference."""
    return native_module() if request.param == "native" else reference


@pytest.fixture(autouse=True)
def _private_cache_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("SYNCENGINE_CACHE_DIR", str(d))
    yield d
