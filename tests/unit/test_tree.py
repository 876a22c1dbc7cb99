"""Tree hashing: sorted, parallel, equal over implementations, stat cache that never lies."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import blake3
import pytest

from syncengine.hashing import reference
from syncengine.hashing.digests import TreeDigest
from syncengine.hashing.params import ChunkerParams
from syncengine.hashing.stat_cache import RACY_NS, StatCache, StatKey
from syncengine.hashing.tree import Source, TreeHasher, sources_for

SMALL = ChunkerParams(64, 256, 1024)
LATER = 60 * 10**9  # pretend the hash ran a minute after the files were written


def make_tree(root: Path, files: int = 300) -> dict[str, bytes]:
    out = {}
    for i in range(files):
        rel = f"d{i % 7}/sub{i % 3}/f{i:04d}.bin"
        data = blake3.blake3(rel.encode()).digest(length=(i * 37) % 3000)
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        out[rel] = data
    return out


def run(root: Path, **kw: Any) -> tuple[TreeHasher, list[Any]]:
    kw.setdefault("params", SMALL)
    h = TreeHasher(**kw)
    return h, list(h.hash([Source(str(root))]))


def test_output_is_sorted_complete_and_equal_to_single_file_hashing(tmp_path: Path, impl: ModuleType) -> None:
    files = make_tree(tmp_path)
    h, out = run(tmp_path, impl=impl, threads=2)
    assert [f.entry.path for f in out] == sorted(files, key=lambda p: p.encode())
    single = reference.FileHasher(SMALL)
    for f in out:
        assert f.digest == single.hash_file(f.entry.abspath)
    assert h.stats.files == len(files) and h.stats.bytes == sum(map(len, files.values()))


def test_tree_digest_is_the_same_for_every_implementation_and_thread_count(tmp_path: Path) -> None:
    make_tree(tmp_path, 120)
    digests = set()
    from tests.conftest import native_module

    for impl in (native_module(), reference):
        for threads in (1, 2, 5):
            tree = TreeDigest()
            for f in run(tmp_path, impl=impl, threads=threads)[1]:
                tree.add(f.entry.path, f.digest.digest)
            digests.add(tree.hexdigest())
    assert len(digests) == 1


def test_unchanged_tree_rescans_without_reading_content(tmp_path: Path, impl: ModuleType) -> None:
    files = make_tree(tmp_path / "data")
    cache_path = tmp_path / "stat.sqlite"
    with StatCache(cache_path, SMALL.label) as cache:
        h1, first = run(tmp_path / "data", impl=impl, stat_cache=cache, clock=lambda: time.time_ns() + LATER)
    assert h1.stats.bytes_read == sum(map(len, files.values()))

    class NoReads:
        NAME = "no-reads"

        class FileHasher:
            def __init__(self, *a: object) -> None:
                raise AssertionError("a file was read although nothing changed")

    with open("/proc/self/io") as f:
        rchar_before = int(next(line for line in f if line.startswith("rchar")).split()[1])
    with StatCache(cache_path, SMALL.label) as cache:
        h2, second = run(tmp_path / "data", impl=NoReads, stat_cache=cache)
    with open("/proc/self/io") as f:
        rchar_after = int(next(line for line in f if line.startswith("rchar")).split()[1])
    assert [(f.entry.path, f.digest) for f in second] == [(f.entry.path, f.digest) for f in first]
    assert h2.stats.cache_hits == len(files) and h2.stats.bytes_read == 0
    # the process read far less than the tree's content (only the cache database)
    assert rchar_after - rchar_before < sum(map(len, files.values())) // 2 + (1 << 20)


def test_same_size_rewrite_with_restored_mtime_is_detected_by_ctime(tmp_path: Path, impl: ModuleType) -> None:
    p = tmp_path / "data" / "model.bin"
    p.parent.mkdir()
    p.write_bytes(b"a" * 50)
    cache_path = tmp_path / "stat.sqlite"
    with StatCache(cache_path, SMALL.label) as cache:
        run(tmp_path / "data", impl=impl, stat_cache=cache, clock=lambda: time.time_ns() + LATER)
    st = os.stat(p)
    p.write_bytes(b"b" * 50)  # same size, and the mtime is put back
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    with StatCache(cache_path, SMALL.label) as cache:
        h, out = run(tmp_path / "data", impl=impl, stat_cache=cache, clock=lambda: time.time_ns() + LATER)
    assert out[0].digest.digest == blake3.blake3(b"b" * 50).digest()
    assert h.stats.cache_misses == 1


def test_rewrite_within_the_same_tick_is_never_trusted(tmp_path: Path, impl: ModuleType) -> None:
    """A file hashed right after it was written is read again next time, so a same-size
    rewrite in the same second (even with identical mtime and ctime) cannot be missed."""
    p = tmp_path / "data" / "x.bin"
    p.parent.mkdir()
    p.write_bytes(b"1" * 100)
    cache_path = tmp_path / "stat.sqlite"
    with StatCache(cache_path, SMALL.label) as cache:
        run(tmp_path / "data", impl=impl, stat_cache=cache)  # real clock: the file is brand new
    with StatCache(cache_path, SMALL.label) as cache:
        h, _ = run(tmp_path / "data", impl=impl, stat_cache=cache)
    assert h.stats.cache_hits == 0


def test_racy_rule_on_identical_stat(tmp_path: Path) -> None:
    """Same dev/ino/size/mtime/ctime: trusted only when hashed well after the last change."""
    from syncengine.hashing.digests import FileDigest

    key = StatKey(1, 2, 3, 10**18, 10**18)
    d = FileDigest(3, b"\1" * 32, ())
    with StatCache(tmp_path / "c.sqlite", "p") as cache:
        cache.store("/x/racy", key, d, 10**18 + RACY_NS // 2)
        cache.store("/x/old", key, d, 10**18 + RACY_NS + 1)
        cache.flush()
    with StatCache(tmp_path / "c.sqlite", "p") as cache:
        assert cache.lookup("/x/racy", key) is None
        assert cache.lookup("/x/old", key) == d
        assert cache.lookup("/x/old", key._replace(ino=9)) is None
    with StatCache(tmp_path / "c.sqlite", "other-params") as cache:
        assert cache.lookup("/x/old", key) is None


def test_large_files_round_trip_through_the_cache(tmp_path: Path, impl: ModuleType) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "big").write_bytes(blake3.blake3(b"big").digest(length=20_000))
    cache_path = tmp_path / "stat.sqlite"
    with StatCache(cache_path, SMALL.label) as cache:
        _, first = run(tmp_path / "data", impl=impl, stat_cache=cache, clock=lambda: time.time_ns() + LATER)
    with StatCache(cache_path, SMALL.label) as cache:
        h, second = run(tmp_path / "data", impl=impl, stat_cache=cache)
    assert h.stats.cache_hits == 1
    assert second[0].digest == first[0].digest and len(first[0].digest.chunks) > 5


def test_unreadable_file_is_reported_by_name_and_others_still_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tree(tmp_path, 20)
    victim = "d1/sub1/f0001.bin"
    real = reference.FileHasher.hash_small_files

    def deny(self: Any, paths: list[str], sizes: list[int]) -> list[Any]:
        out = real(self, paths, sizes)
        return [
            PermissionError(13, "Permission denied", p) if p.endswith(victim) else r
            for p, r in zip(paths, out, strict=True)
        ]

    monkeypatch.setattr(reference.FileHasher, "hash_small_files", deny)
    h, out = run(tmp_path, impl=reference)
    assert victim not in [f.entry.path for f in out]
    assert h.stats.errors == [(victim, "Permission denied")]
    assert h.stats.files == 19


def test_file_changing_between_scan_and_read_is_an_error_not_a_wrong_digest(
    tmp_path: Path, impl: ModuleType
) -> None:
    (tmp_path / "a").write_bytes(b"x" * 10)
    hasher = TreeHasher(SMALL, impl=impl)
    it = hasher.scan([Source(str(tmp_path))])
    entry = next(it)
    (tmp_path / "a").write_bytes(b"x" * 11)
    res = impl.FileHasher(SMALL).hash_small_files([entry.abspath], [entry.size])
    assert isinstance(res[0], OSError) and "changed" in str(res[0])


def test_several_inputs_get_their_basenames_in_sorted_order(tmp_path: Path) -> None:
    for name in ("a", "a-b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x").write_bytes(name.encode())
    (tmp_path / "f.txt").write_bytes(b"file")
    srcs = sources_for([str(tmp_path / "a"), str(tmp_path / "f.txt"), str(tmp_path / "a-b")])
    out = [f.entry.path for f in TreeHasher(SMALL).hash(srcs)]
    assert out == ["a-b/x", "a/x", "f.txt"]
    with pytest.raises(ValueError, match="would both be stored"):
        sources_for([str(tmp_path / "a"), str(tmp_path / "a") + "/"])


def test_cache_forgets_deleted_files_but_not_siblings_of_a_single_file_root(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_tree(data, 30)
    cache_path = tmp_path / "stat.sqlite"
    later = lambda: time.time_ns() + LATER  # noqa: E731
    with StatCache(cache_path, SMALL.label) as cache:
        run(data, stat_cache=cache, clock=later)
    victim = data / "d0" / "sub0" / "f0000.bin"
    sibling = data / "d0" / "sub0" / "f0021.bin"
    victim.unlink()
    with StatCache(cache_path, SMALL.label) as cache:  # hashing one file must not prune its folder
        h = TreeHasher(SMALL, stat_cache=cache, clock=later)
        list(h.hash([Source(str(sibling))]))
    with StatCache(cache_path, SMALL.label) as cache:
        h, _ = run(data, stat_cache=cache, clock=later)
        assert h.stats.cache_hits == 29
    with StatCache(cache_path, SMALL.label) as cache:
        rows = cache._record(str(victim.parent)).rows
        assert victim.name not in rows and sibling.name in rows
