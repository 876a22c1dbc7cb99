"""Deleting versions, cleanup by count and TTL (docs/DELETION.md), on LocalStore and on S3."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import random
from pathlib import Path

import msgspec
import pytest

import syncengine as se
from syncengine.errors import ConfigError
from syncengine.hashing.params import ChunkerParams
from syncengine.hashing.tree import Source
from syncengine.repo.lifecycle import AliasedVersion, _tombstone, cleanup, delete_version, forget
from syncengine.repo.records import (
    ArtifactHead,
    VersionRecord,
    decode_head,
    encode_record,
    head_key,
    parse_ref,
)
from syncengine.repo.repository import ArtifactNotFound, Repository, VersionDeleted
from syncengine.store.local import LocalStore
from tests.integration.test_cli import cli
from tests.s3server import S3TestServer

PARAMS = ChunkerParams(4096, 16384, 65536)


async def open_repo(path: Path) -> Repository:
    return await Repository.open(LocalStore(path), params=PARAMS)


async def log(repo: Repository, src: Path, content: bytes, aliases: tuple[str, ...] = ()) -> VersionRecord:
    src.mkdir(parents=True, exist_ok=True)
    (src / "f.bin").write_bytes(content)
    r = await repo.log(
        [Source(str(src))], project="p", name="m", type="model", aliases=aliases, stat_cache=False
    )
    return r.record


async def head(repo: Repository) -> ArtifactHead:
    return await repo.head("p", "m")


def test_delete_tombstones_and_moves_latest_and_never_reuses_numbers(tmp_path: Path) -> None:
    async def main() -> None:
        repo = await open_repo(tmp_path / "repo")
        src = tmp_path / "src"
        for i in range(3):
            await log(repo, src, b"v%d" % i)
        d = await delete_version(repo, "p", "m", 2)  # the newest: only `latest`, which moves
        assert (d.ref, d.already_deleted, d.aliases) == ("p/m:v2", False, [])
        h = await head(repo)
        assert (h.latest, h.highest) == (1, 2)
        assert [r.version for r in await repo.versions("p", "m")] == [0, 1]
        with pytest.raises(VersionDeleted, match="p/m:v2 was deleted"):
            await repo.resolve(parse_ref("p/m:v2"))
        assert (await repo.resolve(parse_ref("p/m:latest"))).version == 1
        # The record stays as a tombstone: the number is taken for good.
        assert (await repo.version("p", "m", 2, include_deleted=True)).deleted
        # Identical content is not matched to the deleted version: it gets a new number.
        again = await log(repo, src, b"v2")
        assert again.version == 3
        h = await head(repo)
        assert (h.latest, h.highest) == (3, None)
        assert 2 not in h.digests.values()
        # Deleting again reports it and changes nothing.
        d2 = await delete_version(repo, "p", "m", 2)
        assert d2.already_deleted

    asyncio.run(main())


def test_aliased_version_is_refused_unless_delete_aliases(tmp_path: Path) -> None:
    async def main() -> None:
        repo = await open_repo(tmp_path / "repo")
        src = tmp_path / "src"
        await log(repo, src, b"a", aliases=("best", "prod"))
        await log(repo, src, b"b")
        with pytest.raises(AliasedVersion, match=r"p/m:v0 has alias\(es\) best, prod: remove them first"):
            await delete_version(repo, "p", "m", 0)
        dry = await delete_version(repo, "p", "m", 0, delete_aliases=True, dry_run=True)
        assert dry.dry_run and dry.aliases == ["best", "prod"]
        assert not (await repo.version("p", "m", 0, include_deleted=True)).deleted  # nothing written
        d = await delete_version(repo, "p", "m", 0, delete_aliases=True)
        assert d.aliases == ["best", "prod"]
        h = await head(repo)
        assert h.aliases == {"latest": 1} and h.latest == 1
        with pytest.raises(ArtifactNotFound, match="has no alias 'best'"):
            await repo.resolve(parse_ref("p/m:best"))
        # A deleted version takes no alias, metadata or TTL change.
        with pytest.raises(VersionDeleted):
            await repo.set_aliases("p", "m", 0, add=["best"])
        with pytest.raises(VersionDeleted):
            await repo.update_version("p", "m", 0, lambda v: msgspec.structs.replace(v, description="x"))

    asyncio.run(main())


def test_deleting_every_version_then_logging_numbers_above_them(tmp_path: Path) -> None:
    async def main() -> None:
        repo = await open_repo(tmp_path / "repo")
        src = tmp_path / "src"
        for i in range(3):
            await log(repo, src, b"%d" % i)
        for n in (1, 0, 2):
            await delete_version(repo, "p", "m", n)
        h = await head(repo)
        assert (h.latest, h.highest, h.digests) == (None, 2, {})
        assert await repo.versions("p", "m") == []
        with pytest.raises(ArtifactNotFound, match="has no versions"):
            await repo.resolve(parse_ref("p/m"))
        assert (await log(repo, src, b"0")).version == 3

    asyncio.run(main())


def test_crash_between_tombstone_and_head_update_is_finished_later(tmp_path: Path) -> None:
    async def main() -> None:
        repo = await open_repo(tmp_path / "repo")
        src = tmp_path / "src"
        await log(repo, src, b"a")
        await log(repo, src, b"b", aliases=("best",))
        await _tombstone(repo, "p", "m", 1)  # the head update never happened
        h = await head(repo)
        assert h.latest == 1 and h.aliases == {"best": 1, "latest": 1}
        # Not resolvable, not listed, not matched as identical content meanwhile.
        with pytest.raises(VersionDeleted, match=r"p/m:best names v1.*syncengine delete p/m:v1` finishes"):
            await repo.resolve(parse_ref("p/m:best"))
        assert [r.version for r in await repo.versions("p", "m")] == [0]
        # Logging the same content makes a new version (and its head update drops the stale
        # digest); deleting v1 again finishes the head (alias, digest).
        assert (await log(repo, src, b"b")).version == 2
        d = await delete_version(repo, "p", "m", 1)
        assert d.already_deleted and d.aliases == ["best"]
        h = await head(repo)
        assert h.aliases == {"latest": 2} and h.latest == 2 and 1 not in h.digests.values()

    asyncio.run(main())


def test_concurrent_deletes_logs_and_alias_moves_lose_nothing(tmp_path: Path) -> None:
    """Writers with stores of their own (as on other machines) log, delete and alias at once:
    every logged version that was not deleted is listed and resolvable, no head entry names a
    deleted version, `latest` is the newest live one."""

    async def main() -> None:
        path = tmp_path / "repo"
        base = await open_repo(path)
        for i in range(6):
            await log(base, tmp_path / f"seed{i}", b"seed %d" % i)
        writers = [await open_repo(path) for _ in range(6)]
        rng = random.Random(7)
        deleted: set[int] = set()
        logged: list[int] = []

        async def deleter(repo: Repository, numbers: list[int]) -> None:
            for n in numbers:
                await delete_version(repo, "p", "m", n, delete_aliases=True)
                deleted.add(n)

        async def logger(repo: Repository, k: int) -> None:
            for i in range(4):
                r = await log(repo, tmp_path / f"w{k}-{i}", b"writer %d item %d" % (k, i))
                logged.append(r.version)

        async def aliaser(repo: Repository) -> None:
            for i in range(8):
                n = rng.randrange(0, 6)
                with contextlib.suppress(VersionDeleted):
                    await repo.set_aliases("p", "m", n, add=[f"a{i}"])

        await asyncio.gather(
            deleter(writers[0], [0, 2, 4]),
            deleter(writers[1], [5, 1]),
            logger(writers[2], 0),
            logger(writers[3], 1),
            aliaser(writers[4]),
        )
        listed = {r.version for r in await base.versions("p", "m")}
        assert listed == set(logged) | ({0, 1, 2, 3, 4, 5} - deleted)
        assert len(set(logged)) == len(logged) == 8 and not set(logged) & set(range(6))
        h = await head(base)
        assert h.latest == max(listed)
        assert set(h.aliases.values()) <= listed and set(h.digests.values()) <= listed
        assert set(h.digests.values()) == listed  # every live version is found by its content
        for n in listed:
            assert (await base.resolve(parse_ref(f"p/m:v{n}"))).version == n
        for w in [base, *writers]:
            await w.store.close()

    asyncio.run(main())


_CHILD = """
import contextlib, os, random, sys
import syncengine as se
from syncengine.repo.repository import VersionDeleted
role, repo_path, work = sys.argv[1], sys.argv[2], sys.argv[3]
repo = se.Repository.open(repo_path)
if role == "log":
    for i in range(5):
        d = os.path.join(work, f"new{i}")
        os.makedirs(d)
        open(os.path.join(d, "f"), "w").write(f"new {i}")
        art = se.Artifact("m", type="model")
        art.add_dir(d)
        print(repo.log_artifact(art, "p", aliases=[f"n{i}"]).version, flush=True)
