"""Persistent stat cache: remembers file digests by (path, dev, inode, size, mtime, ctime).

A cache in SQLite under the user cache dir; deleting it loses nothing. A row is trusted only
when every stat field matches and the file's mtime and ctime were already at least
`RACY_NS` older than the moment it was hashed: a file rewritten with the same size within
the same timestamp tick as an earlier hash is therefore always read again (git's "racy
clean" rule). ctime cannot be set by users, so restoring an old mtime does not fool it.
"""

from __future__ import annotations

import os
import sqlite3
import struct
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Final, NamedTuple

import platformdirs

from syncengine.hashing.digests import Chunk, FileDigest

#: Timestamps this close to the hashing moment are not trusted (coarse filesystem clocks).
RACY_NS: Final = 2_000_000_000
_REC: Final = struct.Struct("<Q32s")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS stat_cache (
    dir TEXT NOT NULL,
    name TEXT NOT NULL,
    params TEXT NOT NULL,
    dev INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    hashed_ns INTEGER NOT NULL,
    digest BLOB NOT NULL,
    chunks BLOB NOT NULL,
    PRIMARY KEY (dir, params, name)
) WITHOUT ROWID
"""


def default_cache_dir() -> Path:
    """`$SYNCENGINE_CACHE_DIR`, else the platform's user cache dir for syncengine."""
    env = os.environ.get("SYNCENGINE_CACHE_DIR")
    return Path(env) if env else Path(platformdirs.user_cache_dir("syncengine"))


class StatKey(NamedTuple):
    """The stat fields a cache row must match."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int


class _Row(NamedTuple):
    key: StatKey
    hashed_ns: int
    digest: bytes
    chunks: bytes


def encode_chunks(chunks: Iterable[Chunk]) -> bytes:
    return b"".join(_REC.pack(c.length, c.digest) for c in chunks)


def decode_chunks(raw: bytes) -> tuple[Chunk, ...]:
    out = []
    offset = 0
    for length, digest in _REC.iter_unpack(raw):
        out.append(Chunk(offset, length, digest))
        offset += length
    return tuple(out)


class StatCache:
    """Digest cache for one chunker parameter set; used from one thread at a time.

    >>> import tempfile; c = StatCache(Path(tempfile.mkdtemp()) / "s.sqlite", "p"); c.close()
    """

    def __init__(self, path: Path | None, params_label: str) -> None:
        if path is None:
            path = default_cache_dir() / "stat-cache.sqlite"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.params = params_label
        self._db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self._dir: str | None = None
        self._rows: dict[str, _Row] = {}
        self._pending: list[tuple[object, ...]] = []
        self.hits = 0
        self.misses = 0

    def _load_dir(self, d: str) -> None:
        cur = self._db.execute(
            "SELECT name, dev, ino, size, mtime_ns, ctime_ns, hashed_ns, digest, chunks "
            "FROM stat_cache WHERE dir = ? AND params = ?",
            (d, self.params),
        )
        self._rows = {r[0]: _Row(StatKey(r[1], r[2], r[3], r[4], r[5]), r[6], r[7], r[8]) for r in cur}
        self._dir = d

    def lookup(self, abspath: str, key: StatKey) -> FileDigest | None:
        """The cached digest of `abspath` if its stat matches and is old enough to trust.

        Callers that go through a tree in order hit the per-directory batch load.
        """
        d, name = os.path.split(abspath)
        if d != self._dir:
            self._load_dir(d)
        row = self._rows.get(name)
        if row is None or row.key != key or max(key.mtime_ns, key.ctime_ns) >= row.hashed_ns - RACY_NS:
            self.misses += 1
            return None
        self.hits += 1
        return FileDigest(key.size, row.digest, decode_chunks(row.chunks) if row.chunks else ())

    def store(self, abspath: str, key: StatKey, digest: FileDigest, hashed_ns: int) -> None:
        """Remembers a digest computed from a read that started at `hashed_ns` (time.time_ns)."""
        d, name = os.path.split(abspath)
        self._pending.append(
            (d, name, self.params, *key, hashed_ns, digest.digest, encode_chunks(digest.chunks))
        )
        if d == self._dir:
            self._rows.pop(name, None)
        if len(self._pending) >= 4096:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO stat_cache VALUES (?,?,?,?,?,?,?,?,?,?,?)", self._pending
            )
        self._pending.clear()

    def close(self) -> None:
        self.flush()
        self._db.close()

    def __enter__(self) -> StatCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def now_ns() -> int:
    return time.time_ns()
