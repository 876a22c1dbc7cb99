"""Downloads, checkout and verify on the embedded local store (syncengine.repo.download)."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import blake3
import pytest

import syncengine.repo.download as dl
from syncengine import durable
from syncengine.hashing.params import ChunkerParams
from syncengine.hashing.tree import Source
from syncengine.repo.download import (
    Difference,
    PathConflict,
    VerifyFailed,
    check,
    download,
    verify,
)
from syncengine.repo.file_cache import FileCache
from syncengine.repo.manifest import (
    ManifestBuilder,
    ManifestEntry,
    ManifestError,
    UnsafePath,
    encode_manifest,
)
from syncengine.repo.pack import CorruptData
from syncengine.repo.records import VersionRecord
from syncengine.repo.repository import Repository
from syncengine.store.local import LocalStore

PARAMS = ChunkerParams(4096, 16384, 65536)


class CountingStore:
    """Passes everything to a store and counts the pack reads (`get` of `data/…`)."""

    def __init__(self, inner: LocalStore) -> None:
        self.inner = inner
        self.pack_gets: list[tuple[str, tuple[int, int] | None]] = []
        self.pack_bytes = 0

    async def get(
        self, key: str, range: tuple[int, int] | None = None, *, max_bytes: int | None = None
    ) -> bytes:
        data = await self.inner.get(key, range, max_bytes=max_bytes)
        if key.startswith("data/"):
            self.pack_gets.append((key, range))
            self.pack_bytes += len(data)
        return data

    def reset(self) -> None:
        self.pack_gets.clear()
        self.pack_bytes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def read_tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def mixed_files() -> dict[str, bytes]:
    big = os.urandom(300_000)  # ~20 chunks of 4-64 KiB
    return {
        "empty.txt": b"",
        "a.txt": b"alpha",
        "dup/a-copy.txt": b"alpha",  # same blob as a.txt: fetched once, written twice
        "nested/deep/small.csv": b"x,y\n" * 500,  # compressible: stored with zstd
        "models/big.bin": big,
        "models/big-copy.bin": big,
        "text/lorem.txt": b"lorem ipsum dolor sit amet " * 4000,  # chunked and compressible
        "subway.txt": b"not under sub/",
        "sub/one.txt": b"1",
        "sub/two/three.txt": b"3" * 5000,
    }


async def open_repo(path: Path) -> tuple[Repository, CountingStore]:
    store = CountingStore(LocalStore(path))
    return await Repository.open(store, params=PARAMS), store  # type: ignore[arg-type]


async def log(repo: Repository, data: Path, name: str = "ds") -> VersionRecord:
    return (await repo.log([Source(str(data))], project="p", name=name, type="dataset")).record


def test_pack_reads_take_the_process_wide_request_limits(tmp_path: Path) -> None:
    """A get's ranged reads share SYNCENGINE_MAX_REQUESTS with every other transfer of the
    process: with 2 process-wide slots, never more than 2 reads at once, whatever the
    download's own concurrency."""
    from syncengine import transfer

    class Watching(CountingStore):
        def __init__(self, inner: LocalStore) -> None:
            super().__init__(inner)
            self.now = self.peak = 0

        async def get(
            self, key: str, range: tuple[int, int] | None = None, *, max_bytes: int | None = None
        ) -> bytes:
            self.now += 1
            self.peak = max(self.peak, self.now)
            try:
                await asyncio.sleep(0.01)  # overlap the requests
                return await super().get(key, range, max_bytes=max_bytes)
            finally:
                self.now -= 1

    files = {f"f{i:02d}.bin": os.urandom(70_000) for i in range(40)}
    write_tree(tmp_path / "data", files)
    limits = transfer.TransferLimits(max_requests=2, max_inflight=64 << 20)
    saved = transfer.default_limits()

    async def go() -> None:
        store = Watching(LocalStore(tmp_path / "repo"))
        repo = await Repository.open(store, params=PARAMS)  # type: ignore[arg-type]
        rec = await log(repo, tmp_path / "data")
        transfer.set_default_limits(limits)
        try:
            await dl.download(repo, rec, tmp_path / "out", concurrency=16, max_gap=0, max_range=80_000)
        finally:
            transfer.set_default_limits(saved)
        assert len(store.pack_gets) >= 10 and store.peak == 2
        assert limits.in_use == (0, 0)

    asyncio.run(go())
    assert read_tree(tmp_path / "out") == files


