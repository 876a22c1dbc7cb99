"""`syncengine gc`: mark, sweep after the grace period, and the writer rule (docs/GC.md)."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import msgspec
import pytest

from syncengine.hashing.params import ChunkerParams
from syncengine.hashing.tree import Source
from syncengine.repo import gc_objects as g
from syncengine.repo.gc import survey
from syncengine.repo.gc_sweep import GcConflict, GcRun, collect
from syncengine.repo.lifecycle import delete_version
from syncengine.repo.pack import IndexEntry
from syncengine.repo.repository import Repository
from syncengine.store.base import ObjectStore
from syncengine.store.local import LocalStore
from tests.s3server import S3TestServer

PARAMS = ChunkerParams(4096, 16384, 65536)
GRACE = 2.0  # seconds; a writer then has GRACE/2 between its check and its record


async def _sweep(repo: Repository) -> GcRun:
    """`gc` again and again until the mark is swept (the grace period passes)."""
    while True:
        run = await collect(repo, grace=GRACE)
        if run.phase != "waiting":
            return run
        await asyncio.sleep(min(run.wait_seconds, 0.5) + 0.05)


@pytest.fixture(autouse=True)
def _short_grace(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SYNCENGINE_GC_MIN_GRACE", str(GRACE))
    monkeypatch.setenv("SYNCENGINE_CACHE_DIR", str(tmp_path / "cache"))


async def _log(repo: Repository, src: Path, name: str = "m") -> int:
    r = await repo.log([Source(str(src))], project="p", name=name, type="model", stat_cache=False)
    return r.record.version


async def _keys(store: ObjectStore) -> list[str]:
    return [i.key async for i in store.list("")]


async def _verify(repo: Repository, tmp: Path, name: str, number: int, files: dict[str, bytes]) -> None:
    rec = await repo.version("p", name, number)
    out = tmp / f"out-{name}-{number}-{random.random()}"
    await repo.download(rec, str(out), skip_cache=True)
    got = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert got == files


async def _dedup_and_reclaim(store: ObjectStore, tmp_path: Path) -> None:
    repo = await Repository.open(store, params=PARAMS)
    src = tmp_path / "src"
    src.mkdir()
    shared = os.urandom(200_000)
    (src / "shared.bin").write_bytes(shared)
    (src / "only0.bin").write_bytes(os.urandom(50_000))
    await _log(repo, src)
    (src / "only0.bin").unlink()
    only1 = os.urandom(30_000)
    (src / "only1.bin").write_bytes(only1)
    await _log(repo, src)
    await delete_version(repo, "p", "m", 0)
    run = await collect(repo, grace=GRACE)
    assert run.phase == "marked" and run.report is not None and run.report.reclaimable_bytes > 0
    swept = await _sweep(repo)
    assert swept.phase == "swept" and swept.deleted
    await _verify(repo, tmp_path, "m", 1, {"shared.bin": shared, "only1.bin": only1})
    assert await repo.check(read_data=True) == []
    assert not [k for k in await _keys(store) if k.startswith(("gc/marks/", "gc/keep/"))]

    await delete_version(repo, "p", "m", 1)
    assert (await collect(repo, grace=GRACE)).phase == "marked"
    assert (await _sweep(repo)).phase == "swept"
    left = await _keys(store)
    # Config, the head, tombstones and gc's own records (pruned later, test_gc_records): no data.
    assert not [k for k in left if k.startswith(("data/", "index/", "manifests/"))], left
    assert [k for k in left if k.startswith(g.DONE)]
    assert (await collect(repo, grace=GRACE)).phase == "nothing"


def test_dedup_semantics_and_reclaiming_everything(tmp_path: Path) -> None:
    asyncio.run(_dedup_and_reclaim(LocalStore(tmp_path / "repo"), tmp_path))


def test_s3_gc(s3_server: S3TestServer, s3_bucket: str, tmp_path: Path) -> None:
    from syncengine.store.s3 import S3Store

    async def main() -> None:
        store = S3Store(
            s3_bucket,
            "gc",
            endpoint_url=s3_server.endpoint,
            region=s3_server.region,
            access_key_id=s3_server.access_key,
            secret_access_key=s3_server.secret_key,
        )
        async with store:
            await _dedup_and_reclaim(store, tmp_path)

    asyncio.run(main())


def test_sweep_waits_for_the_grace_period(tmp_path: Path) -> None:
    async def main() -> None:
        repo = await Repository.open(LocalStore(tmp_path / "repo"), params=PARAMS)
        src = tmp_path / "src"
        src.mkdir()
        (src / "a").write_bytes(os.urandom(10_000))
        await _log(repo, src)
        await delete_version(repo, "p", "m", 0)
        assert (await collect(repo, grace=3600)).phase == "marked"
        again = await collect(repo, grace=3600)
        assert again.phase == "waiting" and again.wait_seconds > 3000
        assert (await survey(repo)).dead_packs == 1  # nothing deleted

    asyncio.run(main())


def test_writer_that_reuses_a_candidate_is_protected(tmp_path: Path) -> None:
    """Logging a deleted version's content again between mark and sweep reuses the marked
    pack and manifest objects: its keep object makes the sweep spare them."""

    async def main() -> None:
        store = LocalStore(tmp_path / "repo")
        repo = await Repository.open(store, params=PARAMS)
        src = tmp_path / "src"
        src.mkdir()
        data = os.urandom(120_000)
        (src / "a").write_bytes(data)
        await _log(repo, src)
        await delete_version(repo, "p", "m", 0)
        assert (await collect(repo, grace=GRACE)).phase == "marked"
        v = await _log(repo, src)  # dedups against the marked pack
        assert [k async for k in store.list(g.KEEP)]
        run = await _sweep(repo)
        assert run.phase == "swept" and run.kept > 0
        await _verify(repo, tmp_path, "m", v, {"a": data})
        assert await repo.check(read_data=True) == []

    asyncio.run(main())


def test_writer_during_a_sweep_commits_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        store = LocalStore(tmp_path / "repo")
        repo = await Repository.open(store, params=PARAMS)
        src = tmp_path / "src"
        src.mkdir()
        (src / "a").write_bytes(os.urandom(20_000))
        await _log(repo, src)
        await delete_version(repo, "p", "m", 0)
        run = await collect(repo, grace=GRACE)
        assert run.mark is not None
        await store.put(f"{g.SWEEPS}{run.mark}", b"{}", if_none_match=True)  # a sweep started
        with pytest.raises(GcConflict):
            await _log(repo, src)
        assert (await repo.head("p", "m")).latest is None

    asyncio.run(main())


def test_writers_and_gc_concurrently(tmp_path: Path) -> None:
    """Writers log versions with shared content while gc marks and sweeps repeatedly; every
    committed, non-deleted version then downloads byte-identical and check passes."""

    async def main() -> None:
        path = tmp_path / "repo"
        base = await Repository.open(LocalStore(path), params=PARAMS)
        pool = [os.urandom(40_000) for _ in range(6)]
        committed: dict[tuple[str, int], dict[str, bytes]] = {}
        stop = asyncio.Event()

        async def writer(w: int) -> None:
            repo = await Repository.open(LocalStore(path), params=PARAMS)
            rng = random.Random(w)
            for i in range(8):
                src = tmp_path / f"src{w}-{i}"
                src.mkdir()
                files = {f"f{j}": pool[j] for j in rng.sample(range(len(pool)), 3)}
                for n, b in files.items():
                    (src / n).write_bytes(b)
                try:
                    v = await _log(repo, src, name=f"m{w}")
                except GcConflict:
                    continue
                committed[(f"m{w}", v)] = files
                if rng.random() < 0.5:
                    await delete_version(repo, "p", f"m{w}", v)
                    del committed[(f"m{w}", v)]

        async def collector() -> None:
            repo = await Repository.open(LocalStore(path), params=PARAMS)
            while not stop.is_set():
                await collect(repo, grace=GRACE)
                await asyncio.sleep(0.2)

        gc_task = asyncio.create_task(collector())
        await asyncio.gather(*(writer(w) for w in range(3)))
        stop.set()
        await gc_task
        for _ in range(2):
            await _sweep(base)
        assert committed
        for (name, v), files in committed.items():
            await _verify(base, tmp_path, name, v, files)
        assert await base.check(read_data=True) == []

    asyncio.run(main())


def test_cli_gc_marks_then_sweeps(tmp_path: Path) -> None:
    from tests.integration.test_cli import cli

    async def setup() -> None:
        repo = await Repository.open(LocalStore(tmp_path / "repo"), params=PARAMS)
        src = tmp_path / "src"
        src.mkdir()
        (src / "a").write_bytes(os.urandom(10_000))
        await _log(repo, src)
        await delete_version(repo, "p", "m", 0)

    asyncio.run(setup())
    url = str(tmp_path / "repo")
    r = cli("gc", "--dry-run", "--repo", url)
    assert r.returncode == 0 and "would delete 1 pack" in r.stdout
    r = cli("gc", "--grace", "2s", "--repo", url)
    assert r.returncode == 0 and "marked" in r.stdout, r.stdout + r.stderr
    r = cli("gc", "--grace", "2s", "--repo", url)
    assert r.returncode == 0 and "grace period" in r.stdout, r.stdout + r.stderr
    assert cli("gc", "--grace", "soon", "--repo", url).returncode != 0


def test_writer_with_an_index_from_before_a_sweep_uploads_again(tmp_path: Path) -> None:
    """A long-lived Repository whose in-memory index names a pack a sweep deleted: its next
    put sees the segment gone, rebuilds the index, uploads the blob again and commits."""

    async def main() -> None:
        store = LocalStore(tmp_path / "repo")
        old = await Repository.open(store, params=PARAMS)
        src = tmp_path / "src"
        src.mkdir()
        data = os.urandom(50_000)
        (src / "a").write_bytes(data)
        await _log(old, src)
        await old.index()  # loaded: names the pack
        gc_repo = await Repository.open(LocalStore(tmp_path / "repo"), params=PARAMS)
        await delete_version(gc_repo, "p", "m", 0)
        assert (await collect(gc_repo, grace=GRACE)).phase == "marked"
        assert (await _sweep(gc_repo)).phase == "swept"
        (src / "b").write_bytes(b"new")
        v = await _log(old, src)
        await _verify(old, tmp_path, "m", v, {"a": data, "b": b"new"})
        assert await old.check(read_data=True) == []

    asyncio.run(main())


class _IndexFromBefore(Repository):
    """Its puts deduplicate against the first index it loaded: a sweep that ran between a
    put's index load and its commit, without waiting for a put to run that long."""

    frozen: dict[bytes, IndexEntry] | None = None

    async def index(self) -> dict[bytes, IndexEntry]:
        if self.frozen is None:
            self.frozen = dict(await super().index())
        return self.frozen


