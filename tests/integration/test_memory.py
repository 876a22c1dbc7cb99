"""A file far larger than the pack size (2 GiB) is logged and downloaded in bounded memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import asyncio, json, sys

def peak_kib():
    # VmHWM, not ru_maxrss: ru_maxrss carries the forking parent's peak (pytest's) across exec
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
from syncengine.hashing.tree import Source
from syncengine.repo.repository import Repository
from syncengine.store.local import LocalStore

async def main(data, repo_dir, out):
    async with LocalStore(repo_dir) as store:
        repo = await Repository.open(store)
        r = await repo.log([Source(data)], project="p", name="big", type="model", stat_cache=False)
        after_put = peak_kib()
        await repo.download(r.record, out)
        peak = peak_kib()
        print(json.dumps({"put_kib": after_put, "peak_kib": peak}))

asyncio.run(main(*sys.argv[1:4]))
"""


def test_two_gib_file_in_bounded_memory(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    size = 2 << 30
    with open(data / "model.bin", "wb") as f:
        block = os.urandom(8 << 20)
        for i in range(size // len(block)):
            f.write(bytes([i % 256]) + block[1:])  # distinct blocks: nothing dedups away
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(data), str(tmp_path / "repo"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "SYNCENGINE_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert r.returncode == 0, r.stderr
    rss = json.loads(r.stdout)
    assert rss["put_kib"] < 400 * 1024, rss  # far below the 2 GiB file
    assert rss["peak_kib"] < 400 * 1024, rss
    assert (tmp_path / "out" / "model.bin").stat().st_size == size
