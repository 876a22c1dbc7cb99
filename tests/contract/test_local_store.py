"""LocalStore beyond the contract: its on-disk layout, temp-file cleanup, ETag sidecars, limits."""

from __future__ import annotations

import asyncio
import errno
import functools
import multiprocessing
import os
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import blake3
import pytest

from syncengine.errors import ConfigError, InvalidKey, ObjectNotFound, PreconditionFailed
from syncengine.store import LocalStore
from syncengine.store.base import HashedParts

from . import store_workers

SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture
async def local(tmp_path: Path) -> AsyncIterator[LocalStore]:
    async with LocalStore(tmp_path / "repo") as s:
        yield s


def tree(root: Path) -> list[str]:
    """Every file and directory under root, relative, sorted (run it in a thread)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".se-tmp-*")]


async def test_objects_are_plain_files_at_their_key(local: LocalStore) -> None:
    await local.put("data/ab/abcdef", b"pack bytes")
    root = Path(local.root)
    assert await asyncio.to_thread((root / "data/ab/abcdef").read_bytes) == b"pack bytes"
    files = await asyncio.to_thread(tree, root)
    assert [f for f in files if not f.startswith(".se-store")] == ["data", "data/ab", "data/ab/abcdef"]


async def test_relative_root_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    async with LocalStore("rel") as s:
        assert s.root == str(tmp_path / "rel")
        assert repr(s) == f"LocalStore({str(tmp_path / 'rel')!r})"


async def test_killed_writer_leaves_a_temp_file_that_cleanup_removes(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    factory = functools.partial(LocalStore, root)
    started = SPAWN.Event()
    child = SPAWN.Process(target=store_workers.slow_put, args=(factory, "x/big", 16, 1 << 20, started))
    await asyncio.to_thread(child.start)
    try:
        assert await asyncio.to_thread(started.wait, 300)
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
    finally:
        await asyncio.to_thread(child.join, 300)
    temps = await asyncio.to_thread(temp_files, root)
    assert len(temps) == 1 and temps[0].parent == root / "x"  # next to its target
    assert (await asyncio.to_thread(temps[0].stat)).st_size == 2 << 20  # torn, and never visible
    async with factory() as store:
        assert [i.key async for i in store.list()] == []
        with pytest.raises(ObjectNotFound):
            await store.head("x/big")
        assert await store.cleanup_temp(older_than=3600) == 0  # too young
        assert await store.cleanup_temp(older_than=0) == 1
        assert await asyncio.to_thread(temp_files, root) == []
        with pytest.raises(ConfigError):
            await store.cleanup_temp(older_than=-1)


async def test_a_key_cannot_be_object_and_prefix(local: LocalStore) -> None:
    assert not local.capabilities.key_prefix_overlap
    await local.put("a", b"file")
    with pytest.raises(InvalidKey, match="also a prefix"):
        await local.put("a/b", b"x")
    await local.put("d/e", b"x")
    for cond in ({}, {"if_none_match": True}):
        with pytest.raises(InvalidKey, match="also a prefix"):
            await local.put("d", b"x", **cond)  # type: ignore[arg-type]
    assert await local.get("a") == b"file"


async def test_delete_prunes_empty_directories(local: LocalStore) -> None:
    await local.put("a/b/c/one", b"1")
    await local.put("a/two", b"2")
    await local.delete(["a/b/c/one"])
    root = Path(local.root)
    files = await asyncio.to_thread(tree, root)
    assert [f for f in files if not f.startswith(".se-store")] == ["a", "a/two"]
    await local.delete(["a/two"])
    files = await asyncio.to_thread(tree, root)
    assert [f for f in files if not f.startswith(".se-store")] == []
    assert await asyncio.to_thread(root.is_dir)


async def test_a_prehashed_body_is_written_as_is_with_its_digest_as_etag(local: LocalStore) -> None:
    data = b"pack " * 1000
    info = await local.put("p", HashedParts([data[:7], data[7:]], blake3.blake3(data).digest()))
    assert info.etag == blake3.blake3(data).hexdigest()  # what hashing the bytes gives
    assert await local.get("p") == data
    await asyncio.to_thread(shutil.rmtree, Path(local.root) / ".se-store" / "etags")
    assert (await local.head("p")).etag == info.etag  # the same when recomputed


async def test_etag_is_blake3_and_survives_lost_sidecars(local: LocalStore) -> None:
    info = await local.put("k", b"content")
    assert info.etag == blake3.blake3(b"content").hexdigest()
    await asyncio.to_thread(shutil.rmtree, Path(local.root) / ".se-store" / "etags")
    assert (await local.head("k")).etag == info.etag  # recomputed from the bytes
    await local.put("k", b"next", if_match=info.etag)  # CAS still works
    assert await local.get("k") == b"next"


async def test_etag_follows_a_file_replaced_behind_the_stores_back(local: LocalStore) -> None:
    await local.put("k", b"original")
    path = Path(local.root) / "k"

    def replace() -> None:
        tmp = path.with_name("outside-edit")
        tmp.write_bytes(b"edited outside")
        os.replace(tmp, path)

    await asyncio.to_thread(replace)
    head = await local.head("k")
    assert head.etag == blake3.blake3(b"edited outside").hexdigest()
    assert [(i.key, i.etag) async for i in local.list()] == [("k", head.etag)]


async def test_create_if_absent_without_hard_links(
    local: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_link(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    await local.put("v1", b"a", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        await local.put("v1", b"b", if_none_match=True)
    assert await local.get("v1") == b"a"
    assert await asyncio.to_thread(temp_files, Path(local.root)) == []


async def test_multipart_leaves_no_internals_behind(local: LocalStore) -> None:
    uid = await local.create_multipart("k")
    e1 = await local.upload_part("k", uid, 1, b"x")
    await local.complete_multipart("k", uid, [(1, e1)])
    uid2 = await local.create_multipart("k2")
    await local.upload_part("k2", uid2, 1, b"y")
    await local.abort_multipart("k2", uid2)
    mp = Path(local.root) / ".se-store" / "multipart"
    assert await asyncio.to_thread(lambda: list(mp.iterdir())) == []
    assert await asyncio.to_thread(temp_files, Path(local.root)) == []


async def test_cleanup_keeps_live_uploads_and_objects(local: LocalStore) -> None:
    uid = await local.create_multipart("k")
    await local.upload_part("k", uid, 1, b"part")
    await local.put("obj", b"o")
    assert await local.cleanup_temp(older_than=0) == 0
    assert [p.part_number for p in await local.list_parts("k", uid)] == [1]
    assert await local.get("obj") == b"o"


async def test_capabilities(local: LocalStore) -> None:
    caps = local.capabilities
    assert caps.conditional_put and caps.conditional_cas and caps.multipart
    assert not caps.conditional_across_hosts  # flock is per host
    assert (caps.min_part_size, caps.max_parts) == (5 << 20, 10_000)


async def test_put_above_max_put_size_is_refused_before_io(local: LocalStore) -> None:
    class Huge:
        size = local.capabilities.max_put_size + 1

        def chunks(self) -> list[bytes]:
            raise AssertionError("must not be read")

    with pytest.raises(ConfigError, match="multipart"):
        await local.put("huge", Huge())  # type: ignore[arg-type]


async def test_a_put_survives_a_delete_pruning_the_parent_it_just_made(
    local: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delete that empties a directory removes it (and its emptied parents); a put making
    the same path at that moment finds a parent gone between its mkdir and the child's, and
    makes the path again (seen: two `gc` runs' clock probes under gc/clock/)."""
    real_mkdir = os.mkdir
    raced: list[str] = []

    def mkdir(path: str, *args: object, **kwargs: object) -> None:
        if str(path).endswith(os.path.join("gc", "clock")) and not raced:
            raced.append(str(path))
            os.rmdir(os.path.dirname(path))  # the concurrent delete's pruning of gc/
        real_mkdir(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "mkdir", mkdir)
    await local.put("gc/clock/probe", b"")
    assert raced and await local.get("gc/clock/probe") == b""
