"""The in-memory blob index: digest → IndexEntry of every blob, loaded from index segments.

`BlobIndex` is the compact native table (`syncengine._native.BlobIndex`, ~75 bytes a blob
instead of ~360 for a dict of IndexEntry; docs/HASHING.md) or, with
`SYNCENGINE_NO_EXTENSIONS=1` or no compiled core, `PythonBlobIndex`, the dict-backed
reference with the same interface:

- ``add_segment(segment_id, data) -> int`` checks a segment exactly as
  `syncengine.repo.pack.decode_index` does (`CorruptData`, same messages; nothing is added
  then) and adds its records; a digest already present keeps its first location. Returns how
  many digests were new.
- ``add(entry) -> bool`` the same for one `IndexEntry` (``ValueError`` unless its digest and
  pack id are 32 bytes; ``OverflowError`` for a field outside its u64/u32/u8).
- ``setdefault(digest, entry)``, ``get(digest, default=None)``, ``index[digest]``
  (``KeyError``), ``digest in index``, ``len``, iteration over digests, ``keys()``,
  ``values()`` and ``items()`` (iterators, in the order the digests were added), ``nbytes``
  (the memory the index holds; an estimate for the reference).

Lookups and adds may come from several threads (adds are serialised by the GIL). An entry is
an `IndexEntry` made when it is looked up: the native table holds no Python object a blob.

>>> from syncengine.repo.pack import IndexEntry, encode_index
>>> sid, seg = encode_index([IndexEntry(b"d" * 32, b"p" * 32, 8, 5, 5, 0)])
>>> index = BlobIndex(); index.add_segment(sid, seg)
1
>>> index[b"d" * 32].offset, b"x" * 32 in index, len(index)
(8, False, 1)
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from syncengine.errors import NativeExtensionMissing
from syncengine.hashing import backend
from syncengine.repo.pack import IndexEntry, decode_index

_U64: Final = 1 << 64
_U32: Final = 1 << 32


def _check(entry: IndexEntry) -> None:
    if len(entry.digest) != 32 or len(entry.pack) != 32:
        raise ValueError("an index entry's digest and pack id are 32 bytes each")
    for value, bound in ((entry.offset, _U64), (entry.stored, _U32), (entry.raw, _U32), (entry.codec, 256)):
        if not 0 <= value < bound:
            raise OverflowError(f"index entry field {value} is out of range")


class PythonBlobIndex:
    """The reference `BlobIndex`: a dict of IndexEntry (see the module docstring)."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[bytes, IndexEntry] = {}

    def add_segment(self, segment_id: bytes, data: bytes) -> int:
        added = 0
        keep = self._entries.setdefault
        for e in decode_index(segment_id, data):
            if keep(e.digest, e) is e:
                added += 1
        return added

    def add(self, entry: IndexEntry) -> bool:
        _check(entry)
        return self._entries.setdefault(entry.digest, entry) is entry

    def setdefault(self, digest: bytes, entry: IndexEntry) -> IndexEntry:
        if digest != entry.digest:
            raise ValueError("setdefault: the entry's digest is not the key")
        found = self._entries.get(digest)
        if found is not None:
            return found
        self.add(entry)
        return entry

    def get(self, digest: bytes, default: IndexEntry | None = None) -> IndexEntry | None:
        return self._entries.get(digest, default)

    def __getitem__(self, digest: bytes) -> IndexEntry:
        return self._entries[digest]

    def __contains__(self, digest: object) -> bool:
        return digest in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._entries)

    def keys(self) -> Iterator[bytes]:
        return iter(self._entries)

    def values(self) -> Iterator[IndexEntry]:
        return iter(self._entries.values())

    def items(self) -> Iterator[tuple[bytes, IndexEntry]]:
        return iter(self._entries.items())

    @property
    def nbytes(self) -> int:
        """The dict plus each entry's tuple, digest, pack id and integers (shared objects
        counted once per entry: an upper estimate)."""
        n = sys.getsizeof(self._entries)
        for e in self._entries.values():
            n += sys.getsizeof(e) + sum(sys.getsizeof(f) for f in e)
        return n

    def __repr__(self) -> str:
        return f"<BlobIndex (python): {len(self._entries)} blobs>"


def _native_class() -> type[PythonBlobIndex]:
    cls: type[PythonBlobIndex] | None = getattr(backend.impl, "BlobIndex", None)
    if cls is None:
        raise NativeExtensionMissing(
            "the compiled core syncengine._native has no BlobIndex (built from older sources); "
            "rebuild it with `pip install .`"
        )
    return cls


if TYPE_CHECKING:
    BlobIndex = PythonBlobIndex
else:
    BlobIndex = _native_class() if backend.IMPLEMENTATION == "native" else PythonBlobIndex

#: "native" or "python": which BlobIndex this process uses.
IMPLEMENTATION: Final = "native" if BlobIndex is not PythonBlobIndex else "python"
