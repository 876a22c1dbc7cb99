"""Recognizing an unchanged input tree from a stat-only walk.

After a successful put, the stat cache database also remembers a *fingerprint* of the walk
that produced the version: BLAKE3 over every scanned file's (path, dev, inode, size, mtime,
ctime, mode), in scan order, plus a checkpoint of the running digest every
:data:`CHECKPOINT` files. The next put of the same sources into the same artifact walks the
tree first; if the walk yields the same fingerprint and every file's mtime and ctime are at
least ``RACY_NS`` older than the moment the remembered put started hashing (the stat cache's
racy-clean rule, applied to the whole tree), the files are those that were hashed then, so
the content is the remembered version's: no per-file cache lookups, no manifest rebuild, no
index load. A walk that differs stops at the first checkpoint that disagrees, so a changed
tree pays for a fraction of an extra walk. Deleting the database loses nothing.
"""

from __future__ import annotations

import sqlite3
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

import blake3 as _blake3
import msgspec

from syncengine.hashing.stat_cache import RACY_NS, default_cache_dir
from syncengine.scan import ScanEntry

__all__ = ["CHECKPOINT", "Fingerprint", "Memo", "PutMemo", "memo_key"]

#: A checkpoint of the running digest every this many files.
CHECKPOINT: Final = 1024
_ENTRY: Final = struct.Struct("<IQQQqqI")
_SCHEMA = "CREATE TABLE IF NOT EXISTS put_memo (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID"


class Memo(msgspec.Struct, array_like=True):
    fingerprint: bytes
    files: int
    checkpoints: bytes  # 16 bytes each
    hashed_ns: int
    content_digest: str
    version: int
    size: int


class Fingerprint:
    """The running fingerprint of a walk (see the module docstring)."""

    def __init__(self) -> None:
        self._h = _blake3.blake3()
        self.files = 0
        self.newest_ns = 0
        self.checkpoints: list[bytes] = []

    def add(self, e: ScanEntry) -> bytes | None:
        """Adds one file; returns a checkpoint when one falls due."""
        p = e.path.encode()
        self._h.update(_ENTRY.pack(len(p), e.dev, e.ino, e.size, e.mtime_ns, e.ctime_ns, e.mode) + p)
        self.files += 1
        self.newest_ns = max(self.newest_ns, e.mtime_ns, e.ctime_ns)
        if self.files % CHECKPOINT:
            return None
        cp = self._h.digest(16)
        self.checkpoints.append(cp)
        return cp

    def digest(self) -> bytes:
        h = self._h.copy()
        h.update(self.files.to_bytes(8, "little"))
        return h.digest()


def memo_key(repo_id: str, project: str, name: str, type: str, parts: Sequence[object]) -> bytes:
    """The memo's key: the repository, the artifact and everything that shapes the walk."""
    return _blake3.blake3(msgspec.msgpack.encode([repo_id, project, name, type, list(parts)])).digest()


class PutMemo:
    """The memo table in the stat cache database (one connection; used from one thread at
    a time)."""

    def __init__(self, path: Path | None = None) -> None:
        if path is None:
            path = default_cache_dir() / "stat-cache.sqlite"
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)

    def get(self, key: bytes) -> Memo | None:
        row = self._db.execute("SELECT value FROM put_memo WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            return msgspec.msgpack.decode(row[0], type=Memo)
        except msgspec.DecodeError:
            return None  # written by another version of syncengine: just a miss

    def put(self, key: bytes, memo: Memo) -> None:
        self._db.execute("INSERT OR REPLACE INTO put_memo VALUES (?, ?)", (key, msgspec.msgpack.encode(memo)))

    def close(self) -> None:
        self._db.close()

    @staticmethod
    def matches(memo: Memo, entries: Iterable[ScanEntry]) -> bool:
        """Walks ``entries`` and says whether they are the remembered, trusted snapshot;
        stops at the first checkpoint that differs or the first file too new to trust."""
        fp = Fingerprint()
        limit = memo.hashed_ns - RACY_NS
        for e in entries:
            if e.mtime_ns >= limit or e.ctime_ns >= limit or fp.files >= memo.files:
                return False
            cp = fp.add(e)
            if cp is not None:
                i = len(fp.checkpoints) - 1
                if memo.checkpoints[16 * i : 16 * i + 16] != cp:
                    return False
        return fp.files == memo.files and fp.digest() == memo.fingerprint
