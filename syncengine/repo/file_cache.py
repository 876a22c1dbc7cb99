"""A local, content-addressed cache of whole files, shared by every download on the machine.

Files are kept under ``<cache dir>/files/objects/<digest[:2]>/<digest>``, named by their
syncengine file digest (docs/FORMAT.md), so the same content downloaded for two versions,
artifacts or target folders is fetched once. A SQLite table beside them records each
file's size, inode and mtime (to notice a cached file that was changed) and the time it was
last used; when the total size passes ``max_bytes`` the least recently used files are
deleted. The last-use time is kept in the table, not taken from ``atime`` (often disabled).

Putting a cached file at a target path ("materializing" it) uses one of:

- ``"reflink"`` (default): a copy-on-write clone (Linux ``FICLONE``: btrfs, XFS, bcachefs…),
  falling back to a plain copy where the filesystem cannot clone. The result is an
  independent file, exactly like a copy, but costs no time or space where cloning works.
- ``"copy"``: always a byte copy (``sendfile``/``copy_file_range``).
- ``"hardlink"``: a hard link to the cached file, which is made read-only (0444), so the
  target shares its inode with the cache; falls back to a copy across filesystems. Fast
  and free, but whoever writes to such a file in place (after ``chmod``) changes the
  cached copy too. The cache notices a changed size or mtime and drops the entry, and the
  downloader re-hashes every file it takes from the cache, so a damaged cache file is never
  passed on; it is still a foot-gun, hence not the default.

The cache is safe to delete at any time. Several processes may share it: SQLite serializes
the table, files appear by rename, and a file evicted while another process copies it is
either copied whole (POSIX keeps an open file's data) or reported as a miss.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sqlite3
import stat
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Final, Literal

from syncengine.hashing.stat_cache import default_cache_dir

LinkMode = Literal["copy", "reflink", "hardlink"]
LINK_MODES: Final = ("copy", "reflink", "hardlink")

#: Default bound on the bytes the cache holds.
DEFAULT_MAX_BYTES: Final = 20 << 30
#: Files smaller than this are not cached by default: fetching them from packs (coalesced
#: into large ranged reads) is cheaper than a cache entry per file.
DEFAULT_MIN_FILE_SIZE: Final = 64 << 10

_FICLONE: Final = 0x40049409  # Linux ioctl: clone all of the source file's extents
_NO_CLONE: Final = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EPERM}
_NO_LINK: Final = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    digest BLOB PRIMARY KEY,
    size INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    last_used INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS files_last_used ON files (last_used);
"""


def default_file_cache_dir() -> Path:
    """``<syncengine cache dir>/files`` (``$SYNCENGINE_CACHE_DIR`` or the platform's cache dir)."""
    return default_cache_dir() / "files"


def clone_or_copy(src: str, dst: str) -> bool:
    """Creates ``dst`` (which must not exist) as a copy-on-write clone of ``src`` if the
    filesystem can, else as a byte copy. Returns True if it cloned."""
    if sys.platform.startswith("linux"):
        import fcntl

        with open(src, "rb") as s:
            fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                fcntl.ioctl(fd, _FICLONE, s.fileno())
                return True
            except OSError as e:
                if e.errno not in _NO_CLONE:
                    raise
            finally:
                os.close(fd)
        os.unlink(dst)
    copy_bytes(src, dst)
    return False


def copy_bytes(src: str, dst: str) -> None:
    """A plain copy of the content, no metadata (``sendfile`` on Linux)."""
    shutil.copyfile(src, dst)


def place(src: str, dst: str, mode: LinkMode) -> str:
    """Creates ``dst`` with the content of ``src`` by ``mode``; returns the method used
    (``"hardlink"``, ``"reflink"`` or ``"copy"``, after fallbacks)."""
    if mode == "hardlink":
        try:
            os.link(src, dst, follow_symlinks=False)
            return "hardlink"
        except OSError as e:
            if e.errno not in _NO_LINK:
                raise
        mode = "reflink"
    if mode == "reflink":
        return "reflink" if clone_or_copy(src, dst) else "copy"
    copy_bytes(src, dst)
    return "copy"


