"""Changing one file of a large version: a draft against a full put of the same tree, in the same run.

Usage::

    python benchmarks/bench_draft.py [--files N] [--dir DIR] [--keep]

Steps, in one local repository (LocalStore, in-process API):

1. ``initial_put``: N small files (100 folders, 16–64 random bytes each) put as v0;
2. ``draft``: one file rewritten, then ``v0.new_draft()`` + ``add_file`` of it + save → v1;
3. ``full_put``: a ``put`` of the whole tree as it now is (warm stat cache: only the
   changed file is read), which is what the same change costs without a draft. Its content
   equals v1, so it ends at v1 too, after scanning, building and storing the whole manifest.

For the draft and the full put: wall seconds, files hashed, and the manifest bytes each
sent to the store (pages and record, `put` calls on ``manifests/`` keys) next to the bytes of
the manifest objects that were new in the store. One JSON object goes to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from syncengine.hashing.tree import Source
from syncengine.repo.draft import DraftChanges, log_draft
from syncengine.repo.repository import Repository
from syncengine.store.local import LocalStore


class CountingStore:
    """Delegates to a store, counting the bytes of every `put` to a ``manifests/`` key."""

    def __init__(self, inner: LocalStore) -> None:
        self._inner = inner
        self.manifest_bytes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def put(self, key: str, body: Any, **kw: Any) -> Any:
        if key.startswith("manifests/"):
            self.manifest_bytes += len(body)
        return await self._inner.put(key, body, **kw)


def make_tree(root: Path, files: int) -> None:
    per_dir = max(1, files // 100)
    rnd = os.urandom(64 * files)
    for i in range(files):
        d = root / f"d{i // per_dir:03d}"
        if i % per_dir == 0:
            d.mkdir(parents=True, exist_ok=True)
        size = 16 + (rnd[i] % 49)
        (d / f"f{i:07d}.bin").write_bytes(rnd[64 * i : 64 * i + size])


async def manifest_objects(store: LocalStore) -> dict[str, int]:
    return {i.key: i.size async for i in store.list("manifests/")}


async def run(work: Path, files: int) -> dict[str, Any]:
    tree = work / "tree"
    t0 = time.perf_counter()
    make_tree(tree, files)
    generate = time.perf_counter() - t0
    out: dict[str, Any] = {"files": files, "generate_seconds": round(generate, 3)}
    async with LocalStore(work / "repo") as local:
        store = CountingStore(local)
        core = await Repository.open(store)  # type: ignore[arg-type]

        t0 = time.perf_counter()
        v0 = await core.log([Source(str(tree))], project="bench", name="tree", type="dataset")
        out["initial_put"] = {
            "seconds": round(time.perf_counter() - t0, 3),
            "manifest_bytes_sent": store.manifest_bytes,
        }
        out["manifest_bytes_of_version"] = sum((await manifest_objects(local)).values())

        changed = sorted((tree / "d050").iterdir())[0]
        changed.write_bytes(b"changed " + os.urandom(32))
        name = changed.relative_to(tree).as_posix()

        for step in ("draft", "full_put"):
            before = await manifest_objects(local)
            store.manifest_bytes = 0
            t0 = time.perf_counter()
            if step == "draft":
                changes = DraftChanges(v0.record)
                changes.add_file(str(changed), name)
                r = await log_draft(core, changes, description="", metadata={})
            else:
                r = await core.log([Source(str(tree))], project="bench", name="tree", type="dataset")
            seconds = time.perf_counter() - t0
            after = await manifest_objects(local)
            out[step] = {
                "seconds": round(seconds, 3),
                "version": f"v{r.record.version}",
                "created": r.created,
                "files_hashed_or_checked": r.files,
                "new_bytes": r.new_bytes,
                "manifest_bytes_sent": store.manifest_bytes,
                "new_manifest_object_bytes": sum(s for k, s in after.items() if k not in before),
            }
    d, f = out["draft"], out["full_put"]
    out["full_put_over_draft_seconds"] = round(f["seconds"] / d["seconds"], 2) if d["seconds"] else None
    out["draft_manifest_share"] = round(d["manifest_bytes_sent"] / out["manifest_bytes_of_version"], 5)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=100_000, help="files in the version [100000]")
    ap.add_argument("--dir", default=None, help="work folder [a temp dir, removed afterwards]")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench-draft-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("SYNCENGINE_CACHE_DIR", str(work / "cache"))
    os.environ.setdefault("SYNCENGINE_STATE_DIR", str(work / "state"))
    try:
        print(json.dumps(asyncio.run(run(work, args.files))))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
