"""Packs and index segments: round trips, compression only when it pays, corruption named."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncengine.hashing.params import DEFAULT_PARAMS
from syncengine.repo.pack import (
    CODEC_NONE,
    CODEC_ZSTD,
    BlobLocation,
    CorruptData,
    PackWriter,
    blob_digest,
    decode_index,
    encode_index,
    index_entries,
    parse_pack,
    parse_trailer,
    read_blob,
    trailer_offset,
    zstd_bound,
)
from tests.memory import peak_mib, reset_peak, rss_mib

MAX_RAW = DEFAULT_PARAMS.max_size


def make_pack(blobs: list[bytes], compression: str = "auto") -> tuple[bytes, bytes]:
    w = PackWriter(compression)
    for b in blobs:
        w.add(blob_digest(b), b)
    pid, data, _ = w.finish()
    return pid, data


@settings(max_examples=60, deadline=None)
@given(
    blobs=st.lists(st.binary(max_size=3000) | st.just(b"a" * 5000), max_size=20),
    compression=st.sampled_from(["auto", "off", "zstd"]),
)
def test_round_trip(blobs: list[bytes], compression: str) -> None:
    pid, data = make_pack(blobs, compression)
    locs = parse_pack(pid, data)
    assert [read_blob(pid, data[loc.offset : loc.offset + loc.stored], loc, MAX_RAW) for loc in locs] == blobs
    # the trailer alone (as a ranged read from a remote store would fetch it) gives the same table
    start = trailer_offset(pid, data[-16:])
    assert parse_trailer(pid, data[start:-16]) == locs


def test_compression_only_when_it_pays() -> None:
    text = b"the same line of a csv file\n" * 10_000
    noise = os.urandom(300_000)
    pid, data = make_pack([text, noise])
    locs = parse_pack(pid, data)
    assert [loc.codec for loc in locs] == [CODEC_ZSTD, CODEC_NONE]
    assert locs[0].stored < len(text) // 10
    assert len(data) < len(noise) + len(text) // 10 + 1000


def test_corrupted_byte_is_detected_and_named() -> None:
    blobs = [os.urandom(1000), os.urandom(2000)]
    pid, data = make_pack(blobs)
    locs = parse_pack(pid, data)
    bad = bytearray(data)
    bad[locs[1].offset + 7] ^= 1
    with pytest.raises(CorruptData, match=pid.hex()):
        parse_pack(pid, bytes(bad))
    loc = locs[1]
    with pytest.raises(CorruptData, match=f"blob {loc.digest.hex()} in pack {pid.hex()}"):
        read_blob(pid, bytes(bad[loc.offset : loc.offset + loc.stored]), loc, MAX_RAW)
    with pytest.raises(CorruptData, match="got 10 of"):
        read_blob(pid, data[loc.offset : loc.offset + 10], loc, MAX_RAW)


def test_truncated_pack_is_refused() -> None:
    pid, data = make_pack([b"x" * 100])
    with pytest.raises(CorruptData):
        parse_pack(pid, data[:-1])
    with pytest.raises(CorruptData, match="bad footer"):
        trailer_offset(pid, data[-17:-1])


def test_index_segment_round_trip_sorted_and_checked() -> None:
    pid, data = make_pack([os.urandom(100) for _ in range(50)])
    entries = index_entries(pid, parse_pack(pid, data))
    sid, seg = encode_index(entries)
    got = decode_index(sid, seg)
    assert got == sorted(entries)
    with pytest.raises(CorruptData, match=sid.hex()):
        decode_index(sid, seg[:-1] + bytes([seg[-1] ^ 1]))


def test_packs_are_written_and_read_from_many_threads_at_once() -> None:
    """Hashing threads pack (and compression-probe) blobs concurrently, download threads read
    them: zstd contexts must never be shared between threads (that crashes the process)."""
    import threading

    def blobs(seed: int) -> list[bytes]:
        base = (b"%d compressible text, " % seed) * 2000
        return [base[i:] + os.urandom(64) for i in range(0, 600, 7)]

    done: dict[int, tuple[bytes, bytes, list[object], list[bytes]]] = {}

    def pack(seed: int) -> None:
        for _ in range(3):
            w = PackWriter()
            data = blobs(seed)
            for b in data:
                w.add(blob_digest(b), b)
            pid, body, locs = w.finish()
        done[seed] = (pid, body, locs, data)  # type: ignore[assignment]

    threads = [threading.Thread(target=pack, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(done) == 8

    ok: list[int] = []

    def read(seed: int) -> None:
        pid, body, locs, data = done[seed]
        for _ in range(5):
            got = [read_blob(pid, body[loc.offset : loc.offset + loc.stored], loc, MAX_RAW) for loc in locs]  # type: ignore[attr-defined]
            assert got == data
        ok.append(seed)

    readers = [threading.Thread(target=read, args=(i,)) for i in range(8)]
    for t in readers:
        t.start()
    for t in readers:
        t.join()
    assert sorted(ok) == list(range(8))  # an exception in a thread leaves its seed out
    assert any(loc.codec == 1 for loc in done[0][2])  # type: ignore[attr-defined]


def test_absorb_merges_packs_without_recompressing() -> None:
    a, b = PackWriter(), PackWriter()
    blobs_a = [b"text " * 500, os.urandom(3000)]
    blobs_b = [b"more text " * 300, b"", os.urandom(10)]
    for w, blobs in ((a, blobs_a), (b, blobs_b)):
        for x in blobs:
            w.add(blob_digest(x), x)
    b_stored = [loc.stored for loc in b._locs]
    a.absorb(b)
    assert len(b) == 0 and b.size == 8
    pid, data, locs = a.finish()
    assert parse_pack(pid, data) == locs
    assert [loc.stored for loc in locs[2:]] == b_stored  # as stored, not compressed again
    got = [read_blob(pid, data[loc.offset : loc.offset + loc.stored], loc, MAX_RAW) for loc in locs]
    assert got == blobs_a + blobs_b


def test_a_zstd_bomb_is_refused_before_it_inflates() -> None:
    """A 12 KiB frame stating 400 MiB behind an index that says raw=16 KiB (so its stored
    size is plausible): refused from the frame header, before python-zstandard allocates
    what the header states (it ignores max_output_size then)."""
    import zstandard

    stored = zstandard.ZstdCompressor(level=3).compress(bytes(400 << 20))
    assert len(stored) < 16 << 10
    loc = BlobLocation(blob_digest(b"x"), 0, len(stored), 16 << 10, CODEC_ZSTD)
    reset_peak()
    before = rss_mib()
    with pytest.raises(CorruptData, match="states 419430400 bytes, the index 16384"):
        read_blob(b"p" * 32, stored, loc, MAX_RAW)
    assert peak_mib() - before < 100


def test_a_frame_without_a_stated_size_decodes_no_more_than_the_index_says() -> None:
    import zstandard

    stored = zstandard.ZstdCompressor(level=3, write_content_size=False).compress(bytes(400 << 20))
    loc = BlobLocation(blob_digest(b"x"), 0, len(stored), 16 << 10, CODEC_ZSTD)
    reset_peak()
    before = rss_mib()
    with pytest.raises(CorruptData, match="did not decompress full frame"):
        read_blob(b"p" * 32, stored, loc, MAX_RAW)
    assert peak_mib() - before < 100


@pytest.mark.parametrize(
    ("stored", "raw", "codec", "why"),
    [
        (MAX_RAW + 1, MAX_RAW + 1, CODEC_NONE, "more than the chunker's maximum"),
        (10, 11, CODEC_NONE, "without a codec"),
        (zstd_bound(1000) + 1, 1000, CODEC_ZSTD, "cannot encode"),
        (10, 10, 7, "unknown codec"),
    ],
)
def test_locations_no_writer_makes_are_refused(stored: int, raw: int, codec: int, why: str) -> None:
    loc = BlobLocation(b"d" * 32, 0, stored, raw, codec)
    with pytest.raises(CorruptData, match=why):
        read_blob(b"p" * 32, b"\0" * stored, loc, MAX_RAW)


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=300_000))
def test_zstd_bound_holds_for_what_the_writer_stores(raw: bytes) -> None:
    import zstandard

    assert len(zstandard.ZstdCompressor(level=3).compress(raw)) <= zstd_bound(len(raw))
