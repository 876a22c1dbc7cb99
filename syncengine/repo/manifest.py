"""Manifests as content-defined page trees: O(changed) bytes per version, diffs that read only what differs.

A manifest lists a version's files sorted by path. Entries are grouped into leaf pages whose
boundaries depend only on the paths (a page ends after an entry whose keyed BLAKE3 of the path
falls below a threshold), so changing a file's content rewrites one leaf page, and adding or
removing a path touches at most two. Pages are summarised by `PageRef`s, grouped into interior
pages by the same rule one level up, until one page remains: the root. Every page is an
immutable object named by the BLAKE3 of its bytes, so two versions share every page whose
content they share, and a diff skips shared subtrees without reading them.

This module does no I/O: builders return the pages to store, readers take a page loader.
"""

from __future__ import annotations

import heapq
import itertools
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Final

import blake3 as _blake3
import msgspec

from syncengine.errors import SyncEngineError
from syncengine.hashing.digests import Chunk, TreeDigest, file_digest_from_chunks
from syncengine.repo import object_caps as caps

FORMAT: Final = 1
#: A page ends after an entry whose boundary hash is below 2^32 / FANOUT: ~FANOUT items a page.
FANOUT: Final = 512
#: Keys of the boundary hashes; each level has its own so boundaries differ between levels.
_LEVEL_KEY = tuple(
    _blake3.blake3(f"syncengine manifest page boundary level {i}".encode()).digest() for i in range(16)
)
_THRESHOLD: Final = (1 << 32) // FANOUT
_EMPTY_DIGEST: Final = _blake3.blake3(b"").digest()


class ManifestError(SyncEngineError):
    """A manifest or one of its pages is malformed or does not match its name."""


#: Keys of a reference's `extra` spelled otherwise before: old → current (W&B's names, so
#: `entry.extra["versionID"]` works as in W&B scripts). Readers (`ManifestReader`) give the
#: current names; stored pages keep their bytes, and the reference digest is computed over the
#: old spelling whichever is stored (docs/FORMAT.md "References").
RENAMED_EXTRA: Final = {"version_id": "versionID"}


class ManifestEntry(msgspec.Struct, array_like=True, frozen=True):
    """One file of a version.

    `chunks` lists (length, BLAKE3) of each chunk for files larger than the repository's
    small-file limit and is empty for small files, which are one blob named `digest`.
    `ref` is set for references to external objects (then no blob is stored) and `extra`
    holds their metadata (ETag, VersionId, ...).
    """

    path: str
    size: int
    mode: int
    digest: bytes
    chunks: tuple[tuple[int, bytes], ...] = ()
    ref: str | None = None
    extra: dict[str, str | int] | None = None


def current_names(e: ManifestEntry) -> ManifestEntry:
    """``e`` with the current names of its `extra` keys (the same object if they are)."""
    extra = e.extra
    if not extra or not any(k in extra for k in RENAMED_EXTRA):
        return e
    renamed = {RENAMED_EXTRA.get(k, k): v for k, v in extra.items()}
    return msgspec.structs.replace(e, extra=renamed)


class PageRef(msgspec.Struct, array_like=True, frozen=True):
    """A child of an interior page: the subtree's first path, page id, entry count and bytes."""

    first: str
    page: bytes
    entries: int
    size: int


class Page(msgspec.Struct, array_like=True, frozen=True, tag_field="kind", tag="page"):
    """Level 0 holds `ManifestEntry`s, higher levels `PageRef`s (stored as `refs`)."""

    format: int
    level: int
    entries: tuple[ManifestEntry, ...] = ()
    refs: tuple[PageRef, ...] = ()


class Manifest(msgspec.Struct, frozen=True):
    """The small record a version points at."""

    format: int
    root: bytes
    height: int
    entries: int
    size: int
    content_digest: bytes  # TreeDigest over (path, digest): equal content ⇔ equal digest


_encode = msgspec.msgpack.Encoder(order="deterministic").encode
_page_decoder = msgspec.msgpack.Decoder(Page)
_manifest_decoder = msgspec.msgpack.Decoder(Manifest)


def page_id(data: bytes) -> bytes:
    return _blake3.blake3(data).digest()


def encode_page(page: Page) -> tuple[bytes, bytes]:
    """(id, bytes) of a page; ``ConfigError`` for one larger than readers accept (64 MiB: a
    file of ~1.7 million chunks, ``object_caps``)."""
    data = caps.writable("a manifest page", _encode(page), caps.MANIFEST_PAGE)
    return page_id(data), data