elif role == "delete":
    for n in (0, 2, 4, 6):
        repo.artifact(f"p/m:v{n}").delete(delete_aliases=True)
        print(n, flush=True)
else:
    rng = random.Random(3)
    for i in range(10):
        with contextlib.suppress(VersionDeleted):
            v = repo.artifact(f"p/m:v{rng.randrange(8)}")
            v.aliases.append(f"x{i}")
            v.save()
repo.close()
"""


def test_processes_logging_deleting_and_aliasing_at_once(tmp_path: Path) -> None:
    """Three processes on one repository (as three machines would be): no lost version, no
    head entry on a deleted version, numbers never reused."""
    import subprocess
    import sys

    async def seed() -> None:
        repo = await open_repo(tmp_path / "repo")
        for i in range(8):
            await log(repo, tmp_path / f"seed{i}", b"seed %d" % i)
        await repo.store.close()

    asyncio.run(seed())
    procs = {
        role: subprocess.Popen(
            [sys.executable, "-c", _CHILD, role, str(tmp_path / "repo"), str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for role in ("log", "delete", "alias")
    }
    out = {}
    for role, p in procs.items():
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr
        out[role] = stdout.split()
    logged = [int(v[1:]) for v in out["log"]]
    assert logged == list(range(8, 13))  # v0..v7 stay taken, deleted or not

    async def check() -> None:
        repo = await open_repo(tmp_path / "repo")
        listed = {r.version for r in await repo.versions("p", "m")}
        assert listed == {1, 3, 5, 7, *logged}
        h = await head(repo)
        assert h.latest == 12
        assert set(h.aliases.values()) <= listed and set(h.digests.values()) == listed
        assert {f"n{i}" for i in range(5)} <= set(h.aliases)  # no alias of the logger lost
        await repo.store.close()

    asyncio.run(check())


def test_cleanup_keeps_aliased_and_newest_and_deletes_expired(tmp_path: Path) -> None:
    async def main() -> None:
        repo = await open_repo(tmp_path / "repo")
        src = tmp_path / "src"
        for i in range(6):
            await log(repo, src, b"%d" % i, aliases=("best",) if i == 1 else ())
        # v2 expired long ago, v5 (the newest) too; v1 (aliased) expired as well.
        for n in (1, 2, 5):
            await repo.update_version("p", "m", n, lambda v: msgspec.structs.replace(v, ttl_seconds=1))
        later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
        dry = await cleanup(repo, "p", "m", keep_last=3, dry_run=True, now=later)
        assert [(d.version, d.reason) for d in dry.deleted] == [
            (0, "keep-last"),
            (2, "expired"),
            (5, "expired"),
        ]
        assert [k["ref"] for k in dry.kept_aliased] == ["p/m:v1"] and dry.kept_aliased[0]["aliases"] == [
            "best"
        ]
        assert len(await repo.versions("p", "m")) == 6  # dry run: nothing written
        done = await cleanup(repo, "p", "m", keep_last=3, now=later)
        assert [d.version for d in done.deleted] == [0, 2, 5]
        assert [r.version for r in await repo.versions("p", "m")] == [1, 3, 4]
        assert (await head(repo)).latest == 4
        # Without a clock jump nothing is expired; keep_last=1 leaves the newest and v1.
        assert [d.version for d in (await cleanup(repo, "p", "m")).deleted] == [3]
        assert [r.version for r in await repo.versions("p", "m")] == [1, 4]
        with pytest.raises(ConfigError, match="keep_last"):
            await cleanup(repo, "p", "m", keep_last=-1)
        assert (await cleanup(repo, "p", "m", keep_last=10)).deleted == []  # more than there are

    asyncio.run(main())


def test_sync_api_delete_ttl_and_cleanup(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with se.Repository.open(tmp_path / "repo") as repo:
        versions = []
        for i in range(4):
            (src / "x.txt").write_text(str(i))
            art = se.Artifact("m", type="model", ttl=dt.timedelta(days=2) if i == 0 else None)
            art.add_dir(str(src))
            versions.append(repo.log_artifact(art, "p", aliases=["best"] if i == 1 else []))
        assert versions[0].ttl == dt.timedelta(days=2)
        assert versions[0].record.ttl_seconds == 2 * 86400
        v2 = repo.artifact("p/m:v2")
        v2.ttl = dt.timedelta(days=30)
        v2.save()
        assert repo.artifact("p/m:v2").ttl == dt.timedelta(days=30)
        v2.ttl = None
        v2.save()
        assert repo.artifact("p/m:v2").ttl is None
        (src / "x.txt").write_text("4")
        art = se.Artifact("m", type="model")
        art.add_dir(str(src))
        v4 = repo.log_artifact(art, "p", ttl=dt.timedelta(hours=1))
        assert v4.ttl == dt.timedelta(hours=1)
        with pytest.raises(ConfigError, match="ttl must be"):
            v4.ttl = dt.timedelta(0)
        with pytest.raises(ConfigError, match="ttl must be"):
            se.Artifact("m", type="model", ttl="30d")  # type: ignore[arg-type]
        with pytest.raises(AliasedVersion):
            versions[1].delete()
        d = versions[3].delete()
        assert d.ref == "p/m:v3"
        assert versions[3].record.deleted and versions[3].aliases == []
        with pytest.raises(VersionDeleted, match="p/m:v3 was deleted"):
            versions[3].download(tmp_path / "gone")
        with pytest.raises(ConfigError, match="takes 'project/name'"):
            repo.cleanup("p/m:v1")
        assert [v.version for v in repo.artifact_versions("p/m")] == ["v0", "v1", "v2", "v4"]
        with pytest.raises(VersionDeleted):
            versions[3].save()
        c = repo.cleanup("p/m", keep_last=1, dry_run=True)
        assert [d.ref for d in c.deleted] == ["p/m:v0", "p/m:v2"]
        c = repo.cleanup("p/m", keep_last=1)
        assert [v.version for v in repo.artifact_versions("p/m")] == ["v1", "v4"]
        assert repo.artifact("p/m:latest").version == "v4"
        with pytest.raises(ArtifactNotFound, match=r"has no alias 'bset' \(did you mean 'best'\?\)"):
            repo.artifact("p/m:bset")
        with pytest.raises(ArtifactNotFound, match=r"has no artifact 'n' \(it has: m\)"):
            repo.artifact("p/n")
        with pytest.raises(ArtifactNotFound, match=r"no project 'q'.*projects: p"):
            repo.artifact("q/m")
        with repo.run(project="runs-only", job_type="eval"):
            pass
        with pytest.raises(ArtifactNotFound, match=r"project 'runs-only' has runs but no artifacts yet"):
            repo.artifact("runs-only/m")
        with pytest.raises(ArtifactNotFound, match=r"has no artifact 'mm' \(did you mean 'm'\?\)"):
            repo.artifact("p/mm")
        with pytest.raises(ArtifactNotFound, match=r"no version v9 \(the newest is v4\)"):
            repo.artifact("p/m:v9")


def test_records_golden_tombstone_and_head_with_highest() -> None:
    """The bytes of a tombstoned version record and of a head whose newest versions were deleted."""
    tomb = VersionRecord(
        1, "p", "n", 2, "t", "manifests/00/" + "00" * 32, "11" * 32, 0, 0, "2024-06-01T00:00:00Z",
        ttl_seconds=2592000, deleted=True,
    )  # fmt: skip
    assert encode_record(tomb) == (
        b'{"content_digest":"' + b"11" * 32 + b'","created":"2024-06-01T00:00:00Z","deleted":true,'
        b'"files":0,"format":1,"manifest":"manifests/00/' + b"00" * 32 + b'","name":"n","project":"p",'
        b'"size":0,"ttl_seconds":2592000,"type":"t","version":2}'
    )
    h = ArtifactHead(1, "p", "n", "t", 1, {"best": 0}, {"22" * 32: 0, "33" * 32: 1}, highest=4)
    raw = encode_record(h)
    assert raw == (
        b'{"aliases":{"best":0},"digests":{"' + b"22" * 32 + b'":0,"' + b"33" * 32 + b'":1},'
        b'"format":1,"highest":4,"latest":1,"name":"n","project":"p","type":"t"}'
    )
    # (written without `latest_in_aliases`, as before `latest` was an ordinary alias: it reads
    # with `latest` on the newest version)
    assert decode_head(raw) == msgspec.structs.replace(
        h, aliases={"best": 0, "latest": 1}, latest_in_aliases=True
    )
    # A head that never lost its newest version has no `highest` (and reads as None).
    assert b"highest" not in encode_record(msgspec.structs.replace(h, highest=None))


def test_forget_never_leaves_latest_on_a_deleted_version(tmp_path: Path) -> None:
    """Two deletions of the two newest versions, with the head updates in the worst order."""

    async def main() -> None:
        repo = await open_repo(tmp_path / "repo")
        src = tmp_path / "src"
        for i in range(4):
            await log(repo, src, b"%d" % i)
        await _tombstone(repo, "p", "m", 3)
        await _tombstone(repo, "p", "m", 2)
        await forget(repo, "p", "m", [2])  # latest is 3, not 2: it still sees v3 deleted
        h = await head(repo)
        assert h.latest == 1 and h.highest == 3
        await forget(repo, "p", "m", [3])
        assert sorted((await head(repo)).digests.values()) == [0, 1]

    asyncio.run(main())


def test_s3_delete_and_cleanup(s3_server: S3TestServer, s3_bucket: str, tmp_path: Path) -> None:
    from syncengine.store.s3 import S3Store

    async def main() -> None:
        store = S3Store(
            s3_bucket,
            "lc",
            endpoint_url=s3_server.endpoint,
            region=s3_server.region,
            access_key_id=s3_server.access_key,
            secret_access_key=s3_server.secret_key,
        )
        async with store:
            repo = await Repository.open(store, params=PARAMS)
            src = tmp_path / "src"
            for i in range(5):
                await log(repo, src, b"s3 %d" % i, aliases=("best",) if i == 0 else ())
            with pytest.raises(AliasedVersion):
                await delete_version(repo, "p", "m", 0)
            await delete_version(repo, "p", "m", 4)
            assert (await head(repo)).latest == 3
            c = await cleanup(repo, "p", "m", keep_last=1)
            assert [d.version for d in c.deleted] == [1, 2]
            assert [r.version for r in await repo.versions("p", "m")] == [0, 3]
            assert (await log(repo, src, b"s3 4")).version == 5  # v4's number stays taken
            h = json.loads(await store.get(head_key("p", "m")))
            assert h["latest"] == 5 and "highest" not in h and sorted(h["digests"].values()) == [0, 3, 5]

    asyncio.run(main())


def test_ttl_at_log_time_is_in_the_record_as_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No second write sets the TTL of a new version: a process that dies right after the
    commit (here: every later record update fails) leaves the version with its TTL."""
    src = tmp_path / "src"
    src.mkdir()

    async def crash(*_a: object, **_k: object) -> VersionRecord:
        raise RuntimeError("killed after the commit")

    with se.Repository.open(str(tmp_path / "repo")) as repo:
        (src / "x.txt").write_text("0")
        art = se.Artifact("m", type="model", ttl=dt.timedelta(days=2))
        art.add_dir(str(src))
        with monkeypatch.context() as m:
            m.setattr(Repository, "update_version", crash)
            v0 = repo.log_artifact(art, "p")
            (src / "x.txt").write_text("1")
            art = se.Artifact("m", type="model")
            art.add_dir(str(src))
            v1 = repo.log_artifact(art, "p", ttl=dt.timedelta(hours=5))
            draft = v1.new_draft()
            draft.add_file(str(src / "x.txt"), name="y.txt")
            v2 = draft.save(ttl=dt.timedelta(seconds=90))
        stored = [repo.artifact(f"p/m:v{n}").record.ttl_seconds for n in range(3)]
        assert stored == [2 * 86400, 5 * 3600, 90] == [v.record.ttl_seconds for v in (v0, v1, v2)]
        art = se.Artifact("m", type="model")  # identical content: the existing version gets it
        art.add_dir(str(src))
        assert repo.log_artifact(art, "p", ttl=dt.timedelta(days=1)).record.ttl_seconds == 86400
    env = {"SYNCENGINE_REPO": str(tmp_path / "repo2")}
    r = cli("put", str(src), "-n", "p/m", "-t", "model", "--ttl", "7d", "--json", env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["ttl_seconds"] == 7 * 86400
