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

:func:`recall_unchanged` answers the same question without an event loop, for the CLI: a
no-change ``syncengine put`` then never imports asyncio or the repository's write path.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Final

import blake3 as _blake3
import msgspec

from syncengine import _sqlite
from syncengine.hashing.stat_cache import RACY_NS, default_cache_dir
from syncengine.hashing.tree import Source, TreeHasher
from syncengine.repo import object_caps as caps
from syncengine.repo.records import (
    FORMAT,
    RepoConfig,
    VersionRecord,
    check_alias,
    check_name,
    check_tag,
    decode_head,
    decode_version,
    head_key,
    version_key,
)
from syncengine.scan import ScanEntry, SymlinkPolicy

__all__ = ["CHECKPOINT", "Fingerprint", "Memo", "PutMemo", "memo_key", "recall_unchanged"]

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
    """The running fingerprint of a walk (see the module docstring).

    Records are buffered and fed to BLAKE3 once per checkpoint: the digest of a stream does
    not depend on how it is split into updates, and one update per file would cost more than
    the record itself.
    """

    def __init__(self) -> None:
        self._h = _blake3.blake3()
        self._buf: list[bytes] = []
        self.files = 0
        self.newest_ns = 0
        self.checkpoints: list[bytes] = []

    def add(self, e: ScanEntry) -> bytes | None:
        """Adds one file; returns a checkpoint when one falls due."""
        p = e.path.encode()
        self._buf += (_ENTRY.pack(len(p), e.dev, e.ino, e.size, e.mtime_ns, e.ctime_ns, e.mode), p)
        self.files += 1
        self.newest_ns = max(self.newest_ns, e.mtime_ns, e.ctime_ns)
        if self.files % CHECKPOINT:
            return None
        self._flush()
        cp = self._h.digest(16)
        self.checkpoints.append(cp)
        return cp

    def _flush(self) -> None:
        if self._buf:
            self._h.update(b"".join(self._buf))
            self._buf.clear()

    def digest(self) -> bytes:
        self._flush()
        h = self._h.copy()
        h.update(self.files.to_bytes(8, "little"))
        return h.digest()


def memo_key(repo_id: str, project: str, name: str, type: str, parts: Sequence[object]) -> bytes:
    """The memo's key: the repository, the artifact and everything that shapes the walk."""
    return _blake3.blake3(msgspec.msgpack.encode([repo_id, project, name, type, list(parts)])).digest()


def walk_key(
    sources: Sequence[Source],
    include: Sequence[str],
    exclude: Sequence[str],
    include_vcs: bool,
    follow_symlinks: SymlinkPolicy = "within",
) -> list[object]:
    """What shapes a put's walk, for `memo_key` (the same for `Repository.log` and
    `recall_unchanged`); `include_vcs` and a symlink policy other than the default are
    added only when set, so keys of earlier puts hold."""
    walk: list[object] = [sorted((os.path.realpath(s.root), s.prefix) for s in sources)]
    walk += [list(include), list(exclude)]
    if include_vcs:
        walk.append("include_vcs")
    if follow_symlinks != "within":
        walk.append(f"follow_symlinks={follow_symlinks}")
    return walk


