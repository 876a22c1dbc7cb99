"""Incremental manifests: the next version's page tree from its base's plus changes, reusing untouched pages.

A manifest's page tree is a pure function of its sorted entry list (page boundaries depend on
paths only, FORMAT.md), so the tree of "base + changes" can be built by re-splitting only the
pages the changes fall into and keeping the ids of all others: the result is byte-identical
to building the whole list from scratch (property-tested against `ManifestBuilder`), and the
pages written are one leaf page per changed region plus one page per level above it.

What is read: every interior page (1/512 of the entries, held in memory, like the builder's
upper levels) and every leaf page, streamed with a bounded number of loads in flight. The
leaves are read because the manifest's content digest is a linear hash over all (path,
digest) pairs; they are checked against their ids and hashed, never re-encoded.

This module does no I/O of its own: pages come through the reader's loader.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import itertools
from collections.abc import AsyncIterator, Collection, Sequence

from syncengine.errors import ConfigError
from syncengine.hashing.digests import TreeDigest
from syncengine.repo.manifest import (
    FORMAT,
    Manifest,
    ManifestEntry,
    ManifestError,
    ManifestReader,
    Page,
    PageRef,
    _ends_page,
    encode_page,
)

#: Leaf pages loaded ahead of the one being merged (requests in flight on a remote store).
LOAD_AHEAD = 32

Pages = list[tuple[bytes, bytes]]


def covered(path: str, targets: Collection[str]) -> bool:
    """Is `path` one of `targets` or under a folder named by one of them?"""
    if not targets:
        return False
    if path in targets:
        return True
    i = path.find("/")
    while i != -1:
        if path[:i] in targets:
            return True
        i = path.find("/", i + 1)
    return False


async def patch_manifest(
    reader: ManifestReader,
    upserts: Sequence[ManifestEntry],
    removals: Collection[str] = (),
) -> tuple[Pages, Manifest]:
    """The pages to store and the manifest of `reader`'s entries with every entry at or under
    a path in `removals` dropped and then `upserts` (strictly increasing paths) added,
    replacing entries of the same path. Pages the base already has are not returned."""
    for a, b in itertools.pairwise(upserts):
        if a.path.encode() >= b.path.encode():
            raise ManifestError(f"draft entries out of order or repeated: {b.path!r} after {a.path!r}")
    old_levels, kids = await _interior(reader)
    known = {r.page for level in old_levels for r in level}
    written: dict[bytes, bytes] = {}

    def store(page: Page) -> bytes:
        pid, data = encode_page(page)
        if pid not in known:
            written.setdefault(pid, data)
        return pid

    leaves = old_levels[0]
    firsts = [r.first.encode() for r in leaves]

    def page_of(key: bytes) -> int:
        return max(bisect.bisect_right(firsts, key) - 1, 0)

    changes: dict[int, list[ManifestEntry]] = collections.defaultdict(list)
    for e in upserts:
        changes[page_of(e.path.encode())].append(e)
    dirty = set(changes)
    # A path must not be a file and a folder at once. Such a pair involving an upserted path
    # has its other end where the upsert's folder would start or at one of its parent
    # folders: those pages are merged too, so the check in the merge below sees both ends.
    parents: set[str] = set()
    for e in upserts:
        folder = (e.path + "/").encode()
        k = page_of(folder)
        dirty.add(k)
        if k + 1 < len(firsts) and firsts[k + 1].startswith(folder):
            dirty.add(k + 1)  # the folder's first entry opens the next page
        i = e.path.find("/")
        while i != -1:
            parents.add(e.path[:i])
            i = e.path.find("/", i + 1)
    dirty.update(page_of(p.encode()) for p in parents)
    chain: list[bytes] = []  # merged paths so far, each a string prefix of the next
    removals = set(removals)
    for t in removals:
        dirty.add(page_of(t.encode()))  # the file itself
        lo, hi = (t + "/").encode(), (t + "0").encode()  # "0" follows "/": [lo, hi) is the folder
        dirty.update(range(page_of(lo), max(page_of(lo), bisect.bisect_left(firsts, hi) - 1) + 1))

    tree = TreeDigest()
    new_leaves: list[PageRef] = []
    carry: list[ManifestEntry] = []

    def close_leaf() -> None:
        leaf = tuple(carry)
        carry.clear()
        pid = store(Page(FORMAT, 0, entries=leaf))
        new_leaves.append(PageRef(leaf[0].path, pid, len(leaf), sum(e.size for e in leaf)))

    i = 0
    async for page in _stream(reader, [r.page for r in leaves]):
        if not carry and i not in dirty:
            if page.entries:  # (the empty manifest's one page is no page of a longer list)
                # untouched, and it still starts a page: reused as is (a one-page base's root
                # ref has no first path yet: take it from the page)
                r = leaves[i]
                new_leaves.append(PageRef(page.entries[0].path, r.page, r.entries, r.size))
            tree.add_many((e.path, e.digest) for e in page.entries)
        else:
            kept = (e for e in page.entries if not covered(e.path, removals))
            merged = _merge(kept, changes.get(i, ()))
            _check_file_folder(merged, chain)
            tree.add_many((e.path, e.digest) for e in merged)
            for e in merged:
                carry.append(e)
                if _ends_page(0, e.path):
                    close_leaf()
        i += 1
    if carry:
        close_leaf()
    if not new_leaves:  # everything removed: the empty manifest
        pid = store(Page(FORMAT, 0))
        return list(written.items()), Manifest(FORMAT, pid, 1, 0, 0, tree.digest())

    # As ManifestBuilder does: a level of one page is the root unless that page's first path
    # is a boundary one level up (the builder's cascade then closed a parent page over it).
    level, items = 1, new_leaves
    while len(items) > 1 or _ends_page(level, items[0].first):
        old = old_levels[level] if level < len(old_levels) else []
        items = _paginate(level, items, old, kids, store)
        level += 1
    entries = sum(r.entries for r in new_leaves)
    size = sum(r.size for r in new_leaves)
    return list(written.items()), Manifest(FORMAT, items[0].page, level, entries, size, tree.digest())


class FileFolderConflict(ConfigError):
    """The patched manifest would hold a file and, under the same path, a folder."""

    def __init__(self, file: str, inner: str) -> None:
        super().__init__(f"{file!r} would be both a file and a folder (with {inner!r} under it)")
        self.file = file
        self.inner = inner


def _check_file_folder(entries: Sequence[ManifestEntry], chain: list[bytes]) -> None:
    """`FileFolderConflict` when a path of `entries` lies under an earlier one. `chain` holds
    the paths seen so far that are string prefixes of one another; in path order every path
    between `p` and `p/x` starts with `p`, so `p` is still in `chain` when `p/x` comes, even
    across entries the caller skipped."""
    for e in entries:
        key = e.path.encode()
        while chain and not key.startswith(chain[-1]):
            chain.pop()
        if chain and key[len(chain[-1]) : len(chain[-1]) + 1] == b"/":
            raise FileFolderConflict(chain[-1].decode(), e.path)
        chain.append(key)


async def _interior(reader: ManifestReader) -> tuple[list[list[PageRef]], dict[bytes, tuple[PageRef, ...]]]:
    """The refs of every page, level by level (index 0: the leaves), and each interior
    page's children. Pages of one level load concurrently."""
    m = reader.manifest
    levels: list[list[PageRef]] = [[] for _ in range(m.height)]
    kids: dict[bytes, tuple[PageRef, ...]] = {}
    root = PageRef("", m.root, m.entries, m.size)
    levels[m.height - 1] = [root]
    for level in range(m.height - 1, 0, -1):
        pages = await asyncio.gather(*(reader.page(r.page) for r in levels[level]))
        for r, page in zip(levels[level], pages, strict=True):
            if page.level != level or not page.refs:
                raise ManifestError(f"manifest page {r.page.hex()} is not an interior page of level {level}")
            kids[r.page] = page.refs
            levels[level - 1].extend(page.refs)
        if level == m.height - 1:  # the root's first path is its first child's
            levels[level] = [PageRef(page.refs[0].first, m.root, m.entries, m.size)]
    return levels, kids


