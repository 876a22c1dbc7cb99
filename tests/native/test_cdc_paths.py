"""Every cut-point scan of the C core (AVX-512 and scalar) gives the reference's cut points.

The C chunker picks its scan loop once per process (`SE_CDC_FORCE=scalar` forces the portable
one), so each path runs in a subprocess of its own over the same deterministic cases, and both
results are compared with the pure-Python reference. The cases are sized to reach the vector
path (ranges of at least ~1 KiB) with many hits per block, and include inputs crafted to cut at
chosen places: right after `min_size`, and at offsets spread over the vector code's lanes,
warm-ups, groups and blocks. Streaming goes through `FileHasher` with small read sizes, so scans
are split into pieces at arbitrary points.
"""

from __future__ import annotations

import bisect
import functools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import blake3
import pytest

from syncengine.hashing import reference
from syncengine.hashing.params import ChunkerParams, gear_table
from tests.conftest import native_module
from tests.native.conftest import SanitizedBuild

ROOT = Path(__file__).resolve().parents[2]
M64 = (1 << 64) - 1
GEAR = gear_table()
SORTED_GEAR = sorted((v, i) for i, v in enumerate(GEAR))

TINY = ChunkerParams(64, 256, 1024)  # every range shorter than one vector block: scalar only
PARAMS = [
    TINY,
    ChunkerParams(256, 1024, 8192),  # a cut every ~256 bytes after avg: hits in every block
    ChunkerParams(1024, 4096, 65536),
    ChunkerParams(64, 8192, 65536),  # long phase 1 from a tiny min_size
    ChunkerParams(3000, 16384, 100_000),  # sizes that are not multiples of anything
    ChunkerParams(16 << 10, 64 << 10, 256 << 10),
    ChunkerParams(),  # the defaults: 256 KiB / 1 MiB / 4 MiB
]
# A vector block is 16 lanes x 2 KiB (+ 64); these offsets (from where a scan starts) land on
# lane starts, warm-up windows, group edges and block edges, and either side of them.
_EDGES = sorted(
    {
        base + lane * 2048 + d
        for base in (0, 32832, 65664)
        for lane in (0, 1, 7, 8, 15)
        for d in (-65, -64, -63, -1, 0, 1, 63, 64, 65, 127, 128, 1000)
        if base + lane * 2048 + d >= 64
    }
)


def _data(seed: int, n: int) -> bytes:
    return blake3.blake3(b"cdc-paths" + seed.to_bytes(8, "little")).digest(length=n)


def _hash(data: bytes) -> int:
    h = 0
    for b in data:
        h = ((h << 1) + GEAR[b]) & M64
    return h


def _tail_for(prefix: bytes, thr: int) -> bytes | None:
    """Three bytes t such that the gear hash of prefix + t (from h = 0) is below thr."""
    base = (_hash(prefix) << 3) & M64
    keys = [v for v, _ in SORTED_GEAR]
    for x in range(256):
        for y in range(256):
            # need GEAR[z] in [lo, lo + thr) (mod 2^64)
            lo = (-(base + 4 * GEAR[x] + 2 * GEAR[y])) & M64
            for start, stop in ((lo, min(lo + thr, 1 << 64)), (0, max(lo + thr - (1 << 64), 0))):
                i = bisect.bisect_left(keys, start)
                if i < 256 and keys[i] < stop:
                    return bytes((x, y, SORTED_GEAR[i][1]))
    return None


@functools.cache
def _hit(prefix_len: int, thr: int, seed: int) -> bytes:
    """prefix_len + 3 bytes whose gear hash (from h = 0) is below thr."""
    for attempt in range(100):
        prefix = _data(seed * 1000 + attempt, prefix_len)
        tail = _tail_for(prefix, thr)
        if tail is not None:
            return prefix + tail
    raise AssertionError("no crafted hit found")


