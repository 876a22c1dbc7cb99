"""Chunk boundaries and file digests: the C core equals the reference, on any buffering."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import blake3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncengine.errors import FileChangedError
from syncengine.hashing import reference
from syncengine.hashing.digests import file_digest_from_chunks
from syncengine.hashing.params import ChunkerParams, gear_table
from tests.conftest import native_module

GEAR_ENDS = (0x597A21B5BDD16F4F, 0x4DE9DCFB961C8BEB)
SMALL = ChunkerParams(64, 256, 1024)  # tiny parameters make every edge reachable quickly


def _data(seed: int, n: int) -> bytes:
    return blake3.blake3(seed.to_bytes(8, "little")).digest(length=n)


def test_gear_table_is_the_documented_splitmix64_sequence() -> None:
    table = gear_table()
    assert len(set(table)) == 256
    assert (table[0], table[255]) == GEAR_ENDS  # frozen: changing it changes every boundary
    assert native_module().gear_table() == table


EDGE_SIZES = [0, 1, 63, 64, 65, 255, 256, 257, 1023, 1024, 1025, 2047, 4096, 10_000]


@pytest.mark.parametrize("n", EDGE_SIZES)
def test_cut_points_edges_agree(n: int) -> None:
    data = _data(n, n)
    ref = reference.cut_points(data, SMALL)
    assert native_module().cut_points(data, SMALL) == ref
    assert sum(ref) == n
    assert all(SMALL.min_size <= c <= SMALL.max_size for c in ref[:-1])
    assert not ref or 0 < ref[-1] <= SMALL.max_size


@settings(max_examples=200, deadline=None)
@given(data=st.binary(min_size=0, max_size=20_000))
def test_cut_points_property_native_equals_reference(data: bytes) -> None:
    assert native_module().cut_points(data, SMALL) == reference.cut_points(data, SMALL)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 20_000), k=st.integers(0, 20_000), seed=st.integers(0, 2**32))
def test_cut_points_of_a_stream_prefix(n: int, k: int, seed: int) -> None:
    """``final=False``: the lengths cut from the first k bytes are exactly the whole stream's
    first chunks (what put's single-read hasher relies on), and cutting stops only where
    fewer than max_size bytes are left."""
    data = _data(seed, n)
    k = min(k, n)
    whole = reference.cut_points(data, SMALL)
    for impl in (reference, native_module()):
        part = impl.cut_points(data[:k], SMALL, False)
        assert part == whole[: len(part)]
        assert k - sum(part) < SMALL.max_size


@settings(max_examples=50, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    n=st.integers(5_000, 60_000),
    edit_at=st.integers(0, 4_000),
    insert=st.binary(min_size=1, max_size=100),
)
def test_boundaries_resynchronise_after_an_insert(seed: int, n: int, edit_at: int, insert: bytes) -> None:
    """Content-defined: an insertion near the front only moves boundaries near it."""
    data = _data(seed, n)
    edited = data[:edit_at] + insert + data[edit_at:]
    impl = native_module()

    def cuts(b: bytes) -> set[int]:
        out, pos = set(), 0
        for c in impl.cut_points(b, SMALL):
            pos += c
            out.add(pos)
        return out

    before = {c + len(insert) for c in cuts(data) if c > edit_at + 4 * SMALL.max_size}
    after = {c for c in cuts(edited) if c > edit_at + len(insert) + 4 * SMALL.max_size}
    assert before == after


def test_default_parameters_give_about_one_mib_chunks() -> None:
    data = _data(7, 64 << 20)
    cuts = native_module().cut_points(data, ChunkerParams())
    mean = sum(cuts) / len(cuts)
    assert 0.7 * (1 << 20) < mean < 1.6 * (1 << 20)
    assert min(cuts[:-1]) >= 256 << 10 and max(cuts) <= 4 << 20


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("n", [0, 1, 63, 64, 65, 1024, 1025, 3000, 50_000])
def test_file_digest_equal_over_implementations_and_buffering(tmp_path: Path, n: int) -> None:
    path = _write(tmp_path / "f", _data(n + 1, n))
    native = native_module()
    expected = reference.FileHasher(SMALL).hash_file(path)
    for impl in (native, reference):
        for buffer_size, read_size in ((0, 0), (1024, 1), (1024, 7), (3000, 1000), (1 << 20, 0)):
            got = impl.FileHasher(SMALL, buffer_size, read_size).hash_file(path)
            assert got == expected, (impl.NAME, buffer_size, read_size)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=12_000), read_size=st.integers(1, 5000))
def test_file_digest_property(tmp_path: Path, data: bytes, read_size: int) -> None:
    path = _write(tmp_path / "p", data)
    a = native_module().FileHasher(SMALL, 0, read_size).hash_file(path)
    b = reference.FileHasher(SMALL, 0, read_size).hash_file(path)
    assert a == b
    assert a.size == len(data)


def test_small_file_is_one_blob_and_large_digest_is_domain_separated(
    tmp_path: Path, impl: ModuleType
) -> None:
    small = _data(1, SMALL.small_file_limit)
    large = _data(2, 5000)
    h = impl.FileHasher(SMALL)
    s = h.hash_file(_write(tmp_path / "s", small))
    assert s.digest == blake3.blake3(small).digest() and s.chunks == ()
    big = h.hash_file(_write(tmp_path / "l", large))
    assert len(big.chunks) > 1
    assert big.digest == file_digest_from_chunks(big.chunks)
    assert big.digest != blake3.blake3(large).digest()
    assert [c.digest for c in big.chunks] == [
        blake3.blake3(large[c.offset : c.offset + c.length]).digest() for c in big.chunks
    ]
    assert h.bytes_read == len(small) + len(large)


def test_missing_file_names_the_path(tmp_path: Path, impl: ModuleType) -> None:
    missing = str(tmp_path / "nope.bin")
    with pytest.raises(FileNotFoundError) as e:
        impl.FileHasher(SMALL).hash_file(missing, 10)
    assert e.value.filename == missing
    res = impl.FileHasher(SMALL).hash_small_files([missing], [10])
    assert isinstance(res[0], FileNotFoundError) and res[0].filename == missing


def test_directory_is_refused(tmp_path: Path, impl: ModuleType) -> None:
    with pytest.raises(IsADirectoryError):
        impl.FileHasher(SMALL).hash_file(str(tmp_path), 5000)


def _without_dac_override() -> list[str]:
    """A command prefix under which permission bits apply, even when the tests run as root."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot make a file unreadable")
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"]


