"""One file hashed in parallel segments gives exactly the chunks of one sequential pass."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from types import ModuleType

import blake3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncengine.hashing import reference, split
from syncengine.hashing.params import ChunkerParams
from syncengine.hashing.tree import Source, TreeHasher
from tests.conftest import native_module

SMALL = ChunkerParams(64, 256, 1024)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**32),
    size=st.integers(2_000, 60_000),
    cuts=st.lists(st.floats(0.01, 0.99), min_size=1, max_size=6),
    repeat=st.booleans(),
)
def test_merged_segments_equal_a_sequential_pass(
    tmp_path: Path, seed: int, size: int, cuts: list[float], repeat: bool
) -> None:
    data = blake3.blake3(seed.to_bytes(8, "little")).digest(length=size)
    if repeat:  # long repeated runs are where chains take longest to meet
        data = (data[:300] * (size // 300 + 1))[:size]
    path = tmp_path / "f"
    path.write_bytes(data)
    h = native_module().FileHasher(SMALL)
    whole = h.hash_file(str(path))
    starts = sorted({0, *(int(c * size) for c in cuts)})
    stops = [*starts[1:], 1 << 62]
    chains = [h.hash_range(str(path), a, b, size) for a, b in zip(starts, stops, strict=True)]
    merged = split.merge_segments(starts, chains, lambda a, b: h.hash_range(str(path), a, b, size))
    assert tuple(merged) == whole.chunks


def test_range_stops_after_the_first_chunk_reaching_stop(tmp_path: Path, impl: ModuleType) -> None:
    data = os.urandom(50_000)
    (tmp_path / "f").write_bytes(data)
    chunks = impl.FileHasher(SMALL).hash_range(str(tmp_path / "f"), 1234, 20_000, len(data))
    assert chunks[0].offset == 1234
    assert chunks[-1].offset < 20_000 <= chunks[-1].offset + chunks[-1].length
    assert all(a.offset + a.length == b.offset for a, b in itertools.pairwise(chunks))


def test_tree_hasher_splits_big_files_with_identical_results(
    tmp_path: Path, impl: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(split, "SPLIT_MIN", 10_000)
    monkeypatch.setattr(split, "SEGMENT_MIN", 3_000)
    (tmp_path / "big.bin").write_bytes(blake3.blake3(b"big").digest(length=200_000))
    (tmp_path / "small.bin").write_bytes(b"s")
    assert len(split.segment_starts(200_000, 3)) == 6
    sequential = reference.FileHasher(SMALL).hash_file(str(tmp_path / "big.bin"))
    out = list(TreeHasher(SMALL, threads=3, impl=impl).hash([Source(str(tmp_path))]))
    assert [o.entry.path for o in out] == ["big.bin", "small.bin"]
    assert out[0].digest == sequential


def test_split_file_modified_after_the_scan_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(split, "SPLIT_MIN", 10_000)
    monkeypatch.setattr(split, "SEGMENT_MIN", 3_000)
    p = tmp_path / "big.bin"
    p.write_bytes(os.urandom(100_000))
    hasher = TreeHasher(SMALL, threads=2, impl=native_module())
    entries = hasher.scan([Source(str(tmp_path))])
    entry = next(entries)
    p.write_bytes(os.urandom(100_000))  # same size, new content, after the scan
    res = hasher._merge(
        entry,
        [0, 50_000],
        [
            hasher._segment(entry.abspath, 0, 50_000, entry.size),  # type: ignore[list-item]
            hasher._segment(entry.abspath, 50_000, 1 << 62, entry.size),
        ],
    )
    assert isinstance(res, OSError) and "modified while its segments were hashed" in str(res)