def decode_page(pid: bytes, data: bytes) -> Page:
    """Parses a page and checks that its bytes are the ones its id names."""
    if page_id(data) != pid:
        raise ManifestError(f"manifest page {pid.hex()} is corrupt (its content does not match its name)")
    try:
        return _page_decoder.decode(data)
    except msgspec.DecodeError as e:
        raise ManifestError(f"manifest page {pid.hex()} cannot be read: {e}") from e


class UnsafePath(ManifestError, ValueError):
    """A manifest path would escape the download root (absolute, `..`, empty parts, NUL)."""


def check_path(path: str) -> list[str]:
    """The parts of a manifest path; ``UnsafePath`` unless it is relative and plain (the one
    rule for get, checkout, verify, check and drafts)."""
    parts = path.split("/")
    if (
        not path
        or path.startswith("/")
        or any(p in ("", ".", "..") for p in parts)
        or "\x00" in path
        or (os.sep != "/" and os.sep in path)
        or (os.altsep is not None and os.altsep != "/" and os.altsep in path)
    ):
        raise UnsafePath(f"manifest path {path!r} is absolute or contains '..'/empty parts; refused")
    return parts


def check_entry(e: ManifestEntry) -> None:
    """An entry whose sizes and digests agree: then blobs that match their digests can only
    assemble into a file with the entry's digest."""
    if e.size < 0:
        raise ManifestError(f"{e.path}: manifest entry has a negative size")
    if e.chunks:
        if sum(n for n, _ in e.chunks) != e.size or any(n <= 0 for n, _ in e.chunks):
            raise ManifestError(f"{e.path}: manifest entry's chunk lengths do not add up to its size")
        if file_digest_from_chunks(Chunk(0, n, d) for n, d in e.chunks) != e.digest:
            raise ManifestError(f"{e.path}: manifest entry's chunk list does not give its digest")
    elif e.size == 0 and e.digest != _EMPTY_DIGEST:
        raise ManifestError(f"{e.path}: manifest entry of an empty file has another digest")


def check_page(pid: bytes, page: Page, level: int, first: str | None) -> None:
    """The shape every writer gives a page: the `level` its parent expects, keys strictly
    increasing within it, interior pages not empty, and its first key the one its parent's
    ref names (`first`; None for the root). With the order checked across pages as a
    reader walks, no page can appear twice in one tree: a repeated child (three tiny pages
    naming each other K times expand to K^height entries) is refused at its first repeat."""
    where = f"manifest page {pid.hex()}"
    if page.level != level:
        raise ManifestError(f"{where}: level {page.level} where level {level} belongs")
    if level == 0:
        keys = [e.path.encode() for e in page.entries]
        if page.refs or (not keys and first is not None):
            raise ManifestError(f"{where}: a leaf page must hold entries only, and some")
    else:
        keys = [r.first.encode() for r in page.refs]
        if page.entries or not keys:
            raise ManifestError(f"{where}: an interior page must hold refs only, and some")
    if any(a >= b for a, b in itertools.pairwise(keys)):
        raise ManifestError(f"{where}: keys out of order or repeated")
    if first is not None and keys[0] != first.encode():
        raise ManifestError(f"{where}: starts at {keys[0]!r}, its parent says {first!r}")


def encode_manifest(m: Manifest) -> bytes:
    return _encode(m)


def decode_manifest(data: bytes) -> Manifest:
    try:
        return _manifest_decoder.decode(data)
    except msgspec.DecodeError as e:
        raise ManifestError(f"manifest record cannot be read: {e}") from e


def _ends_page(level: int, key: str) -> bool:
    h = _blake3.blake3(key.encode(), key=_LEVEL_KEY[level]).digest()
    return int.from_bytes(h[:4], "little") < _THRESHOLD


