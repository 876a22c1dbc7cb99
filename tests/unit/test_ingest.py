"""put's single-read hasher: the digests of the plain hashers, and packs of exactly the new blobs."""

from __future__ import annotations

import os
from collections.abc import Callable, Container
from pathlib import Path
from types import ModuleType

import blake3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncengine.errors import FileChangedError
from syncengine.hashing import reference
from syncengine.hashing.params import ChunkerParams
from syncengine.repo import ingest as ingest_mod
from syncengine.repo.ingest import Ingest, IngestAborted
from syncengine.repo.pack import BlobLocation, parse_pack, read_blob
from syncengine.store.base import HashedParts
from tests.conftest import native_module

PARAMS = ChunkerParams(1024, 4096, 16384)
MAX_RAW = PARAMS.max_size


def _data(seed: int, n: int) -> bytes:
    return blake3.blake3(seed.to_bytes(8, "little")).digest(length=n)


class Packs:
    def __init__(self) -> None:
        self.got: list[tuple[bytes, bytes, list[BlobLocation]]] = []

    def __call__(
        self, pid: bytes, body: HashedParts, locs: list[BlobLocation], release: Callable[[], None]
    ) -> None:
        self.got.append((pid, body.join(), locs))
        release()  # "uploaded": its arena is reused from here on

    def blobs(self) -> dict[bytes, bytes]:
        out = {}
        for pid, data, locs in self.got:
            assert parse_pack(pid, data) == locs  # the id is BLAKE3 of the bytes
            for loc in locs:
                out[loc.digest] = read_blob(pid, data[loc.offset : loc.offset + loc.stored], loc, MAX_RAW)
        return out


def make(impl: ModuleType, known: Container[bytes] = (), pack_target: int = 1 << 20) -> tuple[Ingest, Packs]:
    packs = Packs()
    ing = Ingest(PARAMS, impl, known, pack_target, 2, packs)
    return ing, packs


@pytest.fixture(params=["native", "reference"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return native_module() if request.param == "native" else reference


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sizes=st.lists(st.integers(0, 120_000), min_size=1, max_size=6),
    window=st.sampled_from([16384, 20000, 65536]),
)
def test_digests_equal_the_plain_hasher_and_packs_hold_each_new_blob_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sizes: list[int], window: int
) -> None:
    monkeypatch.setattr(ingest_mod, "WINDOW", window)  # many windows per file, carries across them
    impl = native_module()
    ing, packs = make(impl, pack_target=50_000)
    h = ing.file_hasher(PARAMS)
    plain = impl.FileHasher(PARAMS)
    contents = {}
    for i, n in enumerate(sizes):
        p = tmp_path / f"f{i}-{n}"
        data = _data(i % 3, n)  # repeats: the same content twice is packed once
        p.write_bytes(data)
        got = h.hash_file(str(p), n)
        assert got == plain.hash_file(str(p), n)
        for c in got.chunks or ():
            contents[c.digest] = data[c.offset : c.offset + c.length]
        if not got.chunks:
            contents[got.digest] = data
    h.flush()
    blobs = packs.blobs()
    assert blobs == contents  # every blob once, its bytes exactly the hashed ones
    assert ing.new_blobs == len(contents) and ing.new_bytes == sum(map(len, contents.values()))


def test_both_implementations_agree(tmp_path: Path, impl: ModuleType) -> None:
    p = tmp_path / "big"
    p.write_bytes(_data(7, 300_000))
    ing, _ = make(impl)
    assert ing.file_hasher(PARAMS).hash_file(str(p)) == native_module().FileHasher(PARAMS).hash_file(str(p))


def test_known_blobs_are_not_packed(tmp_path: Path) -> None:
    impl = native_module()
    data = _data(1, 200_000)
    p = tmp_path / "f"
    p.write_bytes(data)
    first = impl.FileHasher(PARAMS).hash_file(str(p))
    known = {c.digest for c in first.chunks[:-3]}
    p.write_bytes(data + b"appended")
    ing, packs = make(impl, known=known)
    h = ing.file_hasher(PARAMS)
    h.hash_file(str(p))
    h.flush()
    assert set(packs.blobs()).isdisjoint(known) and packs.blobs()


def test_a_file_that_is_not_what_the_scan_saw_is_an_error(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"x" * 50_000)
    ing, _ = make(native_module())
    with pytest.raises(FileChangedError, match="expected 40000 bytes"):
        ing.file_hasher(PARAMS).hash_file(str(p), 40_000)
    with pytest.raises(FileNotFoundError):
        ing.file_hasher(PARAMS).hash_file(str(tmp_path / "gone"), 1)


def test_a_file_changed_while_read_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "f"
    p.write_bytes(_data(2, 100_000))
    monkeypatch.setattr(ingest_mod, "WINDOW", 16384)
    real = os.readv
    calls = []

    def readv_and_touch(fd: int, bufs: list[memoryview]) -> int:
        calls.append(1)
        if len(calls) == 2:  # a writer appends between two reads
            with open(p, "ab") as f:
                f.write(b"more")
        return real(fd, bufs)

    monkeypatch.setattr(ingest_mod.os, "readv", readv_and_touch)
    ing, _ = make(native_module())
    with pytest.raises(FileChangedError):
        ing.file_hasher(PARAMS).hash_file(str(p), 100_000)


def test_an_aborted_put_stops_the_hashing_threads(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"y" * 10)
    ing, _ = make(native_module())
    ing.abort()
    with pytest.raises(IngestAborted):
        ing.file_hasher(PARAMS).hash_file(str(p))


def test_blob_bytes_live_in_at_most_max_packs_reused_arenas(tmp_path: Path) -> None:
    """Memory is bounded by arenas, not by what was read: a put of many packs' worth uses no
    more than ``max_packs`` + one buffer per hashing thread, reused pack after pack."""
    impl = native_module()
    ing, packs = make(impl, pack_target=64 * 1024)  # max_packs=2 (see make)
    seen: set[int] = set()
    take = ing.take_arena

    def recording() -> bytearray:
        a = take()
        seen.add(id(a))
        return a

    ing.take_arena = recording  # type: ignore[method-assign]
    h = ing.file_hasher(PARAMS)
    contents = {}
    for i in range(40):
        p = tmp_path / f"f{i}"
        data = _data(100 + i, 30_000)
        p.write_bytes(data)
        for c in h.hash_file(str(p)).chunks:
            contents[c.digest] = data[c.offset : c.offset + c.length]
    h.flush()
    assert len(packs.got) >= 10
    assert len(seen) <= 3  # max_packs=2, one thread
    assert packs.blobs() == contents  # a reused arena never changed a pack already written