class PutMemo:
    """The memo table in the stat cache database (one connection; used from one thread at
    a time)."""

    def __init__(self, path: Path | None = None) -> None:
        if path is None:
            path = default_cache_dir() / "stat-cache.sqlite"
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = _sqlite.connect(path, synchronous=None, setup=lambda db: db.execute(_SCHEMA))

    def _row(self, key: bytes) -> bytes | None:
        row = self._db.execute("SELECT value FROM put_memo WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def get(self, key: bytes) -> Memo | None:
        raw = self._row(key)
        if raw is None:
            return None
        if (key, raw) in _refuted:  # walked and found different a moment ago: no second walk
            _refuted.discard((key, raw))
            return None
        try:
            return msgspec.msgpack.decode(raw, type=Memo)
        except msgspec.DecodeError:
            return None  # written by another version of syncengine: just a miss

    def put(self, key: bytes, memo: Memo) -> None:
        self._db.execute("INSERT OR REPLACE INTO put_memo VALUES (?, ?)", (key, msgspec.msgpack.encode(memo)))

    def close(self) -> None:
        self._db.close()

    @staticmethod
    def matches(memo: Memo, entries: Iterable[ScanEntry]) -> bool:
        """Walks ``entries`` and says whether they are the remembered, trusted snapshot;
        stops at the first checkpoint that differs or the first file too new to trust.

        The same records as :class:`Fingerprint` (this is its loop, inlined: it runs once per
        file of every unchanged put)."""
        limit = memo.hashed_ns - RACY_NS
        total = memo.files
        checkpoints = memo.checkpoints
        h = _blake3.blake3()
        pack = _ENTRY.pack
        buf: list[bytes] = []
        add = buf.append
        n = 0
        for path, _, size, mode, mtime_ns, ctime_ns, ino, dev in entries:
            if mtime_ns >= limit or ctime_ns >= limit or n >= total:
                return False
            p = path.encode()
            add(pack(len(p), dev, ino, size, mtime_ns, ctime_ns, mode))
            add(p)
            n += 1
            if not n % CHECKPOINT:
                h.update(b"".join(buf))
                buf.clear()
                i = 16 * (n // CHECKPOINT - 1)
                if checkpoints[i : i + 16] != h.digest(16):
                    return False
        if n != total:
            return False
        h.update(b"".join(buf))
        h.update(n.to_bytes(8, "little"))
        return h.digest() == memo.fingerprint


#: (key, memo) rows that `recall_unchanged` walked and found different, for the `Repository.log`
#: that follows in the same process: its `PutMemo.get` skips them once instead of walking again.
#: A row rewritten in between (another put finished) is a different row and is not skipped.
_refuted: set[tuple[bytes, bytes]] = set()


def recall_unchanged(
    read: Callable[[str, int], bytes | None],
    sources: Sequence[Source],
    *,
    project: str,
    name: str,
    type: str,
    aliases: Sequence[str] = (),
    tags: Sequence[str] = (),
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    include_vcs: bool = False,
    follow_symlinks: SymlinkPolicy = "within",
) -> tuple[VersionRecord, list[str]] | None:
    """The version ``Repository.log`` would return unchanged for these arguments (with
    ``stat_cache=True``), and its scan warnings — found synchronously, reading the repository's
    objects with ``read(key, max_bytes)`` (None: no such object).

    It answers only when the answer is certain: the repository config and the artifact head
    are readable, the put memo proves the tree unchanged, and recording the existing version
    would write nothing (no alias moves). Anything else — no memo, a changed tree, an alias
    to move, a bad name, any error — gives None: run ``Repository.log``, which does the work
    (and reports the error) itself.
    """
    try:
        return _recall_unchanged(
            read, sources, project, name, type, aliases, tags, include, exclude, include_vcs, follow_symlinks
        )
    except Exception:  # whatever it is, Repository.log meets it again and reports it properly
        return None


def _recall_unchanged(
    read: Callable[[str, int], bytes | None],
    sources: Sequence[Source],
    project: str,
    name: str,
    type: str,
    aliases: Sequence[str],
    tags: Sequence[str],
    include: Sequence[str],
    exclude: Sequence[str],
    include_vcs: bool,
    follow_symlinks: SymlinkPolicy,
) -> tuple[VersionRecord, list[str]] | None:
    # The checks Repository.log makes before it looks at the memo.
    check_name("project", project)
    check_name("artifact name", name)
    check_name("type", type)
    wanted = [check_alias(a) for a in dict.fromkeys(aliases)]
    for t in tags:
        check_tag(t)
    raw = read("config", caps.CONFIG)
    if raw is None:
        return None  # a new repository: Repository.open creates its config
    config = msgspec.json.decode(raw, type=RepoConfig)
    if config.format != FORMAT:
        return None
    params = config.params  # a foreign gear seed raises: Repository.log reports it
    hkey = head_key(project, name)
    raw = read(hkey, caps.HEAD)
    if raw is None:
        return None
    head = decode_head(raw, hkey)
    if head.type != type:
        return None
    walk = walk_key(sources, include, exclude, include_vcs, follow_symlinks)
    key = memo_key(config.id, project, name, type, [*walk, params.label])
    db = PutMemo()
    try:
        raw_memo = db._row(key)
    finally:
        db.close()
    if raw_memo is None:
        return None
    memo = msgspec.msgpack.decode(raw_memo, type=Memo)
    number = memo.version
    if head.digests.get(memo.content_digest) != number:
        return None
    # Repository._commit would find this version and write the head only if it changed.
    moved = {a: v for a, v in head.aliases.items() if a not in wanted}
    moved.update({a: number for a in wanted})
    latest = max(number, head.latest if head.latest is not None else -1)
    if moved != head.aliases or latest != head.latest:
        return None
    vkey = version_key(project, name, number)
    raw = read(vkey, caps.VERSION_RECORD)
    if raw is None:
        return None
    record = decode_version(raw, vkey)
    scanner = TreeHasher(
        params, include=include, exclude=exclude, include_vcs=include_vcs, follow_symlinks=follow_symlinks
    )
    if not PutMemo.matches(memo, scanner.scan(list(sources))):
        _refuted.add((key, raw_memo))
        return None
    return record, [w.message for w in scanner.stats.warnings]