class ManifestBuilder:
    """Builds the page tree from entries added in strictly increasing path order.

    `add` returns pages completed so far (to be stored), `finish` the rest and the manifest.
    Memory: one open leaf page plus the refs of the levels above (~1/FANOUT of the entries).

    >>> b = ManifestBuilder()
    >>> _ = b.add(ManifestEntry("a.txt", 1, 0o644, bytes(32)))
    >>> pages, m = b.finish()
    >>> (m.entries, m.height, len(pages))
    (1, 1, 1)
    """

    def __init__(self) -> None:
        self._leaf: list[ManifestEntry] = []
        self._upper: list[list[PageRef]] = []  # _upper[k] holds refs of level k + 1
        self._last: str | None = None
        self._tree = TreeDigest()
        self._entries = 0
        self._size = 0

    def add(self, entry: ManifestEntry) -> list[tuple[bytes, bytes]]:
        if self._last is not None and entry.path.encode() <= self._last.encode():
            raise ManifestError(
                f"manifest entries out of order or repeated: {entry.path!r} after {self._last!r}"
            )
        self._last = entry.path
        self._tree.add(entry.path, entry.digest)
        self._entries += 1
        self._size += entry.size
        out: list[tuple[bytes, bytes]] = []
        self._leaf.append(entry)
        if _ends_page(0, entry.path):
            self._close(0, out)
        return out

    def _close(self, level: int, out: list[tuple[bytes, bytes]]) -> None:
        """Writes the open page of `level` and adds its ref one level up."""
        if level == 0:
            if not self._leaf:
                return
            leaf = tuple(self._leaf)
            page = Page(FORMAT, 0, entries=leaf)
            ref_fields = (leaf[0].path, len(leaf), sum(e.size for e in leaf))
            self._leaf.clear()
        else:
            refs = self._upper[level - 1]
            if not refs:
                return
            page = Page(FORMAT, level, refs=tuple(refs))
            ref_fields = (refs[0].first, sum(r.entries for r in refs), sum(r.size for r in refs))
            refs.clear()
        pid, data = encode_page(page)
        out.append((pid, data))
        if len(self._upper) == level:
            self._upper.append([])
        first, count, size = ref_fields
        self._upper[level].append(PageRef(first, pid, count, size))
        if _ends_page(level + 1, first):
            self._close(level + 1, out)

    def finish(self) -> tuple[list[tuple[bytes, bytes]], Manifest]:
        """Closes every open page; the root is the single page left at the top."""
        out: list[tuple[bytes, bytes]] = []
        if self._entries == 0:
            pid, data = encode_page(Page(FORMAT, 0))
            return [(pid, data)], Manifest(FORMAT, pid, 1, 0, 0, self._tree.digest())
        self._close(0, out)
        level = 1
        while True:
            refs = self._upper[level - 1]
            above = any(self._upper[level:])
            if len(refs) == 1 and not above:
                return out, Manifest(
                    FORMAT, refs[0].page, level, self._entries, self._size, self._tree.digest()
                )
            self._close(level, out)
            level += 1


PageLoader = Callable[[bytes], Awaitable[bytes]]


class ManifestReader:
    """Reads a manifest's entries through `load(page_id) -> bytes` (any store)."""

    def __init__(self, manifest: Manifest, load: PageLoader) -> None:
        self.manifest = manifest
        self._load = load

    async def page(self, pid: bytes, level: int | None = None, first: str | None = None) -> Page:
        """A page, checked against its name and, given the `level` (and `first` key) its
        parent expects, against the shape writers give pages (`check_page`)."""
        page = decode_page(pid, await self._load(pid))
        if level is not None:
            check_page(pid, page, level, first)
        return page

    async def entries(self, prefix: str = "") -> AsyncIterator[ManifestEntry]:
        """Every entry in strictly increasing path order (only subtrees that can hold `prefix`
        are read); a tree out of order, with a repeated page or (read whole) with another
        entry count than its manifest states raises `ManifestError` (every reader: get,
        check, ls, diff, gc)."""
        m = self.manifest
        if not 1 <= m.height <= len(_LEVEL_KEY):
            raise ManifestError(f"manifest height {m.height} is out of range")
        stack: list[tuple[bytes, int, str | None]] = [(m.root, m.height - 1, None)]
        last: bytes | None = None
        count = 0
        tree = TreeDigest() if not prefix else None
        while stack:
            pid, level, first = stack.pop()
            page = await self.page(pid, level, first)
            if level == 0:
                entries = page.entries
                if not entries:
                    continue  # only an empty root: check_page refuses any other empty leaf
                # Within the page check_page saw the order; across pages, each leaf must
                # start after the last key of the one before.
                if last is not None and entries[0].path.encode() <= last:
                    raise ManifestError(f"manifest entries out of order or repeated: {entries[0].path!r}")
                last = entries[-1].path.encode()
                count += len(entries)
                if tree is not None:
                    tree.add_many((e.path, e.digest) for e in entries)
                for e in entries:
                    if e.path.startswith(prefix):
                        yield e if e.extra is None else current_names(e)
                continue
            refs = page.refs
            keep = [
                (r.page, level - 1, r.first)
                for i, r in enumerate(refs)
                if not prefix or _may_hold(prefix, r.first, refs[i + 1].first if i + 1 < len(refs) else None)
            ]
            stack.extend(reversed(keep))
        if not prefix and count != m.entries:
            raise ManifestError(f"manifest states {m.entries} entries, its pages hold {count}")
        if tree is not None and tree.digest() != m.content_digest:
            raise ManifestError("manifest's content digest does not match its entries")

    async def get(self, path: str) -> ManifestEntry | None:
        """One entry by path, reading one page per level."""
        pid = self.manifest.root
        key = path.encode()
        while True:
            page = await self.page(pid)
            if page.level == 0:
                for e in page.entries:
                    if e.path == path:
                        return current_names(e)
                return None
            chosen = None
            for r in page.refs:
                if r.first.encode() <= key:
                    chosen = r.page
                else:
                    break
            if chosen is None:
                return None
            pid = chosen


