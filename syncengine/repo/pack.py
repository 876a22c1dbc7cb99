"""Packs: many blobs in one immutable object, with a trailer that lists them (docs/FORMAT.md).

A pack carries its own table of contents, so the repository index can always be rebuilt from
the packs alone. Index segments map blob digests to pack locations. No I/O here: writers
return bytes, readers take bytes.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Final, NamedTuple

import blake3 as _blake3

from syncengine.errors import SyncEngineError
from syncengine.repo import object_caps as caps
from syncengine.store.base import HashedParts

if TYPE_CHECKING:
    import zstandard

PACK_MAGIC: Final = b"SEPACK\x00\x01"
PACK_END: Final = b"SEPKEND1"
INDEX_MAGIC: Final = b"SEINDEX1"
CODEC_NONE: Final = 0
CODEC_ZSTD: Final = 1

_REC = struct.Struct("<32sQII B")  # digest, offset, stored length, raw length, codec
_FOOT = struct.Struct("<Q8s")  # trailer offset, PACK_END
_IREC = struct.Struct("<32s32sQII B")  # digest, pack id, offset, stored, raw, codec
_COUNT = struct.Struct("<I")
#: zstd is kept only when it saves at least this share of a blob.
_MIN_SAVING: Final = 0.10
_PROBE: Final = 64 * 1024
#: Small blobs are first tried on this many bytes with the fastest level.
_SMALL_PROBE: Final = 4096
# zstandard's (de)compressors must not be used by two threads at once (it crashes): one per
# PackWriter for compressing, one per thread for reading.
_local = threading.local()


def _dctx() -> zstandard.ZstdDecompressor:
    import zstandard  # not at import: records and the CLI's start-up need no codec

    d: zstandard.ZstdDecompressor | None = getattr(_local, "dctx", None)
    if d is None:
        d = _local.dctx = zstandard.ZstdDecompressor()
    return d


class CorruptData(SyncEngineError):
    """Stored bytes do not match their digest or structure; names the object and blob."""


class BlobLocation(NamedTuple):
    digest: bytes
    offset: int
    stored: int
    raw: int
    codec: int


class IndexEntry(NamedTuple):
    digest: bytes
    pack: bytes
    offset: int
    stored: int
    raw: int
    codec: int


def blob_digest(data: bytes | memoryview) -> bytes:
    return _blake3.blake3(data).digest()


class PackWriter:
    """Collects blobs into one pack.

    >>> w = PackWriter(); w.add(blob_digest(b"hi"), b"hi"); pid, data, locs = w.finish()
    >>> read_blob(pid, data[locs[0].offset:locs[0].offset + locs[0].stored], locs[0], max_raw=1 << 20)
    b'hi'
    """

    def __init__(self, compression: str = "auto", level: int = 3) -> None:
        if compression not in {"auto", "off", "zstd"}:
            raise ValueError(f"compression must be auto, off or zstd, not {compression!r}")
        self.compression = compression
        import zstandard

        self._zstd = zstandard.ZstdCompressor(level=level) if compression != "off" else None
        self._fast = zstandard.ZstdCompressor(level=1) if compression == "auto" else None
        self._parts: list[bytes | memoryview] = [PACK_MAGIC]
        self._locs: list[BlobLocation] = []
        self.size = len(PACK_MAGIC)
        #: Buffers the blobs added as memoryviews live in (their owner recycles them once the
        #: pack is written); absorbing a writer takes its buffers along.
        self.arenas: list[bytearray] = []

    def __len__(self) -> int:
        return len(self._locs)

    def add(self, digest: bytes, raw: bytes | memoryview) -> BlobLocation:
        """Appends a blob (`digest` must be BLAKE3(raw); the caller hashed it already)."""
        stored, codec = self._encode(raw)
        loc = BlobLocation(digest, self.size, len(stored), len(raw), codec)
        self._parts.append(stored)
        self._locs.append(loc)
        self.size += len(stored)
        return loc

    def _encode(self, raw: bytes | memoryview) -> tuple[bytes | memoryview, int]:
        if self._zstd is None or len(raw) < 512:
            return raw, CODEC_NONE
        if self.compression == "auto":
            # Incompressible data (model weights, media, random bytes) is the common case for
            # large artifacts: find out from a sample instead of compressing every byte.
            if len(raw) > _PROBE:
                probe = self._zstd.compress(raw[:_PROBE])
                if len(probe) > (1 - _MIN_SAVING) * _PROBE:
                    return raw, CODEC_NONE
            elif (
                self._fast is not None
                and len(raw) > 2 * _SMALL_PROBE
                and len(self._fast.compress(raw[:_SMALL_PROBE])) >= _SMALL_PROBE
            ):
                return raw, CODEC_NONE
        packed = self._zstd.compress(raw)
        if len(packed) <= (1 - _MIN_SAVING) * len(raw):
            return packed, CODEC_ZSTD
        return raw, CODEC_NONE

    def absorb(self, other: PackWriter) -> None:
        """Appends every blob of ``other`` as stored there (no recompression); ``other`` is
        left empty. Merges the partly filled packs of several threads into one."""
        shift = self.size - len(PACK_MAGIC)
        self._parts.extend(other._parts[1:])
        self._locs.extend(loc._replace(offset=loc.offset + shift) for loc in other._locs)
        self.size += other.size - len(PACK_MAGIC)
        self.arenas.extend(other.arenas)
        other._parts, other._locs, other.size, other.arenas = [PACK_MAGIC], [], len(PACK_MAGIC), []

    def finish(self) -> tuple[bytes, bytes, list[BlobLocation]]:
        """(pack id, pack bytes, blob locations)."""
        pid, body, locs = self.finish_parts()
        return pid, body.join(), locs

    def finish_parts(self) -> tuple[bytes, HashedParts, list[BlobLocation]]:
        """(pack id, the pack as a body of parts — no joined copy —, blob locations)."""
        records = b"".join(_REC.pack(*loc) for loc in self._locs) + _COUNT.pack(len(self._locs))
        trailer = records + _blake3.blake3(records).digest()
        parts = [*self._parts, trailer, _FOOT.pack(self.size, PACK_END)]
        h = _blake3.blake3()
        for p in parts:
            h.update(p)
        pid = h.digest()
        return pid, HashedParts(parts, pid), list(self._locs)


def trailer_offset(pack: bytes, footer: bytes) -> int:
    """Where the trailer starts, from the pack's last 16 bytes."""
    if len(footer) != _FOOT.size:
        raise CorruptData(f"pack {pack.hex()}: footer is {len(footer)} bytes, not {_FOOT.size}")
    offset, magic = _FOOT.unpack(footer)
    if magic != PACK_END:
        raise CorruptData(f"pack {pack.hex()}: bad footer (not a syncengine pack or truncated)")
    return int(offset)