async def _stream(reader: ManifestReader, ids: list[bytes]) -> AsyncIterator[Page]:
    """The pages `ids` in order, up to LOAD_AHEAD loading at once."""
    pending: collections.deque[asyncio.Task[Page]] = collections.deque()
    it = iter(ids)
    try:
        for pid in it:
            pending.append(asyncio.ensure_future(reader.page(pid)))
            if len(pending) >= LOAD_AHEAD:
                break
        while pending:
            page = await pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(asyncio.ensure_future(reader.page(nxt)))
            if page.level != 0:
                raise ManifestError("manifest tree is malformed: a leaf position holds an interior page")
            yield page
    finally:
        for t in pending:
            t.cancel()


def _merge(old: collections.abc.Iterable[ManifestEntry], new: Sequence[ManifestEntry]) -> list[ManifestEntry]:
    """Both sorted by path bytes; an entry of `new` replaces the `old` one of its path."""
    out: list[ManifestEntry] = []
    j = 0
    for e in old:
        key = e.path.encode()
        while j < len(new) and new[j].path.encode() < key:
            out.append(new[j])
            j += 1
        if j < len(new) and new[j].path == e.path:
            out.append(new[j])
            j += 1
        else:
            out.append(e)
    out.extend(new[j:])
    return out


def _paginate(
    level: int,
    items: list[PageRef],
    old: list[PageRef],
    kids: dict[bytes, tuple[PageRef, ...]],
    store: collections.abc.Callable[[Page], bytes],
) -> list[PageRef]:
    """Groups `items` (refs of level - 1 pages) into pages of `level`: an old page whose
    children appear unchanged where a page starts is kept; the rest is split afresh."""
    by_first = {r.first: r for r in old}
    out: list[PageRef] = []
    carry: list[PageRef] = []

    def close() -> None:
        refs = tuple(carry)
        carry.clear()
        pid = store(Page(FORMAT, level, refs=refs))
        out.append(PageRef(refs[0].first, pid, sum(r.entries for r in refs), sum(r.size for r in refs)))

    i, n = 0, len(items)
    while i < n:
        if not carry:
            hit = by_first.get(items[i].first)
            if hit is not None:
                children = kids[hit.page]
                m = len(children)
                closed = i + m == n or _ends_page(level, children[-1].first)
                if closed and tuple(items[i : i + m]) == children:
                    out.append(PageRef(children[0].first, hit.page, hit.entries, hit.size))
                    i += m
                    continue
        carry.append(items[i])
        i += 1
        if _ends_page(level, carry[-1].first):
            close()
    if carry:
        close()
    return out
