"""Manifest page trees: O(changed) writes, exact diffs that read only differing pages."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncengine.hashing.digests import TreeDigest
from syncengine.repo.manifest import (
    Change,
    ManifestBuilder,
    ManifestEntry,
    ManifestError,
    ManifestReader,
    decode_page,
    diff,
)


def build(entries: Iterable[ManifestEntry]) -> tuple[dict[bytes, bytes], object]:
    b = ManifestBuilder()
    pages: dict[bytes, bytes] = {}
    for e in sorted(entries, key=lambda e: e.path.encode()):
        pages.update(b.add(e))
    out, m = b.finish()
    pages.update(out)
    return pages, m


def entry(path: str, tag: int = 0, size: int = 1) -> ManifestEntry:
    return ManifestEntry(path, size, 0o644, tag.to_bytes(32, "little"))


class Store:
    def __init__(self, *page_sets: dict[bytes, bytes]) -> None:
        self.pages = {k: v for s in page_sets for k, v in s.items()}
        self.loads = 0

    async def load(self, pid: bytes) -> bytes:
        self.loads += 1
        return self.pages[pid]


def read_all(m: object, store: Store, prefix: str = "") -> list[ManifestEntry]:
    async def go() -> list[ManifestEntry]:
        return [e async for e in ManifestReader(m, store.load).entries(prefix)]  # type: ignore[arg-type]

    return asyncio.run(go())


def test_round_trip_and_content_digest() -> None:
    entries = [entry(f"dir{i % 13}/file{i:05d}.bin", i, i) for i in range(5000)]
    pages, m = build(entries)
    got = read_all(m, Store(pages))
    assert got == sorted(entries, key=lambda e: e.path.encode())
    tree = TreeDigest()
    for e in got:
        tree.add(e.path, e.digest)
    assert m.content_digest == tree.digest()  # type: ignore[attr-defined]
    assert m.entries == 5000 and m.size == sum(range(5000))  # type: ignore[attr-defined]


def test_one_changed_file_writes_o_changed_bytes() -> None:
    n = 100_000
    base = [entry(f"d{i // 1000:03d}/f{i:06d}", 0) for i in range(n)]
    pages1, _m1 = build(base)
    changed = list(base)
    changed[54_321] = entry(changed[54_321].path, 1)
    pages2, m2 = build(changed)
    new = set(pages2) - set(pages1)
    new_bytes = sum(len(pages2[p]) for p in new)
    total = sum(len(v) for v in pages1.values())
    assert len(new) == m2.height  # type: ignore[attr-defined]  # one page per level
    assert new_bytes < total / 50


def test_diff_reads_only_differing_pages() -> None:
    base = [entry(f"d{i // 1000:03d}/f{i:06d}") for i in range(100_000)]
    pages1, m1 = build(base)
    changed = [*base[:500], *base[501:], entry("zz-new")]
    changed[70_000] = entry(changed[70_000].path, 7)
    pages2, m2 = build(changed)
    store = Store(pages1, pages2)
    changes = asyncio.run(diff(ManifestReader(m1, store.load), ManifestReader(m2, store.load)))  # type: ignore[arg-type]
    assert [(c.path, c.old is None, c.new is None) for c in changes] == [
        (base[500].path, False, True),
        (changed[70_000].path, False, False),
        ("zz-new", True, False),
    ]
    assert store.loads <= 4 * m2.height  # type: ignore[attr-defined]
    assert asyncio.run(diff(ManifestReader(m1, store.load), ManifestReader(m1, store.load))) == []  # type: ignore[arg-type]


paths = st.lists(
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=12),
    unique=True,
    max_size=400,
)


@settings(max_examples=80, deadline=None)
@given(a=paths, b=paths, tags=st.lists(st.integers(0, 3), min_size=800, max_size=800))
def test_diff_property_equals_naive(a: list[str], b: list[str], tags: list[int]) -> None:
    ea = [entry(p, tags[i]) for i, p in enumerate(a)]
    eb = [entry(p, tags[400 + i]) for i, p in enumerate(b)]
    pa, ma = build(ea)
    pb, mb = build(eb)
    store = Store(pa, pb)
    got = asyncio.run(diff(ManifestReader(ma, store.load), ManifestReader(mb, store.load)))  # type: ignore[arg-type]
    da = {e.path: e for e in ea}
    db = {e.path: e for e in eb}
    want = [
        Change(p, da.get(p), db.get(p))
        for p in sorted(da.keys() | db.keys(), key=str.encode)
        if da.get(p) != db.get(p)
    ]
    assert got == want
    assert read_all(mb, store) == sorted(eb, key=lambda e: e.path.encode())


@settings(max_examples=40, deadline=None)
@given(a=paths, prefix=st.text(max_size=3))
def test_prefix_listing_property(a: list[str], prefix: str) -> None:
    pages, m = build([entry(p) for p in a])
    got = [e.path for e in read_all(m, Store(pages), prefix)]
    assert got == sorted((p for p in a if p.startswith(prefix)), key=str.encode)


def test_get_one_entry_and_missing() -> None:
    pages, m = build([entry(f"f{i:05d}", i) for i in range(3000)])
    reader = ManifestReader(m, Store(pages).load)  # type: ignore[arg-type]
    assert asyncio.run(reader.get("f01234")) == entry("f01234", 1234)
    assert asyncio.run(reader.get("f99999")) is None
    assert asyncio.run(reader.get("")) is None


def test_out_of_order_entries_are_refused() -> None:
    b = ManifestBuilder()
    b.add(entry("b"))
    with pytest.raises(ManifestError, match="out of order"):
        b.add(entry("a"))
    with pytest.raises(ManifestError, match="out of order"):
        b.add(entry("b"))


def test_corrupt_page_is_named() -> None:
    pages, _m = build([entry("a")])
    pid = next(iter(pages))
    with pytest.raises(ManifestError, match=pid.hex()):
        decode_page(pid, pages[pid][:-1] + b"\x00")


def test_empty_manifest() -> None:
    pages, m = build([])
    assert read_all(m, Store(pages)) == []
    assert m.entries == 0  # type: ignore[attr-defined]
