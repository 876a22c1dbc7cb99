"""The transfer layer against a real LocalStore: puts, multipart, resume, limits, downloads.

Stores here are a real `LocalStore` in a tmp dir, sometimes behind `Instrumented`, which
delegates every call to it and records calls and concurrency (and can fail on purpose after
N calls, the way a dropped connection would).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import fcntl
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import blake3
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncengine.errors import ConfigError, FileChangedError, ObjectChanged, PreconditionFailed
from syncengine.store import FileSlice, LocalStore, ObjectInfo, PartInfo, StoreCapabilities, UploadInfo
from syncengine.store.base import Body
from syncengine.transfer import (
    DEFAULT_PART_SIZE,
    TEMP_PREFIX,
    TransferInProgress,
    TransferLimits,
    UploadJournal,
    abort_stale_uploads,
    default_limits,
    download,
    multipart_threshold,
    part_size_for,
    plan_parts,
    upload,
)

MiB = 1 << 20
PART = 5 * MiB  # LocalStore's min_part_size (S3's)
THRESHOLD = 8 * MiB


class Injected(ConnectionError):
    """A failure injected by `Instrumented` (as if the connection dropped)."""


class Instrumented:
    """A real store behind a recorder: counts calls, tracks requests and bytes in flight.

    ``fail_parts_after=N`` makes upload_part calls after the first N raise `Injected`
    (without sending); ``fail_reads_after`` does the same for open_read. ``delay`` holds each
    data request open that long, so concurrency becomes visible.
    """

    def __init__(
        self,
        inner: LocalStore,
        *,
        fail_parts_after: int | None = None,
        fail_reads_after: int | None = None,
        delay: float = 0.0,
    ) -> None:
        self.inner = inner
        self.capabilities: StoreCapabilities = inner.capabilities
        self.fail_parts_after = fail_parts_after
        self.fail_reads_after = fail_reads_after
        self.delay = delay
        self.parts_sent: list[int] = []
        self.puts = 0
        self.ranges_read: list[tuple[int, int] | None] = []
        self.creates = 0
        self.before_read: Any = None  # async hook(call_index) run before a read
        self.after_part: Any = None  # async hook(part_number) run after a part was stored
        self._lock = threading.Lock()
        self.active = 0
        self.active_bytes = 0
        self.peak = 0
        self.peak_bytes = 0

    @contextlib.contextmanager
    def _track(self, nbytes: int) -> Iterator[None]:
        with self._lock:
            self.active += 1
            self.active_bytes += nbytes
            self.peak = max(self.peak, self.active)
            self.peak_bytes = max(self.peak_bytes, self.active_bytes)
        try:
            yield
        finally:
            with self._lock:
                self.active -= 1
                self.active_bytes -= nbytes

    async def get(
        self, key: str, range: tuple[int, int] | None = None, *, max_bytes: int | None = None
    ) -> bytes:
        return await self.inner.get(key, range, max_bytes=max_bytes)

    @contextlib.asynccontextmanager
    async def open_read(self, key: str, range: tuple[int, int] | None = None) -> AsyncIterator[Any]:
        with self._lock:
            n = len(self.ranges_read)
            if self.fail_reads_after is not None and n >= self.fail_reads_after:
                raise Injected(f"read {n + 1} refused")
            self.ranges_read.append(range)
        if self.before_read is not None:
            await self.before_read(n)
        nbytes = range[1] - range[0] if range else 0
        with self._track(nbytes):
            if self.delay:
                await asyncio.sleep(self.delay)
            async with self.inner.open_read(key, range) as r:
                yield r

    async def head(self, key: str) -> ObjectInfo:
        return await self.inner.head(key)

    async def put(
        self, key: str, body: Body, *, if_none_match: bool = False, if_match: str | None = None
    ) -> ObjectInfo:
        with self._lock:
            self.puts += 1
        with self._track(body.size if hasattr(body, "size") else memoryview(body).nbytes):
            if self.delay:
                await asyncio.sleep(self.delay)
            return await self.inner.put(key, body, if_none_match=if_none_match, if_match=if_match)

    def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        return self.inner.list(prefix)

    async def delete(self, keys: Sequence[str]) -> None:
        await self.inner.delete(keys)

    async def create_multipart(self, key: str) -> str:
        self.creates += 1
        return await self.inner.create_multipart(key)

    async def upload_part(self, key: str, upload_id: str, part_number: int, body: Body) -> str:
        with self._lock:
            if self.fail_parts_after is not None and len(self.parts_sent) >= self.fail_parts_after:
                raise Injected(f"part {part_number} refused")
            self.parts_sent.append(part_number)
        size = body.size if hasattr(body, "size") else memoryview(body).nbytes
        with self._track(size):
            if self.delay:
                await asyncio.sleep(self.delay)
            etag = await self.inner.upload_part(key, upload_id, part_number, body)
        if self.after_part is not None:
            await self.after_part(part_number)
        return etag

    async def complete_multipart(
        self,
        key: str,
        upload_id: str,
        parts: Sequence[tuple[int, str]],
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
    ) -> ObjectInfo:
        return await self.inner.complete_multipart(
            key, upload_id, parts, if_none_match=if_none_match, if_match=if_match
        )

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        await self.inner.abort_multipart(key, upload_id)

    async def list_parts(self, key: str, upload_id: str) -> builtins.list[PartInfo]:
        return await self.inner.list_parts(key, upload_id)

    async def list_multipart_uploads(self, prefix: str = "") -> builtins.list[UploadInfo]:
        return await self.inner.list_multipart_uploads(prefix)

    async def close(self) -> None:
        await self.inner.close()

    async def __aenter__(self) -> Instrumented:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


@pytest.fixture(autouse=True)
def _state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "state"
    monkeypatch.setenv("SYNCENGINE_STATE_DIR", str(d))
    return d


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[LocalStore]:
    async with LocalStore(tmp_path / "store") as s:
        yield s


@pytest.fixture
async def journal() -> AsyncIterator[UploadJournal]:
    async with UploadJournal("local:test") as j:
        yield j


def make_file(path: Path, size: int, seed: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blake3.blake3(seed.encode()).digest(length=size))
    return path


def b3(data: bytes) -> str:
    return str(blake3.blake3(data).hexdigest())


def limits(n: int = 4, inflight: int = 256 * MiB) -> TransferLimits:
    return TransferLimits(max_requests=n, max_inflight=inflight)


SIZE = 23 * MiB  # 5 parts of 5 MiB: 5, 5, 5, 5, 3


# ---- puts and multipart ------------------------------------------------------------------------


async def test_single_put_below_threshold(store: LocalStore, tmp_path: Path) -> None:
    s = Instrumented(store)
    data = os.urandom(3 * MiB)
    seen: list[int] = []
    info = await upload(s, "a/small", data, threshold=THRESHOLD, on_progress=seen.append)
    assert (s.puts, s.creates, s.parts_sent) == (1, 0, [])
    assert info.size == len(data)
    assert await store.get("a/small") == data
    assert seen == [len(data)]

    f = make_file(tmp_path / "f.bin", 7 * MiB)
    await upload(s, "a/file", FileSlice(str(f), 0, 7 * MiB), threshold=THRESHOLD)
    assert (s.puts, s.creates) == (2, 0)
    assert await store.get("a/file") == f.read_bytes()


async def test_multipart_above_threshold_file(
    store: LocalStore, tmp_path: Path, journal: UploadJournal
) -> None:
    s = Instrumented(store)
    f = make_file(tmp_path / "big.bin", SIZE + 100)
    body = FileSlice(str(f), 100, SIZE)  # a slice of a file, not from its start
    seen: list[int] = []
    info = await upload(
        s, "objs/big", body, threshold=THRESHOLD, part_size=PART, journal=journal, on_progress=seen.append
    )
    assert s.creates == 1 and s.puts == 0
    assert sorted(s.parts_sent) == [1, 2, 3, 4, 5]
    assert info.size == SIZE
    assert await store.get("objs/big") == f.read_bytes()[100:]
    assert seen == sorted(seen) and seen[-1] == SIZE
    assert await store.list_multipart_uploads() == []
    assert await journal.uploads() == []  # finished uploads leave no journal rows


async def test_multipart_in_memory_bodies(store: LocalStore, journal: UploadJournal) -> None:
    data = os.urandom(SIZE)
    for body in (data, bytearray(data), memoryview(data)):
        s = Instrumented(store)
        await upload(s, "objs/mem", body, threshold=THRESHOLD, part_size=PART, journal=journal)
        assert sorted(s.parts_sent) == [1, 2, 3, 4, 5]
        assert await store.get("objs/mem") == data


async def test_multipart_without_journal_aborts_on_failure(store: LocalStore) -> None:
    s = Instrumented(store, fail_parts_after=2)
    with pytest.raises(Injected):
        await upload(s, "k", os.urandom(SIZE), threshold=THRESHOLD, part_size=PART, limits=limits(1))
    assert await store.list_multipart_uploads() == []  # nobody could resume it: gone


async def test_if_none_match_on_existing_key_aborts(store: LocalStore, journal: UploadJournal) -> None:
    await store.put("k", b"already")
    with pytest.raises(PreconditionFailed):
        await upload(
            store,
            "k",
            os.urandom(SIZE),
            if_none_match=True,
            threshold=THRESHOLD,
            part_size=PART,
            journal=journal,
        )
    assert await store.get("k") == b"already"
    assert await store.list_multipart_uploads() == []
    assert await journal.uploads() == []
    with pytest.raises(ConfigError):
        await upload(store, "k", b"x", if_none_match=True, if_match="e")


async def test_file_changed_during_upload(store: LocalStore, tmp_path: Path, journal: UploadJournal) -> None:
    f = make_file(tmp_path / "big.bin", SIZE)
    s = Instrumented(store)

    async def grow(n: int) -> None:
        if n == 1:
            with open(f, "ab") as fh:
                fh.write(b"appended while uploading")

    s.after_part = grow
    with pytest.raises(FileChangedError):
        await upload(
            s,
            "k",
            FileSlice(str(f), 0, SIZE),
            threshold=THRESHOLD,
            part_size=PART,
            journal=journal,
            limits=limits(1),
        )
    assert await store.list_multipart_uploads() == []
    assert await journal.uploads() == []
    with pytest.raises(FileNotFoundError):
        await store.head("k")


# ---- part sizing ---------------------------------------------------------------------------------


def caps(min_part: int = PART, max_part: int = 5 << 30, max_parts: int = 10_000) -> StoreCapabilities:
    return StoreCapabilities(
        conditional_put=True,
        conditional_cas=True,
        conditional_across_hosts=True,
        ranged_get=True,
        max_put_size=5 << 30,
        multipart=True,
        min_part_size=min_part,
        max_part_size=max_part,
        max_parts=max_parts,
        key_prefix_overlap=True,
    )


def test_part_size_examples() -> None:
    c = caps()
    assert part_size_for(1, c) == DEFAULT_PART_SIZE
    assert part_size_for(1 << 30, c) == 16 * MiB
    assert part_size_for(1 << 40, c) == 105 * MiB  # 1 TiB / 10 000 parts, rounded up to a MiB
    assert part_size_for(100 * MiB, c, part_size=1) == PART  # raised to the store's minimum
    assert part_size_for(100 * MiB, c, part_size=7 * MiB + 1) == 8 * MiB
    with pytest.raises(ConfigError):
        part_size_for((5 << 30) * 10_000 + 1, c)
    assert [tuple(p) for p in plan_parts(0, 4)] == []


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=(5 << 30) * 10_000),
    min_part=st.sampled_from([0, 1, 5 * MiB, 8 * MiB + 3]),
    max_part=st.sampled_from([5 << 30, 64 * MiB, 64 * MiB + 5]),
    max_parts=st.sampled_from([1, 7, 1000, 10_000]),
    requested=st.none() | st.integers(min_value=1, max_value=1 << 32),
)
def test_part_size_property(
    size: int, min_part: int, max_part: int, max_parts: int, requested: int | None
) -> None:
    c = caps(min_part, max_part, max_parts)
    try:
        ps = part_size_for(size, c, requested)
    except ConfigError:
        assert -(-size // max_part) > max_parts  # only when even the largest parts cannot cover it
        return
    n = -(-size // ps)
    assert min_part <= ps <= max_part
    assert n <= max_parts
    assert ps >= min(requested or DEFAULT_PART_SIZE, max_part)
    assert ps % MiB == 0 or ps == max_part
    plan = plan_parts(size, ps)
    assert len(plan) == n
    assert sum(p.length for p in plan) == size
    assert all(p.length == ps for p in plan[:-1]) and 0 < plan[-1].length <= ps
    assert [p.number for p in plan] == list(range(1, n + 1))


# ---- resume -------------------------------------------------------------------------------------


async def fail_once(
    store: LocalStore, key: str, body: Body, journal: UploadJournal, fail_after: int
) -> tuple[str, set[int]]:
    """Upload until the store refuses a part; return (upload id, parts the journal holds)."""
    s = Instrumented(store, fail_parts_after=fail_after)
    with pytest.raises(Injected):
        await upload(s, key, body, threshold=THRESHOLD, part_size=PART, journal=journal, limits=limits(2))
    [rec] = await journal.uploads(key)
    return rec.upload_id, {p.number for p in rec.parts}


async def test_resume_sends_only_missing_parts(
    store: LocalStore, tmp_path: Path, journal: UploadJournal
) -> None:
    f = make_file(tmp_path / "big.bin", SIZE)
    body = FileSlice(str(f), 0, SIZE)
    upload_id, journaled = await fail_once(store, "k", body, journal, fail_after=3)
    assert len(journaled) >= 2
    [open_upload] = await store.list_multipart_uploads()
    assert open_upload.upload_id == upload_id
    # Parts the store has and the journal vouches for are skipped; everything else is sent.
    on_store = {p.part_number for p in await store.list_parts("k", upload_id)}
    expected = {1, 2, 3, 4, 5} - (journaled & on_store)

    s = Instrumented(store)
    seen: list[int] = []
    info = await upload(
        s, "k", body, threshold=THRESHOLD, part_size=PART, journal=journal, on_progress=seen.append
    )
    assert s.creates == 0  # the same upload, resumed
    assert sorted(s.parts_sent) == sorted(expected)
    assert seen[0] == sum(p.length for p in plan_parts(SIZE, PART) if p.number in journaled & on_store)
    assert seen[-1] == SIZE
    assert info.size == SIZE and await store.get("k") == f.read_bytes()
    assert await store.list_multipart_uploads() == [] and await journal.uploads() == []


async def test_resume_after_cancel(store: LocalStore, tmp_path: Path, journal: UploadJournal) -> None:
    f = make_file(tmp_path / "big.bin", SIZE)
    body = FileSlice(str(f), 0, SIZE)
    s = Instrumented(store, delay=0.05)
    task = asyncio.ensure_future(
        upload(s, "k", body, threshold=THRESHOLD, part_size=PART, journal=journal, limits=limits(1))
    )
    while True:
        await asyncio.sleep(0.01)
        recs = await journal.uploads("k")
        if recs and len(recs[0].parts) >= 2:
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [rec] = await journal.uploads("k")
    done = {p.number for p in rec.parts}
    on_store = {p.part_number for p in await store.list_parts("k", rec.upload_id)}

    s2 = Instrumented(store)
    await upload(s2, "k", body, threshold=THRESHOLD, part_size=PART, journal=journal)
    assert sorted(s2.parts_sent) == sorted({1, 2, 3, 4, 5} - (done & on_store))
    assert len(s2.parts_sent) <= 3
    assert await store.get("k") == f.read_bytes()


async def test_resume_resends_part_whose_etag_differs(
    store: LocalStore, tmp_path: Path, journal: UploadJournal
) -> None:
    f = make_file(tmp_path / "big.bin", SIZE)
    body = FileSlice(str(f), 0, SIZE)
    upload_id, journaled = await fail_once(store, "k", body, journal, fail_after=3)
    victim = min(journaled)
    # Someone replaced that part on the store: its ETag no longer matches the journal's.
    await store.upload_part("k", upload_id, victim, os.urandom(PART))
    on_store = {p.part_number for p in await store.list_parts("k", upload_id)}
    s = Instrumented(store)
    await upload(s, "k", body, threshold=THRESHOLD, part_size=PART, journal=journal)
    assert victim in s.parts_sent
    assert sorted(s.parts_sent) == sorted({1, 2, 3, 4, 5} - ((journaled - {victim}) & on_store))
    assert await store.get("k") == f.read_bytes()


async def test_resume_resends_part_whose_bytes_changed_in_place(
    store: LocalStore, tmp_path: Path, journal: UploadJournal
) -> None:
    """An edit that keeps size, mtime and inode fools the identity; the part digests catch it."""
    f = make_file(tmp_path / "big.bin", SIZE)
    body = FileSlice(str(f), 0, SIZE)
    _, journaled = await fail_once(store, "k", body, journal, fail_after=3)
    victim = min(journaled)
    st = f.stat()
    with open(f, "r+b") as fh:
        fh.seek((victim - 1) * PART + 10)
        fh.write(b"edited")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    s = Instrumented(store)
    await upload(s, "k", body, threshold=THRESHOLD, part_size=PART, journal=journal)
    assert victim in s.parts_sent
    assert await store.get("k") == f.read_bytes()


async def test_changed_source_starts_over(store: LocalStore, tmp_path: Path, journal: UploadJournal) -> None:
    f = make_file(tmp_path / "big.bin", SIZE)
    body = FileSlice(str(f), 0, SIZE)
    old_id, _ = await fail_once(store, "k", body, journal, fail_after=3)
    time.sleep(0.01)
    make_file(f, SIZE, seed="other content")  # new bytes, new mtime
    s = Instrumented(store)
    await upload(s, "k", body, threshold=THRESHOLD, part_size=PART, journal=journal)
    assert s.creates == 1 and sorted(s.parts_sent) == [1, 2, 3, 4, 5]
    assert await store.get("k") == f.read_bytes()
    assert await store.list_multipart_uploads() == []  # the stale upload was aborted
    assert await journal.uploads() == []
    assert old_id not in {u.upload_id for u in await store.list_multipart_uploads()}


async def test_changed_in_memory_source_starts_over(store: LocalStore, journal: UploadJournal) -> None:
    data = bytearray(os.urandom(SIZE))
    _, _ = await fail_once(store, "k", data, journal, fail_after=3)
    data[0] ^= 1
    s = Instrumented(store)
    await upload(s, "k", data, threshold=THRESHOLD, part_size=PART, journal=journal)
    assert s.creates == 1 and sorted(s.parts_sent) == [1, 2, 3, 4, 5]
    assert await store.get("k") == bytes(data)
    assert await store.list_multipart_uploads() == []


async def test_gone_upload_id_starts_over(store: LocalStore, tmp_path: Path, journal: UploadJournal) -> None:
    f = make_file(tmp_path / "big.bin", SIZE)
    body = FileSlice(str(f), 0, SIZE)
    old_id, _ = await fail_once(store, "k", body, journal, fail_after=3)
    await store.abort_multipart("k", old_id)  # e.g. a bucket lifecycle rule removed it
    s = Instrumented(store)
    await upload(s, "k", body, threshold=THRESHOLD, part_size=PART, journal=journal)
    assert s.creates == 1 and sorted(s.parts_sent) == [1, 2, 3, 4, 5]
    assert await store.get("k") == f.read_bytes()
    assert await journal.uploads() == []


async def test_upload_id_vanishing_midway_restarts_once(
    store: LocalStore, tmp_path: Path, journal: UploadJournal
) -> None:
    f = make_file(tmp_path / "big.bin", SIZE)
    s = Instrumented(store)
    aborted: list[str] = []

    async def abort_after_second(n: int) -> None:
        if len(s.parts_sent) == 2 and not aborted:
            [u] = await store.list_multipart_uploads()
            aborted.append(u.upload_id)
            await store.abort_multipart("k", u.upload_id)

    s.after_part = abort_after_second
    await upload(
        s,
        "k",
        FileSlice(str(f), 0, SIZE),
        threshold=THRESHOLD,
        part_size=PART,
        journal=journal,
        limits=limits(1),
    )
    assert s.creates == 2
    assert await store.get("k") == f.read_bytes()


async def test_journal_survives_corruption(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    async with UploadJournal("local:x", path) as j:
        assert await j.uploads() == []
    assert list(tmp_path.glob("j.sqlite.corrupt-*"))


# ---- abandoned uploads ------------------------------------------------------------------------------


async def test_abort_stale_uploads(store: LocalStore, tmp_path: Path, journal: UploadJournal) -> None:
    f = make_file(tmp_path / "big.bin", SIZE)
    a_id, _ = await fail_once(store, "a/x", FileSlice(str(f), 0, SIZE), journal, fail_after=2)
    b_id = await store.create_multipart("b/y")
    await asyncio.sleep(0.05)

    assert await abort_stale_uploads(store, older_than=3600) == []
    found = await abort_stale_uploads(store, older_than=0, dry_run=True)
    assert {(u.key, u.upload_id) for u in found} == {("a/x", a_id), ("b/y", b_id)}
    assert len(await store.list_multipart_uploads()) == 2  # dry run: nothing touched

    done = await abort_stale_uploads(store, older_than=0, prefix="a/", journal=journal)
    assert [(u.key, u.upload_id) for u in done] == [("a/x", a_id)]
    assert [u.upload_id for u in await store.list_multipart_uploads()] == [b_id]
    assert await journal.uploads() == []  # its journal row went too
    with pytest.raises(ConfigError):
        await abort_stale_uploads(store, older_than=-1)


# ---- limits ----------------------------------------------------------------------------------------


async def test_limits_bound_requests_and_bytes(store: LocalStore, tmp_path: Path) -> None:
    lim = TransferLimits(max_requests=3, max_inflight=16 * MiB)
    s = Instrumented(store, delay=0.02)
    files = [make_file(tmp_path / f"f{i}", SIZE if i % 2 else 2 * MiB, seed=str(i)) for i in range(8)]
    await asyncio.gather(
        *(
            upload(
                s,
                f"o/{i}",
                FileSlice(str(p), 0, p.stat().st_size),
                threshold=THRESHOLD,
                part_size=PART,
                limits=lim,
            )
            for i, p in enumerate(files)
        )
    )
    assert s.peak <= 3 and s.peak_bytes <= 16 * MiB
    assert s.peak >= 2  # and it did run in parallel
    assert lim.in_use == (0, 0) and lim.waiting == 0
    for i, p in enumerate(files):
        assert await store.get(f"o/{i}") == p.read_bytes()


async def test_request_larger_than_budget_runs_alone(store: LocalStore) -> None:
    lim = TransferLimits(max_requests=8, max_inflight=1 * MiB)
    s = Instrumented(store, delay=0.02)
    bodies = [os.urandom(3 * MiB) for _ in range(4)]
    await asyncio.gather(*(upload(s, f"o/{i}", b, limits=lim) for i, b in enumerate(bodies)))
    assert s.puts == 4 and s.peak == 1  # each exceeds the budget: one at a time, no deadlock
    assert lim.in_use == (0, 0)


async def test_limits_fifo_and_cancelled_waiter() -> None:
    lim = TransferLimits(max_requests=1, max_inflight=10)
    await lim.acquire(5)
    order: list[str] = []

    async def take(name: str, n: int) -> None:
        async with lim.slot(n):
            order.append(name)

    a = asyncio.ensure_future(take("a", 5))
    b = asyncio.ensure_future(take("b", 1))
    c = asyncio.ensure_future(take("c", 1))
    await asyncio.sleep(0.01)
    assert lim.waiting == 3
    b.cancel()
    await asyncio.sleep(0.01)
    assert lim.waiting == 2
    lim.release(5)
    await asyncio.gather(a, c)
    assert order == ["a", "c"] and lim.in_use == (0, 0)

    # A waiter cancelled after it was granted a slot hands the slot on.
    await lim.acquire(0)
    d = asyncio.ensure_future(lim.acquire(0))
    await asyncio.sleep(0.01)
    lim.release(0)  # grants d (its wake-up is scheduled) …
    d.cancel()  # … but d is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await d
    assert lim.in_use == (0, 0)


def test_limits_shared_by_event_loops_in_threads() -> None:
    lim = TransferLimits(max_requests=3, max_inflight=100)
    lock = threading.Lock()
    active = [0, 0]  # requests, bytes
    peak = [0, 0]
    done = []

    async def one(n: int) -> None:
        async with lim.slot(n):
            with lock:
                active[0] += 1
                active[1] += n
                peak[0] = max(peak[0], active[0])
                peak[1] = max(peak[1], active[1])
            await asyncio.sleep(0.002)
            with lock:
                active[0] -= 1
                active[1] -= n
                done.append(n)

    async def many(seed: int) -> None:
        await asyncio.gather(*(one((seed * 7 + i * 13) % 60) for i in range(60)))

    threads = [threading.Thread(target=asyncio.run, args=(many(t),)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(done) == 240
    assert peak[0] <= 3 and peak[1] <= 100
    assert peak[0] >= 2
    assert lim.in_use == (0, 0) and lim.waiting == 0


def test_uploads_from_two_event_loops_share_the_default_limits(tmp_path: Path) -> None:
    lim = default_limits()
    old = (lim.max_requests, lim.max_inflight)
    lim.configure(max_requests=2, max_inflight=64 * MiB)
    try:
        store = LocalStore(tmp_path / "store")
        s = Instrumented(store, delay=0.02)
        size = 11 * MiB  # 3 parts each
        files = [make_file(tmp_path / f"f{i}", size, seed=str(i)) for i in range(4)]

        async def up(i: int) -> None:
            p = files[i]
            await upload(s, f"o/{i}", FileSlice(str(p), 0, size), threshold=THRESHOLD, part_size=PART)

        async def two(i: int) -> None:
            await asyncio.gather(up(i), up(i + 2))

        threads = [threading.Thread(target=asyncio.run, args=(two(i),)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert s.peak <= 2 and len(s.parts_sent) == 12
        assert lim.in_use == (0, 0)
        for i, p in enumerate(files):
            assert asyncio.run(store.get(f"o/{i}")) == p.read_bytes()
        asyncio.run(store.close())
    finally:
        lim.configure(max_requests=old[0], max_inflight=old[1])


def test_env_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNCENGINE_MAX_REQUESTS", "3")
    monkeypatch.setenv("SYNCENGINE_MAX_INFLIGHT", "64M")
    monkeypatch.setenv("SYNCENGINE_MULTIPART_THRESHOLD", "8MiB")
    lim = TransferLimits()
    assert (lim.max_requests, lim.max_inflight) == (3, 64 * MiB)
    assert multipart_threshold() == 8 * MiB
    monkeypatch.setenv("SYNCENGINE_MAX_INFLIGHT", "1048576")
    assert TransferLimits().max_inflight == MiB
    for name, bad in [("SYNCENGINE_MAX_REQUESTS", "0"), ("SYNCENGINE_MAX_INFLIGHT", "lots")]:
        monkeypatch.setenv(name, bad)
        with pytest.raises(ConfigError, match=name):
            TransferLimits()
        monkeypatch.delenv(name)
    with pytest.raises(ConfigError):
        TransferLimits(max_requests=0)


# ---- downloads ------------------------------------------------------------------------------------


def leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith(TEMP_PREFIX))


async def test_download_in_ranges(store: LocalStore, tmp_path: Path) -> None:
    data = os.urandom(SIZE)
    info = await store.put("o/big", data)
    s = Instrumented(store)
    dest = tmp_path / "out" / "big.bin"
    seen: list[int] = []
    checked: list[bytes] = []
    got = await download(
        s,
        "o/big",
        dest,
        size=SIZE,
        etag=info.etag,
        part_size=4 * MiB,
        limits=limits(3),
        verify=lambda p: checked.append(p.read_bytes()),
        on_progress=seen.append,
    )
    assert got == dest and dest.read_bytes() == data
    assert checked == [data]
    assert sorted(s.ranges_read, key=lambda r: r or (0, 0)) == [
        (o, min(o + 4 * MiB, SIZE)) for o in range(0, SIZE, 4 * MiB)
    ]
    assert seen[-1] == SIZE and leftovers(dest.parent) == []

    await store.put("o/empty", b"")
    assert (await download(store, "o/empty", tmp_path / "out" / "empty")).read_bytes() == b""


async def test_download_resume_after_interruption(
    store: LocalStore, tmp_path: Path, journal: UploadJournal
) -> None:
    data = os.urandom(SIZE)
    await store.put("o/big", data)
    dest = tmp_path / "out" / "big.bin"
    s = Instrumented(store, fail_reads_after=3)
    with pytest.raises(Injected):
        await download(s, "o/big", dest, part_size=4 * MiB, limits=limits(1), journal=journal)
    assert not dest.exists()
    assert leftovers(dest.parent) == [TEMP_PREFIX + "big.bin"]  # kept for the resume
    first = set(s.ranges_read)
    assert len(first) == 3

    s2 = Instrumented(store)
    seen: list[int] = []
    await download(s2, "o/big", dest, part_size=4 * MiB, journal=journal, on_progress=seen.append)
    all_ranges = {(o, min(o + 4 * MiB, SIZE)) for o in range(0, SIZE, 4 * MiB)}
    assert set(s2.ranges_read) == all_ranges - first  # only the rest
    assert seen[0] == 12 * MiB
    assert dest.read_bytes() == data
    assert leftovers(dest.parent) == []
    assert await journal._find_download(str(dest)) is None


async def test_download_interrupted_without_journal_leaves_nothing(store: LocalStore, tmp_path: Path) -> None:
    await store.put("o/big", os.urandom(SIZE))
    dest = tmp_path / "out" / "big.bin"
    with pytest.raises(Injected):
        await download(Instrumented(store, fail_reads_after=2), "o/big", dest, part_size=4 * MiB)
    assert list(dest.parent.iterdir()) == []


async def test_download_verify_failure_leaves_nothing(
    store: LocalStore, tmp_path: Path, journal: UploadJournal
) -> None:
    data = os.urandom(SIZE)
    await store.put("o/big", data)
    out = tmp_path / "out"
    out.mkdir()
    (out / "big.bin").write_bytes(b"previous")

    def reject(p: Path) -> None:
        assert p.name.startswith(TEMP_PREFIX) and p.read_bytes() == data
        raise ValueError("digest mismatch")

    with pytest.raises(ValueError, match="digest mismatch"):
        await download(store, "o/big", out / "big.bin", verify=reject, part_size=4 * MiB, journal=journal)
    assert (out / "big.bin").read_bytes() == b"previous"  # the old file is untouched
    assert leftovers(out) == []
    assert await journal._find_download(str(out / "big.bin")) is None

    with pytest.raises(ValueError):
        await download(store, "o/big", out / "new.bin", verify=reject)
    assert sorted(p.name for p in out.iterdir()) == ["big.bin"]


async def test_download_pins_the_version(store: LocalStore, tmp_path: Path) -> None:
    old, new = os.urandom(SIZE), os.urandom(SIZE)
    info = await store.put("o/big", old)
    dest = tmp_path / "out" / "big.bin"
    with pytest.raises(ObjectChanged):
        await download(store, "o/big", dest, etag="not-the-etag")
    with pytest.raises(ObjectChanged):
        await download(store, "o/big", dest, size=SIZE + 1)

    # The object is replaced after two ranges: the download notices and starts over.
    s = Instrumented(store)

    async def replace(n: int) -> None:
        if n == 2:
            await store.put("o/big", new)

    s.before_read = replace
    await download(s, "o/big", dest, part_size=4 * MiB, limits=limits(1))
    assert dest.read_bytes() == new
    assert len(s.ranges_read) == 3 + 6  # 2 good + 1 that saw the change, then all 6 again
    assert leftovers(dest.parent) == []

    # Pinned to the old ETag, the same change is an error, not a silent switch.
    await store.put("o/big", old)
    s2 = Instrumented(store)
    s2.before_read = replace
    with pytest.raises(ObjectChanged):
        await download(
            s2, "o/big", tmp_path / "out2" / "b", etag=info.etag, part_size=4 * MiB, limits=limits(1)
        )
    assert list((tmp_path / "out2").iterdir()) == []


async def test_download_refuses_concurrent_download_into_same_dest(store: LocalStore, tmp_path: Path) -> None:
    await store.put("o/x", b"data")
    dest = tmp_path / "out" / "x"
    dest.parent.mkdir()
    temp = dest.parent / (TEMP_PREFIX + "x")
    fd = os.open(temp, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another download holds it
        with pytest.raises(TransferInProgress):
            await download(store, "o/x", dest)
    finally:
        os.close(fd)
    await download(store, "o/x", dest)
    assert dest.read_bytes() == b"data"


async def test_download_from_store_without_ranged_get(store: LocalStore, tmp_path: Path) -> None:
    data = os.urandom(SIZE)
    await store.put("o/big", data)
    await store.put("o/empty", b"")
    s = Instrumented(store)
    s.capabilities = msgspec.structs.replace(store.capabilities, ranged_get=False)
    assert (await download(s, "o/big", tmp_path / "big", part_size=4 * MiB)).read_bytes() == data
    assert s.ranges_read == [None]  # one whole-object read
    assert (await download(s, "o/empty", tmp_path / "empty")).read_bytes() == b""


async def test_cancelled_download_resumes(store: LocalStore, tmp_path: Path, journal: UploadJournal) -> None:
    data = os.urandom(SIZE)
    await store.put("o/big", data)
    dest = tmp_path / "out" / "big.bin"
    s = Instrumented(store, delay=0.05)
    task = asyncio.ensure_future(
        download(s, "o/big", dest, part_size=4 * MiB, limits=limits(1), journal=journal)
    )
    while True:
        await asyncio.sleep(0.01)
        rec = await journal._find_download(str(dest))
        if rec is not None and len(rec.ranges) >= 2:
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    rec = await journal._find_download(str(dest))
    assert rec is not None and not dest.exists()
    s2 = Instrumented(store)
    await download(s2, "o/big", dest, part_size=4 * MiB, journal=journal)
    all_ranges = {(o, min(o + 4 * MiB, SIZE)) for o in range(0, SIZE, 4 * MiB)}
    assert set(s2.ranges_read) == all_ranges - set(rec.ranges)
    assert dest.read_bytes() == data and leftovers(dest.parent) == []


class Generated:
    """A BodySource that is neither bytes nor a FileSlice: it cannot be cut into parts."""

    def __init__(self, size: int) -> None:
        self.size = size

    def chunks(self) -> Iterator[bytes]:
        left = self.size
        while left:
            n = min(left, MiB)
            yield b"g" * n
            left -= n


async def test_other_body_sources_go_as_one_put(store: LocalStore) -> None:
    s = Instrumented(store)
    await upload(s, "o/gen", Generated(SIZE), threshold=THRESHOLD, part_size=PART)
    assert (s.puts, s.creates) == (1, 0)
    assert await store.get("o/gen") == b"g" * SIZE
    s.capabilities = msgspec.structs.replace(store.capabilities, max_put_size=SIZE - 1)
    with pytest.raises(ConfigError, match="FileSlice or bytes"):
        await upload(s, "o/gen", Generated(SIZE), threshold=THRESHOLD)


async def test_download_restarts_when_the_store_reports_a_change(store: LocalStore, tmp_path: Path) -> None:
    """A store that notices the change itself (S3 resuming a read with If-Match) raises
    ObjectChanged from the read; the download starts over as if it had seen a new ETag."""
    data = os.urandom(SIZE)
    await store.put("o/big", data)
    s = Instrumented(store)

    async def once(n: int) -> None:
        if n == 1:
            raise ObjectChanged("o/big was replaced while being read")

    s.before_read = once
    dest = tmp_path / "big"
    await download(s, "o/big", dest, part_size=4 * MiB, limits=limits(1))
    assert dest.read_bytes() == data
    assert len(s.ranges_read) == 2 + 6
