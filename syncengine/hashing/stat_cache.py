"""Persistent stat cache: remembers file digests by (path, dev, inode, size, mtime, ctime).

A cache in SQLite under the user cache dir; deleting it loses nothing. A row is trusted only
when every stat field matches and the file's mtime and ctime were already at least
`RACY_NS` older than the moment it was hashed: a file rewritten with the same size within
the same timestamp tick as an earlier hash is therefore always read again (git's "racy
clean" rule). ctime cannot be set by users, so restoring an old mtime does not fool it.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Final, NamedTuple

import msgspec

from syncengine import _sqlite
from syncengine.hashing.digests import Chunk, FileDigest

#: Timestamps this close to the hashing moment are not trusted (coarse filesystem clocks).
RACY_NS: Final = 2_000_000_000
_REC: Final = struct.Struct("<Q32s")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS stat_dirs (
    dir TEXT NOT NULL,
    params TEXT NOT NULL,
    entries BLOB NOT NULL,
    PRIMARY KEY (dir, params)
) WITHOUT ROWID
"""

#: One file's row inside a directory record:
#: (name, dev, ino, size, mtime_ns, ctime_ns, hashed_ns, digest, chunk records).
_Row = tuple[str, int, int, int, int, int, int, bytes, bytes]
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(list[_Row]).decode

#: Directory records kept in memory before dirty ones are written and the rest dropped.
_MAX_DIRS = 256


def default_cache_dir() -> Path:
    """`$SYNCENGINE_CACHE_DIR`, else the platform's user cache dir for syncengine."""
    env = os.environ.get("SYNCENGINE_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs  # ~10 ms to import: only when the default is needed

    return Path(platformdirs.user_cache_dir("syncengine"))


class StatKey(NamedTuple):
    """The stat fields a cache row must match."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int


def encode_chunks(chunks: Iterable[Chunk]) -> bytes:
    return b"".join(_REC.pack(c.length, c.digest) for c in chunks)


def decode_chunks(raw: bytes) -> tuple[Chunk, ...]:
    out = []
    offset = 0
    for length, digest in _REC.iter_unpack(raw):
        out.append(Chunk(offset, length, digest))
        offset += length
    return tuple(out)


class _DirRecord:
    __slots__ = ("dirty", "rows", "seen")

    def __init__(self, rows: dict[str, _Row]) -> None:
        self.rows = rows
        self.dirty = False
        self.seen: set[str] = set()


class StatCache:
    """Digest cache for one chunker parameter set; used from one thread at a time.

    Rows are grouped per directory (one database row each), so a tree of 10^4 files in 100
    folders costs 100 reads on a rescan and 100 writes on a first scan.

    >>> import tempfile; c = StatCache(Path(tempfile.mkdtemp()) / "s.sqlite", "p"); c.close()
    """

    def __init__(self, path: Path | None, params_label: str) -> None:
        if path is None:
            path = default_cache_dir() / "stat-cache.sqlite"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.params = params_label
        self._db = _sqlite.connect(path, setup=lambda db: db.execute(_SCHEMA))
        self._dirs: dict[str, _DirRecord] = {}
        self._dirty = 0
        self.hits = 0
        self.misses = 0

    def _record(self, d: str) -> _DirRecord:
        rec = self._dirs.get(d)
        if rec is None:
            if len(self._dirs) >= _MAX_DIRS:
                self.flush()
                self._dirs.clear()
            row = self._db.execute(
                "SELECT entries FROM stat_dirs WHERE dir = ? AND params = ?", (d, self.params)
            ).fetchone()
            rec = _DirRecord({r[0]: r for r in _decode(row[0])} if row else {})
            self._dirs[d] = rec
        return rec

    def lookup(self, abspath: str, key: StatKey) -> FileDigest | None:
        """The cached digest of `abspath` if its stat matches and is old enough to trust."""
        d, _, name = abspath.rpartition("/")
        rec = self._record(d)
        rec.seen.add(name)
        row = rec.rows.get(name)
        if row is None or row[1:6] != key or max(key.mtime_ns, key.ctime_ns) >= row[6] - RACY_NS:
            self.misses += 1
            return None
        self.hits += 1
        return FileDigest(key.size, row[7], decode_chunks(row[8]) if row[8] else ())

    def known(self, abspath: str) -> bool:
        """Whether `abspath` has a row at all (hashed before, maybe with other content since)."""
        d, _, name = abspath.rpartition("/")
        return name in self._record(d).rows

    def store(self, abspath: str, key: StatKey, digest: FileDigest, hashed_ns: int) -> None:
        """Remembers a digest computed from a read that started at `hashed_ns` (time.time_ns)."""
        d, _, name = abspath.rpartition("/")
        rec = self._record(d)
        rec.seen.add(name)
        rec.rows[name] = (name, *key, hashed_ns, digest.digest, encode_chunks(digest.chunks))
        rec.dirty = True
        self._dirty += 1
        if self._dirty >= 65536:
            self.flush()

    def flush(self) -> None:
        """Writes every changed directory record in one transaction."""
        dirty = [(d, rec) for d, rec in self._dirs.items() if rec.dirty]
        if not dirty:
            return
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO stat_dirs VALUES (?, ?, ?)",
                [(d, self.params, _encode(sorted(rec.rows.values()))) for d, rec in dirty],
            )
        for _, rec in dirty:
            rec.dirty = False
        self._dirty = 0

    def prune_unseen(self) -> int:
        """Drops rows of files that a complete scan (no include/exclude filters) did not meet
        in the directories still in memory: files deleted since. Returns how many."""
        dropped = 0
        for rec in self._dirs.values():
            gone = rec.rows.keys() - rec.seen
            for name in gone:
                del rec.rows[name]
            if gone:
                rec.dirty = True
                dropped += len(gone)
        return dropped

    def close(self) -> None:
        self.flush()
        self._db.close()

    def __enter__(self) -> StatCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def now_ns() -> int:
    return time.time_ns()
