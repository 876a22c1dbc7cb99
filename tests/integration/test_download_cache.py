"""Downloads through the API and the machine's file cache: on by default, skip_cache, link
modes, the size bound (env var and parameter, LRU eviction), path_prefix, the default root."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest

import syncengine as se
from syncengine import aio
from syncengine.errors import ConfigError
from syncengine.repo import file_cache
from syncengine.repo.file_cache import FileCache, default_file_cache_dir

SIZE = 100_000  # above the cache's 64 KiB minimum


def big_files(n: int) -> dict[str, bytes]:
    return {f"d{i}/f.bin": os.urandom(SIZE) for i in range(n)}


def log_files(tmp_path: Path, files: dict[str, bytes], name: str = "art") -> se.ArtifactVersion:
    data = tmp_path / "data"
    for rel, content in files.items():
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(content)
    repo = se.Repository.open(str(tmp_path / "repo"))
    art = se.Artifact(name, type="dataset")
    art.add_dir(str(data))
    return repo.log_artifact(art, project="p")


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def drop_packs(tmp_path: Path) -> None:
    packs = [p for p in (tmp_path / "repo" / "data").rglob("*") if p.is_file()]
    assert packs
    for p in packs:
        p.unlink()


def cached_paths(v: se.ArtifactVersion) -> set[str]:
    """The version's paths whose content the machine's cache holds (looked at without
    counting as a use)."""
    entries = v.manifest.entries
    with FileCache() as c:
        return {path for path, e in entries.items() if os.path.exists(c.path_of(e.digest))}


def test_downloads_use_the_machine_cache_by_default_and_skip_cache_bypasses_it(tmp_path: Path) -> None:
    files = big_files(3)
    v = log_files(tmp_path, files)
    assert Path(v.download(tmp_path / "a")) == tmp_path / "a"
    assert default_file_cache_dir() == Path(os.environ["SYNCENGINE_CACHE_DIR"]) / "files"
    assert cached_paths(v) == set(files)  # the documented default location

    drop_packs(tmp_path)  # from now on only the cache can supply the content
    v.download(tmp_path / "b")
    assert tree(tmp_path / "b") == files
    with pytest.raises(Exception, match=r"d0/f\.bin"):  # names the file whose pack is gone
        v.download(tmp_path / "c", skip_cache=True)
    assert not (tmp_path / "c" / "d0" / "f.bin").exists()
    v.checkout(tmp_path / "d")  # checkout uses it too
    assert tree(tmp_path / "d") == files


def test_skip_cache_neither_reads_nor_fills_the_cache(tmp_path: Path) -> None:
    files = big_files(2)
    v = log_files(tmp_path, files)
    v.download(tmp_path / "a", skip_cache=True)
    assert tree(tmp_path / "a") == files
    with FileCache() as c:
        assert len(c) == 0
    v.checkout(tmp_path / "b", skip_cache=True)
    assert cached_paths(v) == set()


def test_the_cache_bound_evicts_least_recently_used_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = big_files(5)
    v = log_files(tmp_path, files)
    monkeypatch.setenv("SYNCENGINE_FILE_CACHE_SIZE", "250000")  # room for two files
    v.download(tmp_path / "a")  # adds d0…d4 in path order; each addition evicts the oldest
    assert cached_paths(v) == {"d3/f.bin", "d4/f.bin"}
    with FileCache() as c:
        assert c.max_bytes == 250_000 and c.total_bytes() == 2 * SIZE

    # A hit counts as a use: taking d3 from the cache makes d4 the least recently used.
    v.download(tmp_path / "b", path_prefix="d3")
    assert tree(tmp_path / "b") == {"d3/f.bin": files["d3/f.bin"]}
    v.download(tmp_path / "c", "d0")  # fetched, added: d4 goes
    assert cached_paths(v) == {"d0/f.bin", "d3/f.bin"}

    # The parameter wins over the variable; 0 caches nothing and a lower bound evicts at once.
    v.download(tmp_path / "d", cache_size=SIZE)
    assert len(cached_paths(v)) == 1
    v.download(tmp_path / "e", cache_size=0)
    with FileCache(max_bytes=10 << 20) as c:
        assert len(c) == 0 and c.total_bytes() == 0
    assert tree(tmp_path / "e") == files

    monkeypatch.setenv("SYNCENGINE_FILE_CACHE_SIZE", "lots")
    with pytest.raises(ConfigError, match="SYNCENGINE_FILE_CACHE_SIZE='lots' is not a size"):
        v.download(tmp_path / "f")
    v.download(tmp_path / "f", skip_cache=True)  # a skipped cache is not even configured
    monkeypatch.setenv("SYNCENGINE_FILE_CACHE_SIZE", "1M")
    with FileCache() as c:
        assert c.max_bytes == 1 << 20
    with pytest.raises(ValueError, match="must not be negative"):
        v.download(tmp_path / "g", cache_size=-1)


def test_the_total_is_kept_by_the_table_also_for_an_existing_cache(tmp_path: Path) -> None:
    d = tmp_path / "fc"
    d.mkdir()
    old = sqlite3.connect(d / "files.sqlite")  # a table from before the total was kept
    old.execute(
        "CREATE TABLE files (digest BLOB PRIMARY KEY, size INTEGER NOT NULL, ino INTEGER NOT NULL,"
        " mtime_ns INTEGER NOT NULL, last_used INTEGER NOT NULL) WITHOUT ROWID"
    )
    old.executemany(
        "INSERT INTO files VALUES (?, ?, 0, 0, ?)", [(bytes([i]) * 32, 1000, i) for i in range(3)]
    )
    old.commit()
    old.close()
    with FileCache(d, max_bytes=2500, min_file_size=1) as c:  # opening evicts down to the bound
        assert (len(c), c.total_bytes()) == (2, 2000)
        src = tmp_path / "src"
        for i in range(3):
            src.write_bytes(bytes([i]) * 700)
            assert c.add(str(src), bytes([100 + i]) * 32, 700)
        assert c.add(str(src), bytes([102]) * 32, 700)  # already there: no second row
        assert c.total_bytes() == sum(r[0] for r in c._db.execute("SELECT size FROM files")) <= 2500
        c._db.execute("UPDATE total SET bytes = 1000000000")  # a total gone wrong: recounted, not a wipe-out
        c.evict()
        assert c.total_bytes() == 0 and len(c) == 0


@pytest.fixture
def no_clones(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A filesystem without copy-on-write clones (ext4, tmpfs…) wherever the test runs; lists
    the clones tried."""
    tried: list[int] = []
    real_ioctl = fcntl.ioctl

    def ioctl(fd: int, request: int, *args: Any) -> Any:
        if request == file_cache._FICLONE:
            tried.append(fd)
            raise OSError(errno.EOPNOTSUPP, "no clones on this filesystem")
        return real_ioctl(fd, request, *args)

    monkeypatch.setattr(fcntl, "ioctl", ioctl)
    monkeypatch.setattr(file_cache, "_CLONELESS", set())
    return tried


