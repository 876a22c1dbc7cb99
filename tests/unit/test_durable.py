"""SyncBatch: one syncfs for a batch of files, per-file fsync where syncfs cannot vouch;
start_writeback: the asynchronous writeback hint given while files are written."""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from syncengine import durable
from syncengine.durable import SyncBatch


def _write(p: Path, data: bytes) -> str:
    p.write_bytes(data)
    return str(p)


def test_syncfs_is_used_on_this_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if durable._SYNCFS is None:
        pytest.skip("no syncfs with error reporting here (needs Linux >= 5.8)")
    calls: list[str] = []
    monkeypatch.setattr(durable, "fsync_path", calls.append)
    with SyncBatch(str(tmp_path)) as batch:
        files = [_write(tmp_path / f"f{i}", b"x" * i) for i in range(50)]
        batch.flush(files)
        batch.flush_dirs([str(tmp_path)])
    assert calls == []  # all on the anchor's filesystem: one syncfs, no per-file fsync


def test_fallback_fsyncs_every_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = durable.fsync_path

    def counting(path: str) -> None:
        calls.append(path)
        real(path)

    monkeypatch.setattr(durable, "fsync_path", counting)
    with SyncBatch(str(tmp_path)) as batch:
        batch.use_syncfs = False
        files = [_write(tmp_path / f"f{i}", b"y") for i in range(20)]
        batch.flush(files)
        batch.flush_dirs([str(tmp_path)])
    assert sorted(calls) == sorted(files)


def test_files_on_another_filesystem_are_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(durable, "fsync_path", calls.append)
    with SyncBatch(str(tmp_path)) as batch:
        batch.use_syncfs = True
        batch.dev = -1  # as if the anchor were on another device than every file
        monkeypatch.setattr(durable, "_SYNCFS", lambda fd: 0)
        f = _write(tmp_path / "f", b"z")
        batch.flush([f])
    assert calls == [f]


def test_fsync_path_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        durable.fsync_path(os.path.join(tmp_path, "nope"))


def test_start_writeback_on_real_files_and_other_fds(tmp_path: Path) -> None:
    if sys.platform.startswith("linux"):
        assert durable._SYNC_FILE_RANGE is not None  # glibc/musl have it on every Linux
    p = tmp_path / "f"
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.pwrite(fd, b"a" * 100_000, 0)
        durable.start_writeback(fd, 4096, 8192)  # a range
        durable.start_writeback(fd)  # to the end of the file
    finally:
        os.close(fd)
    ro = os.open(p, os.O_RDONLY)  # a read-only fd will do (the cached-copy case)
    try:
        durable.start_writeback(ro)
    finally:
        os.close(ro)
    r, w = os.pipe()  # not a file: the hint cannot be given, and that is no error
    try:
        durable.start_writeback(r)
    finally:
        os.close(r)
        os.close(w)
    with SyncBatch(str(tmp_path)) as batch:  # the flush is what makes it durable, as before
        batch.flush([str(p)])
    assert p.read_bytes() == b"a" * 100_000


def _failing(err: int, calls: list[tuple[int, int, int, int]]) -> Callable[[int, int, int, int], int]:
    def fn(fd: int, offset: int, nbytes: int, flags: int) -> int:
        calls.append((fd, offset, nbytes, flags))
        ctypes.set_errno(err)  # what ctypes.get_errno() reads after a use_errno call
        return -1

    return fn


@pytest.mark.parametrize("err", [errno.ENOSYS, errno.EINVAL, errno.ESPIPE, errno.EOPNOTSUPP, errno.ENOMEM])
def test_start_writeback_ignores_refusals(monkeypatch: pytest.MonkeyPatch, err: int) -> None:
    calls: list[tuple[int, int, int, int]] = []
    monkeypatch.setattr(durable, "_SYNC_FILE_RANGE", _failing(err, calls))
    durable.start_writeback(7, 10, 20)
    durable.start_writeback(7)
    assert calls == [(7, 10, 20, durable.SYNC_FILE_RANGE_WRITE), (7, 0, 0, durable.SYNC_FILE_RANGE_WRITE)]


