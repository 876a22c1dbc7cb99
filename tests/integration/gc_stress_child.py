"""Child process of test_gc_stress: one writer logging versions of shared content into a
repository while `gc` runs, deleting some as it goes.

    python -m tests.integration.gc_stress_child URL WRITER MAX_ITERATIONS WORKDIR

It stops when ``WORKDIR/stop`` exists (the parent has seen enough sweeps) or after
MAX_ITERATIONS puts.

Every line it prints is JSON: ``{"committed": name, "version": n, "files": {path: pool index}}``
for a version it committed, ``{"deleted": name, "version": n}`` for one it deleted,
``{"conflict": message}`` for a put `gc` refused (nothing committed). The pool of contents is
the same in every writer (`pool`), so writers deduplicate against each other's data.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
from pathlib import Path

from syncengine.hashing.params import ChunkerParams
from syncengine.hashing.tree import Source
from syncengine.repo.gc_sweep import GcConflict
from syncengine.repo.lifecycle import delete_version
from syncengine.repo.repository import Repository
from syncengine.store import open_store

PARAMS = ChunkerParams(4096, 16384, 65536)
POOL = 8


def pool() -> list[bytes]:
    """Shared contents: small files and two chunked ones (chunks shared across versions)."""
    rng = random.Random(1234)
    out = [rng.randbytes(3000 + 4000 * i) for i in range(POOL - 2)]
    out += [rng.randbytes(150_000), rng.randbytes(90_000)]
    return out


def unique(writer: int, i: int) -> bytes:
    """A file only iteration ``i`` of ``writer`` has: deleting its version always leaves
    garbage (with the pool alone, every combination soon exists and sweeps find nothing)."""
    return random.Random(f"{writer}:{i}").randbytes(5000)


def say(**line: object) -> None:
    print(json.dumps(line), flush=True)


async def main(url: str, writer: int, iterations: int, workdir: Path) -> None:
    contents = pool()
    rng = random.Random(writer)
    store = open_store(url, endpoint_url=os.environ.get("AWS_ENDPOINT_URL"))
    async with store:
        repo = await Repository.open(store, params=PARAMS)
        mine: list[tuple[str, int]] = []
        for i in range(iterations):
            if (workdir / "stop").exists():
                break
            # Its own artifact mostly, a shared one sometimes (writers race on one head).
            name = "shared" if rng.random() < 0.25 else f"w{writer}"
            picked = {f"f{j}.bin": j for j in rng.sample(range(POOL), 3)}
            src = workdir / f"src-{writer}-{i}"
            src.mkdir(parents=True)
            for path, j in picked.items():
                (src / path).write_bytes(contents[j])
            own = rng.random() < 0.5
            if own:
                (src / "u.bin").write_bytes(unique(writer, i))
            try:
                r = await repo.log([Source(str(src))], project="p", name=name, type="model", stat_cache=False)
            except GcConflict as e:
                say(conflict=str(e))
                continue
            say(committed=name, version=r.record.version, files=picked, unique=[writer, i] if own else None)
            mine.append((name, r.record.version))
            if rng.random() < 0.4 or (len(mine) > 2 and rng.random() < 0.3):
                gone = mine.pop(rng.randrange(len(mine)))
                await delete_version(repo, "p", gone[0], gone[1])
                say(deleted=gone[0], version=gone[1])


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])))
