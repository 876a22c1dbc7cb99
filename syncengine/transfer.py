"""The transfer layer: uploads and downloads of whole objects over any `ObjectStore`.

- :class:`TransferLimits` bounds requests and bytes in flight for the whole process (all
  transfers, all event loops); :func:`default_limits` is the shared instance.
- :func:`upload` writes an object with one ``put`` or, above a threshold, a multipart upload
  with parallel parts, resumable across process restarts through an :class:`UploadJournal`.
- :func:`download` fetches an object with parallel ranged GETs pinned to one ETag into a temp
  file next to the destination, resumable too, and renames it into place only after the
  caller's ``verify`` accepted it.
- :func:`abort_stale_uploads` removes abandoned multipart uploads.

docs/TRANSFER.md is the prose version of this module.

>>> import asyncio, tempfile, pathlib
>>> from syncengine.store import LocalStore
>>> async def demo(d: pathlib.Path) -> bytes:
...     async with LocalStore(d / "store") as store:
...         await upload(store, "a/b", b"hello")
...         out = await download(store, "a/b", d / "out" / "b")
...         return out.read_bytes()
>>> asyncio.run(demo(pathlib.Path(tempfile.mkdtemp())))
b'hello'
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import fcntl
import functools
import os
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Final, NamedTuple, ParamSpec, TypeVar

import blake3
import msgspec

from syncengine import _sqlite
from syncengine._loop import gather_all
from syncengine.durable import fsync_dir
from syncengine.errors import (
    BodySizeMismatch,
    ConfigError,
    FileChangedError,
    InvalidPart,
    ObjectChanged,
    PreconditionFailed,
    SyncEngineError,
    UploadNotFound,
)
from syncengine.settings import env_size
from syncengine.store.base import (
    Body,
    FileSlice,
    HashedParts,
    ObjectInfo,
    ObjectStore,
    StoreCapabilities,
    UploadInfo,
    body_size,
    validate_key,
    validate_prefix,
)

__all__ = [
    "DEFAULT_MAX_INFLIGHT",
    "DEFAULT_MAX_REQUESTS",
    "DEFAULT_PART_SIZE",
    "DEFAULT_THRESHOLD",
    "JournalPart",
    "JournalUpload",
    "ObjectChanged",
    "TransferInProgress",
    "TransferLimits",
    "UploadJournal",
    "abort_stale_uploads",
    "default_limits",
    "download",
    "multipart_threshold",
    "part_size_for",
    "plan_parts",
    "put_buffer",
    "set_default_limits",
    "state_dir",
    "upload",
]

_P = ParamSpec("_P")
_T = TypeVar("_T")
_J = TypeVar("_J")

MiB: Final = 1 << 20
DEFAULT_MAX_REQUESTS: Final = 16
DEFAULT_MAX_INFLIGHT: Final = 256 * MiB
DEFAULT_THRESHOLD: Final = 64 * MiB
DEFAULT_PART_SIZE: Final = 16 * MiB
#: A download that sees its object change restarts at most this many times.
MAX_DOWNLOAD_RESTARTS: Final = 3
#: Prefix of a download's temp file in the destination's folder (reserved by the store key rules).
TEMP_PREFIX: Final = ".se-part-"
_IO_CHUNK: Final = 8 * MiB
_JOURNAL_FILE: Final = "transfers.sqlite"

ProgressCallback = Callable[[int], None]


class TransferInProgress(SyncEngineError, BlockingIOError):
    """Another download into the same destination is running (its temp file is locked)."""

    def __init__(self, path: str) -> None:
        self.message = f"{path}: another download into this destination is in progress; wait for it"
        super().__init__(errno.EAGAIN, self.message)
        self.filename = path

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[type[TransferInProgress], tuple[str]]:
        return type(self), (self.filename,)


# ---- settings ---------------------------------------------------------------------------------

#: Memory a put may hold in finished packs waiting for or being uploaded.
DEFAULT_PUT_BUFFER: Final = 128 * MiB


def put_buffer() -> int:
    """Bytes of finished packs one put keeps in memory at most (plus the pack being filled):
    ``$SYNCENGINE_PUT_BUFFER`` or 128 MiB; at least one pack is always allowed."""
    return env_size("SYNCENGINE_PUT_BUFFER", DEFAULT_PUT_BUFFER, minimum=1)


def _env_int(name: str, default: int, *, minimum: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r} is too small: at least {minimum} is needed")
    return value


def multipart_threshold() -> int:
    """Objects larger than this go multipart: ``$SYNCENGINE_MULTIPART_THRESHOLD`` or 64 MiB."""
    return env_size("SYNCENGINE_MULTIPART_THRESHOLD", DEFAULT_THRESHOLD)


def default_part_size() -> int:
    """Preferred part / range size: ``$SYNCENGINE_PART_SIZE`` or 16 MiB."""
    return env_size("SYNCENGINE_PART_SIZE", DEFAULT_PART_SIZE, minimum=1)


def state_dir() -> Path:
    """Where local transfer state lives: ``$SYNCENGINE_STATE_DIR``, else the user state dir."""
    import platformdirs  # ~10 ms to import: not at start-up

    env = os.environ.get("SYNCENGINE_STATE_DIR")
    return Path(env) if env else Path(platformdirs.user_state_dir("syncengine"))


# ---- process-wide limits ----------------------------------------------------------------------


class _Waiter:
    __slots__ = ("fut", "granted", "loop", "nbytes")

    def __init__(self, loop: asyncio.AbstractEventLoop, nbytes: int) -> None:
        self.loop = loop
        self.fut: asyncio.Future[None] = loop.create_future()
        self.nbytes = nbytes
        self.granted = False


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _Slot:
    """``async with limits.slot(n):`` — one request carrying ``n`` bytes."""

    __slots__ = ("_limits", "_nbytes")

    def __init__(self, limits: TransferLimits, nbytes: int) -> None:
        self._limits = limits
        self._nbytes = nbytes

    async def __aenter__(self) -> None:
        await self._limits.acquire(self._nbytes)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._limits.release(self._nbytes)


class TransferLimits:
    """Requests and bytes in flight, shared by every transfer of a process.

    A request takes one of ``max_requests`` slots and ``nbytes`` of the ``max_inflight``
    budget, both at once, and gives them back when done. A request larger than the whole
    budget runs when no other bytes are in flight (alone), so it never deadlocks. Waiters
    are served first come, first served, so a large request is not starved by small ones.

    Several event loops may share one instance (the sync facade's loop thread, a notebook's
    loop, ``asyncio.run`` in a worker thread): the counters live under a ``threading.Lock``
    and each waiter waits on a future of *its own* loop, woken with
    ``loop.call_soon_threadsafe``. (An ``asyncio.Semaphore`` binds to the first loop that
    waits on it and fails on the others.) Slots are handed to waiters at release time, under
    the lock, so a slot is never lost or counted twice, also when a waiter is cancelled.

    >>> limits = TransferLimits(max_requests=4, max_inflight=64 << 20)
    >>> async def one() -> None:
    ...     async with limits.slot(8 << 20):
    ...         pass
    >>> asyncio.run(one()); limits.in_use
    (0, 0)
    """

    def __init__(self, max_requests: int | None = None, max_inflight: int | None = None) -> None:
        self._lock = threading.Lock()
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._requests = 0
        self._bytes = 0
        self._max_requests = 1
        self._max_bytes = 1
        self.configure(
            max_requests=(
                _env_int("SYNCENGINE_MAX_REQUESTS", DEFAULT_MAX_REQUESTS, minimum=1)
                if max_requests is None
                else max_requests
            ),
            max_inflight=(
                env_size("SYNCENGINE_MAX_INFLIGHT", DEFAULT_MAX_INFLIGHT, minimum=1)
                if max_inflight is None
                else max_inflight
            ),
        )

    def __repr__(self) -> str:
        return (
            f"TransferLimits(max_requests={self._max_requests}, max_inflight={self._max_bytes}, "
            f"in_use={self.in_use})"
        )

    @property
    def max_requests(self) -> int:
        return self._max_requests

    @property
    def max_inflight(self) -> int:
        return self._max_bytes

    @property
    def in_use(self) -> tuple[int, int]:
        """(requests, bytes) currently held."""
        with self._lock:
            return self._requests, self._bytes

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot."""
        with self._lock:
            return len(self._waiters)

    def configure(self, *, max_requests: int | None = None, max_inflight: int | None = None) -> None:
        """Change the limits; running requests keep their slots, waiters are re-checked."""
        if max_requests is not None and max_requests < 1:
            raise ConfigError(f"max_requests must be >= 1, got {max_requests}")
        if max_inflight is not None and max_inflight < 1:
            raise ConfigError(f"max_inflight must be >= 1 byte, got {max_inflight}")
        with self._lock:
            if max_requests is not None:
                self._max_requests = max_requests
            if max_inflight is not None:
                self._max_bytes = max_inflight
            self._grant_locked()

    def slot(self, nbytes: int = 0) -> _Slot:
        """``async with limits.slot(nbytes):`` around one request."""
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        return _Slot(self, nbytes)

    def _fits(self, nbytes: int) -> bool:
        return self._requests < self._max_requests and (
            self._bytes == 0 or self._bytes + nbytes <= self._max_bytes
        )

    def _grant_locked(self) -> None:
        while self._waiters and self._fits(self._waiters[0].nbytes):
            w = self._waiters.popleft()
            try:
                w.loop.call_soon_threadsafe(_resolve, w.fut)
            except RuntimeError:  # its loop is closed: nobody is waiting there any more
                continue
            w.granted = True
            self._requests += 1
            self._bytes += w.nbytes

    async def acquire(self, nbytes: int = 0) -> None:
        """Wait for a request slot and ``nbytes`` of budget; pair with :meth:`release`."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if not self._waiters and self._fits(nbytes):
                self._requests += 1
                self._bytes += nbytes
                return
            w = _Waiter(loop, nbytes)
            self._waiters.append(w)
        try:
            await w.fut
        except BaseException:
            with self._lock:
                if w.granted:  # granted, but we will not use it: hand it on
                    self._requests -= 1
                    self._bytes -= nbytes
                else:
                    self._waiters.remove(w)
                self._grant_locked()
            raise

    def release(self, nbytes: int = 0) -> None:
        """Give back a slot taken by :meth:`acquire` with the same ``nbytes``."""
        with self._lock:
            self._requests -= 1
            self._bytes -= nbytes
            self._grant_locked()


_default_limits: TransferLimits | None = None
_default_lock = threading.Lock()


def default_limits() -> TransferLimits:
    """The process-wide limits (created from ``$SYNCENGINE_MAX_REQUESTS`` and
    ``$SYNCENGINE_MAX_INFLIGHT`` on first use); change them with ``.configure()``."""
    global _default_limits  # noqa: PLW0603
    with _default_lock:
        if _default_limits is None:
            _default_limits = TransferLimits()
        return _default_limits


def set_default_limits(limits: TransferLimits) -> None:
    """Replace the process-wide limits (transfers already waiting keep the old instance)."""
    global _default_limits  # noqa: PLW0603
    with _default_lock:
        _default_limits = limits


# ---- part sizing ------------------------------------------------------------------------------


class PartPlan(NamedTuple):
    """Part ``number`` (1-based) covers ``length`` bytes of the body from ``offset``."""

    number: int
    offset: int
    length: int


def part_size_for(size: int, caps: StoreCapabilities, part_size: int | None = None) -> int:
    """The part size for a ``size``-byte multipart upload to a store with ``caps``.

    ``max(part_size or default, min_part_size, ceil(size / max_parts))`` rounded up to a
    whole MiB, capped at ``max_part_size``. Raises ``ConfigError`` when even the largest
    parts cannot cover ``size`` in ``max_parts`` parts.

    >>> caps = StoreCapabilities(conditional_put=True, conditional_cas=True,
    ...     conditional_across_hosts=True, ranged_get=True, max_put_size=5 << 30, multipart=True,
    ...     min_part_size=5 << 20, max_part_size=5 << 30, max_parts=10_000, key_prefix_overlap=True)
    >>> part_size_for(1 << 30, caps) >> 20, part_size_for(1 << 40, caps) >> 20
    (16, 105)
    """
    if size < 0:
        raise ConfigError(f"size must be >= 0, got {size}")
    if part_size is not None and part_size < 1:
        raise ConfigError(f"part_size must be >= 1, got {part_size}")
    want = max(part_size or default_part_size(), caps.min_part_size, -(-size // caps.max_parts), 1)
    ps = min(-(-want // MiB) * MiB, caps.max_part_size)
    if ps < caps.min_part_size or -(-size // ps) > caps.max_parts:
        raise ConfigError(
            f"{size} bytes do not fit in {caps.max_parts} parts of at most {caps.max_part_size} bytes"
        )
    return ps


def plan_parts(size: int, part_size: int) -> list[PartPlan]:
    """The parts of a ``size``-byte body cut every ``part_size`` bytes (the last may be shorter).

    >>> [tuple(p) for p in plan_parts(10, 4)]
    [(1, 0, 4), (2, 4, 4), (3, 8, 2)]
    """
    return [
        PartPlan(i + 1, off, min(part_size, size - off)) for i, off in enumerate(range(0, size, part_size))
    ]


def _part_size_ok(ps: int, size: int, caps: StoreCapabilities) -> bool:
    return caps.min_part_size <= ps <= caps.max_part_size and -(-size // ps) <= caps.max_parts


# ---- helpers ----------------------------------------------------------------------------------


class _Progress:
    def __init__(self, cb: ProgressCallback | None) -> None:
        self._cb = cb
        self.done = 0

    def reset(self, done: int) -> None:
        self.done = done
        if self._cb is not None:
            self._cb(done)

    def add(self, n: int) -> None:
        self.done += n
        if self._cb is not None and n:
            self._cb(self.done)


async def _parallel(jobs: Sequence[_J], fn: Callable[[_J], Awaitable[None]], width: int) -> None:
    """Run ``fn`` over ``jobs`` with at most ``width`` at once, in order; the first error
    cancels the rest and is raised as is (not wrapped in an ExceptionGroup)."""
    it = iter(jobs)

    async def worker() -> None:
        for job in it:  # one iterator shared by all workers: each job runs once
            await fn(job)

    await gather_all([worker() for _ in range(min(width, len(jobs)))])


async def _settled(fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """``asyncio.to_thread`` that, when cancelled, still waits for the thread to finish.

    For work on a file descriptor that is closed afterwards: closing it while a thread still
    writes through it could let the write land in whatever file reuses the number.
    """
    fut = asyncio.ensure_future(asyncio.to_thread(fn, *args, **kwargs))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await fut
        raise


def _hasher() -> blake3.blake3:
    return blake3.blake3(max_threads=blake3.blake3.AUTO)


def _hash_file_range(path: str, offset: int, length: int) -> str:
    h = blake3.blake3()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        pos, end = offset, offset + length
        while pos < end:
            b = os.pread(fd, min(_IO_CHUNK, end - pos), pos)
            if not b:
                break  # the file shrank: the digest will not match
            h.update(b)
            pos += len(b)
    finally:
        os.close(fd)
    return str(h.hexdigest())


# ---- the journal ------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS uploads (
    id INTEGER PRIMARY KEY,
    store TEXT NOT NULL,
    key TEXT NOT NULL,
    source TEXT NOT NULL,
    upload_id TEXT NOT NULL,
    size INTEGER NOT NULL,
    part_size INTEGER NOT NULL,
    created REAL NOT NULL,
    UNIQUE (store, key, source)
);
CREATE TABLE IF NOT EXISTS upload_parts (
    upload INTEGER NOT NULL REFERENCES uploads(id) ON DELETE CASCADE,
    number INTEGER NOT NULL,
    size INTEGER NOT NULL,
    etag TEXT NOT NULL,
    digest TEXT NOT NULL,
    PRIMARY KEY (upload, number)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS downloads (
    id INTEGER PRIMARY KEY,
    dest TEXT NOT NULL UNIQUE,
    store TEXT NOT NULL,
    key TEXT NOT NULL,
    etag TEXT NOT NULL,
    size INTEGER NOT NULL,
    part_size INTEGER NOT NULL,
    temp TEXT NOT NULL,
    temp_ino INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS download_ranges (
    download INTEGER NOT NULL REFERENCES downloads(id) ON DELETE CASCADE,
    start INTEGER NOT NULL,
    stop INTEGER NOT NULL,
    PRIMARY KEY (download, start)
) WITHOUT ROWID;
"""


