"""Digest records and the domain-separated derivations built on BLAKE3 (file and tree digests)."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Final, NamedTuple

import blake3 as _blake3

#: Keys for BLAKE3 keyed mode; each is BLAKE3 of an ASCII context string (docs/FORMAT.md).
FILE_KEY: Final = _blake3.blake3(b"syncengine chunked file digest v1").digest()
TREE_KEY: Final = _blake3.blake3(b"syncengine tree digest v1").digest()

_CHUNK_RECORD: Final = struct.Struct("<Q32s")
_U32: Final = struct.Struct("<I")


class Chunk(NamedTuple):
    """One content-defined chunk of a large file: a blob addressed by BLAKE3(bytes)."""

    offset: int
    length: int
    digest: bytes


class FileDigest(NamedTuple):
    """The identity of a file's content.

    Small files (size <= ``ChunkerParams.small_file_limit``) are one blob: ``digest`` is
    BLAKE3(content) and ``chunks`` is empty. Larger files list their chunks, and ``digest``
    is ``file_digest_from_chunks(chunks)``.
    """

    size: int
    digest: bytes
    chunks: tuple[Chunk, ...]


def file_digest_from_chunks(chunks: Iterable[Chunk]) -> bytes:
    """BLAKE3 keyed with FILE_KEY over ``u64le(length) || digest`` of each chunk in order.

    Keyed mode changes BLAKE3's flags and IV, so this can never equal the plain BLAKE3
    digest of any content: a chunked file and a small file cannot be confused.
    """
    h = _blake3.blake3(key=FILE_KEY)
    for c in chunks:
        h.update(_CHUNK_RECORD.pack(c.length, c.digest))
    return h.digest()


class TreeDigest:
    """Incremental digest of a sorted list of (path, file digest) pairs.

    BLAKE3 keyed with TREE_KEY over ``u32le(len(path)) || path (UTF-8) || digest(32)`` for
    each entry in UTF-8 byte order of the paths. It covers names and contents only (not
    modes or times), so identical content gives an identical digest.

    >>> t = TreeDigest(); t.add("a.txt", bytes(32)); len(t.hexdigest())
    64
    """

    __slots__ = ("_h", "count")

    def __init__(self) -> None:
        self._h = _blake3.blake3(key=TREE_KEY)
        self.count = 0

    def add(self, path: str, digest: bytes) -> None:
        raw = path.encode("utf-8")
        self._h.update(struct.pack("<I", len(raw)) + raw + digest)
        self.count += 1

    def add_many(self, pairs: Iterable[tuple[str, bytes]]) -> None:
        """`add` for each pair, in one hash update (a manifest page's entries at a time)."""
        parts: list[bytes] = []
        pack = _U32.pack
        for path, digest in pairs:
            raw = path.encode("utf-8")
            parts += (pack(len(raw)), raw, digest)
        self._h.update(b"".join(parts))
        self.count += len(parts) // 3

    def digest(self) -> bytes:
        return self._h.digest()

    def hexdigest(self) -> str:
        return self._h.hexdigest()
