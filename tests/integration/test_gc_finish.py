"""`syncengine gc` beyond mark and sweep (docs/GC.md): TTL expiry first, repacking packs under
half live (and readers with an old index after it), pruning of gc's own records."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
from pathlib import Path

import msgspec
import pytest

from syncengine.hashing.params import ChunkerParams
from syncengine.hashing.tree import Source
from syncengine.repo import gc_objects as g
from syncengine.repo.download import download
from syncengine.repo.gc import survey
from syncengine.repo.gc_sweep import GcRun, collect
from syncengine.repo.lifecycle import delete_version
from syncengine.repo.pack import IndexEntry
from syncengine.repo.records import encode_record, version_key
from syncengine.repo.repository import Repository
from syncengine.store.base import ObjectStore
from syncengine.store.local import LocalStore
from tests.integration.test_cli import cli
from tests.s3server import S3TestServer

PARAMS = ChunkerParams(4096, 16384, 65536)
GRACE = 2.0


@pytest.fixture(autouse=True)
def _short_grace(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SYNCENGINE_GC_MIN_GRACE", str(GRACE))
    monkeypatch.setenv("SYNCENGINE_CACHE_DIR", str(tmp_path / "cache"))


async def _sweep(repo: Repository, grace: float = GRACE) -> GcRun:
    while True:
        run = await collect(repo, grace=grace)
        if run.phase != "waiting":
            return run
        await asyncio.sleep(min(run.wait_seconds, 0.5) + 0.05)


async def _log(repo: Repository, src: Path, aliases: tuple[str, ...] = ()) -> int:
    r = await repo.log(
        [Source(str(src))], project="p", name="m", type="model", aliases=aliases, stat_cache=False
    )
    return r.record.version


async def _keys(store: ObjectStore, prefix: str = "") -> list[str]:
    return [i.key async for i in store.list(prefix)]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


async def _expire_in_the_past(repo: Repository, number: int) -> None:
    """A TTL of a minute on a version created an hour ago: expired now."""
    hour_ago = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
    record = await repo.version("p", "m", number)  # `created` is frozen: written as is here
    new = msgspec.structs.replace(record, ttl_seconds=60, created=hour_ago)
    await repo.store.put(version_key("p", "m", number), encode_record(new))


def test_gc_deletes_expired_versions_first_and_keeps_aliased_ones(tmp_path: Path) -> None:
    """`gc --dry-run` lists the expired version it would delete (and the aliased one it would
    keep) and deletes nothing; `gc` deletes it, then marks its data in the same run."""
    store_path = tmp_path / "repo"
    src = tmp_path / "src"
    src.mkdir()

    async def setup() -> None:
        repo = await Repository.open(LocalStore(store_path), params=PARAMS)
        for i in range(3):
            (src / "f").write_bytes(os.urandom(20_000 + i))
            await _log(repo, src, aliases=("best",) if i == 0 else ())
        await _expire_in_the_past(repo, 0)  # aliased: kept
        await _expire_in_the_past(repo, 1)  # deleted

    asyncio.run(setup())
    url = str(store_path)
    r = cli("gc", "--dry-run", "--repo", url)
    assert r.returncode == 0, r.stderr
    assert "would delete p/m:v1" in r.stdout and "[expired]" in r.stdout
    assert "would keep p/m:v0" in r.stdout and "best" in r.stdout
    assert "2 live version(s), 1 deleted" in r.stdout  # counted as gc would leave it
    assert "would delete 1 pack(s) with no live blob" in r.stdout
    out = json.loads(cli("gc", "--dry-run", "--json", "--repo", url).stdout)
    assert [d["ref"] for d in out["expiry"]["deleted"]] == ["p/m:v1"]

    async def still_there() -> None:
        repo = await Repository.open(LocalStore(store_path), params=PARAMS)
        assert [v.version for v in await repo.versions("p", "m")] == [0, 1, 2]

    asyncio.run(still_there())
    r = cli("gc", "--grace", "2s", "--repo", url)
    assert r.returncode == 0, r.stderr
    assert "deleted p/m:v1" in r.stdout and "[expired]" in r.stdout
    assert "kept p/m:v0" in r.stdout and "marked" in r.stdout

    async def after() -> None:
        repo = await Repository.open(LocalStore(store_path), params=PARAMS)
        assert [v.version for v in await repo.versions("p", "m")] == [0, 2]
        mark = g.decode(await repo.store.get((await _keys(repo.store, g.MARKS))[0]), g.Mark)
        assert any(k.startswith("data/") for k in mark.candidates)  # v1's pack
        run = await _sweep(repo)
        assert run.phase == "swept" and run.expired == []  # nothing left to expire
        assert await repo.check(read_data=True) == []

    asyncio.run(after())


async def _half_dead_pack(repo: Repository, src: Path) -> tuple[bytes, int]:
    """v0 holds a big and a small file in one pack; v1 only the small one; v0 deleted: the
    pack is under half live."""
    small = os.urandom(10_000)
    (src / "small.bin").write_bytes(small)
    (src / "big.bin").write_bytes(os.urandom(60_000))
    await _log(repo, src)
    (src / "big.bin").unlink()
    v = await _log(repo, src)
    await delete_version(repo, "p", "m", 0)
    return small, v


async def _repack(store: ObjectStore, reader_store: ObjectStore, tmp_path: Path) -> None:
    repo = await Repository.open(store, params=PARAMS)
    src = tmp_path / "src"
    src.mkdir()
    old_reader = await Repository.open(reader_store, params=PARAMS)
    small, v = await _half_dead_pack(repo, src)
    await old_reader.index()  # a long-lived reader: its index names the old pack
    before = await survey(repo)
    assert len(before.repack) == 1 and before.repack_copy_bytes >= 10_000
    (old_pack,) = await _keys(store, "data/")
    run = await collect(repo, grace=GRACE)
    assert run.phase == "marked"
    run = await _sweep(repo)
    assert run.phase == "swept" and run.repacked == [old_pack]
    assert 10_000 <= run.repacked_bytes < 20_000 and run.deleted_bytes > 60_000
    packs = await _keys(store, "data/")
    assert len(packs) == 1 and packs != [old_pack]
    after = await survey(repo)
    assert after.repack == [] and after.dead_bytes == 0 and after.problems == []
    assert await repo.check(read_data=True) == []
    out = tmp_path / "out"
    await old_reader.download(await old_reader.version("p", "m", v), str(out), skip_cache=True)
    assert _files(out) == {"small.bin": small}


def test_repack_copies_live_blobs_and_deletes_the_old_pack(tmp_path: Path) -> None:
    asyncio.run(_repack(LocalStore(tmp_path / "repo"), LocalStore(tmp_path / "repo"), tmp_path))


def test_repack_on_s3(s3_server: S3TestServer, s3_bucket: str, tmp_path: Path) -> None:
    from syncengine.store.s3 import S3Store

    def store() -> S3Store:
        return S3Store(
            s3_bucket,
            "repack",
            endpoint_url=s3_server.endpoint,
            region=s3_server.region,
            access_key_id=s3_server.access_key,
            secret_access_key=s3_server.secret_key,
        )

    async def main() -> None:
        async with store() as a, store() as b:
            await _repack(a, b, tmp_path)

    asyncio.run(main())


class _IndexFromBefore(Repository):
    """Hands out the first index it loaded once: a download that planned its ranges just
    before a repack deleted the pack they name."""

    stale: dict[bytes, IndexEntry] | None = None

    async def index(self) -> dict[bytes, IndexEntry]:
        if self.stale is not None:
            stale, self.stale = self.stale, None
            return stale
        return await super().index()


def test_download_that_finds_its_pack_repacked_refreshes_the_index(tmp_path: Path) -> None:
    async def main() -> None:
        store = LocalStore(tmp_path / "repo")
        repo = await Repository.open(store, params=PARAMS)
        src = tmp_path / "src"
        src.mkdir()
        small, v = await _half_dead_pack(repo, src)
        reader = _IndexFromBefore(store, repo.config)
        reader.stale = dict(await Repository.index(reader))
        assert (await collect(repo, grace=GRACE)).phase == "marked"
        assert (await _sweep(repo)).repacked
        out = tmp_path / "out"
        got = await download(reader, await reader.version("p", "m", v), str(out))
        assert _files(out) == {"small.bin": small} and got.written == 1

    asyncio.run(main())


def test_gc_prunes_its_finished_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A swept mark's intent, done record and keep objects stay while a writer's check may
    still need them (at least the minimum grace period), then a later `gc` deletes them;
    stray keep objects and clock probes go too."""
    grace = 4.0  # a wide window for "not yet": the run right after the sweep is well within it
    monkeypatch.setenv("SYNCENGINE_GC_MIN_GRACE", str(grace))

    async def main() -> None:
        store = LocalStore(tmp_path / "repo")
        repo = await Repository.open(store, params=PARAMS)
        src = tmp_path / "src"
        src.mkdir()
        (src / "a").write_bytes(os.urandom(30_000))
        await _log(repo, src)
        await delete_version(repo, "p", "m", 0)
        assert (await collect(repo, grace=grace)).phase == "marked"
        run = await _sweep(repo, grace)
        assert run.phase == "swept" and run.mark is not None
        assert await _keys(store, g.DONE) == [f"{g.DONE}{run.mark}"]
        intent = g.decode(await store.get(f"{g.SWEEPS}{run.mark}"), g.Sweep)
        assert intent.finished and intent.mark == run.mark
        await store.put(f"{g.KEEP}{'0' * 32}/stray", b'{"format":1,"mark":"x","objects":[]}')
        await store.put(f"{g.CLOCK}left-by-a-killed-gc", b"")
        again = await collect(repo, grace=grace)  # within MIN of the sweep's end: kept
        assert again.pruned == 0 and await _keys(store, g.DONE)
        pruned = 0
        while pruned < 4:  # done, intent, stray keep, clock probe; once MIN has passed
            await asyncio.sleep(0.5)
            pruned += (await collect(repo, grace=grace)).pruned
        assert pruned == 4
        assert await _keys(store, "gc/") == [g.EPOCH]
        # With no mark, and an epoch unchanged since it opened, a writer skips the check.
        fresh = await Repository.open(store, params=PARAMS)
        assert fresh.gc_epoch is not None
        (src / "b").write_bytes(os.urandom(1000))
        v = await _log(fresh, src)
        assert (await fresh.version("p", "m", v)).files == 2
        assert await fresh.check(read_data=True) == []

    asyncio.run(main())


def test_gc_cli_reports_repacking(tmp_path: Path) -> None:
    async def setup() -> None:
        repo = await Repository.open(LocalStore(tmp_path / "repo"), params=PARAMS)
        src = tmp_path / "src"
        src.mkdir()
        await _half_dead_pack(repo, src)

    asyncio.run(setup())
    url = str(tmp_path / "repo")
    r = cli("gc", "--dry-run", "--repo", url)
    assert "would repack 1 pack(s) under half live: copy 9.77 KiB live" in r.stdout, r.stdout
    assert "marked" in cli("gc", "--grace", "2s", "--repo", url).stdout
    deadline = 40
    while deadline:
        r = cli("gc", "--grace", "2s", "--repo", url)
        if "repacked" in r.stdout:
            break
        deadline -= 1
    assert "repacked data/" in r.stdout and "repacked 1 pack(s) (" in r.stdout, r.stdout
    assert cli("check", "--read-data", "--repo", url).returncode == 0
