"""`kill -9` of a download, then the same download again; and a concurrent download's temp files.

The killed download runs in a child process (this module, run as
``python -m tests.integration.test_download_kill SPEC.json``) that holds back every write of
the big file once ``pause_after`` of its bytes are in, waits until all small files are
written (into temp files: the window's renames come after all of its files), says so in a
marker file and then waits: to be killed (``go`` is None) or until the file ``go`` exists.
So the kill always finds the same state: a half-written big file and every small file in a
temp file, nothing renamed.

``SYNCENGINE_KILL_TEST_SIZE`` sets the big file's size (default 64M).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import blake3

import syncengine.repo.download as dl
from syncengine.hashing.tree import Source
from syncengine.repo.download import download, verify
from syncengine.repo.records import VersionRecord
from syncengine.repo.repository import Repository
from syncengine.settings import env_size
from syncengine.store.local import LocalStore

REPO_ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20
BIG = "data/big.bin"
#: Smaller than the smallest chunk (256 KiB with the default chunker), so that a range holds
#: either small files or one chunk of the big file: holding back the big file's writes never
#: holds back a small file. The parent's downloads use it too (the same command).
MAX_RANGE = 128 << 10


def corpus(big_size: int) -> dict[str, bytes]:
    """300 small files (sorted before the big file, so fetched first) and one big file, in one
    directory (a subdirectory has some of the small ones)."""
    files = {
        f"data/a{i:03d}.bin": blake3.blake3(b"small %d" % i).digest(length=1000 + 37 * i) for i in range(280)
    }
    files.update({f"data/b/s{i:02d}.txt": b"line %d\n" % i * (50 + i) for i in range(20)})
    files[BIG] = blake3.blake3(b"big").digest(length=big_size)
    return files


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def temp_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob(".se-tmp*"))


class CountingStore:
    """Passes everything to a store and counts the bytes of pack reads."""

    def __init__(self, inner: LocalStore) -> None:
        self.inner = inner
        self.pack_bytes = 0

    async def get(
        self, key: str, range: tuple[int, int] | None = None, *, max_bytes: int | None = None
    ) -> bytes:
        data = await self.inner.get(key, range, max_bytes=max_bytes)
        if key.startswith("data/"):
            self.pack_bytes += len(data)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def log(repo: Repository, src: Path) -> VersionRecord:
    return (await repo.log([Source(str(src))], project="p", name="ds", type="dataset")).record


def spawn(tmp_path: Path, spec: dict[str, Any]) -> subprocess.Popen[bytes]:
    path = tmp_path / f"spec-{uuid.uuid4().hex[:8]}.json"
    path.write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.test_download_kill", str(path)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_for_marker(child: subprocess.Popen[bytes], marker: Path) -> dict[str, Any]:
    deadline = time.monotonic() + 180
    while not marker.exists():
        if child.poll() is not None:
            out, err = child.communicate()
            raise AssertionError(f"the child ended before it paused: {out.decode()} {err.decode()}")
        if time.monotonic() > deadline:
            child.kill()
            raise AssertionError(f"the child did not pause: {child.communicate()[1].decode()}")
        time.sleep(0.01)
    got: dict[str, Any] = json.loads(marker.read_text())
    return got


def test_kill_9_mid_download_then_the_same_download_completes_resumes_and_leaves_no_temp_files(
    tmp_path: Path,
) -> None:
    big_size = env_size("SYNCENGINE_KILL_TEST_SIZE", 64 * MiB, minimum=8 * MiB)
    pause_after = big_size * 3 // 8
    old = {BIG: blake3.blake3(b"old").digest(length=4 * MiB)}
    files = corpus(big_size)
    write_tree(tmp_path / "src-old", old)
    write_tree(tmp_path / "src", files)
    root = tmp_path / "root"

    async def setup() -> VersionRecord:
        repo = await Repository.open(LocalStore(tmp_path / "repo"))
        v_old = await log(repo, tmp_path / "src-old")
        await download(repo, v_old, root)  # the folder holds the old version of the big file
        return await log(repo, tmp_path / "src")

    record = asyncio.run(setup())
    marker = tmp_path / "paused.json"
    spec = {
        "repo": str(tmp_path / "repo"),
        "root": str(root),
        "version": record.version,
        "pause_after": pause_after,
        "marker": str(marker),
        "go": None,
    }
    child = spawn(tmp_path, spec)
    paused = wait_for_marker(child, marker)
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=60) == -signal.SIGKILL
    written_big = paused["big_bytes"]
    assert pause_after <= written_big < big_size

    # What the kill left: the old big file untouched, no new file renamed into place, and the
    # child's temp files: each small file's, and the big file's named after its content.
    assert (root / BIG).read_bytes() == old[BIG]
    assert not [rel for rel in files if rel != BIG and (root / rel).exists()]
    left = {p: dl._parse_temp(p.name) for p in temp_files(root)}
    assert all(t is not None and t.writer is not None and t.writer[2] == child.pid for t in left.values()), (
        left
    )
    partials = [p for p, t in left.items() if t is not None and t.digest is not None]
    small = [p for p, t in left.items() if t is not None and t.digest is None]
    assert [p.parent for p in partials] == [root / "data"]
    assert partials[0].stat().st_size >= pause_after
    partial_inode = partials[0].stat().st_ino
    assert len(small) == len(files) - 1

    async def rerun() -> None:
        store = CountingStore(LocalStore(tmp_path / "repo"))
        repo = await Repository.open(store)  # type: ignore[arg-type]
        res = await download(repo, record, root, max_range=MAX_RANGE)
        assert res.bytes_fetched == store.pack_bytes
        assert (res.written, res.present) == (len(files), 0)
        assert res.swept == len(small)  # the dead writer's small temp files
        assert res.bytes_reused >= written_big  # the big file went on from its verified chunks,
        assert (root / BIG).stat().st_ino == partial_inode  # in the temp file it had: no copy
        assert temp_files(root) == []  # nothing left anywhere under the root
        assert await verify(repo, record, root) == []
        assert read_tree(root) == files

        store.pack_bytes = 0
        full = await download(repo, record, tmp_path / "fresh", max_range=MAX_RANGE)
        assert full.bytes_fetched == store.pack_bytes and full.bytes_reused == 0
        assert res.bytes_fetched <= full.bytes_fetched - written_big  # fewer bytes than a full download

        again = await download(repo, record, root, max_range=MAX_RANGE)  # complete: nothing to fetch
        assert (again.present, again.requests, again.swept) == (len(files), 0, 0)

    asyncio.run(rerun())


def test_a_live_downloads_temp_files_are_left_alone_and_ended_writers_files_are_swept(
    tmp_path: Path,
) -> None:
    """While a download (a child process) is paused mid-way, a download and a checkout of the
    same version into the same folder run to the end: they neither sweep nor take over the
    child's temp files; a small file's temp file of an ended process on this host is swept,
    one of another host and one without a writer's name (an older version's) are left to
    checkout (the other host's even by checkout). The child then completes too."""
    files = corpus(8 * MiB)
    write_tree(tmp_path / "src", files)
    root = tmp_path / "root"

    async def setup() -> VersionRecord:
        return await log(await Repository.open(LocalStore(tmp_path / "repo")), tmp_path / "src")

    record = asyncio.run(setup())
    marker, go = tmp_path / "paused.json", tmp_path / "go"
    spec = {
        "repo": str(tmp_path / "repo"),
        "root": str(root),
        "version": record.version,
        "pause_after": 2 * MiB,
        "marker": str(marker),
        "go": str(go),
    }
    child = spawn(tmp_path, spec)
    try:
        wait_for_marker(child, marker)
        theirs = {p: (p.stat().st_ino, p.stat().st_size) for p in temp_files(root)}
        assert len(theirs) == len(files)  # every small file and the big one

        ended = subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True
        )
        host, boot = dl._host_and_boot()
        other_host = "e" * 8 if host != "e" * 8 else "f" * 8
        dead = root / "data" / dl._temp_name(f"{host}-{boot}-{int(ended.stdout)}", None)
        foreign = root / "data" / dl._temp_name(f"{other_host}-{boot}-{os.getpid()}", None)
        legacy = root / "data" / f".se-tmp-{uuid.uuid4().hex}"
        for p in (dead, foreign, legacy):
            p.write_bytes(b"left over")

        async def concurrently() -> None:
            repo = await Repository.open(LocalStore(tmp_path / "repo"))
            res = await download(repo, record, root, max_range=MAX_RANGE)
            assert (res.written, res.swept, res.bytes_reused) == (len(files), 1, 0)
            assert not dead.exists() and foreign.exists() and legacy.exists()
            for p, seen in theirs.items():  # neither deleted nor taken over nor written to
                assert (p.stat().st_ino, p.stat().st_size) == seen, p
            ours = {
                rel: data
                for rel, data in read_tree(root).items()
                if not rel.split("/")[-1].startswith(".se-tmp")
            }
            assert ours == files

            res = await download(repo, record, root, mode="checkout")
            assert res.present == len(files) and res.removed == 1  # only the older version's temp file
            assert not legacy.exists() and foreign.exists()
            assert {p: (p.stat().st_ino, p.stat().st_size) for p in theirs} == theirs

        asyncio.run(concurrently())
        go.touch()
        out, err = child.communicate(timeout=180)
        assert child.returncode == 0, err.decode()
        assert json.loads(out)["written"] == len(files)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    foreign.unlink()

    async def check() -> None:
        repo = await Repository.open(LocalStore(tmp_path / "repo"))
        assert await verify(repo, record, root) == []

    asyncio.run(check())
    assert temp_files(root) == []
    assert read_tree(root) == files


