"""Repository.index(): a BlobIndex that refreshes with new segments and keeps what it loaded."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from syncengine.hashing.params import ChunkerParams
from syncengine.hashing.tree import Source
from syncengine.repo.blob_index import BlobIndex
from syncengine.repo.pack import CorruptData, IndexEntry, blob_digest, encode_index
from syncengine.repo.repository import Repository
from syncengine.store.local import LocalStore

PARAMS = ChunkerParams(4096, 16384, 65536)


def test_refresh_keeps_first_locations_and_downloads_still_work(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    files = {"a.bin": os.urandom(40_000), "b.txt": b"hello\n" * 100}
    for name, body in files.items():
        (data / name).write_bytes(body)

    async def go() -> None:
        repo = await Repository.open(LocalStore(tmp_path / "repo"), params=PARAMS)
        r = await repo.log([Source(str(data))], project="p", name="a", type="dataset", stat_cache=False)
        index = await repo.index()
        assert isinstance(index, BlobIndex)
        loaded = dict(index.items())
        assert loaded and all(e.pack for e in loaded.values())
        # Another writer's segment names one of these blobs in another pack, and a new blob.
        old = next(iter(loaded.values()))
        new = IndexEntry(blob_digest(b"new blob"), blob_digest(b"other pack"), 8, 8, 8, 0)
        sid, seg = encode_index([old._replace(pack=blob_digest(b"other pack"), offset=old.offset + 1), new])
        await repo.store.put(f"index/{sid.hex()}", seg, if_none_match=True)
        again = await repo.index()
        assert again is index and len(again) == len(loaded) + 1
        assert again[old.digest] == old  # the location loaded first stays
        assert again[new.digest] == new
        # A fresh process loads both segments: every blob of the version is in it.
        fresh = await Repository.open(LocalStore(tmp_path / "repo"), params=PARAMS)
        assert set(await fresh.index()) == set(loaded) | {new.digest}
        out = tmp_path / "out"
        await repo.download(r.record, str(out))
        assert {p.name: p.read_bytes() for p in out.iterdir()} == files

    asyncio.run(go())


def test_a_damaged_segment_in_the_store_fails_the_load_in_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.bin").write_bytes(os.urandom(20_000))

    async def go() -> None:
        repo = await Repository.open(LocalStore(tmp_path / "repo"), params=PARAMS)
        await repo.log([Source(str(data))], project="p", name="a", type="dataset", stat_cache=False)
        n = len(await repo.index())
        sid, seg = encode_index([IndexEntry(blob_digest(b"x"), blob_digest(b"y"), 8, 1, 1, 0)])
        await repo.store.put(f"index/{sid.hex()}", seg[:-40] + seg[-32:], if_none_match=True)
        for _ in range(2):  # never taken as loaded: every later load refuses it too
            with pytest.raises(CorruptData, match=f"index segment {sid.hex()} does not match its name"):
                await repo.index()
        await repo.store.delete([f"index/{sid.hex()}"])
        assert len(await repo.index()) == n

    asyncio.run(go())
