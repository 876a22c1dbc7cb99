"""BlobIndex (native table and dict reference) behaves as today's dict of IndexEntry did."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncengine.repo.blob_index import PythonBlobIndex
from syncengine.repo.pack import (
    CorruptData,
    IndexEntry,
    blob_digest,
    decode_index,
    encode_index,
    parse_pack,
)
from tests.conftest import native_module

VECTORS = json.loads((Path(__file__).resolve().parents[1] / "data" / "vectors.json").read_text())


@pytest.fixture(params=["native", "python"], scope="module")
def index_cls(request: pytest.FixtureRequest) -> type[PythonBlobIndex]:
    """Each test using it runs over the C table and the dict reference."""
    if request.param == "native":
        cls: type[PythonBlobIndex] = native_module().BlobIndex
        return cls
    return PythonBlobIndex


def _reference(segments: list[tuple[bytes, bytes]]) -> dict[bytes, IndexEntry]:
    """What Repository.index() built before BlobIndex: setdefault over decode_index."""
    out: dict[bytes, IndexEntry] = {}
    for sid, data in segments:
        for e in decode_index(sid, data):
            out.setdefault(e.digest, e)
    return out


def _entry(i: int, pack: int = 0) -> IndexEntry:
    return IndexEntry(
        blob_digest(i.to_bytes(8, "little")), blob_digest(b"p%d" % pack), i * 7, i % 5000, i % 9000, i % 2
    )


# A few digests and packs, so segments share digests (two writers uploading one blob).
_digests = st.sampled_from([blob_digest(b"%d" % i) for i in range(40)])
_packs = st.sampled_from([blob_digest(b"pack %d" % i) for i in range(6)])
_entries = st.builds(
    IndexEntry,
    _digests,
    _packs,
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 255),
)


@settings(max_examples=150, deadline=None)
@given(segments=st.lists(st.lists(_entries, max_size=30), max_size=8))
def test_segments_load_as_the_dict_did(
    index_cls: type[PythonBlobIndex], segments: list[list[IndexEntry]]
) -> None:
    encoded = [encode_index(s) for s in segments]
    index = index_cls()
    seen: set[bytes] = set()
    for sid, data in encoded:
        new = {e.digest for e in decode_index(sid, data)} - seen
        assert index.add_segment(sid, data) == len(new)
        seen |= new
    want = _reference(encoded)
    assert len(index) == len(want)
    assert list(index) == list(want)  # insertion order, like the dict's
    assert list(index.keys()) == list(want)
    assert list(index.items()) == list(want.items())
    assert list(index.values()) == list(want.values())
    for d in [blob_digest(b"%d" % i) for i in range(45)]:
        assert index.get(d) == want.get(d)
        assert (d in index) == (d in want)
        if d in want:
            assert index[d] == want[d]
        else:
            with pytest.raises(KeyError):
                index[d]


@settings(max_examples=100, deadline=None)
@given(first=st.lists(_entries, max_size=20), singles=st.lists(_entries, max_size=20))
def test_add_and_setdefault_keep_the_first_location(
    index_cls: type[PythonBlobIndex], first: list[IndexEntry], singles: list[IndexEntry]
) -> None:
    sid, data = encode_index(first)
    index = index_cls()
    index.add_segment(sid, data)
    want = _reference([(sid, data)])
    for i, e in enumerate(singles):
        if i % 2:
            assert index.add(e) == (e.digest not in want)
            want.setdefault(e.digest, e)
        else:
            assert index.setdefault(e.digest, e) == want.setdefault(e.digest, e)
    assert list(index.items()) == list(want.items())


def _renamed(data: bytes) -> tuple[bytes, bytes]:
    """A segment whose id matches its (damaged) bytes: only the layout checks can catch it."""
    return blob_digest(data), data


def _error(fn: object, *args: bytes) -> str:
    with pytest.raises(CorruptData) as e:
        fn(*args)  # type: ignore[operator]
    return str(e.value)


def test_corrupt_segments_are_refused_with_decode_index_messages(index_cls: type[PythonBlobIndex]) -> None:
    sid, data = encode_index([_entry(i) for i in range(3)])
    body = data[:-32]
    cases = {
        "wrong name": (blob_digest(b"other"), data),
        "short id": (sid[:16], data),
        "flipped byte": (sid, data[:20] + bytes([data[20] ^ 1]) + data[21:]),
        "empty": _renamed(b""),
        "no magic": _renamed(b"SEINDEX2" + body[8:] + data[-32:]),
        "header cut": _renamed(b"SEINDEX1\x01" + bytes(32)),
        "record cut": _renamed(body[:-1] + data[-32:]),
        "extra byte": _renamed(body + b"\0" + data[-32:]),
        "count too high": _renamed(b"SEINDEX1" + (4).to_bytes(4, "little") + body[12:] + data[-32:]),
    }
    index = index_cls()
    index.add(_entry(99))
    for name, (s, d) in cases.items():
        want = _error(decode_index, s, d)
        assert _error(index.add_segment, s, d) == want, name
    assert list(index) == [_entry(99).digest]  # nothing of a refused segment was added
    assert "does not match its name" in _error(index.add_segment, *cases["flipped byte"])
    assert _error(index.add_segment, *cases["record cut"]).endswith(": 242 bytes for 3 entries")


@settings(max_examples=200, deadline=None)
@given(pos=st.integers(0, 10**6), value=st.integers(0, 255), cut=st.integers(0, 300), rename=st.booleans())
def test_damage_is_caught_as_decode_index_catches_it(
    index_cls: type[PythonBlobIndex], pos: int, value: int, cut: int, rename: bool
) -> None:
    sid, data = encode_index([_entry(i) for i in range(3)])
    damaged = bytearray(data[: len(data) - cut] if cut < len(data) else b"")
    if damaged:
        damaged[pos % len(damaged)] = value
    d = bytes(damaged)
    s = blob_digest(d) if rename else sid
    try:
        want: object = decode_index(s, d)
    except CorruptData as e:
        want = str(e)
    index = index_cls()
    try:
        index.add_segment(s, d)
        got: object = list(index.values())
    except CorruptData as e:
        got = str(e)
    assert got == want


def test_golden_segment_loads_the_expected_entries(index_cls: type[PythonBlobIndex]) -> None:
    vec = VECTORS["pack"]
    pid = bytes.fromhex(vec["pack_id"])
    locs = parse_pack(pid, bytes.fromhex(vec["pack"]))
    index = index_cls()
    assert index.add_segment(bytes.fromhex(vec["index_id"]), bytes.fromhex(vec["index"])) == 3
    for blob in vec["blobs"]:
        d = blob_digest(bytes.fromhex(blob))
        (loc,) = [loc for loc in locs if loc.digest == d]
        assert index[d] == IndexEntry(d, pid, loc.offset, loc.stored, loc.raw, loc.codec)
    assert index[blob_digest(b"line\n" * 400)].codec == 1  # the zstd blob
    assert index[blob_digest(b"")] == IndexEntry(blob_digest(b""), pid, 8, 0, 0, 0)


def test_growth_across_many_inserts(index_cls: type[PythonBlobIndex]) -> None:
    # Past block 0's doublings, several 16384-record blocks and many table doublings, with
    # segments and single adds mixed and one pack per 50 blobs.
    index = index_cls()
    n = 70_000
    order: list[bytes] = []
    for start in range(0, n, 7_000):
        segment = sorted(_entry(i, i // 50) for i in range(start, start + 5_000))
        index.add_segment(*encode_index(segment))
        order += [e.digest for e in segment]
        for i in range(start + 5_000, start + 7_000):
            assert index.add(_entry(i, i // 50))
            order.append(_entry(i).digest)
    assert len(index) == n
    assert all(index.get(_entry(i).digest) == _entry(i, i // 50) for i in range(0, n, 13))
    assert list(index) == order
    assert not any(blob_digest(b"absent %d" % i) in index for i in range(20_000))
    assert index.add_segment(*encode_index([_entry(i, 1) for i in range(0, n, 3)])) == 0


def test_keys_other_than_32_bytes_are_never_present(index_cls: type[PythonBlobIndex]) -> None:
    index = index_cls()
    e = _entry(1)
    index.add(e)
    for key in (e.digest[:31], b"", "text", 5):
        assert key not in index
        assert index.get(key) is None  # type: ignore[arg-type]
    assert index.get(blob_digest(b"no"), e) is e


def test_bad_entries_are_refused(index_cls: type[PythonBlobIndex]) -> None:
    index = index_cls()
    with pytest.raises(ValueError):
        index.add(_entry(1)._replace(digest=b"short"))
    with pytest.raises(ValueError):
        index.add(_entry(1)._replace(pack=bytes(33)))
    with pytest.raises(OverflowError):
        index.add(_entry(1)._replace(stored=2**32))
    with pytest.raises(OverflowError):
        index.add(_entry(1)._replace(offset=-1))
    with pytest.raises(ValueError):
        index.setdefault(_entry(2).digest, _entry(1))
    assert len(index) == 0


def test_segments_added_from_threads(index_cls: type[PythonBlobIndex]) -> None:
    segments = [
        encode_index([_entry(i, i // 100) for i in range(k, k + 4_000)]) for k in range(0, 32_000, 4_000)
    ]
    index = index_cls()
    threads = [threading.Thread(target=index.add_segment, args=seg) for seg in segments]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(index) == 32_000
    assert {e.digest: e for e in index.values()} == _reference(segments)


def test_native_holds_at_most_100_bytes_a_blob() -> None:
    index = native_module().BlobIndex()
    # 200k blobs in segments of 10k records, 32 blobs a pack (32 MiB packs of 1 MiB chunks).
    for start in range(0, 200_000, 10_000):
        index.add_segment(*encode_index([_entry(i, i // 32) for i in range(start, start + 10_000)]))
    assert len(index) == 200_000
    for i in range(0, 200_000, 97):
        index.get(_entry(i).digest)  # pack ids handed out count too
    assert index.nbytes / len(index) <= 100
    assert PythonBlobIndex().nbytes < index.nbytes  # and an empty one is small


def _implementation(env: dict[str, str]) -> str:
    code = "from syncengine.repo import blob_index as b; print(b.IMPLEMENTATION, b.BlobIndex.__module__)"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_native_is_chosen_unless_extensions_are_off() -> None:
    native_module()
    env = {k: v for k, v in os.environ.items() if k != "SYNCENGINE_NO_EXTENSIONS"}
    assert _implementation(env) == "native syncengine._native"
    env["SYNCENGINE_NO_EXTENSIONS"] = "1"
    assert _implementation(env) == "python syncengine.repo.blob_index"