def test_writer_whose_index_a_sweep_outdated_during_its_put_commits_nothing(tmp_path: Path) -> None:
    """The sweep rewrote gc/epoch after its deletions: the writer's epoch differs from the
    one it opened with, so it checks what it relies on and finds the pack gone."""

    async def main() -> None:
        store = LocalStore(tmp_path / "repo")
        plain = await Repository.open(store, params=PARAMS)
        old = _IndexFromBefore(store, plain.config)
        old.gc_epoch = plain.gc_epoch
        src = tmp_path / "src"
        src.mkdir()
        data = os.urandom(50_000)
        (src / "a").write_bytes(data)
        await _log(old, src)
        await old.index()
        await delete_version(plain, "p", "m", 0)
        assert (await collect(plain, grace=GRACE)).phase == "marked"
        assert (await _sweep(plain)).phase == "swept"
        (src / "b").write_bytes(b"new")
        with pytest.raises(GcConflict):
            await _log(old, src)
        assert (await plain.head("p", "m")).latest is None
        fresh = await Repository.open(store, params=PARAMS)
        v = await _log(fresh, src)
        await _verify(fresh, tmp_path, "m", v, {"a": data, "b": b"new"})

    asyncio.run(main())


def test_gc_objects_golden() -> None:
    """Exact bytes of the gc/ objects (docs/FORMAT.md, "Garbage collection objects")."""
    mark = g.Mark(
        format=1,
        repository="r1",
        created="2026-12-01T00:00:00+00:00",
        grace=86400.0,
        candidates=["data/ab/ab12", "manifests/cd/cd34"],
    )
    assert g.encode(mark) == (
        b'{"format":1,"repository":"r1","created":"2026-12-01T00:00:00+00:00","grace":86400.0,'
        b'"candidates":["data/ab/ab12","manifests/cd/cd34"]}'
    )
    assert g.decode(g.encode(mark), g.Mark) == mark
    keep = g.Keep(format=1, mark="m1", objects=["data/ab/ab12"])
    assert g.encode(keep) == b'{"format":1,"mark":"m1","objects":["data/ab/ab12"]}'
    done = g.Done(format=1, mark="m1", deleted=["manifests/cd/cd34"])
    assert g.encode(done) == b'{"format":1,"mark":"m1","deleted":["manifests/cd/cd34"]}'
    repacking = msgspec.structs.replace(mark, repack=["data/ab/ab12"])
    assert g.encode(repacking) == (
        b'{"format":1,"repository":"r1","created":"2026-12-01T00:00:00+00:00","grace":86400.0,'
        b'"candidates":["data/ab/ab12","manifests/cd/cd34"],"repack":["data/ab/ab12"]}'
    )
    assert g.decode(g.encode(repacking), g.Mark) == repacking
    intent = g.Sweep(mark="m1", sweeper="s1", renewal=2, finished=True)
    assert g.encode(intent) == b'{"format":1,"mark":"m1","sweeper":"s1","renewal":2,"finished":true}'
    assert g.decode(g.encode(intent), g.Sweep) == intent
    assert g.decode(b"{}", g.Sweep) == g.Sweep()  # the first format's intent: unfinished


