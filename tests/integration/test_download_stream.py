"""Downloads from a store that streams (``capabilities.streamed_reads``, as S3Store does):
a pack range is received into reused buffers, and each blob is hashed and written into
its files as its bytes come (syncengine.repo.download._RangeSink). The store here is a
LocalStore that says it streams, so the boundaries between buffers can fall anywhere."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import syncengine.repo.download as dl
from syncengine.errors import ObjectChanged
from syncengine.hashing.params import ChunkerParams
from syncengine.hashing.tree import Source
from syncengine.repo.download import download
from syncengine.repo.gc_sweep import collect
from syncengine.repo.pack import CorruptData
from syncengine.repo.repository import Repository
from syncengine.store.local import LocalStore
from tests.integration.test_download import read_tree, write_tree
from tests.integration.test_gc_finish import GRACE, PARAMS, _half_dead_pack, _IndexFromBefore, _keys, _sweep

SMALL = ChunkerParams(1024, 4096, 16384)


class StreamedStore:
    """A LocalStore that says it streams; ``readinto`` of a pack can be made to fail."""

    def __init__(self, inner: LocalStore) -> None:
        self.inner = inner
        self.capabilities = msgspec.structs.replace(inner.capabilities, streamed_reads=True)
        self.pack_reads = 0
        #: key -> (bytes to serve, bytes after which the read raises ObjectChanged)
        self.vanishing: dict[str, tuple[bytes, int]] = {}

    @contextlib.asynccontextmanager
    async def open_read(self, key: str, range: tuple[int, int] | None = None) -> AsyncIterator[Any]:
        if key.startswith("data/"):
            self.pack_reads += 1
        if key in self.vanishing:
            data, cut = self.vanishing.pop(key)
            yield _Vanishing(data, range or (0, len(data)), cut)
            return
        async with self.inner.open_read(key, range) as r:
            yield r

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class _Vanishing:
    """Serves ``cut`` bytes of a range, then says the object is gone (deleted mid-read)."""

    def __init__(self, data: bytes, range: tuple[int, int], cut: int) -> None:
        self._data, (self._pos, self._end), self._cut = data, range, range[0] + cut

    async def readinto(self, buf: memoryview) -> int:
        if self._pos >= self._cut:
            raise ObjectChanged("the pack was deleted while being read")
        n = min(len(buf), self._cut - self._pos, self._end - self._pos)
        buf[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


async def _logged(repo: Repository, src: Path) -> Any:
    logged = await repo.log([Source(str(src))], project="p", name="ds", type="dataset", stat_cache=False)
    return logged.record


_content = st.one_of(
    st.binary(min_size=0, max_size=3000),
    st.builds(os.urandom, st.integers(0, 90_000)),  # several raw chunks
    st.builds(lambda n, b: b * n, st.integers(1, 6000), st.binary(min_size=1, max_size=9)),  # zstd
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    files=st.dictionaries(st.sampled_from(["a", "b", "d/c", "d/e/f", "g.bin"]), _content, min_size=1),
    feed=st.integers(1, 70_000),
    max_range=st.sampled_from([1, 20_000, 1 << 20]),
    max_gap=st.sampled_from([0, 1 << 20]),
)
def test_streamed_ranges_give_the_same_files_wherever_the_buffers_split(
    monkeypatch: pytest.MonkeyPatch, files: dict[str, bytes], feed: int, max_range: int, max_gap: int
) -> None:
    monkeypatch.setattr(dl, "FEED_BYTES", feed)
    if files:  # the same content twice: one blob written into two files
        first = next(iter(files))
        files = {**files, "copy/" + first: files[first]}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_tree(root / "src", files)

        async def go() -> None:
            store = StreamedStore(LocalStore(root / "repo"))
            repo = await Repository.open(store, params=SMALL)
            record = await _logged(repo, root / "src")
            res = await download(repo, record, root / "out", max_range=max_range, max_gap=max_gap)
            assert res.written == len(files)
            assert read_tree(root / "out") == files

        asyncio.run(go())


def _flip(repo_dir: Path, loc: Any) -> None:
    h = loc.pack.hex()
    pack = repo_dir / "data" / h[:2] / h
    raw = bytearray(pack.read_bytes())
    raw[loc.offset + loc.stored - 1] ^= 0x01  # the last byte: every other byte was written first
    pack.write_bytes(bytes(raw))


@pytest.mark.parametrize("feed", [1 << 20, 777])
def test_a_corrupt_blob_received_in_pieces_fails_the_file_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, feed: int
) -> None:
    monkeypatch.setattr(dl, "FEED_BYTES", feed)
    big = os.urandom(200_000)
    write_tree(tmp_path / "src", {"big.bin": big, "ok.txt": b"fine"})

    async def go() -> None:
        store = StreamedStore(LocalStore(tmp_path / "repo"))
        repo = await Repository.open(store, params=SMALL)
        record = await _logged(repo, tmp_path / "src")
        entry = await (await repo.manifest(record)).get("big.bin")
        assert entry is not None and len(entry.chunks) > 3
        _, bad = entry.chunks[len(entry.chunks) // 2]
        _flip(tmp_path / "repo", (await repo.index())[bad])
        out = tmp_path / "out"
        with pytest.raises(CorruptData, match=rf"big\.bin: blob {bad.hex()} in pack .*BLAKE3 mismatch"):
            await download(repo, record, out)
        assert not (out / "big.bin").exists()
        assert not [p for p in out.rglob("*") if p.name.startswith(".se-")]

    asyncio.run(go())


def test_a_pack_deleted_mid_read_by_a_repack_is_read_from_its_new_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gc repacked the blobs and deleted the old pack while a download was reading it: the
    blobs not yet complete come from their new pack, after an index refresh."""
    monkeypatch.setenv("SYNCENGINE_GC_MIN_GRACE", str(GRACE))
    monkeypatch.setattr(dl, "FEED_BYTES", 4096)

    async def go() -> None:
        local = LocalStore(tmp_path / "repo")
        repo = await Repository.open(local, params=PARAMS)
        src = tmp_path / "src"
        src.mkdir()
        small, v = await _half_dead_pack(repo, src)
        (old_pack,) = await _keys(local, "data/")
        old_bytes = await local.get(old_pack)
        streamed = StreamedStore(local)
        reader = _IndexFromBefore(streamed, repo.config)
        reader.stale = dict(await Repository.index(reader))
        assert (await collect(repo, grace=GRACE)).phase == "marked"
        assert (await _sweep(repo)).repacked
        streamed.vanishing[old_pack] = (old_bytes, 5000)  # part of the range, then gone
        out = tmp_path / "out"
        got = await download(reader, await reader.version("p", "m", v), str(out))
        assert read_tree(out) == {"small.bin": small} and got.written == 1
        assert old_pack not in streamed.vanishing and streamed.pack_reads >= 2

    asyncio.run(go())


def test_a_pack_gone_mid_read_with_no_other_copy_is_an_error_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dl, "FEED_BYTES", 4096)
    write_tree(tmp_path / "src", {"f.bin": os.urandom(50_000)})

    async def go() -> None:
        local = LocalStore(tmp_path / "repo")
        streamed = StreamedStore(local)
        repo = await Repository.open(streamed, params=SMALL)
        record = await _logged(repo, tmp_path / "src")
        (pack,) = await _keys(local, "data/")
        streamed.vanishing[pack] = (await local.get(pack), 10_000)
        out = tmp_path / "out"
        with pytest.raises(CorruptData, match=r"f\.bin: pack [0-9a-f]+ is missing from the store"):
            await download(repo, record, out, max_range=1 << 20)
        assert not (out / "f.bin").exists()

    asyncio.run(go())