@pytest.mark.parametrize("err", [errno.EIO, errno.ENOSPC, errno.EBADF])
def test_start_writeback_reports_io_errors(monkeypatch: pytest.MonkeyPatch, err: int) -> None:
    monkeypatch.setattr(durable, "_SYNC_FILE_RANGE", _failing(err, []))
    with pytest.raises(OSError) as info:
        durable.start_writeback(7)
    assert info.value.errno == err and "sync_file_range" in str(info.value)


def test_early_writeback_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNCENGINE_NO_EARLY_WRITEBACK", "1")
    assert durable._load_sync_file_range() is None
    monkeypatch.setattr(durable, "_SYNC_FILE_RANGE", None)
    durable.start_writeback(-1)  # a no-op: not even the bad fd is looked at


def test_durable_needs_no_extension(tmp_path: Path) -> None:
    """The pure-Python mode (SYNCENGINE_NO_EXTENSIONS=1) gets the same writeback hint."""
    code = (
        "import os, sys\n"
        "from syncengine import durable\n"
        "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o600)\n"
        "os.write(fd, b'x' * 5000)\n"
        "durable.start_writeback(fd)\n"
        "os.close(fd)\n"
        "assert 'syncengine._native' not in sys.modules\n"
        "print(durable._SYNC_FILE_RANGE is not None)\n"
    )
    env = {**os.environ, "SYNCENGINE_NO_EXTENSIONS": "1"}
    env.pop("SYNCENGINE_NO_EARLY_WRITEBACK", None)
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "f")], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == str(sys.platform.startswith("linux"))


# ---- directory fsync: one helper, one list of tolerated errors ----------------------------------


def _dir_fsync_fails(monkeypatch: pytest.MonkeyPatch, err: int) -> list[str]:
    """os.fsync raises ``err`` for directories (files still sync); returns the dirs tried."""
    import stat

    real = os.fsync
    tried: list[str] = []

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            tried.append(os.readlink(f"/proc/self/fd/{fd}"))
            raise OSError(err, os.strerror(err))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return tried


@pytest.mark.parametrize("err", sorted(durable.DIR_FSYNC_UNSUPPORTED), ids=errno.errorcode.get)
def test_fsync_dir_tolerates_filesystems_that_cannot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int
) -> None:
    tried = _dir_fsync_fails(monkeypatch, err)
    durable.fsync_dir(str(tmp_path))
    durable.fsync_dirs([str(tmp_path), str(tmp_path / "gone")])  # a vanished folder is skipped
    assert tried == [str(tmp_path)] * 2


@pytest.mark.parametrize("err", [errno.EIO, errno.ENOSPC, errno.EDQUOT], ids=errno.errorcode.get)
def test_fsync_dir_raises_errors_that_lose_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int
) -> None:
    _dir_fsync_fails(monkeypatch, err)
    for call in (lambda: durable.fsync_dir(str(tmp_path)), lambda: durable.fsync_dirs([str(tmp_path)])):
        with pytest.raises(OSError) as e:
            call()
        assert e.value.errno == err
    with pytest.raises(FileNotFoundError):  # one folder named that is missing is an error
        durable.fsync_dir(str(tmp_path / "gone"))


@pytest.mark.parametrize("err", [errno.EINVAL, errno.EROFS])
def test_every_directory_fsync_uses_the_one_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int
) -> None:
    """The local store, a transfer's download and a batch of downloads agreed on nothing before
    (EINVAL tolerated by two, nothing by the third): now each tolerates the same errors."""
    import asyncio

    from syncengine.store.local import LocalStore
    from syncengine.transfer import download

    async def main() -> None:
        store = LocalStore(tmp_path / "repo")
        try:
            await store.put("a/b/key", b"data")
            await download(store, "a/b/key", str(tmp_path / "out" / "key"))
        finally:
            await store.close()

    (tmp_path / "out").mkdir()
    tried = _dir_fsync_fails(monkeypatch, err)
    asyncio.run(main())
    assert (tmp_path / "out" / "key").read_bytes() == b"data"
    with SyncBatch(str(tmp_path)) as batch:
        batch.use_syncfs = False
        batch.flush_dirs([str(tmp_path / "out")])
    assert str(tmp_path / "out") in tried and any(t.startswith(str(tmp_path / "repo")) for t in tried)