def cached_stat(digest: bytes) -> os.stat_result:
    with FileCache() as c:
        return os.stat(c.path_of(digest))


def test_link_modes(tmp_path: Path, no_clones: list[int]) -> None:
    files = {**big_files(2), "small.txt": b"small"}
    v = log_files(tmp_path, files)
    entry = v.manifest.entries["d0/f.bin"]
    mode = entry.mode & 0o777 or 0o644
    with pytest.raises(ValueError, match="link must be one of copy, reflink, hardlink"):
        v.download(tmp_path / "x", link="symlink")
    with pytest.raises(ValueError, match="link must be one of"):
        v.download(tmp_path / "x", skip_cache=True, link="symlink")

    def check_independent(root: Path) -> None:
        assert tree(root) == files
        st = (root / "d0" / "f.bin").stat()
        assert st.st_ino != cached_stat(entry.digest).st_ino and st.st_nlink == 1
        assert stat.S_IMODE(st.st_mode) == mode  # the entry's, not the cache's 0444
        (root / "d0" / "f.bin").write_bytes(b"edited")  # an edit stays in this folder
        assert cached_stat(entry.digest).st_size == SIZE

    # reflink (the default) where clones fail: a downloaded file joins the cache by a hard link
    # that leaves it as it is (no second copy of its bytes) ...
    r1 = tmp_path / "r1"
    v.download(r1)
    assert len(no_clones) >= 1  # a clone was tried first (then known not to work here; two
    tried = len(no_clones)  # download threads may both try before either has failed)
    st = (r1 / "d0" / "f.bin").stat()
    assert st.st_ino == cached_stat(entry.digest).st_ino and st.st_nlink == 2
    assert stat.S_IMODE(st.st_mode) == mode  # still the folder's own, writable file
    # ... and leaves it as an independent copy.
    file_cache._CLONELESS.clear()  # (as in a new process)
    v.download(tmp_path / "r2")
    assert len(no_clones) > tried
    check_independent(tmp_path / "r2")

    no_clones.clear()
    file_cache._CLONELESS.clear()
    v.download(tmp_path / "c", link="copy")  # a byte copy out of the cache: no clone tried
    assert no_clones == []
    check_independent(tmp_path / "c")

    # Editing r1's files in place changes the entries they share: never another folder's files.
    with open(r1 / "d0" / "f.bin", "r+b") as f:
        f.write(b"X" * 16)  # a new mtime: the cache drops the entry
    d1 = r1 / "d1" / "f.bin"
    before = d1.stat()
    with open(d1, "r+b") as f:
        f.write(b"X" * 16)
    os.utime(d1, ns=(before.st_atime_ns, before.st_mtime_ns))  # same size and mtime: the re-hash
    v.download(tmp_path / "after-edits")
    assert tree(tmp_path / "after-edits") == files