def test_round_trip_of_a_mixed_tree(tmp_path: Path) -> None:
    files = mixed_files()
    write_tree(tmp_path / "data", files)
    os.chmod(tmp_path / "data" / "a.txt", 0o755)

    async def go() -> None:
        repo, store = await open_repo(tmp_path / "repo")
        record = await log(repo, tmp_path / "data")
        out = tmp_path / "out"
        res = await download(repo, record, out, concurrency=4)
        assert read_tree(out) == files
        assert (res.files, res.written, res.present, res.references) == (len(files), len(files), 0, [])
        assert res.bytes_written == sum(map(len, files.values()))
        assert res.requests == len(store.pack_gets) and res.bytes_fetched == store.pack_bytes
        # Everything sits in one pack, so coalescing reads it in very few ranges.
        assert res.requests <= 2
        assert stat.S_IMODE((out / "a.txt").stat().st_mode) == 0o755
        assert not [p for p in out.rglob("*") if p.name.startswith(".se-tmp-")]
        assert await verify(repo, record, out) == []

        store.reset()
        again = await download(repo, record, out)
        assert (again.written, again.present, again.requests) == (0, len(files), 0)
        assert store.pack_gets == []

    asyncio.run(go())


def test_redownload_of_a_newer_version_moves_only_what_changed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    files = mixed_files()
    write_tree(data, files)

    async def go() -> None:
        repo, store = await open_repo(tmp_path / "repo")
        v0 = await log(repo, data)
        out = tmp_path / "out"
        await download(repo, v0, out)
        (out / "mine.txt").write_bytes(b"a file of the user's, not in any version")
        packs_v0 = {i.key async for i in repo.store.list("data/")}

        big = bytearray(files["models/big.bin"])
        big[150_000:150_010] = b"0123456789"  # one chunk or two change, the rest stays
        (data / "models" / "big.bin").write_bytes(bytes(big))
        (data / "a.txt").write_bytes(b"ALPHA")
        (data / "new.txt").write_bytes(os.urandom(3000))
        v1 = await log(repo, data)
        assert v1.version == 1
        new_packs = {i.key async for i in repo.store.list("data/")} - packs_v0

        store.reset()
        res = await download(repo, v1, out)
        assert res.written == 3 and res.present == len(files) - 2
        assert read_tree(out) == {
            **files,
            "models/big.bin": bytes(big),
            "a.txt": b"ALPHA",
            "new.txt": (data / "new.txt").read_bytes(),
            "mine.txt": b"a file of the user's, not in any version",  # download never deletes
        }
        # Only the blobs logged for v1 moved, each once: all of the new pack's blobs, in one
        # coalesced read; big.bin's unchanged chunks were copied from the file already there.
        new_blobs = [
            e for e in (await repo.index()).values() if f"data/{e.pack.hex()[:2]}/{e.pack.hex()}" in new_packs
        ]
        assert {k for k, _ in store.pack_gets} == new_packs and res.requests == len(store.pack_gets) == 1
        assert res.bytes_fetched == store.pack_bytes == sum(e.stored for e in new_blobs)
        assert res.bytes_reused >= len(big) - 2 * 65536

        # Into an empty folder, big.bin is assembled from chunks in the packs of both versions.
        store.reset()
        fresh = await download(repo, v1, tmp_path / "fresh")
        assert fresh.bytes_reused == 0 and len({k for k, _ in store.pack_gets}) == 2
        assert (tmp_path / "fresh" / "models" / "big.bin").read_bytes() == bytes(big)

    asyncio.run(go())