class JournalPart(msgspec.Struct, frozen=True):
    """A part the journal knows was stored: its size, the store's ETag, BLAKE3 of its bytes."""

    number: int
    size: int
    etag: str
    digest: str


class JournalUpload(msgspec.Struct, frozen=True):
    """One resumable upload: which store, key and source, under which upload id."""

    id: int
    store: str
    key: str
    source: str
    upload_id: str
    size: int
    part_size: int
    created: float
    parts: tuple[JournalPart, ...] = ()


class _JournalDownload(msgspec.Struct, frozen=True):
    id: int
    dest: str
    store: str
    key: str
    etag: str
    size: int
    part_size: int
    temp: str
    temp_ino: int
    ranges: tuple[tuple[int, int], ...] = ()


class UploadJournal:
    """Resume state of this machine's transfers to one store, in SQLite.

    ``store_id`` names the store (e.g. the repository URL, ``s3://bucket/prefix``); one
    database file (``path``, default ``state_dir()/transfers.sqlite``) holds the journals of
    every store, and several processes may use it at once. Everything in it is a cache:
    deleting the file loses only the ability to resume.

    Writes are committed one by one in WAL mode, so a ``kill -9`` loses at most the record
    being written (the part is then sent again). All SQLite work runs on the journal's own
    thread, never on an event loop, so a journal may be used from several loops.

    >>> import tempfile
    >>> async def demo() -> list[JournalUpload]:
    ...     async with UploadJournal("s3://bucket/repo", Path(tempfile.mkdtemp()) / "j.sqlite") as j:
    ...         return await j.uploads()
    >>> asyncio.run(demo())
    []
    """

    def __init__(self, store_id: str, path: str | os.PathLike[str] | None = None) -> None:
        if not isinstance(store_id, str) or not store_id:
            raise ConfigError("UploadJournal needs a non-empty store_id string (e.g. the repository URL)")
        self.store_id = store_id
        self.path = Path(path) if path is not None else state_dir() / _JOURNAL_FILE
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="syncengine-journal")
        self._db: sqlite3.Connection | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"UploadJournal({self.store_id!r}, {str(self.path)!r})"

    async def _run(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        if self._closed:
            raise ConfigError(f"{self!r} is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)

        def setup(db: sqlite3.Connection) -> None:
            db.execute("PRAGMA foreign_keys=ON")
            db.executescript(_SCHEMA)

        # WAL + synchronous=NORMAL: commits survive a process crash
        return _sqlite.connect(self.path, timeout=60, setup=setup)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            try:
                self._db = self._connect()
            except sqlite3.DatabaseError as e:
                if isinstance(e, sqlite3.OperationalError):
                    raise  # locked, unwritable, …: not ours to discard
                # Not a database (or corrupt): it is only a cache; keep it aside and start afresh.
                os.replace(self.path, f"{self.path}.corrupt-{int(time.time())}")
                for suffix in ("-wal", "-shm"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(f"{self.path}{suffix}")
                self._db = self._connect()
        return self._db

    def _close_sync(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def close(self) -> None:
        """Close the database (idempotent)."""
        if self._closed:
            return
        await self._run(self._close_sync)
        self._closed = True
        self._pool.shutdown(wait=False)

    async def __aenter__(self) -> UploadJournal:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- uploads

    def _upload_rows(self, where: str, args: tuple[object, ...]) -> list[JournalUpload]:
        db = self._conn()
        rows = db.execute(
            "SELECT id, store, key, source, upload_id, size, part_size, created FROM uploads "
            f"WHERE {where} ORDER BY key, created",
            args,
        ).fetchall()
        out = []
        for r in rows:
            parts = db.execute(
                "SELECT number, size, etag, digest FROM upload_parts WHERE upload = ? ORDER BY number",
                (r[0],),
            ).fetchall()
            rec = JournalUpload(*r)
            out.append(msgspec.structs.replace(rec, parts=tuple(JournalPart(*p) for p in parts)))
        return out

    async def uploads(self, key: str | None = None) -> list[JournalUpload]:
        """The resumable uploads recorded for this store (of ``key`` only, if given)."""
        if key is None:
            return await self._run(self._upload_rows, "store = ?", (self.store_id,))
        return await self._run(self._upload_rows, "store = ? AND key = ?", (self.store_id, key))

    def _begin_upload_sync(self, key: str, source: str, upload_id: str, size: int, part_size: int) -> int:
        db = self._conn()
        with db:  # one transaction: the old row goes, the new one comes
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "DELETE FROM uploads WHERE store = ? AND key = ? AND source = ?", (self.store_id, key, source)
            )
            cur = db.execute(
                "INSERT INTO uploads (store, key, source, upload_id, size, part_size, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (self.store_id, key, source, upload_id, size, part_size, time.time()),
            )
        assert cur.lastrowid is not None
        return cur.lastrowid

    async def _begin_upload(self, key: str, source: str, upload_id: str, size: int, part_size: int) -> int:
        return await self._run(self._begin_upload_sync, key, source, upload_id, size, part_size)

    def _record_part_sync(self, row: int, part: JournalPart) -> None:
        self._conn().execute(
            "INSERT OR REPLACE INTO upload_parts (upload, number, size, etag, digest) VALUES (?, ?, ?, ?, ?)",
            (row, part.number, part.size, part.etag, part.digest),
        )

    async def _record_part(self, row: int, part: JournalPart) -> None:
        await self._run(self._record_part_sync, row, part)

    def _forget_upload_sync(self, key: str, upload_id: str) -> None:
        self._conn().execute(
            "DELETE FROM uploads WHERE store = ? AND key = ? AND upload_id = ?",
            (self.store_id, key, upload_id),
        )

    async def forget_upload(self, key: str, upload_id: str) -> None:
        """Drop the record of an upload (it was completed, aborted, or is to be given up)."""
        await self._run(self._forget_upload_sync, key, upload_id)

    # -- downloads

    def _find_download_sync(self, dest: str) -> _JournalDownload | None:
        db = self._conn()
        r = db.execute(
            "SELECT id, dest, store, key, etag, size, part_size, temp, temp_ino "
            "FROM downloads WHERE dest = ?",
            (dest,),
        ).fetchone()
        if r is None:
            return None
        ranges = db.execute(
            "SELECT start, stop FROM download_ranges WHERE download = ? ORDER BY start", (r[0],)
        ).fetchall()
        did, dest_, store, key, etag, size, part_size, temp, temp_ino = r
        return _JournalDownload(
            did, dest_, store, key, etag, size, part_size, temp, temp_ino, tuple((a, b) for a, b in ranges)
        )

    async def _find_download(self, dest: str) -> _JournalDownload | None:
        return await self._run(self._find_download_sync, dest)

    def _begin_download_sync(
        self, dest: str, key: str, etag: str, size: int, part_size: int, temp: str, temp_ino: int
    ) -> int:
        db = self._conn()
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM downloads WHERE dest = ?", (dest,))
            cur = db.execute(
                "INSERT INTO downloads (dest, store, key, etag, size, part_size, temp, temp_ino, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (dest, self.store_id, key, etag, size, part_size, temp, temp_ino, time.time()),
            )
        assert cur.lastrowid is not None
        return cur.lastrowid

    async def _begin_download(
        self, dest: str, key: str, etag: str, size: int, part_size: int, temp: str, temp_ino: int
    ) -> int:
        return await self._run(self._begin_download_sync, dest, key, etag, size, part_size, temp, temp_ino)

    def _record_range_sync(self, row: int, start: int, stop: int) -> None:
        self._conn().execute(
            "INSERT OR REPLACE INTO download_ranges (download, start, stop) VALUES (?, ?, ?)",
            (row, start, stop),
        )

    async def _record_range(self, row: int, start: int, stop: int) -> None:
        await self._run(self._record_range_sync, row, start, stop)

    def _forget_download_sync(self, dest: str) -> None:
        self._conn().execute("DELETE FROM downloads WHERE dest = ?", (dest,))

    async def _forget_download(self, dest: str) -> None:
        await self._run(self._forget_download_sync, dest)


# ---- uploads ----------------------------------------------------------------------------------


class _FileIdentity(msgspec.Struct, frozen=True, tag="file"):
    path: str
    offset: int
    length: int
    file_size: int
    mtime_ns: int
    ino: int


class _BytesIdentity(msgspec.Struct, frozen=True, tag="bytes"):
    size: int
    blake3: str


_encode_identity = msgspec.json.Encoder().encode


def _file_identity(body: FileSlice) -> _FileIdentity:
    path = os.path.realpath(body.path)
    st = os.stat(path)
    return _FileIdentity(path, body.offset, body.length, st.st_size, st.st_mtime_ns, st.st_ino)


def _bytes_identity(mv: memoryview) -> _BytesIdentity:
    h = _hasher()
    h.update(mv)
    return _BytesIdentity(len(mv), str(h.hexdigest()))


async def upload(
    store: ObjectStore,
    key: str,
    body: Body,
    *,
    if_none_match: bool = False,
    if_match: str | None = None,
    journal: UploadJournal | None = None,
    threshold: int | None = None,
    part_size: int | None = None,
    limits: TransferLimits | None = None,
    on_progress: ProgressCallback | None = None,
) -> ObjectInfo:
    """Write ``body`` as object ``key``: one ``put`` up to ``threshold`` bytes, else multipart.

    ``threshold`` defaults to :func:`multipart_threshold` (64 MiB); bodies above the store's
    ``max_put_size`` always go multipart. Parts are ``part_size_for(size, caps, part_size)``
    bytes, sent in parallel within ``limits`` (default: :func:`default_limits`). Multipart
    needs a ``FileSlice`` or an in-memory body (other ``BodySource``s are sent with one
    ``put``, which must then fit ``max_put_size``).

    With a ``journal``, a multipart upload interrupted by an error, a cancellation or a
    crash resumes on the next call for the same key and source: only parts the journal and
    the store agree on are skipped. ``if_none_match``/``if_match`` apply at the end (``put``
    or ``complete_multipart``); a lost condition aborts the upload and raises
    ``PreconditionFailed``. ``on_progress(bytes_done)`` is called on the event loop with the
    running total (skipped parts included; it goes back if an upload has to start over).
    """
    validate_key(key)
    if if_none_match and if_match is not None:
        raise ConfigError("upload: if_none_match and if_match cannot be combined")
    lim = limits if limits is not None else default_limits()
    thr = multipart_threshold() if threshold is None else threshold
    size = body_size(body)
    caps = store.capabilities
    multipart = caps.multipart and size > 0 and (size > thr or size > caps.max_put_size)
    if multipart and isinstance(body, HashedParts):
        body = body.join()  # parts are cut from one buffer
    if multipart and not isinstance(body, bytes | bytearray | memoryview | FileSlice):
        if size > caps.max_put_size:
            raise ConfigError(
                f"upload {key!r}: a {type(body).__name__} of {size} bytes is above max_put_size "
                f"({caps.max_put_size}) and cannot be cut into parts; pass a FileSlice or bytes"
            )
        multipart = False
    progress = _Progress(on_progress)
    if not multipart:
        if size > caps.max_put_size:
            raise ConfigError(
                f"upload {key!r}: {size} bytes exceed max_put_size ({caps.max_put_size}) "
                "and the store has no multipart uploads"
            )
        async with lim.slot(size):
            info = await store.put(key, body, if_none_match=if_none_match, if_match=if_match)
        progress.add(size)
        return info
    assert isinstance(body, bytes | bytearray | memoryview | FileSlice)
    ps = part_size_for(size, caps, part_size)
    job = _MultipartUpload(store, key, body, size, ps, if_none_match, if_match, journal, lim, progress)
    return await job.run()


class _StartOver(Exception):
    """The upload id vanished (completed or aborted elsewhere): begin a new upload."""

    def __init__(self, cause: UploadNotFound) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _MultipartUpload:
    def __init__(
        self,
        store: ObjectStore,
        key: str,
        body: bytes | bytearray | memoryview | FileSlice,
        size: int,
        part_size: int,
        if_none_match: bool,
        if_match: str | None,
        journal: UploadJournal | None,
        limits: TransferLimits,
        progress: _Progress,
    ) -> None:
        self.store = store
        self.key = key
        self.file = body if isinstance(body, FileSlice) else None
        self.mem = None if isinstance(body, FileSlice) else memoryview(body).cast("B")
        self.size = size
        self.part_size = part_size
        self.if_none_match = if_none_match
        self.if_match = if_match
        self.journal = journal
        self.limits = limits
        self.progress = progress
        self.identity: _FileIdentity | _BytesIdentity | None = None

    # -- bodies and digests

    def _part_body(self, p: PartPlan) -> Body:
        if self.file is not None:
            return FileSlice(self.file.path, self.file.offset + p.offset, p.length)
        assert self.mem is not None
        return self.mem[p.offset : p.offset + p.length]

    def _digest(self, p: PartPlan) -> str:
        if self.file is not None:
            return _hash_file_range(self.file.path, self.file.offset + p.offset, p.length)
        assert self.mem is not None
        return str(blake3.blake3(self.mem[p.offset : p.offset + p.length]).hexdigest())

    def _digests(self, parts: Sequence[PartPlan]) -> list[str]:
        return [self._digest(p) for p in parts]

    async def _identify(self) -> _FileIdentity | _BytesIdentity:
        if self.identity is None:
            if self.file is not None:
                self.identity = await asyncio.to_thread(_file_identity, self.file)
            else:
                assert self.mem is not None
                self.identity = await asyncio.to_thread(_bytes_identity, self.mem)
        return self.identity

    async def _check_file_unchanged(self) -> None:
        ident = self.identity
        if not isinstance(ident, _FileIdentity):
            return
        now = await asyncio.to_thread(_file_identity, FileSlice(ident.path, ident.offset, ident.length))
        if now != ident:
            raise FileChangedError(ident.path, "its size, mtime or inode changed during the upload")

    # -- store calls

    async def _abort_quietly(self, upload_id: str) -> None:
        with contextlib.suppress(Exception):
            async with self.limits.slot():
                await self.store.abort_multipart(self.key, upload_id)

    async def _forget(self, upload_id: str) -> None:
        if self.journal is not None:
            await self.journal.forget_upload(self.key, upload_id)

    async def _create(self, source: str) -> tuple[str, int | None]:
        async with self.limits.slot():
            upload_id = await self.store.create_multipart(self.key)
        row = None
        if self.journal is not None:
            # Recorded before any part is sent, so a crash leaves a row that finds the upload.
            row = await self.journal._begin_upload(self.key, source, upload_id, self.size, self.part_size)
        return upload_id, row

    async def _resume(self, source: str) -> tuple[str, int | None, int, dict[int, str]]:
        """(upload id, journal row, part size, part number → ETag of parts already stored)."""
        j = self.journal
        if j is None:
            upload_id, row = await self._create(source)
            return upload_id, row, self.part_size, {}
        found: JournalUpload | None = None
        for rec in await j.uploads(self.key):
            if (
                found is None
                and rec.source == source
                and rec.size == self.size
                and _part_size_ok(rec.part_size, self.size, self.store.capabilities)
            ):
                found = rec
                continue
            # The source changed (or the record is unusable): that upload can never finish.
            await self._abort_quietly(rec.upload_id)
            await j.forget_upload(rec.key, rec.upload_id)
        if found is not None:
            try:
                async with self.limits.slot():
                    stored = {
                        p.part_number: p for p in await self.store.list_parts(self.key, found.upload_id)
                    }
            except UploadNotFound:
                await j.forget_upload(self.key, found.upload_id)
            else:
                plan = plan_parts(self.size, found.part_size)
                candidates = []
                for jp in found.parts:
                    sp = stored.get(jp.number)
                    if (
                        sp is not None
                        and jp.number <= len(plan)
                        and sp.etag == jp.etag
                        and sp.size == jp.size == plan[jp.number - 1].length
                    ):
                        candidates.append((plan[jp.number - 1], jp))
                # The source looks unchanged; make sure the bytes of the parts we skip are.
                digests = await asyncio.to_thread(self._digests, [p for p, _ in candidates])
                done = {
                    jp.number: jp.etag
                    for (_, jp), d in zip(candidates, digests, strict=True)
                    if d == jp.digest
                }
                return found.upload_id, found.id, found.part_size, done
        upload_id, row = await self._create(source)
        return upload_id, row, self.part_size, {}

    async def _attempt(self) -> ObjectInfo:
        source = _encode_identity(await self._identify()).decode()
        upload_id, row, part_size, etags = await self._resume(source)
        plan = plan_parts(self.size, part_size)
        self.progress.reset(sum(plan[n - 1].length for n in etags))
        todo = [p for p in plan if p.number not in etags]

        async def send(p: PartPlan) -> None:
            digest = await asyncio.to_thread(self._digest, p) if row is not None else ""
            async with self.limits.slot(p.length):
                etag = await self.store.upload_part(self.key, upload_id, p.number, self._part_body(p))
            if self.journal is not None and row is not None:
                await self.journal._record_part(row, JournalPart(p.number, p.length, etag, digest))
            etags[p.number] = etag
            self.progress.add(p.length)

        try:
            try:
                await _parallel(todo, send, self.limits.max_requests)
                await self._check_file_unchanged()
                async with self.limits.slot():
                    info = await self.store.complete_multipart(
                        self.key,
                        upload_id,
                        [(p.number, etags[p.number]) for p in plan],
                        if_none_match=self.if_none_match,
                        if_match=self.if_match,
                    )
            except UploadNotFound as e:
                await self._forget(upload_id)
                raise _StartOver(e) from None
            except (PreconditionFailed, FileChangedError, BodySizeMismatch, InvalidPart):
                # Final for this upload: the parts can never make the wanted object.
                await self._abort_quietly(upload_id)
                await self._forget(upload_id)
                raise
        except BaseException as e:
            if self.journal is None and not isinstance(e, _StartOver):
                await self._abort_quietly(upload_id)  # nobody could resume it
            raise
        await self._forget(upload_id)
        return info

    async def run(self) -> ObjectInfo:
        try:
            return await self._attempt()
        except _StartOver:
            pass
        try:
            return await self._attempt()
        except _StartOver as e:  # vanished twice: someone keeps aborting this key's uploads
            raise e.cause from None


# ---- abandoned uploads ------------------------------------------------------------------------


async def abort_stale_uploads(
    store: ObjectStore,
    *,
    older_than: float,
    prefix: str = "",
    dry_run: bool = False,
    journal: UploadJournal | None = None,
    limits: TransferLimits | None = None,
) -> list[UploadInfo]:
    """Abort multipart uploads under ``prefix`` started more than ``older_than`` seconds ago.

    Returns the uploads found (aborted unless ``dry_run``). Uploads that vanish meanwhile
    (completed or aborted by someone else) are skipped silently. With a ``journal``, its
    rows for the aborted uploads go too. ``initiated`` is the store's clock: keep
    ``older_than`` well above any clock skew and any upload's duration (a day is typical);
    an upload aborted while still running fails its next part and starts over.
    """
    if older_than < 0:
        raise ConfigError(f"older_than must be >= 0 seconds, got {older_than}")
    validate_prefix(prefix)
    lim = limits if limits is not None else default_limits()
    cutoff = time.time() - older_than
    async with lim.slot():
        uploads = await store.list_multipart_uploads(prefix)
    stale = [u for u in uploads if u.initiated < cutoff]
    if dry_run:
        return stale
    for u in stale:
        with contextlib.suppress(UploadNotFound):
            async with lim.slot():
                await store.abort_multipart(u.key, u.upload_id)
        if journal is not None:
            await journal.forget_upload(u.key, u.upload_id)
    return stale


# ---- downloads --------------------------------------------------------------------------------


class _Changed(Exception):
    """The object changed under a running download."""


def _temp_path(dest: Path) -> Path:
    name = dest.name
    if len(name.encode("utf-8", "surrogateescape")) > 240:
        name = str(blake3.blake3(os.fsencode(name)).hexdigest(length=16))
    return dest.parent / f"{TEMP_PREFIX}{name}"


def _open_temp(temp: str) -> tuple[int, os.stat_result]:
    """Open (creating) and exclusively lock the temp file; the path must still name that file."""
    for _ in range(16):
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise TransferInProgress(temp) from None
            st = os.fstat(fd)
            try:
                same = os.stat(temp).st_ino == st.st_ino
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            return fd, st
        os.close(fd)  # a finishing download renamed it away between our open and lock
    raise TransferInProgress(temp)


def _reset_temp(fd: int, size: int) -> None:
    os.ftruncate(fd, 0)
    os.ftruncate(fd, size)


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    mv = memoryview(data)
    while mv:
        n = os.pwrite(fd, mv, offset)
        mv = mv[n:]
        offset += n


def _unlink_quiet(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _finish(fd: int, temp: str, dest: str) -> None:
    os.fsync(fd)
    os.rename(temp, dest)
    fsync_dir(os.path.dirname(dest))


async def download(
    store: ObjectStore,
    key: str,
    dest: str | os.PathLike[str],
    *,
    size: int | None = None,
    etag: str | None = None,
    verify: Callable[[Path], None] | None = None,
    part_size: int | None = None,
    limits: TransferLimits | None = None,
    journal: UploadJournal | None = None,
    on_progress: ProgressCallback | None = None,
) -> Path:
    """Fetch object ``key`` into file ``dest``; returns ``dest`` as a ``Path``.

    Ranges of ``part_size`` bytes (default :func:`default_part_size`) are fetched in
    parallel within ``limits`` and written into ``dest.parent/.se-part-<name>``. Every range
    must come from one version of the object (one ETag): ``etag``/``size`` pin the version
    asked for (another one raises ``ObjectChanged``); without them the version seen first is
    pinned, and the download restarts if it changes midway. Then the temp file is fsynced,
    ``verify(temp_path)`` runs in a thread (raise to reject: the temp file is removed and
    nothing final is written), and the temp file is renamed to ``dest`` atomically.

    With a ``journal`` the completed ranges are recorded (after an fdatasync), so a download
    interrupted by an error, a cancellation or a crash resumes with only the missing ranges;
    without one, an interrupted download removes its temp file. A second download into the
    same ``dest`` while one runs raises ``TransferInProgress``.
    """
    validate_key(key)
    lim = limits if limits is not None else default_limits()
    ps = default_part_size() if part_size is None else part_size
    if ps < 1:
        raise ConfigError(f"part_size must be >= 1, got {ps}")
    dest_path = Path(os.path.abspath(dest))
    progress = _Progress(on_progress)
    for _ in range(MAX_DOWNLOAD_RESTARTS + 1):
        async with lim.slot():
            info = await store.head(key)
        if etag is not None and info.etag != etag:
            raise ObjectChanged(f"{key!r}: its ETag is {info.etag!r}, not the {etag!r} asked for")
        if size is not None and info.size != size:
            raise ObjectChanged(f"{key!r}: it has {info.size} bytes, not the {size} asked for")
        try:
            await _download_once(store, info, dest_path, verify, ps, lim, journal, progress)
        except _Changed:
            if etag is not None:
                raise ObjectChanged(
                    f"{key!r} changed while being downloaded: no longer the version {etag!r}"
                ) from None
            continue
        return dest_path
    raise ObjectChanged(
        f"{key!r} changed {MAX_DOWNLOAD_RESTARTS + 1} times while being downloaded; try again later"
    )


async def _download_once(
    store: ObjectStore,
    info: ObjectInfo,
    dest: Path,
    verify: Callable[[Path], None] | None,
    part_size: int,
    limits: TransferLimits,
    journal: UploadJournal | None,
    progress: _Progress,
) -> None:
    key, size = info.key, info.size
    temp = _temp_path(dest)
    await asyncio.to_thread(dest.parent.mkdir, parents=True, exist_ok=True)
    fd, st = await asyncio.to_thread(_open_temp, str(temp))
    keep_temp = journal is not None  # an interrupted download is resumed from it
    try:
        done: set[tuple[int, int]] = set()
        row: int | None = None
        if journal is not None:
            rec = await journal._find_download(str(dest))
            if (
                rec is not None
                and (rec.store, rec.key, rec.etag, rec.size, rec.part_size)
                == (journal.store_id, key, info.etag, size, part_size)
                and (rec.temp, rec.temp_ino) == (str(temp), st.st_ino)
                and st.st_size == size
            ):
                row, done = rec.id, set(rec.ranges)
            else:
                await _settled(_reset_temp, fd, size)
                row = await journal._begin_download(
                    str(dest), key, info.etag, size, part_size, str(temp), st.st_ino
                )
        else:
            await _settled(_reset_temp, fd, size)
        ranged = store.capabilities.ranged_get
        ranges = [
            (p.offset, p.offset + p.length) for p in plan_parts(size, part_size if ranged else max(size, 1))
        ]
        todo = [r for r in ranges if r not in done]
        progress.reset(sum(b - a for a, b in ranges if (a, b) in done))

        async def fetch(r: tuple[int, int]) -> None:
            start, stop = r
            async with limits.slot(stop - start):
                try:
                    async with store.open_read(key, r if ranged else None) as reader:
                        if reader.info.etag != info.etag or reader.info.size != size:
                            raise _Changed
                        pos = start
                        async for chunk in reader:
                            if pos + len(chunk) > stop:
                                raise _Changed
                            await _settled(_pwrite_all, fd, chunk, pos)
                            pos += len(chunk)
                            progress.add(len(chunk))
                        if pos != stop:
                            raise _Changed
                except ObjectChanged:  # the store noticed it (e.g. S3 resuming a read): same thing
                    raise _Changed from None
                if journal is not None and row is not None:
                    await _settled(os.fdatasync, fd)  # the bytes first, then the record
                    await journal._record_range(row, start, stop)

        try:
            await _parallel(todo, fetch, limits.max_requests)
        except _Changed:
            keep_temp = False
            raise
        await _settled(os.fsync, fd)
        if verify is not None:
            try:
                await asyncio.to_thread(verify, temp)
            except Exception:  # rejected (a cancellation is not a verdict: the file stays resumable)
                keep_temp = False
                raise
        await _settled(_finish, fd, str(temp), str(dest))
        keep_temp = True  # it is the destination now
        if journal is not None:
            await journal._forget_download(str(dest))
    except BaseException:
        if not keep_temp:
            await asyncio.to_thread(_unlink_quiet, str(temp))
            if journal is not None:
                await journal._forget_download(str(dest))
        raise
    finally:
        await _settled(os.close, fd)
