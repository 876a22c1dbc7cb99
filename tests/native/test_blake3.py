"""The C BLAKE3 (csrc/blake3) against the reference `blake3` package, on every SIMD path.

The kernel is chosen once per process, so each path is checked in a child process started with
SE_BLAKE3_FORCE=<path>; the in-process tests cover whatever path this CPU picks by default.
"""

import os
import platform
import random
import subprocess
import sys
from pathlib import Path

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncengine import _native

CSRC = Path(__file__).resolve().parents[2] / "csrc" / "blake3"

PATHS = ["portable", "sse41", "avx2", "avx512"]  # slowest first
KEY = bytes(range(7, 39))
BUF = random.Random(20240601).randbytes((5 << 20) + 64)


def ref(data, key=None):
    return (blake3.blake3(data, key=key) if key is not None else blake3.blake3(data)).digest()


def boundary_lengths():
    """Lengths where the tree changes shape: around chunk (1 KiB) multiples, SIMD widths
    (4/8/16 chunks), powers of two, plus random ones, up to a few MiB."""
    lens = set()
    for k in [*range(1, 70), 127, 128, 129, 255, 256, 257, 1000, 1023, 1024, 1025, 4095, 4096]:
        lens.update((1024 * k - 1, 1024 * k, 1024 * k + 1))
    for e in range(10, 23):
        lens.update(((1 << e) - 1, 1 << e, (1 << e) + 1))
    rng = random.Random(7)
    lens.update(rng.randrange(5000, 5 << 20) for _ in range(60))
    return sorted(lens)


def cpu_paths():
    """Paths this CPU can run, or None when that cannot be told (no /proc/cpuinfo)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return {"portable"}
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return None
    paths = {"portable"}
    if "sse4_1" in flags:
        paths.add("sse41")
    if "avx2" in flags:
        paths.add("avx2")
    if "avx512f" in flags and "avx512vl" in flags:
        paths.add("avx512")
    return paths


def test_impl_is_best_for_this_cpu():
    impl = _native.blake3_impl()
    assert impl in PATHS
    paths = cpu_paths()
    if paths is not None and "SE_BLAKE3_FORCE" not in os.environ:
        assert impl == max(paths, key=PATHS.index)


def test_every_length_up_to_5000():
    for n in range(5001):
        data = BUF[n % 61 : n % 61 + n]
        assert _native.blake3(data) == ref(data), n
        assert _native.blake3(data, key=KEY) == ref(data, KEY), n


def test_chunk_and_tree_boundaries():
    view = memoryview(BUF)
    for i, n in enumerate(boundary_lengths()):
        data = view[i % 64 : i % 64 + n]  # zero-copy, odd alignments
        assert _native.blake3(data) == ref(data), n
        assert _native.blake3(data, key=KEY) == ref(data, KEY), n


def test_input_types_and_key_check():
    data = BUF[:3000]
    assert _native.blake3(bytearray(data)) == ref(data)
    assert _native.blake3(memoryview(data)) == ref(data)
    assert _native.blake3(b"", key=KEY) == ref(b"", KEY)
    with pytest.raises(ValueError):
        _native.blake3(data, key=KEY[:31])


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=20000), key=st.none() | st.binary(min_size=32, max_size=32))
def test_random_data(data, key):
    assert _native.blake3(data, key=key) == ref(data, key)


@settings(max_examples=150, deadline=None)
@given(offset=st.integers(0, 63), length=st.integers(0, 5 << 20), keyed=st.booleans())
def test_random_slices_of_big_buffer(offset, length, keyed):
    data = memoryview(BUF)[offset : offset + length]
    key = KEY if keyed else None
    assert _native.blake3(data, key=key) == ref(data, key)


CHILD = r"""
import random, sys, blake3
from syncengine import _native
lens = list(range(0, 5001)) + [int(x) for x in sys.argv[1].split(",")]
buf = random.Random(5).randbytes((5 << 20) + 64)
key = bytes(range(100, 132))
view = memoryview(buf)
for i, n in enumerate(lens):
    d = view[i % 64:i % 64 + n]
    assert _native.blake3(d) == blake3.blake3(d).digest(), ("plain", n)
    assert _native.blake3(d, key=key) == blake3.blake3(d, key=key).digest(), ("keyed", n)
print(_native.blake3_impl())
"""


@pytest.mark.parametrize("path", PATHS)
def test_forced_path(path):
    """Each kernel, forced through SE_BLAKE3_FORCE in a fresh interpreter. A path the CPU lacks
    falls back to the best available one, which is then what gets checked."""
    # The child must import the very module under test, wherever it was imported from.
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(_native.__file__)))
    pythonpath = os.pathsep.join(filter(None, [pkg_parent, os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, SE_BLAKE3_FORCE=path, PYTHONPATH=pythonpath)
    lens = ",".join(map(str, boundary_lengths()))
    proc = subprocess.run([sys.executable, "-c", CHILD, lens], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    impl = proc.stdout.strip()
    paths = cpu_paths()
    if paths is None:
        assert impl in PATHS
    elif path in paths:
        assert impl == path
    else:
        assert impl == max(paths, key=PATHS.index)


@pytest.mark.slow
def test_c_harness_under_sanitizers(tmp_path):
    """csrc/blake3/test_blake3_c.c: known answers, every kernel against the portable one and the
    incremental API (which _native does not expose) against one-shot, built with ASan/UBSan
    and exact-size heap buffers."""
    exe = tmp_path / "test_blake3_c"
    flags = ["-std=gnu11", "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
    cc = os.environ.get("CC", "gcc")
    subprocess.run([cc, *flags, "-o", str(exe), str(CSRC / "test_blake3_c.c")], check=True)
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " 0 failures" in proc.stdout
