"""Opening the local state databases (stat cache, put memo, put and upload journals, file
cache) safely when several processes open the same file at once.

SQLite's busy timeout does not cover every lock: switching a new database to WAL and the
first schema write can answer ``database is locked`` at once, without waiting, when another
process is doing the same (its deadlock avoidance). :func:`connect` retries those setup
statements with jittered backoff until the timeout, so eight writers starting together all
get a working connection instead of one of them failing.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path


def _is_busy(e: sqlite3.OperationalError) -> bool:
    text = str(e).lower()
    return "locked" in text or "busy" in text


def connect(
    path: str | Path,
    *,
    timeout: float = 30.0,
    synchronous: str | None = "NORMAL",
    setup: Callable[[sqlite3.Connection], object] | None = None,
) -> sqlite3.Connection:
    """An autocommit connection in WAL mode, usable from any thread (callers serialize),
    with ``setup(db)`` (schema creation) applied. A lock held by another process's setup is
    waited out (up to ``timeout`` s), never reported; other errors close the connection
    and propagate."""
    db = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    deadline = time.monotonic() + timeout
    delay = 0.002
    try:
        while True:
            try:
                if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    db.execute("PRAGMA journal_mode=WAL")
                if synchronous is not None:
                    db.execute(f"PRAGMA synchronous={synchronous}")
                if setup is not None:
                    setup(db)
                return db
            except sqlite3.OperationalError as e:
                if not _is_busy(e) or time.monotonic() >= deadline:
                    raise
                if db.in_transaction:
                    db.execute("ROLLBACK")
                time.sleep(random.uniform(0, delay))
                delay = min(delay * 2, 0.25)
    except BaseException:
        db.close()
        raise