def cut_cases() -> list[tuple[str, ChunkerParams, bytes]]:
    """(name, params, data) for cut_points, deterministic: the subprocesses rebuild the same."""
    out: list[tuple[str, ChunkerParams, bytes]] = []
    sizes = {
        TINY: [0, 1, 64, 65, 1000, 5000, 40_000, 100_000],
        ChunkerParams(): [3 << 20, (6 << 20) + 12345],
        ChunkerParams(16 << 10, 64 << 10, 256 << 10): [300_000, 1_000_003],
    }
    for pi, p in enumerate(PARAMS):
        for si, n in enumerate(sizes.get(p, [1100, 2047, 9000, 70_000, 300_001])):
            out.append((f"random p{pi} n{n}", p, _data(pi * 100 + si, n)))
        thr_small = p.thresholds[0]
        # cut right after min_size (+ 3 .. 64 bytes): the first steps, where h holds < 64 terms
        for k in (3, 4, 17, 64):
            hit = _hit(k - 3, thr_small, pi * 10 + k)
            n = p.min_size + k + 5000
            data = bytearray(_data(pi * 1000 + k, n))
            data[p.min_size : p.min_size + k] = hit
            out.append((f"early p{pi} k{k}", p, bytes(data)))
        if p.max_size - p.min_size < 2000:
            continue
        # a 64-byte window below the threshold, ending at chosen offsets from where phase 1
        # (min_size) or phase 2 (avg_size) of the scan starts
        window = _hit(61, thr_small, 77 + pi)
        stream = _data(pi * 7919, p.max_size + 70_000)
        for phase, start in (("min", p.min_size), ("avg", p.avg_size)):
            # (phase 2 of the default parameters starts 768 KiB into the scan: fewer cases there,
            # the reference is slow)
            for off in _EDGES if phase == "min" or p.avg_size - p.min_size < 100_000 else _EDGES[::6]:
                end = start + off
                if end > p.max_size or off > 100_000 or (phase == "min" and end > p.avg_size + 2000):
                    continue
                data = bytearray(stream[: end + 3000])
                data[end - 64 : end] = window
                out.append((f"window p{pi} {phase}+{off}", p, bytes(data)))
        # the same window repeated: a second chunk starting right after a crafted cut
        data = bytearray(stream[: 2 * p.max_size])
        for end in (p.min_size + 64, 2 * p.min_size + 128, 2 * p.min_size + 200):
            data[end - 64 : end] = window
        out.append((f"windows p{pi}", p, bytes(data)))
    return out


STREAM_CASES = [
    # (params index, file size, buffer_size, read_size)
    (0, 20_000, 1024, 1),
    (0, 100_000, 3000, 7),
    (1, 60_000, 0, 3),
    (1, 300_000, 9000, 1500),
    (2, 400_000, 0, 1000),
    (2, 400_000, 70_000, 4097),
    (3, 500_000, 0, 65_539),
    (4, 700_000, 100_000, 2100),
    (5, 2_000_000, 0, 1 << 20),
    (6, 9 << 20, 0, 100_000),
    (6, 9 << 20, 5 << 20, 0),
]