class FileCache:
    """Whole files by file digest, bounded to ``max_bytes`` with least-recently-used eviction.

    Thread-safe (one lock around the table). ``link`` is how files are materialized (module
    docstring); ``min_file_size`` keeps small files out.

    >>> import tempfile
    >>> with FileCache(tempfile.mkdtemp(), max_bytes=1 << 20) as c:
    ...     (c.max_bytes, c.link, c.lookup(bytes(32), 1))
    (1048576, 'reflink', None)
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        link: LinkMode = "reflink",
        min_file_size: int = DEFAULT_MIN_FILE_SIZE,
    ) -> None:
        if link not in LINK_MODES:
            raise ValueError(f"link must be one of {', '.join(LINK_MODES)}, not {link!r}")
        if max_bytes < 0 or min_file_size < 0:
            raise ValueError("max_bytes and min_file_size must not be negative")
        self.dir = Path(path) if path is not None else default_file_cache_dir()
        self.objects = self.dir / "objects"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.link: LinkMode = link
        self.min_file_size = min_file_size
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            self.dir / "files.sqlite", timeout=30, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    # -- paths and rows -----------------------------------------------------------------------

    def path_of(self, digest: bytes) -> str:
        h = digest.hex()
        return os.path.join(self.objects, h[:2], h)

    def wants(self, size: int) -> bool:
        """Whether a file of this size is cached at all."""
        return self.min_file_size <= size <= self.max_bytes and size > 0

    def _valid(self, digest: bytes, size: int) -> str | None:
        """The cached file's path if its row and the file agree (size, inode, mtime)."""
        row = self._db.execute("SELECT size, ino, mtime_ns FROM files WHERE digest = ?", (digest,)).fetchone()
        if row is None:
            return None
        path = self.path_of(digest)
        try:
            st = os.lstat(path)
        except OSError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode) or row[0] != size:
            self._drop_locked(digest)
            return None
        if (st.st_size, st.st_ino, st.st_mtime_ns) != (row[0], row[1], row[2]):
            self._drop_locked(digest)
            return None
        return path

    def _drop_locked(self, digest: bytes) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path_of(digest))
        self._db.execute("DELETE FROM files WHERE digest = ?", (digest,))

    # -- API ----------------------------------------------------------------------------------

    def lookup(self, digest: bytes, size: int) -> str | None:
        """The path of the cached file with this digest and size (marked as used), or None."""
        with self._lock:
            path = self._valid(digest, size)
            if path is None:
                self.misses += 1
                return None
            self._db.execute("UPDATE files SET last_used = ? WHERE digest = ?", (time.time_ns(), digest))
            self.hits += 1
            return path

    def materialize(self, digest: bytes, size: int, dst: str) -> str | None:
        """Creates ``dst`` (must not exist) from the cached file; returns the method used,
        or None on a miss. The caller verifies the content (see the module docstring)."""
        src = self.lookup(digest, size)
        if src is None:
            return None
        try:
            return place(src, dst, self.link)
        except FileNotFoundError:  # evicted by another process meanwhile
            with contextlib.suppress(FileNotFoundError):
                os.unlink(dst)
            return None

    def add(self, src: str, digest: bytes, size: int) -> bool:
        """Puts the file at ``src`` (whose content the caller has verified to have ``digest``)
        into the cache, then evicts down to ``max_bytes``. With ``link="hardlink"`` the cache
        takes a hard link to ``src`` and makes it read-only. Returns whether it was added."""
        if not self.wants(size):
            return False
        with self._lock:
            if self._valid(digest, size) is not None:
                self._db.execute("UPDATE files SET last_used = ? WHERE digest = ?", (time.time_ns(), digest))
                return True
        final = self.path_of(digest)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        tmp = os.path.join(os.path.dirname(final), f".se-tmp-{uuid.uuid4().hex}")
        try:
            place(src, tmp, self.link)
            os.chmod(tmp, 0o444)
            st = os.lstat(tmp)
            if st.st_size != size:
                raise OSError(errno.EIO, f"{src} is {st.st_size} bytes, expected {size}")
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?)",
                (digest, size, st.st_ino, st.st_mtime_ns, time.time_ns()),
            )
            self._evict_locked()
        return True

    def discard(self, digest: bytes) -> None:
        """Drops one entry (e.g. after its content failed verification)."""
        with self._lock:
            self._drop_locked(digest)

    def total_bytes(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COALESCE(SUM(size), 0) FROM files").fetchone()[0])

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM files").fetchone()[0])

    def evict(self, max_bytes: int | None = None) -> int:
        """Deletes least recently used files until at most ``max_bytes`` (default: the
        cache's bound) remain; returns how many were deleted."""
        with self._lock:
            return self._evict_locked(max_bytes)

    def clear(self) -> int:
        return self.evict(0)

    def _evict_locked(self, max_bytes: int | None = None) -> int:
        limit = self.max_bytes if max_bytes is None else max_bytes
        total = int(self._db.execute("SELECT COALESCE(SUM(size), 0) FROM files").fetchone()[0])
        removed = 0
        while total > limit:
            rows = self._db.execute("SELECT digest, size FROM files ORDER BY last_used LIMIT 256").fetchall()
            if not rows:
                break
            for digest, size in rows:
                self._drop_locked(digest)
                total -= size
                removed += 1
                if total <= limit:
                    break
        return removed

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> FileCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