def parse_trailer(pack: bytes, trailer: bytes) -> list[BlobLocation]:
    """The blob table of a pack from its trailer bytes (footer excluded)."""
    if len(trailer) < _COUNT.size + 32:
        raise CorruptData(f"pack {pack.hex()}: trailer too short")
    body, check = trailer[:-32], trailer[-32:]
    if _blake3.blake3(body).digest() != check:
        raise CorruptData(f"pack {pack.hex()}: trailer checksum mismatch")
    (count,) = _COUNT.unpack(body[-_COUNT.size :])
    if len(body) != count * _REC.size + _COUNT.size:
        raise CorruptData(f"pack {pack.hex()}: trailer holds {len(body)} bytes for {count} blobs")
    return [BlobLocation(*r) for r in _REC.iter_unpack(body[: -_COUNT.size])]


def parse_pack(pack: bytes, data: bytes) -> list[BlobLocation]:
    """The blob table of a whole pack held in memory (also checks its header and id)."""
    if _blake3.blake3(data).digest() != pack:
        raise CorruptData(f"pack {pack.hex()} does not match its name (corrupted or truncated)")
    if not data.startswith(PACK_MAGIC):
        raise CorruptData(f"pack {pack.hex()}: bad header")
    start = trailer_offset(pack, data[-_FOOT.size :])
    return parse_trailer(pack, data[start : -_FOOT.size])


def zstd_bound(raw: int) -> int:
    """The most bytes zstd can take to store `raw` bytes (zstd's ZSTD_COMPRESSBOUND)."""
    small = (128 * 1024 - raw) >> 11 if raw < 128 * 1024 else 0
    return raw + (raw >> 8) + small


