"""Contract-suite fixtures: a `store` per backend, and a guard that fails any store I/O on the event loop.

Adding a backend means adding a name to `BACKENDS` and a branch to `store_factory`; the
tests do not change. A factory must be picklable: the multi-process tests rebuild the store
in each child from it.

Backends: ``local`` (a fresh directory) and ``s3`` (a fresh key prefix in one bucket of the
session's SeaweedFS server, tests/s3server.py). The S3 store takes its credentials from a
shared credentials file under the test's tmp dir (through ``AWS_SHARED_CREDENTIALS_FILE``
and a profile, which spawned children inherit), so the loop guard also checks that
credential resolution reads its files off the event loop.
"""

from __future__ import annotations

import asyncio
import builtins
import fcntl
import functools
import io
import os
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from syncengine.store import LocalStore, ObjectStore, S3Store

StoreFactory = Callable[[], ObjectStore]

BACKENDS = ["local", "s3"]
#: The profile the contract suite's S3 stores read from their credentials file.
S3_PROFILE = "syncengine-contract"


def s3_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, access_key: str, secret_key: str, profile: str
) -> None:
    """Point the AWS credential chain at a credentials file under ``tmp_path`` (and nothing
    else: no env keys, no instance metadata)."""
    aws = tmp_path / "aws"
    aws.mkdir(exist_ok=True)
    (aws / "credentials").write_text(
        f"[{profile}]\naws_access_key_id = {access_key}\naws_secret_access_key = {secret_key}\n"
    )
    (aws / "config").write_text(f"[profile {profile}]\nregion = us-east-1\n")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(aws / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(aws / "config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never probe 169.254.169.254


@pytest.fixture(scope="session")
def contract_bucket(s3_server: Any) -> str:
    """One bucket for the whole S3 contract run; each test gets its own prefix in it."""
    name: str = s3_server.new_bucket("contract")
    return name


@pytest.fixture(params=BACKENDS)
def store_factory(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> StoreFactory:
    """A picklable callable returning a new client of one fresh, empty store."""
    if request.param == "local":
        return functools.partial(LocalStore, tmp_path / "store")
    if request.param == "s3":
        srv = request.getfixturevalue("s3_server")
        bucket = request.getfixturevalue("contract_bucket")
        s3_environment(monkeypatch, tmp_path, srv.access_key, srv.secret_key, S3_PROFILE)
        return functools.partial(
            S3Store,
            bucket,
            prefix=f"t-{uuid.uuid4().hex[:16]}",
            endpoint_url=srv.endpoint,
            profile=S3_PROFILE,
        )
    raise AssertionError(f"unknown backend {request.param!r}")


@pytest.fixture
async def store(store_factory: StoreFactory) -> AsyncIterator[ObjectStore]:
    async with store_factory() as s:
        yield s


class BlockingOnLoop(AssertionError):
    """A file operation on the store's files ran on the event-loop thread."""


# Functions that block on file I/O. Path-taking ones are checked against the test's
# tmp dir; fd-taking ones by what the fd points at (/proc/self/fd).
_PATH_FUNCS = {
    os: [
        "open", "stat", "lstat", "scandir", "listdir", "mkdir", "rmdir", "unlink", "remove",
        "rename", "replace", "link", "truncate", "utime", "chmod",
    ],
}  # fmt: skip
_FD_FUNCS = {
    os: ["fsync", "fdatasync", "read", "write", "pread", "pwrite", "fstat", "ftruncate", "close"],
    fcntl: ["flock", "lockf", "fcntl"],
}
_OPEN_FUNCS = {builtins: ["open"], io: ["open"]}
_readlink = os.readlink


class LoopIOGuard:
    """Wraps blocking file functions; a call on a path under ``root`` made while an event
    loop runs in the calling thread is recorded and raises `BlockingOnLoop`."""

    def __init__(self, root: str) -> None:
        self.roots = {root, os.path.realpath(root)}
        self.violations: list[str] = []
        self.off_loop_calls = 0
        self._lock = threading.Lock()

    def _under_root(self, target: Any, dir_fd: Any = None) -> str | None:
        try:
            if isinstance(target, int):
                path = _readlink(f"/proc/self/fd/{target}")
            else:
                path = os.fsdecode(os.fspath(target))
                if not os.path.isabs(path):
                    base = _readlink(f"/proc/self/fd/{dir_fd}") if isinstance(dir_fd, int) else os.getcwd()
                    path = os.path.join(base, path)
        except (TypeError, OSError):
            return None
        under = any(path == r or path.startswith(r + os.sep) for r in self.roots)
        return path if under else None

    def _check(self, name: str, target: Any, dir_fd: Any) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            on_loop = False
        else:
            on_loop = True
        path = self._under_root(target, dir_fd)
        if path is None:
            return
        if not on_loop:
            with self._lock:
                self.off_loop_calls += 1
            return
        msg = f"{name}({path!r}) ran on the event-loop thread {threading.current_thread().name}"
        self.violations.append(msg)
        raise BlockingOnLoop(msg)

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            target = args[0] if args else kwargs.get("path", kwargs.get("file", kwargs.get("fd")))
            self._check(name, target, kwargs.get("dir_fd"))
            return fn(*args, **kwargs)

        return wrapper

    def install(self, mp: pytest.MonkeyPatch) -> None:
        for table in (_PATH_FUNCS, _FD_FUNCS, _OPEN_FUNCS):
            for mod, names in table.items():
                for name in names:
                    fn = getattr(mod, name)
                    mp.setattr(mod, name, self.wrap(f"{mod.__name__}.{name}", fn))


@pytest.fixture(autouse=True)
def loop_io_guard(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[LoopIOGuard]:
    """Every contract test runs under the guard; a blocking call on the loop fails the test."""
    guard = LoopIOGuard(str(tmp_path))
    guard.install(monkeypatch)
    yield guard
    assert not guard.violations, "blocking file I/O on the event loop:\n" + "\n".join(guard.violations)
