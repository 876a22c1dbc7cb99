"""Versions on the embedded local store: v0, v1…, identical content, dedup, download, safety."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import ClassVar

import pytest

from syncengine.hashing.params import ChunkerParams
from syncengine.hashing.tree import Source
from syncengine.repo.manifest import UnsafePath
from syncengine.repo.pack import CorruptData
from syncengine.repo.records import parse_ref
from syncengine.repo.repository import ArtifactNotFound, Repository, TypeMismatch, safe_target
from syncengine.store.local import LocalStore

PARAMS = ChunkerParams(4096, 16384, 65536)


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def read_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


async def open_repo(path: Path) -> Repository:
    return await Repository.open(LocalStore(path), params=PARAMS)


def test_versions_identical_content_dedup_and_download(tmp_path: Path) -> None:
    data = tmp_path / "data"
    files = {"a.txt": b"alpha", "big/model.bin": os.urandom(300_000), "c/d.csv": b"x,y\n" * 1000}
    write_tree(data, files)

    async def go() -> None:
        repo = await open_repo(tmp_path / "repo")
        r0 = await repo.log(
            [Source(str(data))],
            project="vision",
            name="mnist",
            type="dataset",
            aliases=["best"],
            metadata={"rows": 3},
            description="first",
        )
        assert r0.created and r0.record.version == 0 and r0.files == 3
        again = await repo.log(
            [Source(str(data))], project="vision", name="mnist", type="dataset", aliases=["prod"]
        )
        assert not again.created and again.record.version == 0 and again.new_bytes == 0
        head = await repo.head("vision", "mnist")
        assert head.aliases == {"best": 0, "prod": 0, "latest": 0} and head.latest == 0

        (data / "extra.bin").write_bytes(os.urandom(50_000))
        r1 = await repo.log([Source(str(data))], project="vision", name="mnist", type="dataset")
        assert r1.created and r1.record.version == 1
        assert 50_000 <= r1.new_bytes < 60_000  # only the new file moved: dedup across versions
        assert (await repo.resolve(parse_ref("vision/mnist"))).version == 1
        assert (await repo.resolve(parse_ref("vision/mnist:best"))).version == 0
        assert (await repo.resolve(parse_ref("vision/mnist:v0"))).metadata == {"rows": 3}

        out = tmp_path / "out"
        await repo.download(await repo.resolve(parse_ref("vision/mnist:v0")), str(out))
        assert read_tree(out) == files
        assert [v.version for v in await repo.versions("vision", "mnist")] == [0, 1]

        with pytest.raises(TypeMismatch, match="has type 'dataset', not 'model'"):
            await repo.log([Source(str(data))], project="vision", name="mnist", type="model")
        with pytest.raises(ArtifactNotFound, match=r"no alias 'nope'.*best, latest, prod"):
            await repo.resolve(parse_ref("vision/mnist:nope"))
        with pytest.raises(ArtifactNotFound, match=r"has no artifact 'mnst'.*mnist"):
            await repo.resolve(parse_ref("vision/mnst"))

    asyncio.run(go())


def test_corrupted_pack_byte_fails_download_naming_the_blob(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_tree(data, {"f.bin": os.urandom(10_000)})

    async def go() -> None:
        repo = await open_repo(tmp_path / "repo")
        r = await repo.log([Source(str(data))], project="p", name="n", type="t")
        pack = next((tmp_path / "repo" / "data").rglob("*"))
        while pack.is_dir():
            pack = next(pack.iterdir())
        raw = bytearray(pack.read_bytes())
        raw[100] ^= 0xFF
        pack.write_bytes(bytes(raw))
        with pytest.raises(CorruptData, match="BLAKE3 mismatch"):
            await repo.download(r.record, str(tmp_path / "out"))
        assert not (tmp_path / "out" / "f.bin").exists()

    asyncio.run(go())


def test_unsafe_manifest_paths_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    for bad in ("../x", "/etc/passwd", "a/../../x", "a//b", "./a"):
        with pytest.raises(UnsafePath):
            safe_target(str(root), bad)
    (tmp_path / "outside").mkdir()
    (root / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(UnsafePath, match="symlink"):
        safe_target(str(root), "link/evil.txt")
    assert safe_target(str(root), "ok/file.txt") == str(root / "ok" / "file.txt")


WRITER = """
import asyncio, os, sys
import msgspec
from pathlib import Path
from typing import ClassVar
from syncengine.hashing.params import ChunkerParams
from syncengine.hashing.tree import Source
from syncengine.repo.repository import Repository
from syncengine.store.local import LocalStore

