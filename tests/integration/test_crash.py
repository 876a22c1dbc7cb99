"""`kill -9` of `put` at random moments never leaves a version that names missing data."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import blake3

from syncengine.repo.repository import Repository
from syncengine.store.local import LocalStore


def make_data(root: Path) -> None:
    for i in range(120):
        p = root / f"d{i % 6}" / f"f{i:03d}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(blake3.blake3(str(i).encode()).digest(length=(i * 7919) % 60_000))
    for i in range(3):
        (root / f"big{i}.bin").write_bytes(blake3.blake3(f"big{i}".encode()).digest(length=6 << 20))


def du(path: Path) -> int:
    """Bytes of the objects under path; temp files of killed writes (never listed, removed by
    the store's cleanup) do not count."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.name.startswith(".se-tmp-"))


def put(repo: Path, data: Path, cache: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SYNCENGINE_CACHE_DIR": str(cache)}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "syncengine",
            "put",
            "-n",
            "p/data",
            "-t",
            "dataset",
            "-a",
            "best",
            str(data),
            "--repo",
            str(repo),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def check(repo_dir: Path) -> tuple[list[str], list[int]]:
    async with LocalStore(repo_dir) as store:
        repo = await Repository.open(store, create=False)
        problems = await repo.check(read_data=True)
        versions = []
        async for info in store.list("artifacts/p/data/versions/"):
            versions.append(int(info.key.rsplit("/v", 1)[1]))
        return problems, versions


def test_kill_9_at_random_moments_then_rerun(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_data(data)
    clean = tmp_path / "clean"
    started = time.monotonic()
    p = put(clean, data, tmp_path / "cache-clean")
    assert p.wait(timeout=300) == 0, p.stderr.read() if p.stderr else ""
    # Kill moments are spread over a run's length: the clean run's at first, then that of the
    # latest run that finished before its moment (once the data is in, a put only re-hashes
    # and finds the version, so it is much shorter than the first).
    duration = time.monotonic() - started

    repo = tmp_path / "repo"
    rng = random.Random(20240601)
    killed_midway = 0
    for i in range(20):
        begun = time.monotonic()
        proc = put(repo, data, tmp_path / f"cache{i}")
        time.sleep(rng.uniform(0.0, duration))  # a random moment, not a synchronisation
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed_midway += 1
        elif proc.returncode == 0:
            duration = time.monotonic() - begun  # an upper bound of this run's length
        proc.wait(timeout=60)
        if (repo / "config").exists():
            problems, versions = asyncio.run(check(repo))
            assert problems == [], f"after kill {i}: {problems}"
            assert versions in ([], [0])  # identical content: never a second version
    assert killed_midway >= 8

    final = put(repo, data, tmp_path / "cache-final")
    assert final.wait(timeout=300) == 0
    problems, versions = asyncio.run(check(repo))
    assert problems == [] and versions == [0]
    # what the killed runs wrote is reused, not duplicated: same packs as one clean run
    assert du(repo / "data") == du(clean / "data")

    async def download() -> None:
        async with LocalStore(repo) as store:
            r = await Repository.open(store, create=False)
            head = await r.head("p", "data")
            assert head.aliases == {"best": 0, "latest": 0} and head.latest == 0
            await r.download(await r.version("p", "data", 0), str(tmp_path / "out"))

    asyncio.run(download())
    for f in data.rglob("*"):
        if f.is_file():
            assert (tmp_path / "out" / f.relative_to(data)).read_bytes() == f.read_bytes()