def test_path_prefix_selects_a_subtree(tmp_path: Path) -> None:
    files = mixed_files()
    write_tree(tmp_path / "data", files)

    async def go() -> None:
        repo, _ = await open_repo(tmp_path / "repo")
        record = await log(repo, tmp_path / "data")
        out = tmp_path / "out"
        res = await download(repo, record, out, path_prefix="sub/")
        assert read_tree(out) == {"sub/one.txt": b"1", "sub/two/three.txt": b"3" * 5000}
        assert res.files == 2
        assert await verify(repo, record, out, path_prefix="sub/") == []
        missing = await verify(repo, record, out)
        assert {d.path for d in missing} == set(files) - {"sub/one.txt", "sub/two/three.txt"}
        assert {d.kind for d in missing} == {"missing"}

        single = tmp_path / "single"
        await download(repo, record, single, path_prefix="models/big.bin")
        assert read_tree(single) == {"models/big.bin": files["models/big.bin"]}

        with pytest.raises(UnsafePath, match="path_prefix"):
            await download(repo, record, out, path_prefix="../sub")

    asyncio.run(go())


def test_path_prefix_is_a_string_prefix_as_in_wandb(tmp_path: Path) -> None:
    """W&B's ``path_prefix`` is a string prefix of the entry path: ``train`` selects
    ``train.csv``, ``train/x`` and ``trainer/y``; ``train/`` only what is inside ``train``.
    Download, checkout (what it deletes), verify and `get --prefix` agree."""
    files = {
        "train.csv": b"t",
        "train/x.bin": b"x",
        "train/sub/y.bin": b"y",
        "trainer/z.txt": b"z",
        "test/a.bin": b"a",
        "tra.txt": b"not selected by train",
    }
    write_tree(tmp_path / "data", files)
    selected = {k: v for k, v in files.items() if k.startswith("train")}

    async def go() -> None:
        repo, _ = await open_repo(tmp_path / "repo")
        record = await log(repo, tmp_path / "data")
        out = tmp_path / "out"
        res = await download(repo, record, out, path_prefix="train")
        assert read_tree(out) == selected and res.files == 4
        assert await verify(repo, record, out, path_prefix="train") == []
        assert {d.path for d in await verify(repo, record, out, path_prefix="tra")} == {"tra.txt"}

        inside = tmp_path / "inside"
        await download(repo, record, inside, path_prefix="train/")
        assert read_tree(inside) == {"train/x.bin": b"x", "train/sub/y.bin": b"y"}
        partial = tmp_path / "partial"
        await download(repo, record, partial, path_prefix="train/s")
        assert read_tree(partial) == {"train/sub/y.bin": b"y"}

        # checkout makes exactly the selected paths the version's: extras whose path starts
        # with the prefix go (and the folders they leave empty), nothing else is touched
        write_tree(out, {"train.old": b"o", "trainee/q.txt": b"q", "tester.txt": b"keep", "tr.txt": b"k"})
        res = await download(repo, record, out, path_prefix="train", mode="checkout")
        assert res.removed == 2 and not (out / "trainee").exists()
        assert read_tree(out) == {**selected, "tester.txt": b"keep", "tr.txt": b"k"}

    asyncio.run(go())

    env = {**os.environ, "SYNCENGINE_REPO": str(tmp_path / "repo")}
    cli_out = tmp_path / "cli"
    r = subprocess.run(
        [sys.executable, "-m", "syncengine", "get", "p/ds", "--root", str(cli_out), "--prefix", "train"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert read_tree(cli_out) == selected
    dry = subprocess.run(
        [sys.executable, "-m", "syncengine", "get", "p/ds", "--root", str(tmp_path / "dry"),
         "--prefix", "train", "--dry-run", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert set(json.loads(dry.stdout)["would_write"]) == set(selected)


def test_checkout_removes_extras_but_nothing_outside_the_root(tmp_path: Path) -> None:
    files = mixed_files()
    write_tree(tmp_path / "data", files)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_bytes(b"precious")
    (tmp_path / "sibling.txt").write_bytes(b"also precious")

    async def go() -> None:
        repo, _ = await open_repo(tmp_path / "repo")
        record = await log(repo, tmp_path / "data")
        out = tmp_path / "out"
        write_tree(out, {"extra.txt": b"x", "old/dir/file.bin": b"y", "sub/stale.txt": b"z"})
        (out / "a.txt").write_bytes(b"wrong")
        (out / "empty-dir" / "inner").mkdir(parents=True)
        (out / "link-out").symlink_to(outside)  # removed as a link; its target is untouched
        (out / "nested").mkdir(exist_ok=True)
        (out / "nested" / "deep").symlink_to(out / "old")  # the version needs a real directory here
        (out / "models").mkdir()
        (out / "models" / "big.bin").symlink_to(out / "extra.txt")  # and a regular file here
        os.mkfifo(out / "fifo")

        # With a prefix, only that subtree is made exact.
        res = await download(repo, record, out, path_prefix="sub", mode="checkout")
        assert not (out / "sub" / "stale.txt").exists() and (out / "extra.txt").exists()
        assert res.removed == 1

        res = await download(repo, record, out, mode="checkout")
        assert read_tree(out) == files
        assert not (out / "link-out").is_symlink() and not (out / "fifo").exists()
        assert not (out / "empty-dir").exists() and not (out / "old").exists()
        assert (out / "nested" / "deep").is_dir() and not (out / "nested" / "deep").is_symlink()
        assert not (out / "models" / "big.bin").is_symlink()
        assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"]
        assert (outside / "keep.txt").read_bytes() == b"precious"
        assert (tmp_path / "sibling.txt").read_bytes() == b"also precious"
        assert await verify(repo, record, out) == []

    asyncio.run(go())


def test_verify_lists_missing_extra_and_changed(tmp_path: Path) -> None:
    files = mixed_files()
    write_tree(tmp_path / "data", files)

    async def go() -> None:
        repo, _ = await open_repo(tmp_path / "repo")
        record = await log(repo, tmp_path / "data")
        out = tmp_path / "out"
        await download(repo, record, out)
        (out / "a.txt").unlink()
        (out / "sub" / "extra.txt").write_bytes(b"e")
        big = bytearray((out / "models" / "big.bin").read_bytes())
        big[-1] ^= 1  # same size, other content
        (out / "models" / "big.bin").write_bytes(bytes(big))
        (out / "subway.txt").write_bytes(b"longer than it was")
        (out / "empty.txt").unlink()
        (out / "empty.txt").symlink_to(out / "sub" / "one.txt")

        diffs = await verify(repo, record, out)
        assert diffs == [
            Difference("a.txt", "missing", "not on disk"),
            Difference("empty.txt", "changed", "is a symlink, not a regular file"),
            Difference("models/big.bin", "changed", "content differs"),
            Difference("sub/extra.txt", "extra", "file not in the version"),
            Difference("subway.txt", "changed", f"size 18, the version has {len(files['subway.txt'])}"),
        ]
        with pytest.raises(VerifyFailed, match=r"1 missing, 1 extra, 3 changed") as info:
            await check(repo, record, out)
        assert info.value.differences == diffs

    asyncio.run(go())


def _flip_blob_byte(repo_dir: Path, loc: Any) -> None:
    h = loc.pack.hex()
    pack = repo_dir / "data" / h[:2] / h
    raw = bytearray(pack.read_bytes())
    raw[loc.offset + loc.stored // 2] ^= 0xFF
    pack.write_bytes(bytes(raw))


def test_corrupted_pack_byte_names_file_and_blob_and_writes_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_tree(data, {"f.bin": os.urandom(3000), "g.txt": b"fine"})

    async def go() -> None:
        repo, _ = await open_repo(tmp_path / "repo")
        v0 = await log(repo, data)
        out = tmp_path / "out"
        await download(repo, v0, out)
        good = (out / "f.bin").read_bytes()

        new = os.urandom(3000)
        (data / "f.bin").write_bytes(new)
        v1 = await log(repo, data)
        digest = blake3.blake3(new).digest()
        _flip_blob_byte(tmp_path / "repo", (await repo.index())[digest])

        for target in (out, tmp_path / "fresh"):
            with pytest.raises(CorruptData, match=rf"f\.bin: blob {digest.hex()} in pack .*BLAKE3 mismatch"):
                await download(repo, v1, target)
            assert not [p for p in target.rglob("*") if p.name.startswith(".se-tmp-")]
        assert (out / "f.bin").read_bytes() == good  # the older good file is left as it was
        assert not (tmp_path / "fresh" / "f.bin").exists()

    asyncio.run(go())


def test_corrupted_chunk_of_a_large_file_leaves_no_partial_file(tmp_path: Path) -> None:
    big = os.urandom(400_000)
    write_tree(tmp_path / "data", {"big.bin": big})

    async def go() -> None:
        repo, _ = await open_repo(tmp_path / "repo")
        record = await log(repo, tmp_path / "data")
        entry = await (await repo.manifest(record)).get("big.bin")
        assert entry is not None and len(entry.chunks) > 5
        _, last = entry.chunks[-1]
        _flip_blob_byte(tmp_path / "repo", (await repo.index())[last])
        with pytest.raises(CorruptData, match=rf"big\.bin: blob {last.hex()}"):
            await download(repo, record, tmp_path / "out", concurrency=1, max_range=65536)
        assert list((tmp_path / "out").iterdir()) == []

    asyncio.run(go())


async def _crafted(repo: Repository, entries: list[ManifestEntry]) -> VersionRecord:
    """A version record whose manifest lists `entries` as given (no path checks on the way)."""
    builder = ManifestBuilder()
    pages = []
    for e in entries:
        pages += builder.add(e)
    more, manifest = builder.finish()
    for pid, data in pages + more:
        await repo.store.put(f"manifests/{pid.hex()[:2]}/{pid.hex()}", data)
    mdata = encode_manifest(manifest)
    mid = blake3.blake3(mdata).hexdigest()
    key = f"manifests/{mid[:2]}/{mid}"
    await repo.store.put(key, mdata)
    return VersionRecord(1, "p", "evil", 0, "t", key, manifest.content_digest.hex(), len(entries), 0, "")


def test_unsafe_manifest_paths_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    write_tree(tmp_path / "data", {"x.txt": b"payload"})
    root = tmp_path / "deep" / "root"

    async def go() -> None:
        repo, _ = await open_repo(tmp_path / "repo")
        ok = await log(repo, tmp_path / "data")
        good = await (await repo.manifest(ok)).get("x.txt")
        assert good is not None
        for bad in ("../x.txt", "../../escaped.txt", "/tmp/abs.txt", "a/../../x.txt", "a//b", "./x"):
            record = await _crafted(repo, [ManifestEntry(bad, good.size, 0o644, good.digest)])
            with pytest.raises(UnsafePath, match="refused"):
                await download(repo, record, root)
        assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.txt")) == ["data/x.txt"]
        assert list(root.iterdir()) == []

        # A file where the version needs a directory, inside the same manifest.
        a, b = ManifestEntry("a", good.size, 0o644, good.digest), ManifestEntry("a/b", 7, 0o644, good.digest)
        record = await _crafted(repo, [a, b])
        with pytest.raises(ManifestError, match="inside it"):
            await download(repo, record, root)
        # An entry whose chunk list does not give its digest is refused before any fetch.
        record = await _crafted(repo, [ManifestEntry("c", 14, 0o644, good.digest, ((7, good.digest),) * 2)])
        with pytest.raises(ManifestError, match="chunk list"):
            await download(repo, record, root)
        assert list(root.iterdir()) == []

    asyncio.run(go())


def test_symlinks_in_the_root_leading_outside_are_refused(tmp_path: Path) -> None:
    write_tree(tmp_path / "data", {"link/sub/evil.txt": b"evil", "f.txt": b"f", "g.txt": b"g"})
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f.txt").write_bytes(b"outside file")

    async def go() -> None:
        repo, _ = await open_repo(tmp_path / "repo")
        record = await log(repo, tmp_path / "data")
        root = tmp_path / "root"
        root.mkdir()
        (root / "link").symlink_to(outside)
        for mode in ("download", "checkout"):
            with pytest.raises(UnsafePath, match="symlink"):
                await download(repo, record, root, mode=mode)  # type: ignore[arg-type]
        assert sorted(p.name for p in outside.iterdir()) == ["f.txt"]  # not even a directory
        (root / "link").unlink()

        (root / "f.txt").symlink_to(outside / "f.txt")  # the target itself is a link
        for mode in ("download", "checkout"):
            with pytest.raises(UnsafePath, match="symlink"):
                await download(repo, record, root, mode=mode)  # type: ignore[arg-type]
        assert (outside / "f.txt").read_bytes() == b"outside file"

        (root / "f.txt").unlink()
        (root / "f.txt").symlink_to(root / "g.txt")  # a link within the root
        with pytest.raises(UnsafePath, match="symlink"):
            await download(repo, record, root)
        await download(repo, record, root, mode="checkout")  # replaces the link, not its target
        assert not (root / "f.txt").is_symlink() and (root / "f.txt").read_bytes() == b"f"
        assert (root / "g.txt").read_bytes() == b"g"

        (root / "g.txt").unlink()
        (root / "g.txt").mkdir()
        with pytest.raises(PathConflict, match="is a directory"):
            await download(repo, record, root)
        await download(repo, record, root, mode="checkout")
        assert (root / "g.txt").read_bytes() == b"g"

    asyncio.run(go())


def test_file_cache_serves_other_folders_and_rejects_damaged_files(tmp_path: Path) -> None:
    files = {"m/big.bin": os.urandom(200_000), "m/med.bin": os.urandom(70_000), "tiny.txt": b"t"}
    write_tree(tmp_path / "data", files)

    async def go() -> None:
        repo, store = await open_repo(tmp_path / "repo")
        record = await log(repo, tmp_path / "data")
        cache = FileCache(tmp_path / "fc", max_bytes=1 << 20, min_file_size=1024)
        res = await download(repo, record, tmp_path / "a", cache=cache)
        assert res.from_cache == 0 and len(cache) == 2  # tiny.txt is below min_file_size

        store.reset()
        res = await download(repo, record, tmp_path / "b", cache=cache)
        assert read_tree(tmp_path / "b") == files
        assert res.from_cache == 2 and res.requests == 1  # only tiny.txt came from the store

        med = await (await repo.manifest(record)).get("m/med.bin")
        assert med is not None
        cached = Path(cache.path_of(med.digest))  # by file digest (a chunked file: keyed over chunks)
        st = cached.stat()
        os.chmod(cached, 0o644)
        with open(cached, "r+b") as f:
            f.write(b"\0" * 16)
        os.utime(cached, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime as before
        res = await download(repo, record, tmp_path / "c", cache=cache)
        assert read_tree(tmp_path / "c") == files and res.from_cache == 1

        cache.evict(250_000)
        assert cache.total_bytes() <= 250_000 and len(cache) == 1
        cache.close()

        with FileCache(tmp_path / "fc2", link="hardlink", min_file_size=0) as hard:
            await download(repo, record, tmp_path / "d", cache=hard)
            await download(repo, record, tmp_path / "e", cache=hard)
            e_big = (tmp_path / "e" / "m" / "big.bin").stat()
            assert e_big.st_nlink == 3 and stat.S_IMODE(e_big.st_mode) == 0o444
            assert read_tree(tmp_path / "e") == files

    asyncio.run(go())


# Peak RSS is read from /proc/self/status (VmHWM, this process's own high-water mark):
# getrusage's ru_maxrss would carry the parent's peak over fork+exec and hide the growth.
MEMORY_CHILD = """
import asyncio, json, sys
from syncengine.repo.download import download
from syncengine.repo.records import parse_ref
from syncengine.repo.repository import Repository
from syncengine.store.local import LocalStore

def peak_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))

async def main(repo_dir, out):
    repo = await Repository.open(LocalStore(repo_dir), create=False)
    record = await repo.resolve(parse_ref("p/big"))
    await repo.index()
    before = peak_kib()
    res = await download(repo, record, out, max_bytes_in_flight=8 << 20, max_range=4 << 20)
    after = peak_kib()
    print(json.dumps({"growth_kib": after - before, "before_kib": before, "written": res.bytes_written}))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_a_64_mib_file_downloads_in_far_less_memory(tmp_path: Path) -> None:
    size = 64 << 20
    data = tmp_path / "data"
    data.mkdir()
    with open(data / "big.bin", "wb") as f:
        for _ in range(size // (4 << 20)):
            f.write(os.urandom(4 << 20))

    async def put() -> None:
        repo = await Repository.open(LocalStore(tmp_path / "repo"), params=ChunkerParams())
        await repo.log([Source(str(data))], project="p", name="big", type="t")

    asyncio.run(put())
    proc = subprocess.run(
        [sys.executable, "-c", MEMORY_CHILD, str(tmp_path / "repo"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["written"] == size
    assert (tmp_path / "out" / "big.bin").stat().st_size == size
    # 8 MiB of ranges in flight: measured 12-25 MiB of growth (ranges, per-thread malloc
    # arenas, thread stacks); holding the file would add 64 MiB, as the same download with
    # a 1 GiB budget does (measured 64-76 MiB).
    assert got["growth_kib"] < 40 << 10, got


def test_an_interrupted_download_of_a_large_file_resumes(tmp_path: Path) -> None:
    """The store goes away mid-file: the verified part is kept (as a hidden partial file),
    the next run fetches only the rest, and nothing partial is left once it is done."""
    big = os.urandom(2_000_000)
    write_tree(tmp_path / "data", {"big.bin": big})

    class Flaky(CountingStore):
        fail_after: int | None = None

        async def get(
            self, key: str, range: tuple[int, int] | None = None, *, max_bytes: int | None = None
        ) -> bytes:
            failing = self.fail_after is not None and len(self.pack_gets) >= self.fail_after
            if key.startswith("data/") and failing:
                raise ConnectionResetError("store went away")
            return await super().get(key, range, max_bytes=max_bytes)

    async def go() -> None:
        store = Flaky(LocalStore(tmp_path / "repo"))
        repo = await Repository.open(store, params=PARAMS)  # type: ignore[arg-type]
        record = await log(repo, tmp_path / "data")
        store.fail_after = 10
        with pytest.raises(ConnectionResetError):
            await download(repo, record, tmp_path / "out", concurrency=1, max_range=65536)
        first = store.pack_bytes
        assert first > 0 and not (tmp_path / "out" / "big.bin").exists()
        [partial] = list((tmp_path / "out").iterdir())
        assert partial.name.startswith(".se-tmp-partial-")
        store.fail_after = None
        store.reset()
        res = await download(repo, record, tmp_path / "out", concurrency=1, max_range=65536)
        assert (tmp_path / "out" / "big.bin").read_bytes() == big
        assert res.bytes_reused >= first - 65536 and store.pack_bytes <= len(big) - res.bytes_reused + 65536
        assert [p.name for p in (tmp_path / "out").iterdir()] == ["big.bin"]  # partial used up

    asyncio.run(go())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd")
def test_writeback_starts_while_files_are_written_and_the_flush_still_precedes_the_renames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writeback of each temp file is started from a worker thread (not the event loop)
    every WRITEBACK_STEP bytes and once it is complete; the temp files are still flushed
    (syncfs or fsync) before any of them is renamed."""
    files = mixed_files()
    write_tree(tmp_path / "data", files)
    monkeypatch.setattr(dl, "WRITEBACK_STEP", 64 << 10)
    seen: dict[int, list[bytes]] = {}  # inode of the temp file -> its content at each start
    threads: set[str] = set()
    real_start = durable.start_writeback

    def recording(fd: int, offset: int = 0, nbytes: int = 0) -> None:
        assert (offset, nbytes) == (0, 0)  # the whole file
        with open(f"/proc/self/fd/{fd}", "rb") as f:
            seen.setdefault(os.fstat(fd).st_ino, []).append(f.read())
        threads.add(threading.current_thread().name)
        real_start(fd, offset, nbytes)

    flushed: list[list[str]] = []
    real_flush = durable.SyncBatch.flush

    def flush(self: durable.SyncBatch, paths: Any) -> None:
        paths = list(paths)
        assert all(os.path.basename(p).startswith(".se-tmp-") and os.path.isfile(p) for p in paths)
        assert not [rel for rel in files if (tmp_path / "out" / rel).exists()]  # nothing renamed yet
        flushed.append(paths)
        real_flush(self, paths)

    monkeypatch.setattr(dl, "start_writeback", recording)
    monkeypatch.setattr(durable.SyncBatch, "flush", flush)

    async def go() -> None:
        repo, _ = await open_repo(tmp_path / "repo")
        record = await log(repo, tmp_path / "data")
        await download(repo, record, tmp_path / "out", concurrency=4)

    asyncio.run(go())
    out = tmp_path / "out"
    assert read_tree(out) == files
    assert len(flushed) == 1 and len(flushed[0]) == len(files)  # the empty file too
    assert threads and all(t.startswith("syncengine-dl") for t in threads)
    for rel, data in files.items():
        starts = seen.get((out / rel).stat().st_ino, [])  # a rename keeps the inode
        if not data:
            assert starts == []  # nothing to write back
            continue
        assert starts[-1] == data, rel  # the last start saw the complete file
        if len(data) > 4 * (64 << 10):
            assert len(starts) >= 2, rel  # and a large file had earlier ones


def test_a_writeback_error_fails_the_download_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {f"f{i:02d}.bin": os.urandom(3000 + i) for i in range(20)}
    files["big.bin"] = os.urandom(300_000)
    write_tree(tmp_path / "data", files)
    calls = 0

    def failing(fd: int, offset: int = 0, nbytes: int = 0) -> None:
        nonlocal calls
        calls += 1
        if calls == 8:
            raise OSError(errno.EIO, "sync_file_range: Input/output error")

    async def go() -> None:
        repo, _ = await open_repo(tmp_path / "repo")
        record = await log(repo, tmp_path / "data")
        monkeypatch.setattr(dl, "start_writeback", failing)
        with pytest.raises(OSError) as info:
            await download(repo, record, tmp_path / "out", concurrency=2)
        assert info.value.errno == errno.EIO
        left = [p.name for p in (tmp_path / "out").iterdir()]
        # No file was renamed into place (the window's flush never ran), no plain temp file
        # is left; only a large file's verified chunks may stay, as after any interruption.
        assert all(n.startswith(".se-tmp-partial-") for n in left), left
        monkeypatch.undo()
        await download(repo, record, tmp_path / "out", concurrency=2)
        assert read_tree(tmp_path / "out") == files
        assert await verify(repo, record, tmp_path / "out") == []
        assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".se-tmp-")]

    asyncio.run(go())


def test_no_fsync_writes_verified_files_without_flushing_and_keeps_them_out_of_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``fsync=False`` (``get --no-fsync``): the same verified files under their final names,
    but no flush (no syncfs, no fsync), no early writeback, and nothing added to the file
    cache, whose entries later downloads trust; files already cached are still used."""
    files = mixed_files()
    write_tree(tmp_path / "data", files)
    calls: list[str] = []
    monkeypatch.setattr(dl, "start_writeback", lambda fd, offset=0, nbytes=0: calls.append("writeback"))
    real_flush, real_dirs = durable.SyncBatch.flush, durable.SyncBatch.flush_dirs

    def flush(self: durable.SyncBatch, paths: Any) -> None:
        calls.append("flush")
        real_flush(self, paths)

    def flush_dirs(self: durable.SyncBatch, dirs: Any) -> None:
        calls.append("flush_dirs")
        real_dirs(self, dirs)

    monkeypatch.setattr(durable.SyncBatch, "flush", flush)
    monkeypatch.setattr(durable.SyncBatch, "flush_dirs", flush_dirs)
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        calls.append("fsync")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)

    async def go() -> None:
        repo, _ = await open_repo(tmp_path / "repo")
        record = await log(repo, tmp_path / "data")
        cache = FileCache(tmp_path / "fc", max_bytes=1 << 30, min_file_size=0)
        calls.clear()
        res = await download(repo, record, tmp_path / "fast", cache=cache, fsync=False)
        assert read_tree(tmp_path / "fast") == files and res.written == len(files)
        assert calls == [] and len(cache) == 0
        assert not [p for p in (tmp_path / "fast").rglob(".se-tmp-*")]
        assert await verify(repo, record, tmp_path / "fast") == []

        await download(repo, record, tmp_path / "durable", cache=cache)  # the default
        assert "flush" in calls and "flush_dirs" in calls and "writeback" in calls
        assert len(cache) > 0
        res = await download(repo, record, tmp_path / "again", cache=cache, fsync=False)
        assert read_tree(tmp_path / "again") == files and res.from_cache > 0
        cache.close()

    asyncio.run(go())
