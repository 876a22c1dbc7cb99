"""The watch journal: what the daemon knows about each checkpoint, so that a restart (even
after ``kill -9``) neither logs a checkpoint twice nor forgets one (docs/WATCH.md).

One SQLite file in the local state dir (``$SYNCENGINE_STATE_DIR``, beside the put journal),
one row per (watch, checkpoint). A *watch* is one folder logged into one artifact of one
repository. States:

- ``seen``: found, still changing (or not yet settled);
- ``ready``: settled or marked complete; waiting for the uploader (``seq`` orders the queue);
- ``uploading``: being logged; after a crash it is logged again (identical content finds the
  version a dead daemon may already have created; the put journal resumes its packs);
- ``logged``: version ``version`` holds it, with this ``signature``;
- ``skipped``: left out by ``--skip-intermediate``.

A ``logged`` or ``skipped`` row whose checkpoint is later rewritten (a new signature) goes
back to ``seen``. Deleting the journal loses nothing but that memory: every checkpoint is
logged again, and identical content gives the existing versions back.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Final, NamedTuple

from syncengine import _sqlite

__all__ = ["JournalRow", "WatchJournal"]

STATES: Final = ("seen", "ready", "uploading", "logged", "skipped")

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS checkpoints (
    watch TEXT NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    signature BLOB NOT NULL,
    version INTEGER,
    seq INTEGER NOT NULL DEFAULT 0,
    updated REAL NOT NULL,
    PRIMARY KEY (watch, name)
) WITHOUT ROWID
"""


class JournalRow(NamedTuple):
    name: str
    state: str
    signature: bytes
    version: int | None
    seq: int
    updated: float


def default_path() -> Path:
    from syncengine.transfer import state_dir

    return state_dir() / "watch.sqlite"


class WatchJournal:
    """The rows of one watch; every write is committed at once (survives ``kill -9``)."""

    def __init__(self, watch: str, path: Path | None = None) -> None:
        path = path or default_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.watch = watch
        self.path = path
        self._db = _sqlite.connect(path, setup=lambda db: db.execute(_SCHEMA))
        self._lock = threading.Lock()

    def rows(self) -> dict[str, JournalRow]:
        with self._lock:
            got = self._db.execute(
                "SELECT name, state, signature, version, seq, updated FROM checkpoints WHERE watch = ?",
                (self.watch,),
            ).fetchall()
        return {r[0]: JournalRow(*r) for r in got}

    def get(self, name: str) -> JournalRow | None:
        with self._lock:
            r = self._db.execute(
                "SELECT name, state, signature, version, seq, updated FROM checkpoints "
                "WHERE watch = ? AND name = ?",
                (self.watch, name),
            ).fetchone()
        return None if r is None else JournalRow(*r)

    def set(
        self, name: str, state: str, signature: bytes, version: int | None = None, seq: int | None = None
    ) -> JournalRow:
        """Writes the row; ``seq`` unchanged unless given (``ready`` gets the next one)."""
        assert state in STATES, state
        with self._lock:
            if seq is None and state == "ready":
                (top,) = self._db.execute(
                    "SELECT COALESCE(MAX(seq), 0) FROM checkpoints WHERE watch = ?", (self.watch,)
                ).fetchone()
                seq = top + 1
            if seq is None:
                old = self._db.execute(
                    "SELECT seq FROM checkpoints WHERE watch = ? AND name = ?", (self.watch, name)
                ).fetchone()
                seq = old[0] if old else 0
            row = JournalRow(name, state, signature, version, seq, time.time())
            self._db.execute(
                "INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?, ?, ?, ?)", (self.watch, *row)
            )
        return row

    def waiting(self) -> list[JournalRow]:
        """Checkpoints to log, oldest first: interrupted uploads, then the ``ready`` queue."""
        with self._lock:
            got = self._db.execute(
                "SELECT name, state, signature, version, seq, updated FROM checkpoints "
                "WHERE watch = ? AND state IN ('uploading', 'ready') "
                "ORDER BY state = 'ready', seq, name",
                (self.watch,),
            ).fetchall()
        return [JournalRow(*r) for r in got]

    def delete(self, name: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM checkpoints WHERE watch = ? AND name = ?", (self.watch, name))

    def close(self) -> None:
        with self._lock:
            self._db.close()