def check_bounds(pack: bytes, loc: BlobLocation | IndexEntry, max_raw: int) -> None:
    """Refuses a location no writer of this repository could have made: a blob over the
    chunker's maximum (`max_raw`, the repository's ``max_size``), stored bytes that are not
    its raw bytes (no codec) or more than zstd's bound for them, or an unknown codec. Read
    before any buffer is sized by it, so a crafted index cannot make a reader allocate more
    than one chunk's worth."""
    what = f"blob {loc.digest.hex()} in pack {pack.hex()}"
    if loc.raw > max_raw:
        raise CorruptData(f"{what}: {loc.raw} bytes, more than the chunker's maximum of {max_raw}")
    if loc.codec == CODEC_NONE:
        if loc.stored != loc.raw:
            raise CorruptData(f"{what}: stored as {loc.stored} bytes without a codec, but {loc.raw} raw")
    elif loc.codec == CODEC_ZSTD:
        if loc.stored > zstd_bound(loc.raw):
            raise CorruptData(f"{what}: {loc.stored} stored bytes cannot encode {loc.raw} raw ones")
    else:
        raise CorruptData(f"{what}: unknown codec {loc.codec}")


def read_blob(pack: bytes, stored: bytes | memoryview, loc: BlobLocation | IndexEntry, max_raw: int) -> bytes:
    """The raw bytes of a blob from its stored bytes, verified against its digest; never more
    than ``loc.raw`` (itself at most `max_raw`) bytes are decoded, whatever the frame says."""
    check_bounds(pack, loc, max_raw)
    if len(stored) != loc.stored:
        raise CorruptData(
            f"blob {loc.digest.hex()} in pack {pack.hex()}: got {len(stored)} of {loc.stored} bytes"
        )
    if loc.codec == CODEC_NONE:
        raw = bytes(stored)
    else:
        import zstandard

        try:
            # python-zstandard allocates the size a frame header states and ignores
            # max_output_size then: a 12 KiB frame stating 400 MiB is refused before decoding.
            # Without a stated size, max_output_size caps the output (an error past it).
            stated = zstandard.frame_content_size(stored)
            if stated not in (-1, loc.raw):
                raise CorruptData(
                    f"blob {loc.digest.hex()} in pack {pack.hex()}: its zstd frame states {stated} "
                    f"bytes, the index {loc.raw}"
                )
            raw = _dctx().decompress(stored, max_output_size=loc.raw)
        except zstandard.ZstdError as e:
            raise CorruptData(f"blob {loc.digest.hex()} in pack {pack.hex()}: {e}") from e
    if len(raw) != loc.raw or blob_digest(raw) != loc.digest:
        raise blob_mismatch(pack, loc)
    return raw


def blob_mismatch(pack: bytes, loc: BlobLocation | IndexEntry) -> CorruptData:
    """The error for stored bytes that do not hash to the blob's digest."""
    return CorruptData(f"blob {loc.digest.hex()} in pack {pack.hex()} is corrupted (BLAKE3 mismatch)")


def encode_index(entries: Iterable[IndexEntry]) -> tuple[bytes, bytes]:
    """(segment id, bytes) of an index segment; entries are sorted by digest here."""
    rows = sorted(entries)
    body = INDEX_MAGIC + _COUNT.pack(len(rows)) + b"".join(_IREC.pack(*r) for r in rows)
    data = caps.writable("an index segment", body + _blake3.blake3(body).digest(), caps.INDEX_SEGMENT)
    return _blake3.blake3(data).digest(), data


def decode_index(segment: bytes, data: bytes) -> list[IndexEntry]:
    """The records of index segment `segment` (its id) checked against its name and layout;
    `syncengine.repo.blob_index.BlobIndex.add_segment` checks the same, with the same errors."""
    if _blake3.blake3(data).digest() != segment:
        raise CorruptData(f"index segment {segment.hex()} does not match its name")
    body = data[:-32]
    if len(body) < len(INDEX_MAGIC) + _COUNT.size or not body.startswith(INDEX_MAGIC):
        raise CorruptData(f"index segment {segment.hex()}: bad header")
    (count,) = _COUNT.unpack_from(body, len(INDEX_MAGIC))
    rows = body[len(INDEX_MAGIC) + _COUNT.size :]
    if len(rows) != count * _IREC.size:
        raise CorruptData(f"index segment {segment.hex()}: {len(rows)} bytes for {count} entries")
    return [IndexEntry(*r) for r in _IREC.iter_unpack(rows)]


def index_entries(pack: bytes, locs: Sequence[BlobLocation]) -> list[IndexEntry]:
    return [IndexEntry(loc.digest, pack, loc.offset, loc.stored, loc.raw, loc.codec) for loc in locs]