async def main(repo_dir, work, me):
    repo = await Repository.open(LocalStore(repo_dir), params=ChunkerParams(4096, 16384, 65536))
    out = []
    for i in range(5):
        d = Path(work) / f"w{me}-{i}"
        d.mkdir(parents=True)
        (d / "f.txt").write_bytes(f"writer {me} log {i}".encode())
        r = await repo.log([Source(str(d))], project="p", name="shared", type="t", aliases=[f"w{me}"])
        out.append(r.record.version)
        await repo.update_version("p", "shared", 0, lambda v: msgspec.structs.replace(
            v, metadata={**v.metadata, f"w{me}-{i}": i}))
    print(" ".join(map(str, out)))

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
"""


def test_concurrent_writers_get_distinct_consecutive_versions(tmp_path: Path) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path / "repo"), str(tmp_path / "work"), str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "SYNCENGINE_CACHE_DIR": str(tmp_path / f"cache{i}")},
        )
        for i in range(4)
    ]
    got = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        got += [int(x) for x in out.split()]
    assert sorted(got) == list(range(20))

    async def check() -> None:
        repo = await open_repo(tmp_path / "repo")
        head = await repo.head("p", "shared")
        assert head.latest == 19
        assert set(head.aliases) == {"w0", "w1", "w2", "w3", "latest"}  # no alias update lost
        assert head.aliases["latest"] == 19
        assert len(head.digests) == 20
        v0 = await repo.version("p", "shared", 0)
        assert len(v0.metadata) == 20  # every writer's metadata update kept (compare-and-swap)

    asyncio.run(check())


def test_index_segments_are_cached_locally_and_checked(tmp_path: Path) -> None:
    from syncengine.repo import repository as repo_mod

    data = tmp_path / "data"
    write_tree(data, {"a.bin": os.urandom(20_000), "b.bin": os.urandom(30_000)})

    class CountingStore(LocalStore):
        gets: ClassVar[list[str]] = []

        async def get(
            self, key: str, range: tuple[int, int] | None = None, *, max_bytes: int | None = None
        ) -> bytes:
            self.gets.append(key)
            return await super().get(key, range, max_bytes=max_bytes)

    async def go() -> None:
        repo = await Repository.open(CountingStore(tmp_path / "repo"), params=PARAMS)
        await repo.log([Source(str(data))], project="p", name="a", type="dataset", stat_cache=False)
        cache = Path(repo_mod._segment_cache_dir(repo.config.id))
        [seg] = list(cache.iterdir())
        CountingStore.gets = []
        fresh = await Repository.open(CountingStore(tmp_path / "repo"), params=PARAMS)
        index = await fresh.index()
        n = len(await repo.index())
        assert len(index) == n and not [k for k in CountingStore.gets if k.startswith("index/")]
        # A damaged local copy is never believed: it is fetched again and replaced.
        seg.write_bytes(seg.read_bytes()[:-1] + b"\0")
        again = await Repository.open(CountingStore(tmp_path / "repo"), params=PARAMS)
        assert len(await again.index()) == n
        assert [k for k in CountingStore.gets if k.startswith("index/")] == [f"index/{seg.name}"]
        from syncengine.repo.pack import decode_index

        assert len(decode_index(bytes.fromhex(seg.name), seg.read_bytes())) == n  # repaired

    asyncio.run(go())


def test_hashing_leaves_the_event_loop_free(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While files hash, the put's event loop keeps running other tasks (uploads, progress):
    here hashing cannot even start until a coroutine on that loop lets it, so a put that
    hashed on the loop thread would never finish."""
    from syncengine.repo import ingest

    data = tmp_path / "data"
    write_tree(data, {"big.bin": os.urandom(200_000), "small.txt": b"s"})
    gate = threading.Event()
    real = ingest.IngestHasher.hash_file

    def gated(self: ingest.IngestHasher, path: str, expected_size: int | None = None) -> object:
        if not gate.wait(timeout=60):
            raise AssertionError("the event loop never ran while files were being hashed")
        return real(self, path, expected_size)

    monkeypatch.setattr(ingest.IngestHasher, "hash_file", gated)

    async def go() -> None:
        repo = await open_repo(tmp_path / "repo")

        async def open_gate() -> None:
            await asyncio.sleep(0.05)
            gate.set()

        opener = asyncio.ensure_future(open_gate())
        r = await repo.log([Source(str(data))], project="p", name="n", type="t", stat_cache=False)
        await opener
        assert r.created and r.files == 2

    asyncio.run(go())


def test_an_edited_large_file_is_hashed_split_and_only_its_new_chunks_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large file the stat cache has seen before goes to the plain (split) hasher — most of
    its chunks are in the repository already — and only its new chunks are read and packed."""
    from syncengine.hashing import tree

    monkeypatch.setattr(tree, "segment_starts", lambda size, threads: [0, size // 2])  # always split
    split: list[str] = []
    real_segment = tree.TreeHasher._segment

    def segment(self: tree.TreeHasher, path: str, *a: int) -> object:
        split.append(os.path.basename(path))
        return real_segment(self, path, *a)

    monkeypatch.setattr(tree.TreeHasher, "_segment", segment)
    data = tmp_path / "data"
    big = os.urandom(400_000)
    write_tree(data, {"big.bin": big})

    async def go() -> None:
        repo = await open_repo(tmp_path / "repo")
        r0 = await repo.log([Source(str(data))], project="p", name="n", type="t")
        (data / "big.bin").write_bytes(big[:100_000] + b"edit" + big[100_000:])
        (data / "new-later.bin").write_bytes(os.urandom(300_000))  # never seen: read once
        split.clear()
        r1 = await repo.log([Source(str(data))], project="p", name="n", type="t")
        assert split == ["big.bin", "big.bin"]  # the edited file only, in two segments
        assert r1.created and r1.record.version == 1
        assert r1.new_bytes < 300_000 + 3 * PARAMS.max_size  # the new file + a few chunks
        out = tmp_path / "out"
        await repo.download(r1.record, str(out), skip_cache=True)
        assert read_tree(out) == read_tree(data)
        assert await repo.check(read_data=True) == []
        assert r0.record.version == 0

    asyncio.run(go())
