"""Many processes opening the same brand-new local state databases at the same moment.

SQLite answers ``database is locked`` at once (no busy wait) to some of them while another
switches the new file to WAL; CI once lost a concurrent ``log`` to that. Every opener must
get a working connection.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

_CHILD = r"""
import sys, time
from pathlib import Path
root, start, rounds = Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
from syncengine import _sqlite
from syncengine.hashing.stat_cache import StatCache
from syncengine.repo.put_memo import PutMemo
from syncengine.repo.put_journal import PutJournal
from syncengine.repo.file_cache import FileCache
from syncengine.transfer import UploadJournal
for r in range(rounds):
    d = root / f"round{r}"
    while time.time() < start + r * 0.25:
        pass
    # the five state databases, each new in this round, opened by every process at once
    StatCache(d / "stat.sqlite", "p").close()
    m = PutMemo(d / "memo.sqlite"); m.close()
    j = PutJournal("repo", d / "puts.sqlite"); j.record(b"p" * 32, []); j.close()
    FileCache(d / "files").close()
    UploadJournal("s", d / "transfers.sqlite")._conn()
    db = _sqlite.connect(d / "plain.sqlite", setup=lambda db: db.execute("CREATE TABLE IF NOT EXISTS t (a)"))
    db.execute("INSERT INTO t VALUES (1)")
    db.close()
print("ok")
"""


def test_eight_processes_open_new_state_databases_together(tmp_path: Path) -> None:
    rounds = 6
    start = time.time() + 1.5  # after every child has imported syncengine
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(tmp_path), str(start), str(rounds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        assert out.strip() == "ok"
    import sqlite3

    for r in range(rounds):
        db = sqlite3.connect(tmp_path / f"round{r}" / "plain.sqlite")
        assert db.execute("SELECT count(*) FROM t").fetchone()[0] == 8
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        db.close()
