"""The C core built with assertions + AddressSanitizer/UBSan runs a workload cleanly.

This builds the extension a second time (SYNCENGINE_DEBUG_BUILD=1) into a temp dir and drives
it in a subprocess with the sanitizer runtime preloaded; any out-of-bounds access or
undefined behaviour aborts the subprocess and fails the test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.native.conftest import SanitizedBuild

ROOT = Path(__file__).resolve().parents[2]

WORKLOAD = textwrap.dedent(
    """
    import importlib.util, os, sys, blake3
    import syncengine  # first, with SYNCENGINE_NO_EXTENSIONS=1, so the package is complete
    spec = importlib.util.spec_from_file_location("syncengine._native", sys.argv[1])
    native = importlib.util.module_from_spec(spec)
    sys.modules["syncengine._native"] = native
    spec.loader.exec_module(native)
    from syncengine.hashing import reference
    from syncengine.hashing.params import ChunkerParams
    from syncengine.hashing.tree import Source, TreeHasher

    work = sys.argv[2]
    for n in list(range(0, 2100)) + [4095, 4096, 4097, 65536, 65537, 1 << 20, (1 << 20) + 3]:
        data = blake3.blake3(n.to_bytes(4, "little")).digest(length=n)
        assert native.blake3(data) == blake3.blake3(data).digest(), n
        assert native.blake3(data, key=bytes(32)) == blake3.blake3(data, key=bytes(32)).digest(), n
    small = ChunkerParams(64, 256, 1024)
    for n in (0, 1, 64, 65, 1023, 1024, 1025, 5000, 70000):
        data = os.urandom(n)
        assert native.cut_points(data, small) == reference.cut_points(data, small)
        path = os.path.join(work, f"f{n}")
        with open(path, "wb") as f:
            f.write(data)
        want = reference.FileHasher(small).hash_file(path)
        for buf, rs in ((0, 0), (1024, 1), (3000, 7)):
            assert native.FileHasher(small, buf, rs).hash_file(path) == want
    big = os.path.join(work, "big")
    with open(big, "wb") as f:
        f.write(os.urandom(3 << 20))
    h = native.FileHasher(small)
    whole = h.hash_file(big)
    part = h.hash_range(big, 1000, 2 << 20, 3 << 20)
    assert part[0].offset == 1000 and part[-1].offset < (2 << 20) <= part[-1].offset + part[-1].length
    out = list(TreeHasher(small, threads=2, impl=native).hash([Source(work)]))
    assert len(out) == 10 and all(o.digest.size == os.path.getsize(o.entry.abspath) for o in out)
    from syncengine.repo.pack import CorruptData, IndexEntry, decode_index, encode_index
    index = native.BlobIndex()
    want = {}
    for k in range(12):  # past block 0's doublings and into a second 16384-record block
        entries = [IndexEntry(blake3.blake3(b"%d" % (i % 20000)).digest(), bytes([i % 7]) * 32, i,
                              i % 4096, i % 8192, i % 2) for i in range(k * 2000, k * 2000 + 2500)]
        sid, seg = encode_index(entries)
        index.add_segment(sid, seg)
        for e in decode_index(sid, seg):
            want.setdefault(e.digest, e)
        index.add(IndexEntry(blake3.blake3(b"one %d" % k).digest(), bytes(32), k, 1, 1, 0))
        for cut in (1, 33, len(seg) - 12, len(seg)):
            bad = seg[:-cut]
            try:
                index.add_segment(blake3.blake3(bad).digest(), bad)
                raise AssertionError("a cut segment was accepted")
            except CorruptData:
                pass
    assert len(index) == len(want) + 12
    assert all(index[d] == e for d, e in want.items()) and len(list(index.items())) == len(index)
    assert blake3.blake3(b"absent").digest() not in index and index.nbytes > 0
    print("sanitized workload ok")
    """
)


@pytest.mark.slow
def test_sanitized_build_runs_clean(tmp_path: Path, sanitized_native: SanitizedBuild) -> None:
    so, runtime = sanitized_native
    work = tmp_path / "work"
    work.mkdir()
    script = tmp_path / "workload.py"
    script.write_text(WORKLOAD)
    env = {
        **os.environ,
        "LD_PRELOAD": runtime,
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",
        "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
        "PYTHONPATH": str(ROOT),
        "SYNCENGINE_NO_EXTENSIONS": "1",
        "CI": "false",
    }
    run = subprocess.run(
        [sys.executable, str(script), str(so), str(work)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-5000:]
    assert "sanitized workload ok" in run.stdout
    assert "runtime error" not in run.stderr  # UBSan reports