def test_which_writers_count_as_ended() -> None:
    host, boot = dl._host_and_boot()
    other_boot = "1" * 8 if boot != "1" * 8 else "2" * 8
    name = dl._temp_name(f"{host}-{boot}-{os.getpid()}", bytes(32))
    assert dl._parse_temp(name) == dl._Temp("0" * 40, (host, boot, os.getpid()))
    assert dl._parse_temp(".se-tmp-partial-" + "ab" * 20) == dl._Temp("ab" * 20, None)
    assert dl._parse_temp(f".se-tmp-{uuid.uuid4().hex}") == dl._Temp(None, None)
    for other in (".se-tmp-x", ".se-tmp-partial-12", "data.bin", ".se-tmp-partial-" + "a" * 40 + "-a-b-c-d"):
        assert dl._parse_temp(other) is None
    assert not dl._writer_gone((host, boot, os.getpid()))  # this process
    assert not dl._writer_gone((host, boot, os.getppid()))  # a running one
    assert dl._writer_gone((host, other_boot, os.getpid()))  # an earlier boot of this host
    assert not dl._writer_gone(("0" * 8 if host != "0" * 8 else "1" * 8, boot, 2**31))  # another host


# -- the child ------------------------------------------------------------------------------------


def _child(spec: dict[str, Any]) -> None:
    pause_after: int = spec["pause_after"]
    go: str | None = spec["go"]
    lock = threading.Lock()
    state = {"reserved": 0, "done": 0, "small": 0, "paused": False}
    n_small = len(corpus(MiB)) - 1
    real_write = dl._Downloader._put
    real_written = dl._Downloader._written

    def check() -> None:  # with lock held
        if state["paused"] or state["reserved"] < pause_after or state["done"] < state["reserved"]:
            return
        if state["small"] < n_small:
            return
        state["paused"] = True
        tmp = spec["marker"] + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"big_bytes": state["done"], "pid": os.getpid()}, f)
        os.replace(tmp, spec["marker"])

    def hold() -> None:
        deadline = time.monotonic() + 300  # never outlive a test that forgot this process
        while go is None or not os.path.exists(go):
            if time.monotonic() > deadline:
                os._exit(3)
            time.sleep(0.01)

    def write(self: Any, job: Any, offset: int, raw: Any, fds: Any) -> None:
        if job.entry.path != BIG:
            real_write(self, job, offset, raw, fds)
            return
        with lock:
            held = state["reserved"] >= pause_after
            if not held:
                state["reserved"] += len(raw)
        if held:
            hold()
        real_write(self, job, offset, raw, fds)
        if not held:
            with lock:
                state["done"] += len(raw)
                check()

    def written(self: Any, job: Any, *, cached: bool = False) -> None:
        real_written(self, job, cached=cached)
        if job.entry.path != BIG:
            with lock:
                state["small"] += 1
                check()

    dl._Downloader._put = write  # type: ignore[method-assign]
    dl._Downloader._written = written  # type: ignore[method-assign]

    async def run() -> dl.DownloadResult:
        repo = await Repository.open(LocalStore(spec["repo"]))
        record = await repo.version("p", "ds", spec["version"])
        return await download(repo, record, spec["root"], max_range=MAX_RANGE)

    res = asyncio.run(run())
    print(json.dumps({"written": res.written, "swept": res.swept}))


if __name__ == "__main__":
    _child(json.loads(Path(sys.argv[1]).read_text()))
