"""Loading the blob index: today's dict of IndexEntry against BlobIndex (native and reference).

Usage::

    python benchmarks/bench_index.py [--blobs 100000,1000000] [--segment 10000] [--per-pack 32]

For each N, the parent writes N index records as segments of ``--segment`` records (a put's
worth each; ``--per-pack`` blobs a pack, i.e. 32 MiB packs of 1 MiB chunks) into a temp dir,
as the local segment cache holds them. Each variant then runs in a child process of its own,
which reads every segment file and builds the index:

* ``dict``: what Repository.index() did before BlobIndex (decode_index, then setdefault);
* ``native``: `syncengine._native.BlobIndex.add_segment`;
* ``python``: `PythonBlobIndex`, the reference (``SYNCENGINE_NO_EXTENSIONS=1``).

Measured: ``load_s`` (read + check + insert of every segment), ``rss_retained_MiB`` (RSS after
the load minus RSS before it), ``rss_peak_growth_MiB`` (peak RSS minus RSS before),
``bytes_per_blob`` (retained RSS / N, and ``nbytes`` / N where the index reports it),
``get_per_s`` (``index.get`` of 200,000 present digests, an IndexEntry each) and
``miss_per_s`` (``digest in index`` for 200,000 absent ones: the dedup check of a put).
One JSON object goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LOOKUPS = 200_000


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _digest(i: int) -> bytes:
    import blake3

    return blake3.blake3(b"blob %d" % i).digest()


def write_segments(out: Path, n: int, per_segment: int, per_pack: int) -> int:
    import blake3

    from syncengine.repo.pack import IndexEntry, encode_index

    count = 0
    for start in range(0, n, per_segment):
        entries = [
            IndexEntry(
                _digest(i),
                blake3.blake3(b"pack %d" % (i // per_pack)).digest(),
                (i % per_pack) << 20,
                1 << 20,
                1 << 20,
                0,
            )
            for i in range(start, min(n, start + per_segment))
        ]
        sid, data = encode_index(entries)
        (out / sid.hex()).write_bytes(data)
        count += 1
    return count


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(variant: str, folder: str, n: int) -> dict[str, Any]:
    from syncengine.repo.blob_index import BlobIndex, PythonBlobIndex
    from syncengine.repo.pack import IndexEntry, decode_index

    files = sorted(Path(folder).iterdir())
    step = max(1, n // LOOKUPS)
    present = [_digest(i) for i in range(0, n, step)][:LOOKUPS]
    absent = [_digest(n + i) for i in range(LOOKUPS)]
    index: Any
    if variant == "dict":
        index = {}
    elif variant == "native":
        index = BlobIndex()
        assert type(index).__module__ == "syncengine._native", "the compiled core is not in use"
    else:
        index = PythonBlobIndex()
    before = _rss()
    t0 = time.perf_counter()
    for path in files:
        data = path.read_bytes()
        sid = bytes.fromhex(path.name)
        if variant == "dict":
            entries: list[IndexEntry] = decode_index(sid, data)
            for e in entries:
                index.setdefault(e.digest, e)
        else:
            index.add_segment(sid, data)
        del data
    load_s = time.perf_counter() - t0
    after = _rss()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert len(index) == n, (len(index), n)
    get = index.get
    t0 = time.perf_counter()
    for d in present:
        get(d)
    get_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for d in absent:
        d in index  # noqa: B015 - the membership test is what is timed
    miss_s = time.perf_counter() - t0
    out: dict[str, Any] = {
        "load_s": round(load_s, 3),
        "rss_retained_MiB": round((after - before) / 2**20, 1),
        "rss_peak_growth_MiB": round((peak - before) / 2**20, 1),
        "rss_bytes_per_blob": round((after - before) / n, 1),
        "get_per_s": round(len(present) / get_s),
        "miss_per_s": round(len(absent) / miss_s),
    }
    if variant == "native":
        out["nbytes_per_blob"] = round(index.nbytes / n, 1)
    return out


def run_child(variant: str, folder: str, n: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if variant == "python":
        env["SYNCENGINE_NO_EXTENSIONS"] = "1"
    else:
        env.pop("SYNCENGINE_NO_EXTENSIONS", None)
    r = subprocess.run(
        [sys.executable, __file__, "--child", variant, folder, str(n)],
        env=env,
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        raise SystemExit(f"{variant} child failed:\n{r.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(r.stdout)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blobs", default="100000,1000000", help="comma-separated N")
    ap.add_argument("--segment", type=int, default=10_000, help="records per segment")
    ap.add_argument("--per-pack", type=int, default=32, help="blobs per pack")
    ap.add_argument("--variants", default="dict,native,python")
    ap.add_argument("--child", nargs=3, metavar=("VARIANT", "DIR", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        variant, folder, n = args.child
        print(json.dumps(child(variant, folder, int(n))))
        return
    report: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
        "segment_records": args.segment,
        "blobs_per_pack": args.per_pack,
        "runs": {},
    }
    for n in (int(x) for x in args.blobs.split(",")):
        with tempfile.TemporaryDirectory(prefix="bench-index-") as tmp:
            log(f"writing {n} records ...")
            segments = write_segments(Path(tmp), n, args.segment, args.per_pack)
            run: dict[str, Any] = {"segments": segments}
            for variant in args.variants.split(","):
                log(f"N={n} {variant} ...")
                run[variant] = run_child(variant, tmp, n)
            if "dict" in run and "native" in run:
                run["native_vs_dict"] = {
                    "load_speedup": round(run["dict"]["load_s"] / run["native"]["load_s"], 1),
                    "memory_ratio": round(
                        run["dict"]["rss_retained_MiB"] / max(run["native"]["rss_retained_MiB"], 0.1), 1
                    ),
                }
            report["runs"][str(n)] = run
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
