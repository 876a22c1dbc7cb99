"""The watch daemon on the corpus's checkpoint series: bytes uploaded per step and the delay
from "checkpoint finished" to "version visible", with restic backing up the same steps.

Usage::

    python benchmarks/bench_watch.py [--quick] [--dir DIR] [--keep] [--s3]

1. ``benchmarks/corpus.py DIR/src --checkpoints --only checkpoints`` writes
   ``checkpoints/stepK/model.bin`` (K = 0..4; 512 MiB each, 64 MiB with ``--quick``; 30 % of
   the 4 MiB blocks change per step, the rest are frozen layers).
2. A `syncengine.Watcher` (in this process, settle time 1 h: only the marker counts) watches
   ``DIR/run``; a simulated trainer copies each step there in 8 MiB writes, then writes the
   marker ``stepK.done`` and waits until the watcher reports the version logged (its record
   and head written: visible to every reader) before it writes the next step.
3. restic (Debian package) backs up each step folder into one local restic repository; its
   ``data_added`` per step is the peer's figure for the same dedup question.

Per step: the step's bytes, the bytes the put uploaded (``new_bytes``: new chunks), the
restic bytes added, the delay marker → version visible and restic's seconds. One JSON object
goes to stdout. ``--s3`` logs into a SeaweedFS server started for the run instead of a local
repository. Do not run it while others run tests on the machine: it is I/O-heavy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PIECE = 8 << 20


def make_corpus(src: Path, quick: bool) -> list[Path]:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "corpus.py"), str(src), "--checkpoints"]
    cmd += ["--only", "checkpoints", *(["--quick"] if quick else [])]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return sorted((src / "checkpoints").iterdir(), key=lambda p: int(p.name[4:]))


def copy_slowly(src: Path, dst: Path) -> None:
    """As a trainer writes: in pieces, flushed, into the final name."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        with open(f, "rb") as i, open(dst / f.name, "wb") as o:
            while piece := i.read(PIECE):
                o.write(piece)
                o.flush()


def restic_step(repo: Path, folder: Path, env: dict[str, str]) -> dict[str, Any]:
    start = time.perf_counter()
    out = subprocess.run(
        ["restic", "-r", str(repo), "backup", "--json", "-q", str(folder)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    seconds = time.perf_counter() - start
    summary = [json.loads(line) for line in out.splitlines() if '"summary"' in line][-1]
    return {"restic_added_bytes": summary["data_added"], "restic_seconds": round(seconds, 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="64 MiB checkpoints instead of 512 MiB")
    ap.add_argument("--dir", type=Path, default=None, help="work dir (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    ap.add_argument("--s3", action="store_true", help="log into a SeaweedFS server started for the run")
    args = ap.parse_args()
    work = args.dir or Path(tempfile.mkdtemp(prefix="bench-watch-"))
    os.environ.setdefault("SYNCENGINE_STATE_DIR", str(work / "state"))
    os.environ.setdefault("SYNCENGINE_CACHE_DIR", str(work / "cache"))
    sys.path.insert(0, str(ROOT))
    from syncengine import Watcher
    from syncengine.watch import WatchEvent

    server = None
    try:
        steps = make_corpus(work / "src", args.quick)
        if args.s3:
            from tests.s3server import S3TestServer

            server = S3TestServer()
            server.start()
            os.environ.update(server.env())
            repo = f"s3://{server.new_bucket()}/bench"
        else:
            repo = str(work / "repo")
        run = work / "run"
        run.mkdir()
        logged: dict[str, tuple[float, WatchEvent]] = {}
        cond = threading.Condition()

        def on_event(e: WatchEvent) -> None:
            if e.event == "logged":
                with cond:
                    logged[e.checkpoint or ""] = (time.perf_counter(), e)
                    cond.notify_all()

        w = Watcher(run, "bench/model", repo=repo, settle=3600, on_event=on_event, rescan=3600)
        t = threading.Thread(target=w.run)
        t.start()
        restic_env = {**os.environ, "RESTIC_PASSWORD": "bench"}
        have_restic = shutil.which("restic") is not None
        if have_restic:
            init = ["restic", "-r", str(work / "restic"), "init"]
            subprocess.run(init, check=True, capture_output=True, env=restic_env)
        rows = []
        for src in steps:
            name = src.name
            copy_slowly(src, run / name)
            (run / f"{name}.done").write_text("")
            marked = time.perf_counter()
            with cond:
                if not cond.wait_for(lambda n=name: n in logged, timeout=600):  # type: ignore[misc]
                    raise SystemExit(f"{name} was not logged in 600 s")
                at, event = logged[name]
            size = sum(f.stat().st_size for f in (run / name).iterdir())
            row: dict[str, Any] = {
                "step": name,
                "bytes": size,
                "uploaded_bytes": event.fields["new_bytes"],
                "uploaded_ratio": round(event.fields["new_bytes"] / size, 3),
                "marker_to_visible_seconds": round(at - marked, 3),
                "log_seconds": event.fields["seconds"],
            }
            if have_restic:
                row.update(restic_step(work / "restic", run / name, restic_env))
            rows.append(row)
        w.stop()
        t.join()
        total = sum(r["bytes"] for r in rows)
        out: dict[str, Any] = {
            "repo": "s3 (SeaweedFS, loopback)" if args.s3 else "local",
            "checkpoint_bytes": rows[0]["bytes"],
            "steps": rows,
            "total_bytes": total,
            "total_uploaded": sum(r["uploaded_bytes"] for r in rows),
        }
        if have_restic:
            out["restic_total_added"] = sum(r["restic_added_bytes"] for r in rows)
            version = subprocess.run(["restic", "version"], capture_output=True, text=True).stdout.strip()
            out["restic"] = version
        else:
            out["restic"] = "not installed (apt-get install restic)"
        print(json.dumps(out, indent=2))
    finally:
        if server is not None:
            server.stop()
        if not args.keep and args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