def _may_hold(prefix: str, first: str, next_first: str | None) -> bool:
    """Can a subtree holding paths in [first, next_first) contain a path starting with prefix?"""
    p = prefix.encode()
    if next_first is not None and next_first.encode() <= p:
        return False
    return not (first.encode() > p and not first.startswith(prefix))


class Change(msgspec.Struct, frozen=True):
    """One difference between two manifests: `old` None = added, `new` None = removed."""

    path: str
    old: ManifestEntry | None
    new: ManifestEntry | None


async def diff(a: ManifestReader, b: ManifestReader) -> list[Change]:
    """Entries that differ between two manifests, in path order, reading only pages that are
    not shared by both trees (a shared page id means an identical subtree)."""
    if a.manifest.root == b.manifest.root:
        return []
    for m in (a.manifest, b.manifest):
        if not 1 <= m.height <= len(_LEVEL_KEY):
            raise ManifestError(f"manifest height {m.height} is out of range")
    side_a: list[tuple[int, bytes]] = [(a.manifest.height - 1, a.manifest.root)]
    side_b: list[tuple[int, bytes]] = [(b.manifest.height - 1, b.manifest.root)]
    loaded: dict[bytes, Page] = {}
    while True:
        shared = {p for _, p in side_a} & {p for _, p in side_b}
        side_a = [x for x in side_a if x[1] not in shared]
        side_b = [x for x in side_b if x[1] not in shared]
        top = max((lv for lv, _ in side_a + side_b), default=0)
        if top == 0:
            break
        side_a = await _expand(a, side_a, top, loaded)
        side_b = await _expand(b, side_b, top, loaded)
    old = await _leaf_entries(a, side_a, loaded)
    new = await _leaf_entries(b, side_b, loaded)
    return _compare(old, new)


async def _expand(
    r: ManifestReader, side: list[tuple[int, bytes]], level: int, loaded: dict[bytes, Page]
) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    for lv, pid in side:
        if lv < level:
            out.append((lv, pid))
            continue
        page = loaded.get(pid) or await r.page(pid, lv)
        out.extend((lv - 1, ref.page) for ref in page.refs)
    seen: set[bytes] = set()
    for _, pid in out:  # no page appears twice in one well-formed tree
        if pid in seen:
            raise ManifestError(f"manifest page {pid.hex()} is named twice in one tree")
        seen.add(pid)
    return out


async def _leaf_entries(
    r: ManifestReader, side: list[tuple[int, bytes]], loaded: dict[bytes, Page]
) -> list[ManifestEntry]:
    out: list[ManifestEntry] = []
    for lv, pid in side:
        page = loaded.get(pid) or await r.page(pid, lv)
        out.extend(page.entries)
    out.sort(key=lambda e: e.path.encode())
    if any(x.path == y.path for x, y in itertools.pairwise(out)):
        raise ManifestError("manifest entries repeated")
    return out


def _compare(old: Iterable[ManifestEntry], new: Iterable[ManifestEntry]) -> list[Change]:
    merged = heapq.merge(((e.path.encode(), 0, e) for e in old), ((e.path.encode(), 1, e) for e in new))
    changes: list[Change] = []
    pending: ManifestEntry | None = None
    for _, side, e in merged:
        if side == 0:
            if pending is not None:
                changes.append(Change(pending.path, pending, None))
            pending = e
        elif pending is not None and pending.path == e.path:
            if pending != e:
                changes.append(Change(e.path, pending, e))
            pending = None
        else:
            if pending is not None:
                changes.append(Change(pending.path, pending, None))
                pending = None
            changes.append(Change(e.path, None, e))
    if pending is not None:
        changes.append(Change(pending.path, pending, None))
    return changes
