"""What a no-change `syncengine put` loads: it is answered from the put memo without the event
loop, the stores or the upload path, so start-up stays a small part of its time. A behaviour
guard (which modules are imported), not a timing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.s3server import S3TestServer

#: Runs the CLI like `python -m syncengine`, then writes the names of all imported modules to
#: the file named by the first argument (at exit, so after the command's own output).
_RUN_AND_LIST_MODULES = """
import atexit, sys
out = sys.argv.pop(1)
def dump():
    with open(out, "w") as f:
        f.write("\\n".join(sorted(sys.modules)))
atexit.register(dump)
from syncengine.cli.main import main
main()
"""

#: Loaded only for work a no-change put of a local repository does not do.
NOT_FOR_A_NO_CHANGE_PUT = (
    "asyncio",  # the event loop: the put memo is read synchronously
    "uvloop",
    "aiohttp",  # the S3 store
    "botocore",
    "rich",  # progress bars: not on a pipe (and nothing to show here)
    "zstandard",  # pack compression
    "platformdirs",  # default directories: --repo and SYNCENGINE_CACHE_DIR are given
    "logging",  # only when the scan has a warning for the logger
    "concurrent.futures",  # the hashing pool
    "syncengine.repo.repository",
    "syncengine.repo.manifest",
    "syncengine.repo.put_journal",
    "syncengine.repo.ingest",
    "syncengine.repo.download",  # the get path
    "syncengine.repo.file_cache",
    "syncengine.durable",
    "syncengine.transfer",
    "syncengine.store.local",
    "syncengine.store.s3",
    "syncengine._loop",
)


def put(data: Path, repo: Path, modules: Path | None = None) -> subprocess.CompletedProcess[str]:
    cmd = ["-m", "syncengine"] if modules is None else ["-c", _RUN_AND_LIST_MODULES, str(modules)]
    args = ["put", "-n", "proj/data", "-t", "dataset", str(data), "--repo", str(repo), "--json"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, *cmd, *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )


def test_a_no_change_put_loads_neither_the_event_loop_nor_the_stores(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for i in range(300):
        p = data / f"d{i % 5}" / f"f{i:03d}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(i.to_bytes(2, "little") * (1 + i))
    time.sleep(2.2)  # the memo trusts only files older than 2 s when they were hashed
    first = put(data, tmp_path / "repo")
    assert first.returncode == 0, first.stderr
    logged = json.loads(first.stdout)
    assert logged["created_now"] is True

    listed = tmp_path / "modules.txt"
    again = put(data, tmp_path / "repo", modules=listed)
    assert again.returncode == 0 and again.stderr == "", again.stderr
    same = json.loads(again.stdout)
    # the report is the one the full put gives for an unchanged tree
    expected = {**logged, "created_now": False, "new_blobs": 0, "new_bytes": 0, "packs": 0}
    assert {**same, "seconds": 0} == {**expected, "seconds": 0}
    loaded = set(listed.read_text().split())
    assert "syncengine.repo.put_memo" in loaded  # the memo answered
    assert sorted(m for m in NOT_FOR_A_NO_CHANGE_PUT if m in loaded) == []
    assert not any(m.startswith(("rich.", "aiohttp.", "botocore.", "asyncio.")) for m in loaded)

    # a changed tree takes the full path, with the same command line
    (data / "d0" / "f000.bin").write_bytes(b"changed")
    changed = put(data, tmp_path / "repo")
    assert changed.returncode == 0, changed.stderr
    v1 = json.loads(changed.stdout)
    assert (v1["ref"], v1["created_now"], v1["new_bytes"]) == ("proj/data:v1", True, 7)


def test_reading_from_s3_never_loads_aiohttp(tmp_path: Path, s3_server: S3TestServer, s3_bucket: str) -> None:
    """`get`, `ls` and `verify` of an S3 repository send only GETs (and HEADs, LISTs), all on
    the store's direct connections (docs/S3.md): aiohttp, ≈ 0.13 s of start-up, stays out.
    A `put` needs it (PUTs go through aiohttp)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.bin").write_bytes(os.urandom(300_000))
    (data / "b.txt").write_bytes(b"b" * 5000)
    repo = f"s3://{s3_bucket}/startup"
    env = {
        **os.environ,
        **s3_server.env(),
        "PYTHONWARNINGS": "ignore",
        "SYNCENGINE_STATE_DIR": str(tmp_path / "st"),
    }
    env["SYNCENGINE_CACHE_DIR"] = str(tmp_path / "cache")

    def run(*args: str, modules: Path) -> set[str]:
        r = subprocess.run(
            [sys.executable, "-c", _RUN_AND_LIST_MODULES, str(modules), *args, "--repo", repo],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )
        assert r.returncode == 0, r.stderr
        return set(modules.read_text().split())

    assert "aiohttp" in run("put", "-n", "p/d", "-t", "dataset", str(data), modules=tmp_path / "put.txt")
    out = tmp_path / "out"
    for args in (
        ("get", "p/d:latest", "--root", str(out)),
        ("ls",),
        ("verify", "p/d:latest", "--root", str(out)),
    ):
        loaded = run(*args, modules=tmp_path / f"{args[0]}.txt")
        assert "syncengine.store.s3_direct" in loaded, args
        assert not any(m == "aiohttp" or m.startswith("aiohttp.") for m in loaded), args
    assert (out / "a.bin").read_bytes() == (data / "a.bin").read_bytes()
