"""`kill -9` of a multipart upload, then a re-run in a fresh process sends only the missing parts.

The object size and part size are parameters: ``SYNCENGINE_KILL_TEST_SIZE`` (default 256M)
and ``SYNCENGINE_KILL_TEST_PART_SIZE`` (default 8M); the S3 variant is meant to run with 1G.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import blake3
import pytest

from syncengine.settings import env_size
from syncengine.store import LocalStore, ObjectStore
from syncengine.store.s3 import S3Store
from syncengine.transfer import UploadJournal, plan_parts
from tests.integration.transfer_child import ChildSpec

REPO_ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20


def local_store(root: str) -> LocalStore:
    """Picklable store factory (used via functools.partial) for the LocalStore variant."""
    return LocalStore(root)


BACKENDS = ["local", "s3"]


@pytest.fixture(params=BACKENDS)
def store_setup(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Callable[[], ObjectStore], str]:
    """(picklable store factory, store id for the journal) of a fresh, empty store."""
    if request.param == "local":
        root = str(tmp_path / "store")
        return functools.partial(local_store, root), f"file://{root}"
    if request.param == "s3":
        # Explicit credentials and endpoint: the child rebuilds the store from the pickled
        # partial, independent of its environment.
        bucket = request.getfixturevalue("s3_bucket")
        server = request.getfixturevalue("s3_server")
        factory = functools.partial(
            S3Store,
            bucket,
            "kill-test",
            endpoint_url=server.endpoint,
            region=server.region,
            access_key_id=server.access_key,
            secret_access_key=server.secret_key,
        )
        return factory, f"s3://{bucket}/kill-test"
    raise AssertionError(f"unknown backend {request.param!r}")


def make_source(path: Path, size: int) -> str:
    """A file of ``size`` pseudo-random bytes; returns its BLAKE3 hex."""
    h = blake3.blake3()
    block = 64 * MiB
    with open(path, "wb") as f:
        for i, off in enumerate(range(0, size, block)):
            b = blake3.blake3(f"block {i}".encode()).digest(length=min(block, size - off))
            h.update(b)
            f.write(b)
    return str(h.hexdigest())


def run_child(spec: ChildSpec, spec_path: Path) -> subprocess.Popen[bytes]:
    spec_path.write_bytes(pickle.dumps(spec))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.transfer_child", str(spec_path)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def logged(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


async def stored_blake3(store: ObjectStore, key: str) -> str:
    h = blake3.blake3()
    async with store.open_read(key) as r:
        async for chunk in r:
            h.update(chunk)
    return str(h.hexdigest())


async def test_kill_9_midway_then_resume_sends_only_missing_parts(
    tmp_path: Path, store_setup: tuple[Callable[[], ObjectStore], str]
) -> None:
    size = env_size("SYNCENGINE_KILL_TEST_SIZE", 256 * MiB, minimum=1)
    part_size = env_size("SYNCENGINE_KILL_TEST_PART_SIZE", 8 * MiB, minimum=5 * MiB)
    factory, store_id = store_setup
    source = tmp_path / "source.bin"
    digest = make_source(source, size)
    nparts = len(plan_parts(size, part_size))
    assert nparts >= 8, "the test needs enough parts to kill the upload midway"
    journal_path = tmp_path / "state" / "transfers.sqlite"
    key = "objects/big.bin"
    spec = ChildSpec(
        store_factory=factory,
        store_id=store_id,
        source=str(source),
        key=key,
        part_size=part_size,
        journal=str(journal_path),
        log=str(tmp_path / "run1.log"),
        delay=0.15,
        max_requests=2,
    )

    # Run 1: killed once the journal holds at least three finished parts.
    child = run_child(spec, tmp_path / "spec1.pickle")
    async with UploadJournal(store_id, journal_path) as journal:
        deadline = time.monotonic() + 120
        while True:
            assert child.poll() is None, f"the child ended early: {child.communicate()}"
            recs = await journal.uploads(key) if journal_path.exists() else []
            if recs and len(recs[0].parts) >= 3:
                break
            assert time.monotonic() < deadline, "no progress from the child"
            await asyncio.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL

        # What survives the kill: the journal's parts, and the store's parts of that upload.
        [rec] = await journal.uploads(key)
    async with factory() as store:
        stored = {p.part_number: p for p in await store.list_parts(key, rec.upload_id)}
        assert [u.upload_id for u in await store.list_multipart_uploads()] == [rec.upload_id]
    plan = plan_parts(size, part_size)
    valid = {
        jp.number
        for jp in rec.parts
        if jp.number in stored
        and stored[jp.number].etag == jp.etag
        and stored[jp.number].size == jp.size == plan[jp.number - 1].length
    }
    assert len(valid) >= 3
    sent_before = {int(line.split()[1]) for line in logged(tmp_path / "run1.log") if line.startswith("part")}
    assert len(sent_before) < nparts, "the child finished before it was killed"

    # Run 2: a fresh process resumes the same upload and sends exactly the other parts.
    spec2 = ChildSpec(**{**spec.__dict__, "log": str(tmp_path / "run2.log"), "delay": 0.0, "max_requests": 4})
    child2 = run_child(spec2, tmp_path / "spec2.pickle")
    out, err = child2.communicate(timeout=600)
    assert child2.returncode == 0, err.decode()
    lines = logged(tmp_path / "run2.log")
    assert "create" not in lines  # resumed, not restarted
    sent = sorted(int(line.split()[1]) for line in lines if line.startswith("part"))
    assert sent == sorted(set(range(1, nparts + 1)) - valid)
    assert json.loads(out)["size"] == size

    async with factory() as store:
        assert await stored_blake3(store, key) == digest
        assert await store.list_multipart_uploads() == []
    async with UploadJournal(store_id, journal_path) as journal:
        assert await journal.uploads() == []
