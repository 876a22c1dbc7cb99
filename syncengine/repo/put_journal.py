"""The put journal: packs this machine is uploading or uploaded whose index segment is not
written yet.

A put writes packs first and their index segment last (docs/FORMAT.md, commit protocol), so
a put killed in between leaves complete packs that no index names. The journal (SQLite in
the local state dir, ``$SYNCENGINE_STATE_DIR``) records each pack *before* its upload
starts, with the index entries of its blobs — so a put killed after the store has the pack
but before it heard so still leaves a row. The next put into the same repository, from
any artifact, adopts the journal's packs that exist whole in the store (one HEAD each) and
drops the rows of those that do not (an upload that never finished):
their blobs count as stored — they are not read, packed or sent again — and the index
segment that put writes names them. Rows are dropped once a segment covering them is
written. Deleting the journal loses nothing but the resume: the next put sends those blobs
again, and content addressing keeps the store free of duplicates.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import blake3 as _blake3

from syncengine import _sqlite
from syncengine.repo.pack import CorruptData, IndexEntry, decode_index, encode_index

__all__ = ["PutJournal"]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS packs (
    repo TEXT NOT NULL,
    pack BLOB NOT NULL,
    segment BLOB NOT NULL,
    written REAL NOT NULL,
    PRIMARY KEY (repo, pack)
) WITHOUT ROWID
"""


def _state_dir() -> Path:
    from syncengine.transfer import state_dir

    return state_dir()


class PutJournal:
    """One connection, shared by the put's worker threads (a lock serializes it)."""

    def __init__(self, repo_id: str, path: Path | None = None) -> None:
        if path is None:
            path = _state_dir() / "puts.sqlite"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.repo = repo_id
        # synchronous=NORMAL: survives kill -9; a power cut may lose a row
        self._db = _sqlite.connect(path, setup=lambda db: db.execute(_SCHEMA))
        self._lock = threading.Lock()  # one statement at a time; close waits for the last
        self._closed = False

    def record(self, pack: bytes, entries: Sequence[IndexEntry]) -> None:
        """A pack is complete in the store; its blobs are ``entries``."""
        _, segment = encode_index(list(entries))
        with self._lock:
            if self._closed:
                return
            self._db.execute(
                "INSERT OR REPLACE INTO packs VALUES (?, ?, ?, ?)", (self.repo, pack, segment, time.time())
            )

    def pending(self) -> list[tuple[bytes, list[IndexEntry]]]:
        """Packs recorded for this repository and not forgotten yet, with their entries.
        A row that does not decode (damaged) is dropped."""
        out: list[tuple[bytes, list[IndexEntry]]] = []
        bad: list[bytes] = []
        with self._lock:
            rows = self._db.execute(
                "SELECT pack, segment FROM packs WHERE repo = ? ORDER BY written", (self.repo,)
            ).fetchall()
        for pack, segment in rows:
            try:
                entries = decode_index(_blake3.blake3(segment).digest(), segment)
            except (CorruptData, ValueError):
                bad.append(pack)
                continue
            if all(e.pack == pack for e in entries):
                out.append((pack, entries))
            else:
                bad.append(pack)
        self.forget(bad)
        return out

    def forget(self, packs: Sequence[bytes]) -> None:
        if packs:
            with self._lock:
                self._db.executemany(
                    "DELETE FROM packs WHERE repo = ? AND pack = ?", [(self.repo, p) for p in packs]
                )

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()
