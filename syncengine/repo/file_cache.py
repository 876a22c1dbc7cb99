"""A local, content-addressed cache of whole files, shared by every download on the machine.

Files are kept under ``<cache dir>/files/objects/<digest[:2]>/<digest>``, named by their
syncengine file digest (docs/FORMAT.md), so the same content downloaded for two versions,
artifacts or target folders is fetched once. A SQLite table beside them records each
file's size, inode and mtime (to notice a cached file that was changed) and the time it was
last used; when the total size passes ``max_bytes`` the least recently used files are
deleted. The last-use time is kept in the table, not taken from ``atime`` (often disabled).
The bound is ``$SYNCENGINE_FILE_CACHE_SIZE`` (bytes, or a number with K, M, G or T, binary
units; ``0`` caches nothing) unless ``max_bytes`` is given, else 20 GiB; it holds from the
moment a cache is opened (a lowered bound evicts at once). The total is kept in the table by
triggers, so an addition costs the same in a cache of a million files as in an empty one.

``Repository.download``, ``ArtifactVersion.download`` and ``syncengine get`` use the
machine's cache (:func:`open_default`) unless told to skip it.

Putting a cached file at a target path ("materializing" it) uses one of:

- ``"reflink"`` (default): a copy-on-write clone (Linux ``FICLONE``: btrfs, XFS, bcachefs…),
  falling back to a plain copy where the filesystem cannot clone. The result is an
  independent file, exactly like a copy, but costs no time or space where cloning works.
- ``"copy"``: always a byte copy (``sendfile``/``copy_file_range``).
- ``"hardlink"``: a hard link to the cached file, which is made read-only (0444 less the
  umask: the cache's own files get no bit the user's umask denies), so the
  target shares its inode with the cache; falls back to a copy across filesystems. Fast
  and free, but whoever writes to such a file in place (after ``chmod``) changes the
  cached copy too, and every other folder linked to it. The cache notices a changed size or
  mtime and drops the entry, and the downloader re-hashes every file it takes from the
  cache, so a damaged cache file is never passed on; it is still a foot-gun, hence not the
  default.

Adding a downloaded file must not cost a second copy of its bytes: with ``"reflink"`` the
cache clones it where it can, else (and with ``"copy"``) takes a hard link to the downloaded
file, and copies only when neither works (another filesystem). Such a *shared* entry leaves
the downloaded file as it is (its mode, writable): the cache only keeps a name for the
inode, so an edit in place of the downloaded file changes the entry, which the checks above
then drop; other folders never see it, since reflink and copy materialize independent
files, and ``"hardlink"`` first replaces a shared entry by a read-only copy of its own.
With ``"hardlink"`` the cache links the downloaded file and makes it read-only (0444).

The cache is safe to delete at any time. Several processes may share it: SQLite serializes
the table, files appear by rename, and a file evicted while another process copies it is
either copied whole (POSIX keeps an open file's data) or reported as a miss.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import sqlite3
import stat
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Final, Literal, cast

from syncengine import _sqlite
from syncengine.file_modes import umask
from syncengine.hashing.stat_cache import default_cache_dir

LinkMode = Literal["copy", "reflink", "hardlink"]
LINK_MODES: Final = ("copy", "reflink", "hardlink")
#: How cached files become targets unless told otherwise (module docstring).
DEFAULT_LINK: Final[LinkMode] = "reflink"

#: Default bound on the bytes the cache holds (``$SYNCENGINE_FILE_CACHE_SIZE`` overrides it).
DEFAULT_MAX_BYTES: Final = 20 << 30
SIZE_ENV: Final = "SYNCENGINE_FILE_CACHE_SIZE"
#: Files smaller than this are not cached by default: fetching them from packs (coalesced
#: into large ranged reads) is cheaper than a cache entry per file.
DEFAULT_MIN_FILE_SIZE: Final = 64 << 10
#: Uses of cached files written to the table in one transaction.
TOUCH_BATCH: Final = 256

_FICLONE: Final = 0x40049409  # Linux ioctl: clone all of the source file's extents
_NO_CLONE: Final = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EPERM}
_NO_LINK: Final = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}
#: (source device, destination device) pairs where a clone failed for want of support (not
#: EPERM, which can be one file's): not tried again in this process, which on filesystems
#: without clones saves creating and deleting a file per cached file.
_CLONELESS: set[tuple[int, int]] = set()

_log = logging.getLogger("syncengine.repo.file_cache")

# Each row: a cached file's digest, size, inode and mtime (to notice a changed file), last
# use, and ``shared``: 1 when the cached file is a hard link to a downloaded file that stays
# the user's (module docstring). ``total`` holds the sum of the sizes, kept by triggers: rows
# change by INSERT, UPSERT (fires the UPDATE trigger) and DELETE, never by INSERT OR REPLACE
# (whose implicit delete fires no trigger). The schema is set up in one transaction, so that
# no process adds a row between the total's first sum and the triggers that keep it.
_FILES_TABLE = """
CREATE TABLE IF NOT EXISTS files (
    digest BLOB PRIMARY KEY,
    size INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    last_used INTEGER NOT NULL,
    shared INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID
"""
_SCHEMA: Final = (
    "CREATE INDEX IF NOT EXISTS files_last_used ON files (last_used)",
    "CREATE TABLE IF NOT EXISTS total (id INTEGER PRIMARY KEY CHECK (id = 0), bytes INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO total SELECT 0, COALESCE(SUM(size), 0) FROM files",
    """CREATE TRIGGER IF NOT EXISTS files_added AFTER INSERT ON files
        BEGIN UPDATE total SET bytes = bytes + new.size WHERE id = 0; END""",
    """CREATE TRIGGER IF NOT EXISTS files_removed AFTER DELETE ON files
        BEGIN UPDATE total SET bytes = bytes - old.size WHERE id = 0; END""",
    """CREATE TRIGGER IF NOT EXISTS files_resized AFTER UPDATE OF size ON files
        BEGIN UPDATE total SET bytes = bytes + new.size - old.size WHERE id = 0; END""",
)


def _open_table(db: sqlite3.Connection) -> None:
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(_FILES_TABLE)
        if "shared" not in {row[1] for row in db.execute("PRAGMA table_info(files)")}:  # an older cache
            db.execute("ALTER TABLE files ADD COLUMN shared INTEGER NOT NULL DEFAULT 0")
        for statement in _SCHEMA:
            db.execute(statement)
        db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise


def default_file_cache_dir() -> Path:
    """``<syncengine cache dir>/files`` (``$SYNCENGINE_CACHE_DIR`` or the platform's cache dir)."""
    return default_cache_dir() / "files"


def default_max_bytes() -> int:
    """``$SYNCENGINE_FILE_CACHE_SIZE`` (``1073741824``, ``500MB``, ``20GiB``; ``0`` caches
    nothing; README.md, "Units"), else :data:`DEFAULT_MAX_BYTES`. ``ConfigError`` for anything else."""
    from syncengine.settings import env_size

    return env_size(SIZE_ENV, DEFAULT_MAX_BYTES)


def link_mode(link: str | None) -> LinkMode:
    """``link`` checked (``ValueError`` unless one of :data:`LINK_MODES`), None → the default."""
    if link is None:
        return DEFAULT_LINK
    if link not in LINK_MODES:
        raise ValueError(f"link must be one of {', '.join(LINK_MODES)}, not {link!r}")
    return cast(LinkMode, link)


def open_default(*, link: str | None = None, max_bytes: int | None = None) -> FileCache | None:
    """The machine's cache (:func:`default_file_cache_dir`, bounded by ``max_bytes`` or
    :func:`default_max_bytes`), materializing by ``link`` (default :data:`DEFAULT_LINK`);
    the downloads' default. None, with a logged warning, when it cannot be opened (a
    read-only or full cache directory): a download works without a cache, only slower.
    A bad ``link``, ``max_bytes`` or ``$SYNCENGINE_FILE_CACHE_SIZE`` raises."""
    mode = link_mode(link)
    bound = default_max_bytes() if max_bytes is None else max_bytes
    if bound < 0:
        raise ValueError(f"the file cache size must not be negative, not {bound}")
    try:
        return FileCache(max_bytes=bound, link=mode)
    except (OSError, sqlite3.Error) as e:
        where = default_file_cache_dir()
        _log.warning("the file cache in %s cannot be used (%s); downloading without it", where, e)
        return None


def clone(src: str, dst: str) -> bool:
    """Creates ``dst`` (which must not exist) as a copy-on-write clone of ``src`` and returns
    True, or returns False, creating nothing, where the filesystem (or platform) cannot."""
    if not sys.platform.startswith("linux"):
        return False
    import fcntl

    cloned = False
    with open(src, "rb") as s:
        devices = (os.fstat(s.fileno()).st_dev, os.stat(os.path.dirname(dst) or ".").st_dev)
        if devices in _CLONELESS:
            return False
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.ioctl(fd, _FICLONE, s.fileno())
            cloned = True
        except OSError as e:
            if e.errno not in _NO_CLONE:
                raise
            if e.errno != errno.EPERM:
                _CLONELESS.add(devices)
        finally:
            os.close(fd)
            if not cloned:
                os.unlink(dst)
    return cloned


def clone_or_copy(src: str, dst: str) -> bool:
    """Creates ``dst`` (which must not exist) as a copy-on-write clone of ``src`` if the
    filesystem can, else as a byte copy. Returns True if it cloned."""
    if clone(src, dst):
        return True
    copy_bytes(src, dst)
    return False


def link(src: str, dst: str) -> bool:
    """Creates ``dst`` as a hard link to ``src``; False where links cannot be made (another
    filesystem, a filesystem without them, too many links)."""
    try:
        os.link(src, dst, follow_symlinks=False)
        return True
    except OSError as e:
        if e.errno not in _NO_LINK:
            raise
        return False


def copy_bytes(src: str, dst: str) -> None:
    """A plain copy of the content, no metadata (``sendfile`` on Linux)."""
    shutil.copyfile(src, dst)


def place(src: str, dst: str, mode: LinkMode) -> str:
    """Creates ``dst`` with the content of ``src`` by ``mode``; returns the method used
    (``"hardlink"``, ``"reflink"`` or ``"copy"``, after fallbacks)."""
    if mode == "hardlink":
        if link(src, dst):
            return "hardlink"
        mode = "reflink"
    if mode == "reflink":
        return "reflink" if clone_or_copy(src, dst) else "copy"
    copy_bytes(src, dst)
    return "copy"


@contextlib.contextmanager
def _table_errors() -> Iterator[None]:
    """A failing table (locked for too long, disk full, damaged) is an ``OSError``, which the
    downloader treats as a miss or a file it could not add, never as a failed download."""
    try:
        yield
    except sqlite3.Error as e:
        raise OSError(errno.EIO, f"file cache table: {e}") from e


class FileCache:
    """Whole files by file digest, bounded to ``max_bytes`` with least-recently-used eviction.

    Thread-safe (one lock around the table). ``link`` is how files are materialized (module
    docstring); ``min_file_size`` keeps small files out. ``path`` defaults to
    :func:`default_file_cache_dir`, ``max_bytes`` to :func:`default_max_bytes`; opening a
    cache that holds more than ``max_bytes`` evicts down to it.

    >>> import tempfile
    >>> with FileCache(tempfile.mkdtemp(), max_bytes=1 << 20) as c:
    ...     (c.max_bytes, c.link, c.lookup(bytes(32), 1))
    (1048576, 'reflink', None)
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        max_bytes: int | None = None,
        link: LinkMode = DEFAULT_LINK,
        min_file_size: int = DEFAULT_MIN_FILE_SIZE,
    ) -> None:
        if max_bytes is None:
            max_bytes = default_max_bytes()
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
        self._touched: dict[bytes, int] = {}  # last uses not written to the table yet
        self._db = _sqlite.connect(self.dir / "files.sqlite", setup=_open_table)
        try:
            self._evict_locked()  # the bound may have been lowered since the last use
        except BaseException:
            self._db.close()
            raise

    # -- paths and rows -----------------------------------------------------------------------

    def path_of(self, digest: bytes) -> str:
        h = digest.hex()
        return os.path.join(self.objects, h[:2], h)

    def wants(self, size: int) -> bool:
        """Whether a file of this size is cached at all."""
        return self.min_file_size <= size <= self.max_bytes and size > 0

    def _valid(self, digest: bytes, size: int) -> tuple[str, bool] | None:
        """The cached file's path and whether it is shared, if its row and the file agree
        (size, inode, mtime); else the entry is dropped."""
        row = self._db.execute(
            "SELECT size, ino, mtime_ns, shared FROM files WHERE digest = ?", (digest,)
        ).fetchone()
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
        return path, bool(row[3])

    def _drop_locked(self, digest: bytes) -> None:
        self._touched.pop(digest, None)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path_of(digest))
        self._db.execute("DELETE FROM files WHERE digest = ?", (digest,))

    def _touch_locked(self, digest: bytes) -> None:
        """Records a use. Uses are written in batches (one transaction each: a write per hit
        would serialize a download's threads on the table), at the latest before an eviction
        and at ``close``."""
        self._touched[digest] = time.time_ns()
        if len(self._touched) >= TOUCH_BATCH:
            self._flush_touched_locked()

    def _flush_touched_locked(self) -> None:
        if not self._touched:
            return
        rows = [(t, d) for d, t in self._touched.items()]
        self._touched.clear()
        self._db.execute("BEGIN")
        try:
            self._db.executemany("UPDATE files SET last_used = MAX(last_used, ?) WHERE digest = ?", rows)
            self._db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise

    def _use(self, digest: bytes, size: int) -> tuple[str, bool] | None:
        with self._lock, _table_errors():
            found = self._valid(digest, size)
            if found is None:
                self.misses += 1
                return None
            self._touch_locked(digest)
            self.hits += 1
            return found

    # -- API ----------------------------------------------------------------------------------

    def lookup(self, digest: bytes, size: int) -> str | None:
        """The path of the cached file with this digest and size (marked as used), or None."""
        found = self._use(digest, size)
        return None if found is None else found[0]

    def materialize(self, digest: bytes, size: int, dst: str) -> str | None:
        """Creates ``dst`` (must not exist) from the cached file; returns the method used,
        or None on a miss. The caller verifies the content (see the module docstring)."""
        found = self._use(digest, size)
        if found is None:
            return None
        src, shared = found
        try:
            if self.link == "hardlink" and shared:
                # Never link a folder's file to another folder's: the entry gets a copy of
                # its own first (a read-only one, which later links share).
                self._put(src, digest, size, owned=True)
            return place(src, dst, self.link)
        except FileNotFoundError:  # evicted by another process meanwhile
            with contextlib.suppress(FileNotFoundError):
                os.unlink(dst)
            return None

    def add(self, src: str, digest: bytes, size: int) -> bool:
        """Puts the file at ``src`` (whose content the caller has verified to have ``digest``)
        into the cache, then evicts down to ``max_bytes``. With ``link="hardlink"`` the cache
        takes a hard link to ``src`` and makes it read-only; otherwise a clone, else a hard
        link that leaves ``src`` as it is (a shared entry), else a copy (module docstring).
        Returns whether it was added."""
        if not self.wants(size):
            return False
        with self._lock, _table_errors():
            if self._valid(digest, size) is not None:
                self._touch_locked(digest)
                return True
        self._put(src, digest, size, owned=False)
        return True

    def _put(self, src: str, digest: bytes, size: int, *, owned: bool) -> None:
        """Makes the entry for ``digest`` the content of ``src``; ``owned``: by a copy (or a
        clone) that belongs to the cache alone, never a link to ``src``."""
        final = self.path_of(digest)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        tmp = os.path.join(os.path.dirname(final), f".se-tmp-{uuid.uuid4().hex}")
        shared = False
        try:
            if owned:
                clone_or_copy(src, tmp)
            elif self.link == "hardlink":
                place(src, tmp, "hardlink")
            elif not (self.link == "reflink" and clone(src, tmp)):
                shared = link(src, tmp)
                if not shared:
                    copy_bytes(src, tmp)
            if not shared:  # read-only, through the umask as any file the user creates
                os.chmod(tmp, 0o444 & ~umask())
            st = os.lstat(tmp)
            if st.st_size != size:
                raise OSError(errno.EIO, f"{src} is {st.st_size} bytes, expected {size}")
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        with self._lock, _table_errors():
            self._db.execute(
                "INSERT INTO files VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (digest) DO UPDATE SET"
                " size = excluded.size, ino = excluded.ino, mtime_ns = excluded.mtime_ns,"
                " last_used = excluded.last_used, shared = excluded.shared",
                (digest, size, st.st_ino, st.st_mtime_ns, time.time_ns(), int(shared)),
            )
            self._evict_locked()

    def discard(self, digest: bytes) -> None:
        """Drops one entry (e.g. after its content failed verification). The file goes first,
        so a row a failing table keeps is dropped by the next lookup."""
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._drop_locked(digest)

    def total_bytes(self) -> int:
        with self._lock:
            return self._total_locked()

    def _total_locked(self) -> int:
        return int(self._db.execute("SELECT bytes FROM total WHERE id = 0").fetchone()[0])

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

    def eviction_order(self) -> list[tuple[bytes, int]]:
        """(digest, size) of every entry, least recently used first: the order `evict` takes."""
        with self._lock, _table_errors():
            self._flush_touched_locked()
            rows = self._db.execute("SELECT digest, size FROM files ORDER BY last_used").fetchall()
        return [(bytes(d), int(n)) for d, n in rows]

    def _evict_locked(self, max_bytes: int | None = None) -> int:
        limit = self.max_bytes if max_bytes is None else max_bytes
        self._flush_touched_locked()  # the order of use must be current
        total = self._total_locked()
        removed = 0
        while total > limit:
            rows = self._db.execute("SELECT digest, size FROM files ORDER BY last_used LIMIT 256").fetchall()
            if not rows:  # the total disagrees with the rows (an older writer): recount
                self._db.execute("UPDATE total SET bytes = (SELECT COALESCE(SUM(size), 0) FROM files)")
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
            with contextlib.suppress(sqlite3.Error):  # recent uses are only a hint
                self._flush_touched_locked()
            self._db.close()

    def __enter__(self) -> FileCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
