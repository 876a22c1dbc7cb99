"""Incremental manifests: base + changes gives the very tree a full build gives, writing only new pages."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import blake3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncengine.hashing.digests import TreeDigest
from syncengine.repo import manifest
from syncengine.repo.manifest import ManifestBuilder, ManifestEntry, ManifestReader
from syncengine.repo.manifest_patch import FileFolderConflict, covered, patch_manifest


def entry(path: str, content: str = "") -> ManifestEntry:
    return ManifestEntry(path, len(content), 0o644, blake3.blake3((path + content).encode()).digest())


def build(entries: list[ManifestEntry], pages: dict[bytes, bytes]) -> manifest.Manifest:
    b = ManifestBuilder()
    for e in entries:
        pages.update(b.add(e))
    rest, m = b.finish()
    pages.update(rest)
    return m


def expected(
    base: list[ManifestEntry], upserts: list[ManifestEntry], removals: set[str]
) -> list[ManifestEntry]:
    kept = {e.path: e for e in base if not covered(e.path, removals)}
    kept.update({e.path: e for e in upserts})
    return [kept[p] for p in sorted(kept, key=str.encode)]


def patch(
    pages: dict[bytes, bytes], m: manifest.Manifest, upserts: list[ManifestEntry], removals: set[str]
) -> tuple[list[tuple[bytes, bytes]], manifest.Manifest]:
    async def load(pid: bytes) -> bytes:
        return pages[pid]

    return asyncio.run(patch_manifest(ManifestReader(m, load), upserts, removals))


@pytest.fixture
def small_pages(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """About 4 items a page, so a few hundred entries make trees of 3–5 levels (the same
    setting for every example, so one fixture for all of them is right)."""
    monkeypatch.setattr(manifest, "_THRESHOLD", (1 << 32) // 4)
    yield


names = st.sampled_from(["a", "b", "c", "a/b", "d"]).flatmap(
    lambda top: st.integers(0, 400).map(lambda i: f"{top}/{i:03d}")
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    base=st.sets(names, max_size=300),
    added=st.sets(names, max_size=20),
    removed=st.sets(st.one_of(names, st.sampled_from(["a", "b", "a/b", "c/1", "zz"])), max_size=6),
    content=st.text(max_size=3),
)
def test_patch_equals_full_build(
    small_pages: None, base: set[str], added: set[str], removed: set[str], content: str
) -> None:
    base_entries = [entry(p) for p in sorted(base, key=str.encode)]
    upserts = [entry(p, content + "new") for p in sorted(added, key=str.encode)]
    pages: dict[bytes, bytes] = {}
    m = build(base_entries, pages)
    new_pages, patched = patch(pages, m, upserts, removed)
    want_pages: dict[bytes, bytes] = {}
    want = build(expected(base_entries, upserts, removed), want_pages)
    assert patched == want  # same root, height, counts and content digest
    assert set(dict(new_pages)) == set(want_pages) - set(pages)  # exactly the pages the base lacks
    pages.update(new_pages)

    async def entries() -> list[ManifestEntry]:
        async def load(pid: bytes) -> bytes:
            return pages[pid]

        return [e async for e in ManifestReader(patched, load).entries()]

    assert asyncio.run(entries()) == expected(base_entries, upserts, removed)


def test_one_change_writes_one_page_per_level() -> None:
    base = [entry(f"d{i // 1000:03d}/f{i:06d}") for i in range(20_000)]
    pages: dict[bytes, bytes] = {}
    m = build(base, pages)
    new_pages, patched = patch(pages, m, [entry("d007/f007500", "changed")], set())
    assert patched.height == m.height == 2
    assert len(new_pages) == 2  # the leaf holding the file and the root
    assert patched.entries == m.entries


def test_no_change_is_the_base() -> None:
    pages: dict[bytes, bytes] = {}
    m = build([entry(f"f{i:05d}") for i in range(3000)], pages)
    new_pages, patched = patch(pages, m, [], set())
    assert (new_pages, patched) == ([], m)


def test_remove_everything_gives_the_empty_manifest() -> None:
    pages: dict[bytes, bytes] = {}
    m = build([entry(f"x/f{i:05d}") for i in range(2000)], pages)
    _, patched = patch(pages, m, [], {"x"})
    assert patched == build([], {})


def test_covered() -> None:
    assert covered("a/b/c", {"a/b"}) and covered("a", {"a"})
    assert not covered("a/bc", {"a/b"}) and not covered("ab", {"a"})


@given(st.lists(st.tuples(st.text(max_size=8), st.binary(min_size=32, max_size=32)), max_size=20))
def test_tree_digest_add_many_is_add_one_by_one(pairs: list[tuple[str, bytes]]) -> None:
    pairs = [(p.encode("utf-8", "replace").decode(), d) for p, d in pairs]
    one, many = TreeDigest(), TreeDigest()
    for p, d in pairs:
        one.add(p, d)
    many.add_many(pairs)
    assert (one.digest(), one.count) == (many.digest(), many.count)


def _file_folder_pair(paths: list[str]) -> bool:
    files = set(paths)
    return any(p[:i] in files for p in paths for i in range(len(p)) if p[i] == "/")


#: Paths where files and folders collide: `a` and `a/1`, `a-1` sorting between them, `a.b/…`.
clashing = st.sampled_from(["a", "a/1", "a/1/x", "a-1", "a.b", "a.b/2", "b", "b/3", "c"]).flatmap(
    lambda p: st.one_of(st.just(p), st.integers(0, 60).map(lambda i: f"{p}/{i:02d}"))
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    base=st.sets(clashing, max_size=120),
    added=st.sets(clashing, max_size=8),
    removed=st.sets(clashing, max_size=3),
)
def test_file_and_folder_at_one_path_is_refused_exactly_when_the_result_has_one(
    small_pages: None, base: set[str], added: set[str], removed: set[str]
) -> None:
    # A valid base (what a put or an earlier draft gives): drop the files that clash.
    base = {p for p in base if not any(q.startswith(p + "/") for q in base)}
    base_entries = [entry(p) for p in sorted(base, key=str.encode)]
    upserts = [entry(p, "new") for p in sorted(added, key=str.encode)]
    pages: dict[bytes, bytes] = {}
    m = build(base_entries, pages)
    result = expected(base_entries, upserts, removed)
    if _file_folder_pair([e.path for e in result]):
        with pytest.raises(FileFolderConflict) as info:
            patch(pages, m, upserts, removed)
        assert info.value.inner.startswith(info.value.file + "/")
    else:
        assert patch(pages, m, upserts, removed)[1] == build(result, {})


def test_a_clash_with_a_folder_pages_away_is_found(small_pages: None) -> None:
    """The other end of the clash sits on a page the change does not touch: `a` (added) is
    pages before `a/1/…` (the base), with `a-1/…` between; `a-1/00/q` (added) under the base's
    file `a-1/00`."""
    paths = [f"a-1/{i:02d}" for i in range(40)] + [f"a/1/{i:02d}" for i in range(40)] + ["c"]
    pages: dict[bytes, bytes] = {}
    m = build([entry(p) for p in sorted(paths, key=str.encode)], pages)
    assert m.height >= 3
    with pytest.raises(FileFolderConflict, match="'a' would be both a file and a folder"):
        patch(pages, m, [entry("a", "new")], set())
    with pytest.raises(FileFolderConflict, match="'a-1/00' would be both"):
        patch(pages, m, [entry("a-1/00/q", "new")], set())
    assert patch(pages, m, [entry("a", "new")], {"a"})[1].entries == 40 + 1 + 1
