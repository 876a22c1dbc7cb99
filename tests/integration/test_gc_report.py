"""`syncengine gc --dry-run`: live data from every non-deleted version, reclaimable bytes (docs/GC.md)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
from pathlib import Path

import msgspec

from syncengine.hashing.params import ChunkerParams
from syncengine.hashing.tree import Source
from syncengine.repo.gc import survey
from syncengine.repo.lifecycle import delete_version
from syncengine.repo.repository import Repository
from syncengine.store.local import LocalStore
from tests.integration.test_cli import cli

PARAMS = ChunkerParams(4096, 16384, 65536)


async def _log(repo: Repository, src: Path, aliases: tuple[str, ...] = ()) -> int:
    r = await repo.log(
        [Source(str(src))], project="p", name="m", type="model", aliases=aliases, stat_cache=False
    )
    return r.record.version


def test_dedup_semantics_of_the_report(tmp_path: Path) -> None:
    """Deleting v0 keeps what v1 still uses; deleting every version reclaims everything."""

    async def main() -> None:
        store = LocalStore(tmp_path / "repo")
        repo = await Repository.open(store, params=PARAMS)
        src = tmp_path / "src"
        src.mkdir()
        shared = os.urandom(200_000)  # chunked: its chunks are shared by both versions
        (src / "shared.bin").write_bytes(shared)
        (src / "only0.bin").write_bytes(os.urandom(50_000))
        await _log(repo, src)
        (src / "only0.bin").unlink()
        (src / "only1.bin").write_bytes(os.urandom(30_000))
        await _log(repo, src, aliases=("best",))
        r = await survey(repo)
        assert (r.versions, r.deleted_versions, r.dead_blobs, r.reclaimable_bytes) == (2, 0, 0, 0)
        all_pack_bytes = r.pack_bytes

        await delete_version(repo, "p", "m", 0)
        r = await survey(repo)
        assert (r.versions, r.deleted_versions) == (1, 1)
        assert r.live_bytes >= 230_000 and r.dead_bytes >= 50_000  # only0's blobs are dead
        assert r.dead_bytes < 60_000  # shared.bin stays: v1 uses it
        assert r.dead_manifest_objects >= 1 and not r.problems

        await delete_version(repo, "p", "m", 1, delete_aliases=True)
        r = await survey(repo)
        assert (r.versions, r.live_blobs, r.live_bytes) == (0, 0, 0)
        assert r.dead_packs == r.packs and r.dead_pack_bytes == all_pack_bytes
        assert r.dead_manifest_objects == r.manifest_objects
        assert r.reclaimable_bytes == all_pack_bytes + r.dead_manifest_bytes
        # A pack no index names (a put that died before its segment, or one still running).
        await store.put("data/ab/" + "ab" * 32, b"x" * 100)
        r2 = await survey(repo)
        assert (r2.unindexed_packs, r2.unindexed_bytes) == (1, 100)
        await store.close()

    asyncio.run(main())


def test_expired_versions_are_reported(tmp_path: Path) -> None:
    async def main() -> None:
        repo = await Repository.open(LocalStore(tmp_path / "repo"), params=PARAMS)
        src = tmp_path / "src"
        src.mkdir()
        for i in range(2):
            (src / "f").write_text(str(i))
            await _log(repo, src, aliases=("best",) if i == 0 else ())
        for n in (0, 1):
            await repo.update_version("p", "m", n, lambda v: msgspec.structs.replace(v, ttl_seconds=60))
        r = await survey(repo, now=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
        assert (r.expired, r.expired_aliased) == (["p/m:v1"], ["p/m:v0"])
        await repo.store.close()

    asyncio.run(main())


def test_gc_cli_dry_run(tmp_path: Path) -> None:
    env = {"SYNCENGINE_REPO": str(tmp_path / "repo")}
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(1000))
    assert cli("put", str(src), "-n", "p/m", "-t", "model", env=env).returncode == 0
    (src / "a.bin").write_bytes(os.urandom(1000))
    assert cli("put", str(src), "-n", "p/m", "-t", "model", env=env).returncode == 0
    assert cli("delete", "p/m:v0", env=env).returncode == 0
    r = cli("gc", "--dry-run", "--json", env=env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["versions"], out["deleted_versions"], out["dead_blobs"], out["dead_packs"]) == (1, 1, 1, 1)
    assert out["reclaimable_bytes"] >= 1000
    text = cli("gc", "--dry-run", env=env)
    assert text.returncode == 0 and "(dry run: nothing deleted)" in text.stdout
    assert "would delete 1 pack(s) with no live blob" in text.stdout
    r = cli("gc", env=env)  # phase 1 only: a mark, nothing deleted within the grace period
    assert r.returncode == 0 and "marked" in r.stdout, r.stderr
    assert "would delete 1 pack(s)" in cli("gc", "--dry-run", env=env).stdout
    assert cli("check", env=env).returncode == 0  # deleted versions are not checked