def test_hardlink_downloads_never_link_to_a_writable_folder(tmp_path: Path, no_clones: list[int]) -> None:
    files = big_files(1)
    v = log_files(tmp_path, files)
    entry = v.manifest.entries["d0/f.bin"]
    v.download(tmp_path / "a")  # reflink without clones: a/'s file is shared with the cache
    assert (tmp_path / "a" / "d0" / "f.bin").stat().st_nlink == 2
    v.download(tmp_path / "b", link="hardlink")  # the entry gets a read-only copy of its own first
    a, b = (tmp_path / "a" / "d0" / "f.bin").stat(), (tmp_path / "b" / "d0" / "f.bin").stat()
    assert a.st_nlink == 1 and stat.S_IMODE(a.st_mode) == (entry.mode & 0o777 or 0o644)
    assert b.st_ino == cached_stat(entry.digest).st_ino and b.st_nlink == 2
    assert stat.S_IMODE(b.st_mode) == 0o444
    assert tree(tmp_path / "a") == tree(tmp_path / "b") == files


def test_hardlinked_files_are_read_only_and_share_the_cache_inode(tmp_path: Path) -> None:
    files = {**big_files(2), "small.txt": b"small"}
    v = log_files(tmp_path, files)
    entry = v.manifest.entries["d0/f.bin"]
    v.download(tmp_path / "a", link="hardlink")  # downloaded files are linked into the cache
    v.download(tmp_path / "b", link="hardlink")  # and cached files out of it
    with FileCache() as c:
        cached = os.stat(c.path_of(entry.digest))
    for root in ("a", "b"):
        assert tree(tmp_path / root) == files
        st = (tmp_path / root / "d0" / "f.bin").stat()
        assert st.st_ino == cached.st_ino and st.st_nlink == 3
        assert stat.S_IMODE(st.st_mode) == 0o444
        small = (tmp_path / root / "small.txt").stat()  # below the cache's minimum: a plain file
        assert small.st_nlink == 1 and stat.S_IMODE(small.st_mode) == (
            v.manifest.entries["small.txt"].mode & 0o777 or 0o644
        )


def test_an_unusable_cache_only_costs_speed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    files = big_files(1)
    v = log_files(tmp_path, files)
    default_file_cache_dir().write_bytes(b"")  # a file where the cache's directory would be
    with caplog.at_level(logging.WARNING, logger="syncengine.repo.file_cache"):
        v.download(tmp_path / "a")
    assert tree(tmp_path / "a") == files
    assert "cannot be used" in caplog.text and "downloading without it" in caplog.text


def test_default_root_and_path_prefix_in_both_apis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = {"train/0.bin": b"zero", "train/1.bin": b"one", "train.csv": b"t", "test/0.bin": b"t0"}
    v = log_files(tmp_path, files, name="mnist")
    work = tmp_path / "work"
    (work / "mnist").mkdir(parents=True)
    (work / "mnist" / "train.csv").write_bytes(b"my own working copy")
    monkeypatch.chdir(work)
    out = Path(v.download())
    assert out == work / "artifacts" / "mnist-v0" and tree(out) == files
    assert tree(work / "mnist") == {"train.csv": b"my own working copy"}  # never touched

    got = v.download(str(tmp_path / "only-train"), path_prefix="train")
    # a string prefix, as in W&B: train.csv is selected too
    assert tree(Path(got)) == {"train/0.bin": b"zero", "train/1.bin": b"one", "train.csv": b"t"}

    async def with_aio() -> tuple[str, str]:
        async with await aio.Repository.open(str(tmp_path / "repo")) as repo:
            av = await repo.artifact("p/mnist:v0")
            return await av.download(path_prefix="/test/", skip_cache=True), await av.download(
                tmp_path / "aio", "train/1.bin"
            )

    (work / "artifacts").rename(work / "artifacts-sync")
    default, prefixed = asyncio.run(with_aio())
    assert Path(default) == work / "artifacts" / "mnist-v0"
    assert tree(Path(default)) == {"test/0.bin": b"t0"}
    assert tree(Path(prefixed)) == {"train/1.bin": b"one"}