def stream_file(work: str, i: int) -> str:
    pi, n, _, _ = STREAM_CASES[i]
    path = os.path.join(work, f"s{i}")
    if not os.path.exists(path):
        data = bytearray(_data(5000 + i, n))
        window = _hit(61, PARAMS[pi].thresholds[0], 99)
        for end in (PARAMS[pi].min_size + 64, n // 2, n // 2 + PARAMS[pi].min_size + 640):
            data[end - 64 : end] = window
        with open(path, "wb") as f:
            f.write(data)
    return path


def run_cases(work: str) -> dict[str, Any]:
    """What the subprocess computes with the C core."""
    import ctypes

    native = native_module()
    try:
        impl = ctypes.CDLL(native.__file__).se_cdc_impl
        impl.restype = ctypes.c_char_p
        name = impl().decode()
    except (OSError, AttributeError):
        name = None
    cuts = {case: native.cut_points(data, p) for case, p, data in cut_cases()}
    streams = []
    for i, (pi, _, buffer_size, read_size) in enumerate(STREAM_CASES):
        fd = native.FileHasher(PARAMS[pi], buffer_size, read_size).hash_file(stream_file(work, i))
        streams.append([fd.digest.hex(), [[c.offset, c.length, c.digest.hex()] for c in fd.chunks]])
    return {"impl": name, "cuts": cuts, "streams": streams}


WORKER = (
    "import json, sys\n"
    "from tests.native.test_cdc_paths import run_cases\n"
    "json.dump(run_cases(sys.argv[1]), sys.stdout)\n"
)


def _cpu_has_avx512_vbmi() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    line = next((ln for ln in flags.splitlines() if ln.startswith("flags")), "")
    return {"avx512f", "avx512bw", "avx512vbmi"} <= set(line.split())


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> str:
    native_module()
    return str(tmp_path_factory.mktemp("cdc-paths"))


@pytest.fixture(scope="module", params=["default", "scalar"])
def run(request: pytest.FixtureRequest, work: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "SE_CDC_FORCE"}
    if request.param == "scalar":
        env["SE_CDC_FORCE"] = "scalar"
    r = subprocess.run(
        [sys.executable, "-c", WORKER, work],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(ROOT),
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    out["mode"] = request.param
    return out


def test_the_forced_path_runs(run: dict[str, Any]) -> None:
    if run["impl"] is None:
        pytest.skip("se_cdc_impl is not visible in the extension")
    if run["mode"] == "scalar":
        assert run["impl"] == "scalar"
    elif sys.platform.startswith("linux") and os.uname().machine == "x86_64" and _cpu_has_avx512_vbmi():
        assert run["impl"] == "avx512"


@pytest.fixture(scope="module")
def expected() -> dict[str, list[int]]:
    return {case: reference.cut_points(data, p) for case, p, data in cut_cases()}


def test_cut_points_equal_the_reference(run: dict[str, Any], expected: dict[str, list[int]]) -> None:
    assert run["cuts"].keys() == expected.keys()
    for case, cuts in expected.items():
        assert run["cuts"][case] == cuts, (run["mode"], case)


def test_crafted_inputs_cut_where_crafted(expected: dict[str, list[int]]) -> None:
    """The crafted bytes do what they are for (else the cases above would test less)."""
    for case, p, _ in cut_cases():
        if case.startswith("early"):
            end = p.min_size + int(case.rsplit("k", 1)[1])
        elif case.startswith("window "):
            phase, off = case.rsplit(" ", 1)[1].split("+")
            end = (p.min_size if phase == "min" else p.avg_size) + int(off)
        else:
            continue
        assert expected[case][0] <= end, case


@pytest.fixture(scope="module")
def expected_streams(work: str) -> list[list[Any]]:
    out = []
    for i, (pi, _, buffer_size, read_size) in enumerate(STREAM_CASES):
        path = stream_file(work, i)
        with open(path, "rb") as f:
            data = f.read()
        chunks, pos = [], 0
        for n in reference.cut_points(data, PARAMS[pi]):
            chunks.append([pos, n, blake3.blake3(data[pos : pos + n]).digest().hex()])
            pos += n
        digest = reference.FileHasher(PARAMS[pi], buffer_size, read_size).hash_file(path).digest.hex()
        out.append([digest, chunks])
    return out


def test_streaming_with_small_reads_equals_the_reference(
    run: dict[str, Any], expected_streams: list[list[Any]]
) -> None:
    for i, want in enumerate(expected_streams):
        assert run["streams"][i] == want, (run["mode"], STREAM_CASES[i])


SANITIZED_WORKLOAD = (
    "import importlib.util, json, sys\n"
    "import syncengine  # first, with SYNCENGINE_NO_EXTENSIONS=1, so the package is complete\n"
    "spec = importlib.util.spec_from_file_location('syncengine._native', sys.argv[1])\n"
    "native = importlib.util.module_from_spec(spec)\n"
    "sys.modules['syncengine._native'] = native\n"
    "spec.loader.exec_module(native)\n"
    "from tests.native.test_cdc_paths import run_cases\n"
    "json.dump(run_cases(sys.argv[2]), sys.stdout)\n"
)


@pytest.mark.slow
def test_sanitized_build_gives_the_same_cuts(
    tmp_path: Path,
    work: str,
    expected: dict[str, list[int]],
    expected_streams: list[list[Any]],
    sanitized_native: SanitizedBuild,
) -> None:
    """The vector path under AddressSanitizer/UBSan (tests/native/test_debug_build.py's build)."""
    so, runtime = sanitized_native
    env = {k: v for k, v in os.environ.items() if k != "SE_CDC_FORCE"}
    env.update(
        LD_PRELOAD=runtime,
        ASAN_OPTIONS="detect_leaks=0:abort_on_error=1",
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1",
        PYTHONPATH=str(ROOT),
        SYNCENGINE_NO_EXTENSIONS="1",
        CI="false",
    )
    r = subprocess.run(
        [sys.executable, "-c", SANITIZED_WORKLOAD, str(so), work],
        env=env,
        capture_output=True,
        text=True,
        cwd=str(ROOT),
        timeout=1200,
    )
    assert r.returncode == 0, r.stderr[-5000:]
    assert "runtime error" not in r.stderr  # UBSan reports
    out = json.loads(r.stdout)
    if _cpu_has_avx512_vbmi() and out["impl"] is not None:
        assert out["impl"] == "avx512"
    assert out["cuts"] == expected
    assert out["streams"] == expected_streams