def test_sync_facade_gc(tmp_path: Path) -> None:
    import time

    import syncengine as se

    src = tmp_path / "data"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(30_000))
    repo = se.Repository.open(str(tmp_path / "repo"))
    art = se.Artifact("m", type="model")
    art.add_dir(str(src))
    v = repo.log_artifact(art, project="p")
    v.delete()
    assert repo.gc(dry_run=True).dead_packs == 1
    assert repo.gc(grace=GRACE).phase == "marked"
    while (run := repo.gc(grace=GRACE)).phase == "waiting":
        time.sleep(0.5)
    assert run.phase == "swept" and run.deleted_bytes > 30_000
    assert repo.gc(grace=GRACE, dry_run=True).packs == 0


def test_unfinished_distributed_contributions_survive_gc(tmp_path: Path) -> None:
    """An upsert's data is a root until its finish makes it a version: a gc between upsert
    and finish must not collect it (docs/DISTRIBUTED.md)."""
    import syncengine as se
    from syncengine import aio

    src = tmp_path / "src"
    src.mkdir()
    content = {f"f{i}.bin": os.urandom(50_000) for i in range(4)}
    for name, data in content.items():
        (src / name).write_bytes(data)

    async def go() -> None:
        async with await aio.Repository.open(str(tmp_path / "repo")) as repo:
            art = se.Artifact("corpus", type="dataset")
            art.add_dir(str(src))
            async with repo.run(project="p", job_type="w") as run:
                await run.upsert_artifact(art, "job-1")
            assert (await collect(repo.core, grace=GRACE)).phase in ("marked", "nothing")
            await asyncio.sleep(GRACE + 0.2)
            await _sweep(repo.core)
            async with repo.run(project="p", job_type="merge") as run:
                v = await run.finish_artifact(se.Artifact("corpus", type="dataset"), "job-1")
            out = tmp_path / "out"
            await v.download(str(out), skip_cache=True)
            assert {p.name: p.read_bytes() for p in out.iterdir()} == content
            assert await repo.core.check(read_data=True) == []

    asyncio.run(go())
