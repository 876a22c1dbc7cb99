"""Shared fixtures: both hashing implementations, private cache and state dirs per test, the S3 server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from syncengine.hashing import reference
from tests.s3server import S3ServerUnavailable, S3TestServer

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
    monkeypatch.setenv("SYNCENGINE_STATE_DIR", str(tmp_path_factory.mktemp("state")))
    yield d


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3TestServer]:
    """One SeaweedFS server for the whole run (started on first use, stopped at the end).

    Without the `weed` binary the S3 tests skip, except under CI=true, where they fail.
    """
    try:
        srv = S3TestServer().start()
    except S3ServerUnavailable as e:
        if IN_CI:
            pytest.fail(f"CI=true but the S3 test server cannot start: {e}")
        pytest.skip(str(e))
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def s3_bucket(s3_server: S3TestServer) -> str:
    """A fresh, empty bucket on the session's server."""
    return s3_server.new_bucket()
