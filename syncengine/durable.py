"""Making many written files durable at once.

Writing 10,000 files and fsyncing each one costs one journal commit per file; one
``syncfs(2)`` of the filesystem after all of them were written costs one (measured on this
project's dev machine: 1.9 GB in 10,042 files, 8.8 s with a per-file fsync from 4 threads,
5.2 s written then synced once — the disk's durable write limit is ~5 s).

``syncfs`` reports writeback errors only on Linux 5.8 and later, and only those that
happened after the file descriptor it is given was opened; :class:`SyncBatch` therefore
opens its anchor before the files are written and falls back to one ``fsync`` per file when
the kernel is older, ``syncfs`` is missing (not Linux), or a file lives on another filesystem
than the anchor (a mount point inside the target).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import platform
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Final

__all__ = ["SyncBatch", "fsync_dirs", "fsync_path"]

#: Threads used for per-file fsync when syncfs cannot be used (concurrent fsyncs share
#: journal commits on ext4/xfs).
FALLBACK_THREADS: Final = 8


def _load_syncfs() -> Callable[[int], int] | None:
    if platform.system() != "Linux" or os.environ.get("SYNCENGINE_NO_SYNCFS"):
        return None
    try:
        major, minor = (int(x) for x in platform.release().split(".")[:2])
    except ValueError:
        return None
    if (major, minor) < (5, 8):  # before 5.8 syncfs does not report writeback errors
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_SYNCFS = _load_syncfs()


def fsync_path(path: str) -> None:
    """fsync the file at ``path`` (reopened read-only; the data written through any fd is
    flushed, and errors not yet reported to another fd are reported here)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dirs(dirs: Iterable[str]) -> None:
    """fsync directories (their entries: creations, renames); missing ones are skipped."""
    for d in dirs:
        try:
            fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class SyncBatch:
    """Durability for a batch of files written under ``anchor`` (a directory).

    Open it *before* writing the files; ``flush(files)`` returns once their data is on
    stable storage (or raises the writeback error); ``flush_dirs(dirs)`` does the same for
    directory entries (after renames).

    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> with SyncBatch(d) as batch:
    ...     with open(os.path.join(d, "f"), "wb") as f:
    ...         _ = f.write(b"x")
    ...     batch.flush([os.path.join(d, "f")])
    """

    def __init__(self, anchor: str) -> None:
        self.fd = os.open(anchor, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.dev = os.fstat(self.fd).st_dev
        self.use_syncfs = _SYNCFS is not None

    def _syncfs(self) -> None:
        assert _SYNCFS is not None
        if _SYNCFS(self.fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs: {os.strerror(err)} (data written to this filesystem may be lost)")

    def _split(self, paths: Iterable[str]) -> list[str]:
        """The paths that syncfs on the anchor does not cover."""
        if not self.use_syncfs:
            return list(paths)
        other: list[str] = []
        seen: dict[str, bool] = {}
        for p in paths:
            d = os.path.dirname(p)
            same = seen.get(d)
            if same is None:
                try:
                    same = seen[d] = os.stat(d).st_dev == self.dev
                except OSError:
                    same = seen[d] = False
            if not same:
                other.append(p)
        return other

    def flush(self, files: Iterable[str]) -> None:
        files = list(files)
        if not files:
            return
        other = self._split(files)
        if self.use_syncfs and len(other) < len(files):
            self._syncfs()
        if other:
            if len(other) == 1:
                fsync_path(other[0])
            else:
                with ThreadPoolExecutor(min(FALLBACK_THREADS, len(other))) as ex:
                    for _ in ex.map(fsync_path, other):
                        pass

    def flush_dirs(self, dirs: Iterable[str]) -> None:
        dirs = list(dirs)
        if not dirs:
            return
        other = self._split(os.path.join(d, ".") for d in dirs)
        if self.use_syncfs and len(other) < len(dirs):
            self._syncfs()
        fsync_dirs(os.path.dirname(p) for p in other)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)

    def __enter__(self) -> SyncBatch:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