@pytest.mark.parametrize("implementation", ["native", "python"])
@pytest.mark.parametrize("size", [10, 5000])
def test_unreadable_file_names_the_path(tmp_path: Path, implementation: str, size: int) -> None:
    if implementation == "native":
        native_module()
    p = _write(tmp_path / "secret", b"x" * size)
    os.chmod(p, 0)
    code = (
        "import sys\n"
        "from syncengine.hashing.params import ChunkerParams\n"
        f"from syncengine.hashing import {'reference as impl' if implementation == 'python' else 'backend'}\n"
        + ("impl = backend.impl\n" if implementation == "native" else "")
        + "h = impl.FileHasher(ChunkerParams(64, 256, 1024))\n"
        "try:\n"
        "    h.hash_file(sys.argv[1])\n"
        "except PermissionError as e:\n"
        "    print('denied', e.filename)\n"
        "print(type(h.hash_small_files([sys.argv[1]], [int(sys.argv[2])])[0]).__name__)\n"
    )
    env = {**os.environ, "SYNCENGINE_NO_EXTENSIONS": "1" if implementation == "python" else "0"}
    r = subprocess.run(
        [*_without_dac_override(), sys.executable, "-c", code, p, str(size)],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(Path(__file__).parents[2]),
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"denied {p}", "PermissionError"]


@pytest.mark.parametrize("n", [100, 5000])
def test_size_differing_from_the_scan_is_a_changed_file(tmp_path: Path, impl: ModuleType, n: int) -> None:
    p = _write(tmp_path / "grew", _data(3, n))
    with pytest.raises(FileChangedError, match="changed while being read") as e:
        impl.FileHasher(SMALL).hash_file(p, n - 1)
    assert e.value.filename == p
    assert isinstance(impl.FileHasher(SMALL).hash_small_files([p], [n + 1])[0], FileChangedError)


def test_batch_matches_single_calls(tmp_path: Path, impl: ModuleType) -> None:
    paths, sizes = [], []
    for i in range(50):
        data = _data(i, i * 17)
        paths.append(_write(tmp_path / f"f{i}", data))
        sizes.append(len(data))
    h = impl.FileHasher(SMALL)
    assert h.hash_small_files(paths, sizes) == [h.hash_file(p) for p in paths]
