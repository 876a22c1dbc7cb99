"""`repo.cache.cleanup(...)` never breaks a download in progress nor a hard-linked checkout."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import syncengine as se
from syncengine.aio import Repository as AsyncRepository
from syncengine.errors import ConfigError
from syncengine.repo.local_cache import cache_cleanup, cache_info

FILES = 120
SIZE = 70_000  # above the cache's 64 KiB floor: every file is cached


def _dataset(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(FILES):
        (src / f"f{i:03}.bin").write_bytes(os.urandom(SIZE))
    return src


def _log(repo: se.Repository, src: Path) -> se.ArtifactVersion:
    art = se.Artifact("data", type="dataset")
    art.add_dir(str(src))
    return repo.log_artifact(art, "p")


def _same(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n


def test_cleanup_while_downloads_run_in_a_thread_and_in_a_process(tmp_path: Path) -> None:
    src = _dataset(tmp_path)
    with se.Repository.open(tmp_path / "repo") as repo:
        v = _log(repo, src)
        v.download(tmp_path / "warm")  # fills the cache
        assert repo.cache.info().files == FILES
        done = threading.Event()
        errors: list[BaseException] = []

        def download(root: Path, link: str) -> None:
            try:
                v.download(root, link=link)
            except BaseException as e:  # reported below
                errors.append(e)
            finally:
                done.set()

        for n, link in enumerate(("reflink", "hardlink", "copy")):
            done.clear()
            t = threading.Thread(target=download, args=(tmp_path / f"t{n}", link))
            t.start()
            cleanups = 0
            while not done.is_set() or cleanups == 0:
                repo.cache.cleanup(0)  # empties the cache, again and again, meanwhile
                cleanups += 1
                if cleanups % 4 == 0:
                    v.download(tmp_path / f"refill{n}-{cleanups}")  # so there is something to take
            t.join()
            assert not errors, errors
            v.verify(tmp_path / f"t{n}")
            _same(tmp_path / f"t{n}", src)

        # Another process downloads (the CLI) while this one cleans up.
        v.download(tmp_path / "refill-proc")
        proc = subprocess.Popen(
            [sys.executable, "-m", "syncengine", "get", "p/data", "--root", str(tmp_path / "proc")],
            env={**os.environ, "SYNCENGINE_REPO": str(tmp_path / "repo")},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        while proc.poll() is None:
            repo.cache.cleanup(0)
        _out, err = proc.communicate()
        assert proc.returncode == 0, err
        v.verify(tmp_path / "proc")
        _same(tmp_path / "proc", src)


def test_hardlinked_checkout_still_verifies_after_cleanup(tmp_path: Path) -> None:
    src = _dataset(tmp_path)
    with se.Repository.open(tmp_path / "repo") as repo:
        v = _log(repo, src)
        v.download(tmp_path / "warm", link="hardlink")
        root = tmp_path / "checkout"
        v.checkout(root, link="hardlink")
        cached = Path(cache_info().location) / "objects"
        inodes = {p.stat().st_ino for p in cached.rglob("*") if p.is_file()}
        assert {p.stat().st_ino for p in root.iterdir()} <= inodes  # shares the cache's files
        c = repo.cache.cleanup("0")
        assert c.files_removed == FILES and c.files == 0 and c.bytes == 0
        assert not any(p.is_file() for p in cached.rglob("*"))
        v.verify(root)  # the checkout keeps its own names for the inodes
        _same(root, src)
        v.checkout(root, link="hardlink")  # and stays a valid target
        v.verify(root)


def test_async_cache_api_and_sizes(tmp_path: Path) -> None:
    src = _dataset(tmp_path)
    with se.Repository.open(tmp_path / "repo") as repo:
        _log(repo, src).download(tmp_path / "out")

    async def main() -> None:
        async with await AsyncRepository.open(tmp_path / "repo") as repo:
            info = await repo.cache.info()
            assert (info.files, info.bytes) == (FILES, FILES * SIZE)
            dry = await repo.cache.cleanup("1MB", dry_run=True)
            assert dry.dry_run and dry.bytes <= 1_000_000 and (await repo.cache.info()).files == FILES
            done = await repo.cache.cleanup("1MB")
            assert (done.files_removed, done.bytes) == (dry.files_removed, dry.bytes)
            assert done.files == 1_000_000 // SIZE

    asyncio.run(main())
    assert cache_cleanup(0).files == 0
    with pytest.raises(ConfigError, match="not a size"):  # the units themselves: tests/unit/test_units.py
        cache_cleanup("1 parsec")
    with pytest.raises(ConfigError, match="negative"):
        cache_cleanup(-1)
