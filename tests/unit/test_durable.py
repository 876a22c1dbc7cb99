"""SyncBatch: one syncfs for a batch of files, per-file fsync where syncfs cannot vouch."""

from __future__ import annotations

import os
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
