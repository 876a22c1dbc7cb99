"""The most bytes each kind of repository object may hold: every read of one is capped
(``ObjectStore.get(key, max_bytes=…)``), so an object planted in a shared repository — or a
server's ``Content-Length`` — cannot make a reader allocate more (``ObjectTooLarge``, before a
byte of the body is read). Writers refuse to store more than a reader accepts, so no writer
makes a version others cannot read.

Each cap is derived from what the format allows, with room to spare (docs/FORMAT.md "Object
sizes"):

- ``config``: a few fixed fields, ~200 bytes.
- a version record: names are ≤ 128 characters, ``metadata`` ≤ ``METADATA`` (1 MiB encoded,
  checked on write), the rest (description, tags, ``created_by``) small: 4 MiB.
- an artifact head: aliases, and a content digest (~80 bytes) per version: 64 MiB is
  ~800,000 versions of one artifact.
- a manifest record: six fields, ~100 bytes.
- a manifest page: ~``FANOUT`` (512) entries on average; a page's length is a geometric
  draw, so a hard cap is set far above it, where only one entry's chunk list can take a
  page: 64 MiB holds ~1.7 million chunks, a file of over 400 GB at the smallest chunk size of
  the default chunker (256 KiB).
- an index segment: one per put over every blob it added, 81 bytes a blob: 1 GiB is 13
  million blobs, above the 10^7-file put DESIGN.md plans for. (A segment is read whole; the
  index of all segments is held in memory, so its total grows with what the segments list.)
- run records: config and summary: 16 MiB. Edge markers: a timestamp and a version: 64 KiB.
- distributed part and finished records: a manifest pointer, the part list: 16 MiB.
- gc objects (marks, keeps, done records): one key (~80 bytes) per collectable object:
  256 MiB is over 3 million packs and manifest objects in one collection.
- a pack read whole (gc repack): ``pack_cap`` — the pack target, one blob over it per
  writer thread merged into the last pack, and the trailer's 49 bytes a blob.

This module imports only the errors, so any layer may use it.
"""

from __future__ import annotations

from typing import Final

from syncengine.errors import ConfigError

KiB: Final = 1 << 10
MiB: Final = 1 << 20

CONFIG: Final = 64 * KiB
VERSION_RECORD: Final = 4 * MiB
#: The encoded JSON of a version's metadata, on write (W&B's limit is of the same order).
METADATA: Final = 1 * MiB
HEAD: Final = 64 * MiB
MANIFEST_RECORD: Final = 64 * KiB
MANIFEST_PAGE: Final = 64 * MiB
INDEX_SEGMENT: Final = 1 << 30
RUN_RECORD: Final = 16 * MiB
EDGE: Final = 64 * KiB
DISTRIBUTED_RECORD: Final = 16 * MiB
GC_OBJECT: Final = 256 * MiB


def pack_cap(pack_target: int, max_blob: int) -> int:
    """The most bytes of a whole pack written with ``pack_target`` and blobs of at most
    ``max_blob`` stored bytes: 16 targets (the blobs, leftovers of several threads merged,
    and a trailer of 49 bytes for each blob of 4 bytes or more) plus two blobs."""
    return 16 * pack_target + 2 * max_blob


def writable(what: str, data: bytes, cap: int) -> bytes:
    """``data`` if a reader will accept it, else ``ConfigError``: no writer stores an object
    that readers refuse (``what`` names it for the message)."""
    if len(data) > cap:
        raise ConfigError(
            f"{what} would be {len(data)} bytes, more than the {cap} a reader accepts "
            '(docs/FORMAT.md "Object sizes")'
        )
    return data
