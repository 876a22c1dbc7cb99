"""The ObjectStore contract: every backend in `conftest.BACKENDS` must pass all of it.

Tests use only the protocol (and `store.capabilities`), never a backend's internals; the
autouse `loop_io_guard` fails any test during which store file I/O ran on the event loop.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

from syncengine.errors import (
    BodySizeMismatch,
    ConfigError,
    InvalidKey,
    InvalidPart,
    ObjectNotFound,
    PreconditionFailed,
    StoreClosed,
    SyncEngineError,
    UploadNotFound,
)
from syncengine.store import FileSlice, ObjectInfo, ObjectStore
from syncengine.store.base import HashedParts

from . import store_workers
from .conftest import BlockingOnLoop, LoopIOGuard, StoreFactory

SPAWN = multiprocessing.get_context("spawn")
#: A safety net so a hung child fails the test instead of hanging the run (not a speed check).
CHILD_TIMEOUT = 300.0


async def keys_of(store: ObjectStore, prefix: str = "") -> list[str]:
    return [info.key async for info in store.list(prefix)]


async def put_all(store: ObjectStore, items: dict[str, bytes], concurrency: int = 32) -> None:
    sem = asyncio.Semaphore(concurrency)

    async def one(k: str, v: bytes) -> None:
        async with sem:
            await store.put(k, v)

    await asyncio.gather(*(one(k, v) for k, v in items.items()))


async def run_children(procs: list[multiprocessing.process.BaseProcess]) -> list[int | None]:
    """Start, wait for and return the exit codes of child processes (in a worker thread)."""

    def run() -> list[int | None]:
        for p in procs:
            p.start()
        for p in procs:
            p.join(CHILD_TIMEOUT)
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        return [p.exitcode for p in procs]

    return await asyncio.to_thread(run)


# ---- get / put / head --------------------------------------------------------------------


async def test_put_get_head_round_trip(store: ObjectStore) -> None:
    info = await store.put("a/b/c.bin", b"hello world")
    assert (info.key, info.size) == ("a/b/c.bin", 11)
    assert isinstance(info.etag, str) and info.etag
    assert await store.get("a/b/c.bin") == b"hello world"
    head = await store.head("a/b/c.bin")
    assert (head.key, head.size, head.etag) == ("a/b/c.bin", 11, info.etag)
    assert head.mtime > 0


async def test_overwrite_replaces_content_and_etag(store: ObjectStore) -> None:
    first = await store.put("k", b"one")
    second = await store.put("k", b"two, longer")
    assert await store.get("k") == b"two, longer"
    assert second.etag != first.etag
    assert (await store.head("k")).etag == second.etag


async def test_empty_object(store: ObjectStore) -> None:
    info = await store.put("empty", b"")
    assert info.size == 0
    assert await store.get("empty") == b""
    assert await store.get("empty", range=(0, 10)) == b""
    assert (await store.head("empty")).size == 0


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "file_slice", "source", "hashed_parts"])
async def test_body_kinds(store: ObjectStore, tmp_path: Path, kind: str) -> None:
    data = bytes(range(256)) * 1000
    body: object
    if kind == "bytes":
        body = data
    elif kind == "bytearray":
        body = bytearray(data)
    elif kind == "memoryview":
        body = memoryview(b"xx" + data + b"yy")[2:-2]
    elif kind == "file_slice":
        src = tmp_path / "src.bin"
        await asyncio.to_thread(src.write_bytes, b"HEAD" + data + b"TAIL")
        body = FileSlice(str(src), offset=4, length=len(data), chunk_size=4096)
    elif kind == "hashed_parts":
        body = HashedParts([data[:1000], b"", data[1000:]], blake3.blake3(data).digest())
    else:

        class Source:
            size = len(data)

            def chunks(self) -> Iterator[bytes]:
                for i in range(0, len(data), 7000):
                    yield data[i : i + 7000]

        body = Source()
    info = await store.put(f"body/{kind}", body)  # type: ignore[arg-type]
    assert info.size == len(data)
    assert await store.get(f"body/{kind}") == data


async def test_same_body_source_can_be_sent_twice(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    await asyncio.to_thread(src.write_bytes, b"0123456789")
    body = FileSlice(str(src), offset=2, length=5)
    a = await store.put("x1", body)
    b = await store.put("x2", body)  # rewindable: a retry re-reads from the start
    assert await store.get("x1") == await store.get("x2") == b"23456"
    assert a.size == b.size == 5


async def test_body_shorter_than_declared_writes_nothing(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "short.bin"
    await asyncio.to_thread(src.write_bytes, b"abc")
    await store.put("k", b"old")
    with pytest.raises(BodySizeMismatch):
        await store.put("k", FileSlice(str(src), offset=0, length=10))
    with pytest.raises(BodySizeMismatch):
        await store.put("new", FileSlice(str(src), offset=0, length=10))
    assert await store.get("k") == b"old"
    assert await keys_of(store) == ["k"]


async def test_missing_object_raises_object_not_found(store: ObjectStore) -> None:
    await store.put("present/x", b"1")
    for op in (store.get, store.head):
        for key in ("absent", "present/y", "present"):  # "present" is only a prefix
            with pytest.raises(ObjectNotFound, match=key) as ei:
                await op(key)
            assert isinstance(ei.value, FileNotFoundError)
            assert isinstance(ei.value, SyncEngineError)
    with pytest.raises(ObjectNotFound):
        async with store.open_read("absent"):
            pass


async def test_ranged_get(store: ObjectStore) -> None:
    data = bytes(range(100))
    await store.put("r", data)
    assert await store.get("r", range=(0, 100)) == data
    assert await store.get("r", range=(10, 20)) == data[10:20]
    assert await store.get("r", range=(90, 1000)) == data[90:]  # past the end: what exists
    assert await store.get("r", range=(99, 100)) == data[99:]
    assert await store.get("r", range=(100, 200)) == b""
    assert await store.get("r", range=(500, 600)) == b""
    assert await store.get("r", range=(5, 5)) == b""
    for bad in [(5, 4), (-1, 3)]:
        with pytest.raises(ConfigError):
            await store.get("r", range=bad)
    with pytest.raises(ObjectNotFound):
        await store.get("missing", range=(0, 1))


async def test_open_read_streams_and_reports_the_etag(store: ObjectStore) -> None:
    data = os.urandom(9 << 20)
    put = await store.put("big", data)
    async with store.open_read("big") as r:
        assert r.info == ObjectInfo("big", len(data), put.etag, r.info.mtime)
        chunks = [c async for c in r]
    assert len(chunks) > 1 and b"".join(chunks) == data
    async with store.open_read("big", range=(100, 5000)) as r:
        assert r.info.size == len(data)  # info describes the whole object
        assert await r.read() == data[100:5000]
        assert await r.read() == b""
    async with store.open_read("big", range=(len(data) - 3, len(data) + 10)) as r:
        assert b"".join([c async for c in r]) == data[-3:]


async def test_open_read_pins_the_version_it_opened(store: ObjectStore) -> None:
    await store.put("k", b"A" * 1000)
    async with store.open_read("k") as r:
        await store.put("k", b"B" * 1000)
        assert await r.read() == b"A" * 1000
    assert await store.get("k") == b"B" * 1000


async def test_write_in_flight_is_invisible(store: ObjectStore) -> None:
    written, release = threading.Event(), threading.Event()

    class GatedBody:
        size = 2 << 20

        def chunks(self) -> Iterator[bytes]:
            yield b"a" * (1 << 20)
            written.set()  # resumed: the first half is in the store's hands
            release.wait()
            yield b"b" * (1 << 20)

    await store.put("other", b"o")
    task = asyncio.create_task(store.put("pending", GatedBody()))
    try:
        assert await asyncio.to_thread(written.wait, CHILD_TIMEOUT)
        with pytest.raises(ObjectNotFound):
            await store.head("pending")
        assert await keys_of(store) == ["other"]
    finally:
        release.set()
        await task
    assert await store.get("pending") == b"a" * (1 << 20) + b"b" * (1 << 20)
    assert await keys_of(store) == ["other", "pending"]


# ---- list --------------------------------------------------------------------------------


def _utf8_sorted(keys: list[str]) -> list[str]:
    return sorted(keys, key=lambda k: k.encode("utf-8"))


async def test_list_is_sorted_complete_and_prefix_filtered(store: ObjectStore) -> None:
    keys = [f"d{i % 5}/s{i % 12}/k{i:04d}" for i in range(1500)]
    # Byte order traps: '-' (0x2d) and '.' (0x2e) sort before '/' (0x2f), '0' after it;
    # non-ASCII sorts by UTF-8 bytes.
    keys += ["a-b", "a.b", "a/b", "a0", "Z", "z/日本", "é", "~"]
    items = {k: k.encode() * (1 + len(k) % 3) for k in keys}
    await put_all(store, items)
    expected = _utf8_sorted(keys)

    listed = [info async for info in store.list()]
    assert [i.key for i in listed] == expected  # 1508 keys: more than one page anywhere
    by_key = {i.key: i for i in listed}
    for k in ["a/b", keys[67], keys[1499], "z/日本"]:
        head = await store.head(k)
        assert by_key[k].etag == head.etag
        assert by_key[k].size == head.size == len(items[k])

    prefixes = ["d3/", "d3", "d3/s1", "d3/s1/", "d3/s1/k00", "a", "a/", "a-", "z/", "é", "nope", "nope/x/"]
    for prefix in prefixes:
        assert await keys_of(store, prefix) == [k for k in expected if k.startswith(prefix)], prefix


async def test_list_can_be_abandoned_and_interleaved(store: ObjectStore) -> None:
    keys = [f"p/{i:04d}" for i in range(1200)]
    await put_all(store, {k: b"x" for k in keys})
    seen: list[str] = []
    async for info in store.list("p/"):
        seen.append(info.key)
        if len(seen) == 10:
            break
    assert seen == keys[:10]
    a, b = store.list("p/"), store.list("p/0")
    got_a = [(await anext(a)).key for _ in range(5)]
    got_b = [(await anext(b)).key for _ in range(5)]
    got_a += [i.key async for i in a]
    assert got_a == keys
    assert got_b == keys[:5]
    await b.aclose()  # type: ignore[attr-defined]


async def test_list_empty_store(store: ObjectStore) -> None:
    assert await keys_of(store) == []
    assert await keys_of(store, "x/") == []


# ---- delete ------------------------------------------------------------------------------


async def test_delete(store: ObjectStore) -> None:
    await put_all(store, {"a/1": b"1", "a/2": b"2", "b/deep/3": b"3", "c": b"4"})
    await store.delete([])
    await store.delete(["a/1", "missing", "b/deep/3", "b/deep/3", "a"])  # "a" is only a prefix
    assert await keys_of(store) == ["a/2", "c"]
    with pytest.raises(ObjectNotFound):
        await store.get("a/1")
    await store.delete(["a/2", "c"])
    assert await keys_of(store) == []
    await store.put("b/deep/3", b"again")  # a deleted key can be written again
    assert await store.get("b/deep/3") == b"again"
    with pytest.raises(TypeError):
        await store.delete("b/deep/3")


async def test_delete_validates_every_key_before_deleting_any(store: ObjectStore) -> None:
    await store.put("keep", b"1")
    with pytest.raises(InvalidKey):
        await store.delete(["keep", "bad//key"])
    assert await store.get("keep") == b"1"


# ---- keys --------------------------------------------------------------------------------

BAD_KEYS = [
    "",
    "/abs",
    "trailing/",
    "a//b",
    ".",
    "..",
    "a/./b",
    "a/../b",
    "../up",
    "back\\slash",
    "nul\x00byte",
    "new\nline",
    ".se-tmp-0123",
    "dir/.se-store",
    "x" * 1025,
    "é" * 513,  # 1026 UTF-8 bytes
    "long/" + "p" * 256,
    "\ud800",
]


@pytest.mark.parametrize("key", BAD_KEYS, ids=range(len(BAD_KEYS)))
async def test_invalid_keys_are_rejected_everywhere(store: ObjectStore, key: str) -> None:
    calls = [
        store.get(key),
        store.head(key),
        store.put(key, b"x"),
        store.put(key, b"x", if_none_match=True),
        store.delete([key]),
        store.create_multipart(key),
        store.upload_part(key, "0" * 32, 1, b"x"),
        store.list_parts(key, "0" * 32),
        store.complete_multipart(key, "0" * 32, [(1, "e")]),
        store.abort_multipart(key, "0" * 32),
    ]
    for call in calls:
        with pytest.raises(InvalidKey) as ei:
            await call
        assert isinstance(ei.value, ValueError)
    with pytest.raises(InvalidKey):
        async with store.open_read(key):
            pass
    assert await keys_of(store) == []


async def test_non_str_key_is_invalid(store: ObjectStore) -> None:
    with pytest.raises(InvalidKey):
        await store.get(b"bytes-key")  # type: ignore[arg-type]


@pytest.mark.parametrize("prefix", ["/a", "a//", "../x", "a/../b/", "x\\y", "nul\x00", ".se-store/"])
async def test_invalid_list_prefix(store: ObjectStore, prefix: str) -> None:
    with pytest.raises(InvalidKey):
        await keys_of(store, prefix)
    with pytest.raises(InvalidKey):
        await store.list_multipart_uploads(prefix)


async def test_valid_unusual_keys(store: ObjectStore) -> None:
    keys = ["..a", "a..", ".hidden/x", "spa ce/tab", "ü/ñ", "x" * 255, "q?#%&=+"]
    await put_all(store, {k: k.encode() for k in keys})
    for k in keys:
        assert await store.get(k) == k.encode()
    assert await keys_of(store) == _utf8_sorted(keys)


# ---- create-if-absent ------------------------------------------------------------------


async def test_create_if_absent(store: ObjectStore) -> None:
    info = await store.put("v/1", b"first", if_none_match=True)
    with pytest.raises(PreconditionFailed, match="v/1"):
        await store.put("v/1", b"second", if_none_match=True)
    assert await store.get("v/1") == b"first"
    assert (await store.head("v/1")).etag == info.etag
    await store.delete(["v/1"])
    await store.put("v/1", b"third", if_none_match=True)
    assert await store.get("v/1") == b"third"


async def test_create_if_absent_16_tasks_exactly_one_wins(store: ObjectStore) -> None:
    results = await asyncio.gather(
        *(store.put("race", f"writer {i}".encode(), if_none_match=True) for i in range(16)),
        return_exceptions=True,
    )
    winners = [i for i, r in enumerate(results) if isinstance(r, ObjectInfo)]
    assert len(winners) == 1
    assert all(isinstance(r, PreconditionFailed) for i, r in enumerate(results) if i != winners[0])
    assert await store.get("race") == f"writer {winners[0]}".encode()
    assert await keys_of(store) == ["race"]


async def test_create_if_absent_4_processes_exactly_one_wins(
    store: ObjectStore, store_factory: StoreFactory
) -> None:
    barrier = SPAWN.Barrier(4)
    procs = [
        SPAWN.Process(
            target=store_workers.race_create,
            args=(store_factory, "versions/v7", f"process {i}".encode(), barrier),
        )
        for i in range(4)
    ]
    codes = await run_children(procs)
    assert sorted(codes) == [store_workers.WON] + [store_workers.LOST] * 3, codes
    winner = codes.index(store_workers.WON)
    assert await store.get("versions/v7") == f"process {winner}".encode()


# ---- compare-and-swap --------------------------------------------------------------------


async def test_compare_and_swap(store: ObjectStore) -> None:
    v1 = await store.put("head", b"1")
    v2 = await store.put("head", b"2", if_match=v1.etag)
    assert await store.get("head") == b"2"
    with pytest.raises(PreconditionFailed, match="head"):
        await store.put("head", b"3", if_match=v1.etag)  # stale etag
    assert await store.get("head") == b"2"
    assert (await store.head("head")).etag == v2.etag
    with pytest.raises(PreconditionFailed):
        await store.put("absent", b"x", if_match=v2.etag)  # CAS needs an existing object
    assert await keys_of(store) == ["head"]
    with pytest.raises(ConfigError):
        await store.put("head", b"x", if_none_match=True, if_match=v2.etag)


async def test_cas_counter_8_tasks_lose_no_update(store: ObjectStore) -> None:
    await store.put("counter", b"0")
    await asyncio.gather(*(store_workers.increment(store, "counter", 25) for _ in range(8)))
    assert await store.get("counter") == b"200"


async def test_cas_counter_8_processes_lose_no_update(
    store: ObjectStore, store_factory: StoreFactory
) -> None:
    await store.put("counter", b"0")
    barrier = SPAWN.Barrier(8)
    procs = [
        SPAWN.Process(target=store_workers.cas_increments, args=(store_factory, "counter", 25, barrier))
        for _ in range(8)
    ]
    assert await run_children(procs) == [0] * 8
    assert await store.get("counter") == b"200"


# ---- atomicity under SIGKILL -------------------------------------------------------------


@pytest.mark.parametrize("with_old", [True, False], ids=["overwrite", "create"])
async def test_writer_killed_mid_put_leaves_old_or_nothing(
    store: ObjectStore, store_factory: StoreFactory, with_old: bool
) -> None:
    key = "ckpt/model.bin"
    old = b"old version " * 1000
    await store.put("ckpt/other", b"bystander")
    if with_old:
        await store.put(key, old)
    started = SPAWN.Event()
    child = SPAWN.Process(target=store_workers.slow_put, args=(store_factory, key, 64, 1 << 20, started))
    await asyncio.to_thread(child.start)
    try:
        assert await asyncio.to_thread(started.wait, CHILD_TIMEOUT), "the writer never got going"
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)  # 2 of 64 MiB written
    finally:
        await asyncio.to_thread(child.join, CHILD_TIMEOUT)
    assert child.exitcode == -signal.SIGKILL
    if with_old:
        assert await store.get(key) == old
    else:
        with pytest.raises(ObjectNotFound):
            await store.get(key)
    assert await keys_of(store) == (["ckpt/model.bin", "ckpt/other"] if with_old else ["ckpt/other"])
    # Nothing stuck: the key can be written again, conditionally.
    if with_old:
        await store.put(key, b"new", if_match=(await store.head(key)).etag)
    else:
        await store.put(key, b"new", if_none_match=True)
    assert await store.get(key) == b"new"


# ---- multipart ---------------------------------------------------------------------------


async def test_multipart_round_trip(store: ObjectStore) -> None:
    caps = store.capabilities
    assert caps.multipart
    part = max(caps.min_part_size, 64 << 10)
    p1, p2, p3 = os.urandom(part), os.urandom(part), b"tail" * 100
    uid = await store.create_multipart("big/object")
    assert any(u.upload_id == uid and u.key == "big/object" for u in await store.list_multipart_uploads())
    # Parts may arrive in any order and concurrently.
    e3, e1, e2 = await asyncio.gather(
        store.upload_part("big/object", uid, 3, p3),
        store.upload_part("big/object", uid, 1, p1),
        store.upload_part("big/object", uid, 2, p2),
    )
    parts = await store.list_parts("big/object", uid)
    assert [(p.part_number, p.etag, p.size) for p in parts] == [
        (1, e1, len(p1)),
        (2, e2, len(p2)),
        (3, e3, len(p3)),
    ]
    with pytest.raises(ObjectNotFound):
        await store.head("big/object")  # nothing visible before complete
    info = await store.complete_multipart("big/object", uid, [(1, e1), (2, e2), (3, e3)])
    assert info.size == len(p1) + len(p2) + len(p3)
    assert await store.get("big/object") == p1 + p2 + p3
    assert (await store.head("big/object")).etag == info.etag
    assert await store.get("big/object", range=(part - 2, part + 2)) == p1[-2:] + p2[:2]
    assert await store.list_multipart_uploads() == []
    with pytest.raises(UploadNotFound):
        await store.list_parts("big/object", uid)
    assert await keys_of(store) == ["big/object"]


async def test_multipart_part_uploaded_again_replaces_it(store: ObjectStore) -> None:
    uid = await store.create_multipart("k")
    old = await store.upload_part("k", uid, 1, b"first try")
    new = await store.upload_part("k", uid, 1, b"second try")
    assert [(p.part_number, p.etag) for p in await store.list_parts("k", uid)] == [(1, new)]
    with pytest.raises(InvalidPart):
        await store.complete_multipart("k", uid, [(1, old)])
    await store.complete_multipart("k", uid, [(1, new)])
    assert await store.get("k") == b"second try"


async def test_multipart_abort(store: ObjectStore) -> None:
    uid = await store.create_multipart("k")
    etag = await store.upload_part("k", uid, 1, b"data")
    await store.abort_multipart("k", uid)
    assert await store.list_multipart_uploads() == []
    with pytest.raises(UploadNotFound):
        await store.list_parts("k", uid)
    with pytest.raises(UploadNotFound):
        await store.upload_part("k", uid, 2, b"more")
    with pytest.raises(UploadNotFound):
        await store.complete_multipart("k", uid, [(1, etag)])
    with pytest.raises(UploadNotFound):
        await store.abort_multipart("k", uid)
    with pytest.raises(ObjectNotFound):
        await store.head("k")
    assert await keys_of(store) == []


async def test_multipart_unknown_upload(store: ObjectStore) -> None:
    uid = await store.create_multipart("mine")
    for key, upload_id in [("mine", "0" * 32), ("mine", "../../etc"), ("other", uid)]:
        with pytest.raises(UploadNotFound) as ei:
            await store.list_parts(key, upload_id)
        assert isinstance(ei.value, FileNotFoundError)
        with pytest.raises(UploadNotFound):
            await store.upload_part(key, upload_id, 1, b"x")
    await store.abort_multipart("mine", uid)


async def test_multipart_part_rules(store: ObjectStore) -> None:
    caps = store.capabilities
    uid = await store.create_multipart("k")
    for bad in (0, caps.max_parts + 1):
        with pytest.raises(InvalidPart):
            await store.upload_part("k", uid, bad, b"x")
    small1 = await store.upload_part("k", uid, 1, b"small")
    small2 = await store.upload_part("k", uid, 2, b"small too")
    if caps.min_part_size > len(b"small"):
        with pytest.raises(InvalidPart):  # only the last part may be small
            await store.complete_multipart("k", uid, [(1, small1), (2, small2)])
    with pytest.raises(InvalidPart):
        await store.complete_multipart("k", uid, [(2, small2), (1, small1)])  # not ascending
    with pytest.raises(InvalidPart):
        await store.complete_multipart("k", uid, [])
    with pytest.raises(InvalidPart):
        await store.complete_multipart("k", uid, [(1, "0" * 64)])  # wrong etag
    info = await store.complete_multipart("k", uid, [(2, small2)])  # a single part: it is the last
    assert await store.get("k") == b"small too"
    assert info.size == len(b"small too")


async def test_multipart_conditions(store: ObjectStore) -> None:
    existing = await store.put("k", b"existing")
    uid = await store.create_multipart("k")
    etag = await store.upload_part("k", uid, 1, b"replacement")
    with pytest.raises(PreconditionFailed):
        await store.complete_multipart("k", uid, [(1, etag)], if_none_match=True)
    assert await store.get("k") == b"existing"
    with pytest.raises(PreconditionFailed):
        await store.complete_multipart("k", uid, [(1, etag)], if_match="not-the-etag")
    assert [u.upload_id for u in await store.list_multipart_uploads("k")] == [uid]  # still open
    await store.complete_multipart("k", uid, [(1, etag)], if_match=existing.etag)
    assert await store.get("k") == b"replacement"

    uid2 = await store.create_multipart("fresh")
    etag2 = await store.upload_part("fresh", uid2, 1, b"new object")
    await store.complete_multipart("fresh", uid2, [(1, etag2)], if_none_match=True)
    assert await store.get("fresh") == b"new object"


async def test_list_multipart_uploads_by_prefix(store: ObjectStore) -> None:
    a = await store.create_multipart("x/a")
    b = await store.create_multipart("x/b")
    c = await store.create_multipart("y/c")
    assert [(u.key, u.upload_id) for u in await store.list_multipart_uploads()] == [
        ("x/a", a),
        ("x/b", b),
        ("y/c", c),
    ]
    assert [u.upload_id for u in await store.list_multipart_uploads("x/")] == [a, b]
    assert await store.list_multipart_uploads("z") == []
    assert await keys_of(store) == []  # uploads are not objects
    for key, uid in [("x/a", a), ("x/b", b), ("y/c", c)]:
        await store.abort_multipart(key, uid)


# ---- lifecycle and the event loop ----------------------------------------------------------


async def test_capabilities_are_coherent(store: ObjectStore) -> None:
    caps = store.capabilities
    assert caps.conditional_put and caps.conditional_cas and caps.ranged_get
    assert 0 <= caps.min_part_size <= caps.max_part_size
    assert caps.max_parts >= 1 and caps.max_put_size > 0 and caps.max_key_bytes >= 1024


async def test_closed_store_refuses_work(store_factory: StoreFactory) -> None:
    async with store_factory() as s:
        await s.put("k", b"v")
    with pytest.raises(StoreClosed):
        await s.get("k")
    await s.close()  # idempotent
    async with store_factory() as again:
        assert await again.get("k") == b"v"


async def test_big_io_stays_off_the_event_loop(store: ObjectStore, loop_io_guard: LoopIOGuard) -> None:
    data = os.urandom(32 << 20)
    await store.put("big/one", data)
    await store.put("big/two", memoryview(data), if_none_match=True)
    assert await store.get("big/one") == data
    async with store.open_read("big/two") as r:
        assert sum([len(c) async for c in r]) == len(data)
    assert await keys_of(store, "big/") == ["big/one", "big/two"]
    await store.delete(["big/one", "big/two"])
    # The guard saw the store's file calls (so it is not vacuous), all off the loop thread.
    assert loop_io_guard.off_loop_calls > 0
    assert loop_io_guard.violations == []


async def test_guard_catches_blocking_calls_on_the_loop(tmp_path: Path, loop_io_guard: LoopIOGuard) -> None:
    with pytest.raises(BlockingOnLoop):
        os.stat(tmp_path)
    with pytest.raises(BlockingOnLoop):
        open(tmp_path / "f", "wb")  # noqa: SIM115
    assert len(loop_io_guard.violations) == 2
    loop_io_guard.violations.clear()
    await asyncio.to_thread(os.stat, tmp_path)  # a worker thread is fine
    assert loop_io_guard.violations == []
