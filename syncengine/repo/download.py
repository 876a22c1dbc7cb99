"""Download, checkout and verify: a version's files in a local folder, moving only what is missing.

A download streams the manifest in windows of entries. For each window it

1. checks every path (relative, no ``..``, no way out of the root through a symlink) before
   touching the disk, and that each entry is self-consistent (chunk lengths add up to the
   size, the chunk list gives the file digest), so verified blobs make a verified file;
2. skips files that are already there with the right content (same size, and the same
   digest from the stat cache or by hashing the file), and takes others from the local
   file cache when one is given (re-hashed before use);
3. copies chunks that local files of the window already hold (above all the unchanged
   chunks of a changed large file at its own path, which is hashed for this), each checked
   against its digest, so a newer version moves only its new chunks;
4. fetches the remaining blobs: grouped by pack, neighbouring ranges coalesced into one
   ranged GET, up to ``concurrency`` requests and ``max_bytes_in_flight`` bytes at once;
   every blob is checked against its BLAKE3 digest; chunks are written at their offsets
   (``pwrite``) into a temp file next to the target (``.se-tmp-…``, naming its writer), whose
   writeback to the disk starts at once (``durable.start_writeback``); once all its chunks are
   in, it is made durable with the rest of the window (one syncfs) and renamed over the
   target. A file never sits whole in memory: a 2 GiB file needs a few ranges' worth of RAM.

On any error (or cancellation) the window's temp files are removed after the worker threads
stopped; files already renamed are complete and correct. A large file's temp file is named
after its content from the start: after any interruption, ``kill -9`` included, the next
download takes it over and keeps the chunks it holds that match their digests. Temp files of
downloads whose process has ended (on this host) are swept from the directories a download
writes into; a concurrent download's are left alone. No file that is not in the version is
ever deleted, except by ``mode="checkout"``, which afterwards removes everything under the
root (or under ``path_prefix``) that the version does not have, without following symlinks.
See docs/DOWNLOAD.md.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import os
import shutil
import socket
import stat
import threading
import uuid
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Final, Literal, NamedTuple, ParamSpec, TypeVar

import blake3 as _blake3

from syncengine._loop import gather_all
from syncengine.durable import NoSyncBatch, SyncBatch, start_writeback
from syncengine.errors import FileChangedError, ObjectChanged, ObjectNotFound, SyncEngineError
from syncengine.file_modes import file_mode, umask
from syncengine.hashing import backend
from syncengine.hashing.digests import Chunk, FileDigest
from syncengine.hashing.stat_cache import StatCache, StatKey, now_ns
from syncengine.repo.blob_index import BlobIndex
from syncengine.repo.file_cache import FileCache
from syncengine.repo.manifest import (
    ManifestEntry,
    ManifestError,
    ManifestReader,
    UnsafePath,
    check_entry,
    check_path,
)
from syncengine.repo.pack import CODEC_NONE, CorruptData, IndexEntry, blob_mismatch, check_bounds, read_blob
from syncengine.repo.records import VersionRecord
from syncengine.repo.repository import Repository, _obj_key, safe_target
from syncengine.terminal_text import shown
from syncengine.transfer import default_limits

__all__ = [
    "Difference",
    "DownloadResult",
    "PathConflict",
    "VerifyFailed",
    "check",
    "default_root",
    "download",
    "verify",
]

Mode = Literal["download", "checkout"]

#: Two blobs of a pack at most this far apart are fetched by one ranged GET (gap included).
MAX_GAP: Final = 1 << 20
#: A coalesced range grows to at most this many bytes (a larger single blob is its own range).
MAX_RANGE: Final = 8 << 20
#: The same from a store that streams (S3): a range holds only its two buffers in memory,
#: and fewer, larger requests cost the server less. 64 MiB makes a whole pack (32 MiB) one
#: GET: SeaweedFS spent 1.2-1.3 CPU-s serving a 1 GiB get that way, 1.45-1.85 s in 16 MiB
#: ranges, 2.0-2.2 s in 8 MiB ones (interleaved runs, same machine).
MAX_STREAMED_RANGE: Final = 64 << 20
#: Default bound on stored bytes fetched but not yet written. Peak memory is about twice this
#: (freed range buffers stay with the allocator's per-thread arenas for a while).
MAX_BYTES_IN_FLIGHT: Final = 64 << 20
#: Manifest entries (and blobs) planned at once; a window's files are made durable with one
#: syncfs. 16384 rather than 4096: on the 10,042-file corpus one window instead of three took
#: `get` from 6.5–7.2 s to 5.0–5.9 s (less kernel time; fewer serial sync points).
WINDOW_FILES: Final = 16384
WINDOW_BLOBS: Final = 65536
#: Writeback of a temp file is started (``durable.start_writeback``) each time this many of
#: its bytes were written since the last start, and when it is complete: early enough that the
#: disk writes while the CPU works, in pieces large enough to be allocated and written in long
#: runs. Files written side by side get extents of about this size (the corpus' 512 MiB files:
#: 31-52 extents; 5-7 when all is written by the final syncfs; 44-58 with a start per chunk).
WRITEBACK_STEP: Final = 16 << 20
#: A streamed range is handed to a thread (hashed and written) in pieces of about this
#: many bytes: few hand-offs, and each piece is still in the CPU's cache when it is
#: hashed and copied into the page cache (a whole 8 MiB range joined first cost a copy and
#: then two passes over cold memory: 3 times s5cmd's CPU for a 1 GiB download).
FEED_BYTES: Final = 1 << 20
#: At most this many large files are hashed at once (each needs a buffer of 4 x max chunk).
HASH_THREADS: Final = 4
#: Every temp file a download writes starts with this: ``.se-tmp-<host>-<boot>-<pid>-<token>``
#: for a small file (the writer named, see :func:`_writer_gone`), and
#: ``PARTIAL_PREFIX<digest prefix>-<host>-<boot>-<pid>-<token>`` for a large (chunked) one.
TMP_PREFIX: Final = ".se-tmp-"
#: A large file's temp file, named after the first 40 hex digits of its file digest from its
#: first byte on, so that the next download of that content finds it after any interruption
#: (kill -9 included) and keeps the chunks it holds (each verified by its digest when read).
#: Without a writer in the name (``PARTIAL_PREFIX<digest prefix>[-<token>]``) it is released:
#: left by a download that stopped on an error, free for any download to take over.
PARTIAL_PREFIX: Final = ".se-tmp-partial-"
_EMPTY_DIGEST: Final = _blake3.blake3(b"").digest()

_P = ParamSpec("_P")
_T = TypeVar("_T")


class PathConflict(SyncEngineError, FileExistsError):
    """Something that is not a regular file is where the version has a file (or a file is
    where it needs a directory); ``download`` refuses to remove it, ``checkout`` replaces it."""


class Difference(NamedTuple):
    """One way a folder differs from a version: ``missing`` (in the version, not on disk),
    ``extra`` (on disk, not in the version) or ``changed`` (both, other content or type)."""

    path: str
    kind: Literal["missing", "extra", "changed"]
    detail: str

    def __str__(self) -> str:  # one terminal-safe line: paths come from the repository and the disk
        return f"{self.kind}: {shown(self.path)} ({shown(self.detail)})"


class VerifyFailed(SyncEngineError):
    """A folder is not exactly the version; ``differences`` lists how."""

    def __init__(self, root: str, differences: Sequence[Difference]) -> None:
        self.root = root
        self.differences = list(differences)
        counts = {k: sum(d.kind == k for d in differences) for k in ("missing", "extra", "changed")}
        summary = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
        shown = "; ".join(str(d) for d in self.differences[:10])
        more = f"; and {len(self.differences) - 10} more" if len(self.differences) > 10 else ""
        super().__init__(f"{root} differs from the version ({summary}): {shown}{more}")


@dataclass
class DownloadResult:
    """What a download did. ``bytes_fetched`` counts bytes received from the store (stored,
    possibly compressed, including gaps of coalesced ranges); ``requests`` the ranged GETs of
    packs (manifest pages and index segments are not counted)."""

    root: str
    files: int = 0  # entries of the version (under path_prefix)
    written: int = 0  # files written: fetched, taken from the cache, or empty
    present: int = 0  # already there with the right content, left untouched
    from_cache: int = 0
    bytes_written: int = 0
    bytes_fetched: int = 0
    bytes_reused: int = 0  # taken from local files (e.g. unchanged chunks of a changed file)
    requests: int = 0
    removed: int = 0  # checkout: files, symlinks and other non-directories deleted
    swept: int = 0  # temp files left by downloads whose process has ended, deleted
    references: list[str] = field(default_factory=list)  # entries naming external objects
    #: Their entries: fetched from their sources after the stored files (repo/references.py).
    reference_entries: list[ManifestEntry] = field(default_factory=list, repr=False)


def default_root(record: VersionRecord) -> str:
    """Where a download goes when no root is given: ``./artifacts/<name>-v<N>`` under the
    current directory (the default of ``syncengine.aio`` too)."""
    return os.path.join("artifacts", f"{record.name}-v{record.version}")


# -- paths -------------------------------------------------------------------------------------


def _norm_prefix(prefix: str | None) -> str:
    """``path_prefix`` as a string prefix of entry paths (as W&B's): leading ``/`` dropped,
    a trailing ``/`` kept (``train/`` selects only what is inside ``train``)."""
    if not prefix:
        return ""
    p = prefix.lstrip("/")
    body = p.rstrip("/")
    if not body:
        return ""
    try:
        check_path(body)
    except UnsafePath:
        raise UnsafePath(f"path_prefix {prefix!r} is not a plain relative path") from None
    return body + "/" if p != body else body


def selects(path: str, prefix: str | None) -> bool:
    """Whether ``path_prefix`` selects the entry ``path``: a plain string prefix, so ``train``
    selects ``train.csv``, ``train/x`` and ``trainer/y``; ``train/`` only ``train/x``."""
    return path.startswith(_norm_prefix(prefix))


def _within(real: str, root: str) -> bool:
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


async def _entries(reader: ManifestReader, prefix: str) -> AsyncIterator[ManifestEntry]:
    """Entries under ``prefix``, refusing a file inside another file. The reader yields
    them in strictly increasing path order or raises (a manifest out of order would make
    checkout delete wanted files), and only those starting with ``prefix``."""
    # Earlier paths that are string prefixes of the current one: the only ones that can be
    # its ancestors (in byte order, a path that stops being a prefix never becomes one again).
    stack: list[bytes] = []
    async for e in reader.entries(prefix):
        key = e.path.encode()
        while stack and not key.startswith(stack[-1]):
            stack.pop()
        for p in stack:
            if key[len(p) : len(p) + 1] == b"/":
                raise ManifestError(f"manifest has a file {p.decode()!r} and a file {e.path!r} inside it")
        stack.append(key)
        yield e


# -- the folder walk (checkout and verify) -------------------------------------------------------


class _Item(NamedTuple):
    key: bytes  # relative path as bytes (UTF-8 for valid names): the merge order
    abspath: str
    kind: Literal["file", "symlink", "other"]


def _walk_dir(absdir: str, rel: bytes, start: bytes = b"") -> Iterator[_Item]:
    """Non-directories under ``absdir`` in byte order of their relative paths (directories
    sorted as ``name/``, like the scanner), never following symlinks; at the top only the
    names that begin with ``start``."""
    with os.scandir(absdir) as it:
        listing = []
        for e in it:
            name = os.fsencode(e.name)
            if not name.startswith(start):
                continue
            is_dir = e.is_dir(follow_symlinks=False)
            listing.append((name + b"/" if is_dir else name, name, e, is_dir))
    listing.sort(key=lambda t: t[0])
    for _, name, e, is_dir in listing:
        r = rel + b"/" + name if rel else name
        if is_dir:
            yield from _walk_dir(e.path, r)
        elif e.is_file(follow_symlinks=False):
            yield _Item(r, e.path, "file")
        else:
            yield _Item(r, e.path, "symlink" if e.is_symlink() else "other")


def _scope(root: str, prefix: str) -> tuple[str | None, str]:
    """Where a (string) prefix selects in the folder: the real path of the directory holding
    the selected names — None unless every directory on the way is a real directory (no
    symlink) — and the start those names have (``data/tr`` → root/data, ``tr``)."""
    folder, _, start = prefix.rpartition("/")
    cur = root
    for name in folder.split("/") if folder else ():
        cur = os.path.join(cur, name)
        try:
            st = os.lstat(cur)
        except (FileNotFoundError, NotADirectoryError):
            return None, start
        if not stat.S_ISDIR(st.st_mode):
            return None, start
    return (cur if os.path.isdir(cur) else None), start


def _walk(root: str, prefix: str) -> Iterator[_Item]:
    top, start = _scope(root, prefix)
    if top is not None:
        yield from _walk_dir(top, prefix.rpartition("/")[0].encode(), start.encode())


def _show(key: bytes) -> str:
    return key.decode("utf-8", "backslashreplace")


# -- shared machinery ------------------------------------------------------------------------------


class _Session:
    """Threads, hashers and the stat cache shared by download and verify."""

    def __init__(self, repo: Repository, root: str, workers: int, use_stat_cache: bool) -> None:
        self.repo = repo
        self.root = root
        self.pool = concurrent.futures.ThreadPoolExecutor(max(4, workers), thread_name_prefix="syncengine-dl")
        self.inflight: set[concurrent.futures.Future[Any]] = set()
        self._hashers: list[Any] = []
        self._hash_lock = threading.Lock()
        self._hash_slots = threading.BoundedSemaphore(HASH_THREADS)
        self._stat_lock = threading.Lock()
        self.stat_cache = StatCache(None, repo.params.label) if use_stat_cache else None

    async def run(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """``fn`` in the session's threads; the future is tracked until it finishes, so
        cleanup can wait for every thread that might still write."""
        cf = self.pool.submit(fn, *args, **kwargs)
        self.inflight.add(cf)
        cf.add_done_callback(self.inflight.discard)
        return await asyncio.wrap_future(cf)

    def wait_threads(self) -> None:
        concurrent.futures.wait(list(self.inflight))

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        if self.stat_cache is not None:
            with self._stat_lock:
                self.stat_cache.close()

    def digest_of(self, path: str, st: os.stat_result, *, remember: bool = True) -> FileDigest | None:
        """The digest (and chunks) of the regular file with lstat ``st`` (stat cache, else
        hashing); None if it changed while read or vanished."""
        size = st.st_size
        key = StatKey(st.st_dev, st.st_ino, size, st.st_mtime_ns, st.st_ctime_ns)
        if self.stat_cache is not None and remember:
            with self._stat_lock:
                hit = self.stat_cache.lookup(path, key)
            if hit is not None:
                return hit
        started = now_ns()
        with self._hash_slots:
            with self._hash_lock:
                hasher = self._hashers.pop() if self._hashers else backend.impl.FileHasher(self.repo.params)
            try:
                d = hasher.hash_file(path, size)
            except (FileChangedError, FileNotFoundError):
                return None
            finally:
                with self._hash_lock:
                    self._hashers.append(hasher)
        if self.stat_cache is not None and remember:
            with self._stat_lock:
                self.stat_cache.store(path, key, d, started)
        return FileDigest(d.size, bytes(d.digest), tuple(Chunk(*c) for c in d.chunks))

    def inspect(self, path: str, entry: ManifestEntry, *, want_chunks: bool = False) -> _Inspection:
        """Whether ``path`` is a regular file with the entry's content (and why not). With
        ``want_chunks``, a large file of another size is hashed too, so that its chunks can
        be reused."""
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return _Inspection(False, "not on disk")
        if stat.S_ISLNK(st.st_mode):
            return _Inspection(False, "is a symlink, not a regular file")
        if stat.S_ISDIR(st.st_mode):
            return _Inspection(False, "is a directory, not a regular file")
        if not stat.S_ISREG(st.st_mode):
            return _Inspection(False, "is not a regular file")
        why = ""
        if st.st_size != entry.size:
            why = f"size {st.st_size}, the version has {entry.size}"
            if not (want_chunks and entry.chunks and st.st_size > self.repo.params.small_file_limit):
                return _Inspection(False, why)
        try:
            d = self.digest_of(path, st)
        except PermissionError:
            return _Inspection(False, "cannot be read")
        if d is None:
            return _Inspection(False, "changed while being read")
        if why or d.digest != entry.digest:
            return _Inspection(False, why or "content differs", d)
        return _Inspection(True, "", d)


class _Inspection(NamedTuple):
    ok: bool
    why: str
    digest: FileDigest | None = None


# -- temp files and their writers ----------------------------------------------------------------

_NO_BOOT: Final = "0" * 8
_HEX: Final = frozenset("0123456789abcdef")


def _first_line(*paths: str) -> str:
    for p in paths:
        try:
            with open(p, encoding="ascii", errors="replace") as f:
                line = f.readline().strip()
        except OSError:
            continue
        if line:
            return line
    return ""


@functools.cache
def _host_and_boot() -> tuple[str, str]:
    """Where this process's pid means something, as two tags of 8 hex digits: the host (its
    name, machine id and pid namespace: containers sharing a folder do not share pids) and the
    boot (a pid names nothing of an earlier boot; ``_NO_BOOT`` where the boot id is unknown)."""
    try:
        pidns = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        pidns = ""
    machine = _first_line("/etc/machine-id", "/var/lib/dbus/machine-id")
    host = _blake3.blake3(f"{socket.gethostname()}\0{machine}\0{pidns}".encode()).hexdigest()[:8]
    boot_id = _first_line("/proc/sys/kernel/random/boot_id")
    boot = _blake3.blake3(boot_id.encode()).hexdigest()[:8] if boot_id else _NO_BOOT
    return host, boot


def _writer_tag() -> str:
    """This process as the writer named in its temp files: ``<host>-<boot>-<pid>``."""
    host, boot = _host_and_boot()
    return f"{host}-{boot}-{os.getpid()}"


def _temp_name(writer: str, digest: bytes | None) -> str:
    """A new temp file name for ``writer``; with ``digest``, a large file's (``PARTIAL_PREFIX``)."""
    token = uuid.uuid4().hex[:16]
    if digest is None:
        return f"{TMP_PREFIX}{writer}-{token}"
    return f"{PARTIAL_PREFIX}{digest.hex()[:40]}-{writer}-{token}"


def _released_name(digest: bytes) -> str:
    """A large file's temp file that no writer holds any more (any download may take it over)."""
    return f"{PARTIAL_PREFIX}{digest.hex()[:40]}-{uuid.uuid4().hex[:16]}"


class _Temp(NamedTuple):
    #: A large file's temp file: the first 40 hex digits of the file digest; None: a small file's.
    digest: str | None
    #: (host, boot, pid) of the writer; None: nobody's (released, or written by an older version).
    writer: tuple[str, str, int] | None


def _is_hex(s: str, n: int | None = None) -> bool:
    return bool(s) and (n is None or len(s) == n) and set(s) <= _HEX


def _parse_temp(name: str) -> _Temp | None:
    """What a download's temp file name says; None for any other name."""
    if not name.startswith(TMP_PREFIX):
        return None
    rest = name[len(TMP_PREFIX) :]
    digest: str | None = None
    if rest.startswith("partial-"):
        fields = rest[len("partial-") :].split("-")
        digest = fields.pop(0)
        if not _is_hex(digest, 40):
            return None
        if not fields:
            return _Temp(digest, None)  # an older version's released name
    else:
        fields = rest.split("-")
    if len(fields) == 1 and _is_hex(fields[0]):
        return _Temp(digest, None)
    if len(fields) == 4:
        host, boot, pid, token = fields
        pid_ok = pid.isascii() and pid.isdigit() and len(pid) <= 10
        if pid_ok and _is_hex(host, 8) and _is_hex(boot, 8) and _is_hex(token):
            return _Temp(digest, (host, boot, int(pid)))
    return None


def _zombie(pid: int) -> bool:
    """A process that has ended but was not reaped yet (Linux; False where unknown)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except OSError:
        return False
    end = text.rfind(b")")
    return end >= 0 and text[end + 2 : end + 3] in (b"Z", b"X")


def _writer_gone(writer: tuple[str, str, int]) -> bool:
    """Whether the process that named itself ``writer`` in a temp file has certainly ended:
    it ran on this host (and pid namespace) and either in an earlier boot or its pid is not
    running now (or is a zombie). A writer of another host, this process, or a pid that
    is running (even if reused by another program) counts as alive: its files are left alone."""
    host, boot, pid = writer
    my_host, my_boot = _host_and_boot()
    if os.name != "posix" or host != my_host:
        return False  # another machine or pid namespace: its processes cannot be seen from here
    if boot != my_boot and _NO_BOOT not in (boot, my_boot):
        return True  # written before this machine was last started
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except OSError:
        return False  # EPERM: it exists (another user's)
    return _zombie(pid)


def _live_temp(path: str) -> bool:
    """A download's temp file whose writer may still be writing it."""
    t = _parse_temp(os.path.basename(path))
    return t is not None and t.writer is not None and not _writer_gone(t.writer)


# -- download ---------------------------------------------------------------------------------------


class _Aborted(Exception):
    pass


_FETCH, _PRESENT, _WRITTEN, _CACHED = "fetch", "present", "written", "cached"


class _FileJob:
    __slots__ = (
        "adopted",
        "blobs",
        "created",
        "done",
        "entry",
        "local",
        "lock",
        "parts",
        "remaining",
        "seq",
        "state",
        "target",
        "tmp",
        "unstarted",
        "write_lock",
        "written",
    )

    def __init__(self, entry: ManifestEntry, parts: list[str], root: str, seq: int, writer: str) -> None:
        self.entry = entry
        self.parts = parts
        self.target = os.path.join(root, *parts)
        # A large file's temp file is named after its content from the start, so that it can
        # be resumed after any interruption (see _adopt); a small one names only its writer.
        name = _temp_name(writer, entry.digest if entry.chunks else None)
        self.tmp = os.path.join(os.path.dirname(self.target), name)
        self.adopted = False  # tmp is a temp file of this content that an earlier writer left
        self.written = False  # some blob is in the temp file
        self.unstarted = 0  # bytes written whose writeback was not started yet
        self.seq = seq
        self.state = ""
        self.remaining = 0
        #: (digest, offset, length) of the blobs still to be written.
        self.blobs: list[tuple[bytes, int, int]] = []
        #: Digest and chunks of the file that was at the target (reusable content).
        self.local: FileDigest | None = None
        self.created = False
        self.done = False
        self.lock = threading.Lock()
        #: One pwrite into the temp file at a time: the kernel serializes writes to one
        #: file anyway (the inode lock), and threads waiting here sleep instead of spinning
        #: on that lock (14 % of a 1 GiB get's CPU samples were that spinning).
        self.write_lock = threading.Lock()

    @property
    def partial_key(self) -> tuple[str, str]:
        """(directory, digest prefix): where large-file temp files of this content are found."""
        return os.path.dirname(self.target), self.entry.digest.hex()[:40]

    def open(self, abort: threading.Event) -> int:
        with self.lock:
            if abort.is_set():
                raise _Aborted
            flags = os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW
            if not self.created:
                fd = os.open(self.tmp, flags | os.O_CREAT | os.O_EXCL, 0o600)
                self.created = True
                return fd
            return os.open(self.tmp, flags)


@dataclass
class _Range:
    pack: bytes
    start: int
    end: int
    blobs: list[IndexEntry]
    seq: int = 0

    @property
    def size(self) -> int:
        return self.end - self.start


class _Budget:
    """Bytes in flight: waits while ``limit`` would be exceeded (one request may always run)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiters: list[asyncio.Future[None]] = []

    async def acquire(self, n: int) -> None:
        while self.used and self.used + n > self.limit:
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
        self.used += n

    def release(self, n: int) -> None:
        self.used -= n
        for w in self._waiters:
            if not w.done():
                w.set_result(None)
        self._waiters.clear()


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _start_writeback_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        start_writeback(fd)
    finally:
        os.close(fd)


def _names(dests: Sequence[tuple[_FileJob, int]]) -> str:
    paths = list(dict.fromkeys(j.entry.path for j, _ in dests))
    more = f" (and {len(paths) - 3} more files)" if len(paths) > 3 else ""
    return ", ".join(paths[:3]) + more


_Gone = ObjectNotFound | ObjectChanged


def _hashed_in_place(loc: IndexEntry) -> bool:
    """A raw-stored blob: hashed and written piece by piece as it arrives."""
    return loc.codec == CODEC_NONE and loc.stored == loc.raw


def _ignore_outcome(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


class _RangeSink:
    """Receives the stored bytes of one range, in order, and writes each blob into its files
    as its bytes come, hashing them on the way (a raw-stored blob; an encoded one is
    gathered, then decoded and checked by ``read_blob``). A file counts a blob only once
    its digest matched, so no file is complete, let alone renamed, before every blob of it
    was verified; a mismatch raises ``CorruptData`` naming the files, and the window then
    removes their temp files. ``feed`` runs in the session's threads, one call at a time."""

    __slots__ = ("_buf", "_closed", "_d", "_fds", "_hasher", "_i", "_lock", "_pos", "_r", "received")

    def __init__(self, d: _Downloader, r: _Range) -> None:
        self._d = d
        self._r = r
        self._pos = r.start  # the pack offset of the next byte
        self._i = 0  # r.blobs[_i] is the blob being received
        self._hasher: Any = None
        self._buf: list[bytes] = []  # an encoded blob's stored bytes so far
        self._fds: dict[_FileJob, int] = {}
        self.received = 0
        #: ``close`` waits for a ``feed`` still running (the fetch failed while a thread
        #: wrote), and no ``feed`` writes after it.
        self._lock = threading.Lock()
        self._closed = False

    def unfinished(self) -> list[IndexEntry]:
        """The blobs no file has counted yet."""
        return self._r.blobs[self._i :]

    def feed(self, chunks: Sequence[bytes | memoryview], last: bool) -> None:
        with self._lock:
            if self._closed:
                raise _Aborted
            self._feed(chunks, last)

    def _feed(self, chunks: Sequence[bytes | memoryview], last: bool) -> None:
        d, r = self._d, self._r
        blobs = r.blobs
        for chunk in chunks:
            self.received += len(chunk)
            view = memoryview(chunk)
            while view and self._i < len(blobs):
                loc = blobs[self._i]
                if self._pos < loc.offset:  # a gap between two blobs of the range
                    skip = min(len(view), loc.offset - self._pos)
                    view = view[skip:]
                    self._pos += skip
                    continue
                take = min(len(view), loc.offset + loc.stored - self._pos)
                piece = view[:take]
                if _hashed_in_place(loc):
                    if self._hasher is None:
                        self._hasher = _blake3.blake3()
                    self._hasher.update(piece)
                    at = self._pos - loc.offset
                    for job, offset in d.dests[loc.digest]:
                        d._put(job, offset + at, piece, self._fds)
                else:
                    self._buf.append(bytes(piece))
                self._pos += take
                view = view[take:]
                if self._pos == loc.offset + loc.stored:
                    self._blob_done(loc)
            if view:
                raise CorruptData(
                    f"pack {r.pack.hex()}: the store sent more than the {r.size} bytes of "
                    f"range {r.start}-{r.end}"
                )
        if not last:
            return
        while self._i < len(blobs) and blobs[self._i].stored == 0 and blobs[self._i].offset == self._pos:
            self._blob_done(blobs[self._i])  # an empty blob at the end: nothing to receive
        if self._i < len(blobs):
            who = _names([x for b in blobs[self._i :] for x in d.dests[b.digest]])
            raise CorruptData(f"{who}: pack {r.pack.hex()} ended at byte {self._pos}, before byte {r.end}")

    def _blob_done(self, loc: IndexEntry) -> None:
        d = self._d
        dests = d.dests[loc.digest]
        if _hashed_in_place(loc):
            hasher, self._hasher = self._hasher or _blake3.blake3(), None
            if hasher.digest() != loc.digest:
                raise CorruptData(f"{_names(dests)}: {blob_mismatch(loc.pack, loc)}")
        else:
            stored, self._buf = b"".join(self._buf), []
            try:
                raw = read_blob(loc.pack, stored, loc, d.repo.params.max_size)
            except CorruptData as e:
                raise CorruptData(f"{_names(dests)}: {e}") from e
            for job, offset in dests:
                d._put(job, offset, raw, self._fds)
        self._i += 1
        for job, _ in dests:
            d._blob_written(job, loc.raw, self._fds)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            fds, self._fds = self._fds, {}
            for fd in fds.values():
                os.close(fd)


class _Downloader(_Session):
    def __init__(
        self,
        repo: Repository,
        root: str,
        index: BlobIndex,
        *,
        mode: Mode,
        concurrency: int,
        cache: FileCache | None,
        max_bytes_in_flight: int,
        max_gap: int,
        max_range: int,
        use_stat_cache: bool,
        fsync: bool = True,
    ) -> None:
        super().__init__(repo, root, concurrency, use_stat_cache)
        #: False (``get --no-fsync``): files are not flushed, their writeback is left to the
        #: kernel, and they do not go into the file cache (whose entries must be durable).
        self.fsync = fsync
        #: Files get their entry's mode through the umask (``file_modes``), read once here.
        self.umask = umask()
        self.index = index
        self._refresh = asyncio.Lock()
        self._refreshed = False  # the index was refreshed after a missing pack (once)
        self.mode = mode
        self.concurrency = concurrency
        self.cache = cache
        self.budget = _Budget(max_bytes_in_flight)
        #: Receive buffers of FEED_BYTES (see _receive), reused from range to range.
        self._buffers: list[memoryview] = []
        self.max_gap = max_gap
        self.max_range = max_range
        self.result = DownloadResult(root)
        self.abort = threading.Event()
        self.dests: dict[bytes, list[tuple[_FileJob, int]]] = {}
        self._seq = 0
        self._pending: list[tuple[_FileJob, bool]] = []
        self._pending_lock = threading.Lock()
        self.on_progress: Callable[[int, int], None] | None = None
        self._done_files = 0
        self._done_bytes = 0
        self.writer = _writer_tag()
        #: Directories whose temp files were looked at (each once per download).
        self._swept: set[str] = set()
        #: Large-file temp files nobody writes any more, by (directory, digest prefix).
        self._abandoned: dict[tuple[str, str], list[str]] = {}

    # -- per entry, in a thread ------------------------------------------------------------------

    def _make_room(self, job: _FileJob, dirs_checked: bool = False) -> None:
        """Checks every existing directory on the way to the target. A symlink there (or at
        the target) that leads out of the root is refused in both modes: it may be the user's
        deliberate link to other storage, and following it would write outside the root.
        Other things in the way (files where the version needs a directory, symlinks within
        the root, a directory or special file at the target) are refused by ``download`` and
        removed by ``checkout``. Nothing is created here."""
        root = self.root
        checkout = self.mode == "checkout"
        cur = root
        path = job.entry.path
        for name in [] if dirs_checked else job.parts[:-1]:
            cur = os.path.join(cur, name)
            try:
                st = os.lstat(cur)
            except FileNotFoundError:
                break  # the rest is created below, inside the root
            if stat.S_ISDIR(st.st_mode):
                continue
            if stat.S_ISLNK(st.st_mode):
                real = os.path.realpath(cur)
                if not _within(real, root):
                    raise UnsafePath(
                        f"manifest path {path!r} would leave {root} through the symlink {cur}; refused"
                    )
                if checkout:
                    os.unlink(cur)  # the version has a directory here
                    self.result.removed += 1
                    break
                if not os.path.isdir(real):
                    raise PathConflict(f"{path}: {cur} links to something that is not a directory")
                continue
            if checkout:
                os.unlink(cur)
                self.result.removed += 1
                break
            raise PathConflict(f"{path}: {cur} exists and is not a directory (checkout would replace it)")
        try:
            st = os.lstat(job.target)
        except (FileNotFoundError, NotADirectoryError):
            return
        if stat.S_ISREG(st.st_mode):
            return
        if stat.S_ISLNK(st.st_mode):
            if not _within(os.path.realpath(job.target), root):
                raise UnsafePath(f"{job.target} is a symlink leading out of {root}; refused")
            if not checkout:
                raise UnsafePath(
                    f"{job.target} is a symlink; refusing to write through it (checkout replaces it)"
                )
        if stat.S_ISDIR(st.st_mode):
            if not checkout:
                raise PathConflict(f"{path}: {job.target} is a directory (checkout would replace it)")
            shutil.rmtree(job.target)
        else:
            os.unlink(job.target)
        self.result.removed += 1

    def _prepare_dirs(self, jobs: list[_FileJob]) -> None:
        ready: set[str] = set()  # parent directories checked (and created) in this pass
        for job in jobs:
            parent = os.path.dirname(job.target)
            if parent in ready:
                self._make_room(job, dirs_checked=True)
                continue
            self._make_room(job)
            safe_target(self.root, job.entry.path)  # creates the parent directories, checks again
            ready.add(parent)
        self._sweep(sorted(ready))

    def _sweep(self, dirs: Iterable[str]) -> None:
        """Looks at the temp files in ``dirs`` (each directory once per download) and, of those
        whose writer has ended (``_writer_gone``), deletes small files' and remembers large
        files' for ``_adopt``. Temp files of live writers (a concurrent download into the same
        folder), of other hosts and without a writer's name are left alone."""
        gone: dict[tuple[str, str, int], bool] = {}
        for d in dirs:
            if d in self._swept:
                continue
            self._swept.add(d)
            try:
                with os.scandir(d) as it:
                    found = [
                        (e.name, e.path)
                        for e in it
                        if e.name.startswith(TMP_PREFIX) and e.is_file(follow_symlinks=False)
                    ]
            except OSError:
                continue
            for name, path in sorted(found):
                t = _parse_temp(name)
                if t is None:
                    continue
                if t.writer is not None:
                    dead = gone.get(t.writer)
                    if dead is None:
                        dead = gone[t.writer] = _writer_gone(t.writer)
                    if not dead:
                        continue
                if t.digest is not None:
                    self._abandoned.setdefault((d, t.digest), []).append(path)
                elif t.writer is not None:  # a small file's: nothing in it is worth keeping
                    try:
                        os.unlink(path)
                    except FileNotFoundError:
                        continue
                    self.result.swept += 1

    def _prepare(self, job: _FileJob) -> None:
        e = job.entry
        seen = self.inspect(job.target, e, want_chunks=True)
        job.local = seen.digest
        if seen.ok:
            job.state = _PRESENT
            self._progress(1, e.size)
            return
        if e.size == 0:
            os.close(job.open(self.abort))
            job.state = _WRITTEN
            self._written(job)
            return
        if self.cache is not None and self.cache.wants(e.size) and self._from_cache(job):
            job.done, job.state = True, _CACHED
            return
        job.state = _FETCH
        if e.chunks:
            offset = 0
            for n, d in e.chunks:
                job.blobs.append((d, offset, n))
                offset += n
        else:
            job.blobs.append((e.digest, 0, e.size))

    def _from_cache(self, job: _FileJob) -> bool:
        assert self.cache is not None
        e = job.entry
        try:
            how = self.cache.materialize(e.digest, e.size, job.tmp)
        except OSError:
            how = None
        if how is None:
            return False
        try:
            st = os.lstat(job.tmp)
            # Never pass on a damaged cache file.
            d = self.digest_of(job.tmp, st, remember=False)
            if d is None or d.digest != e.digest:
                self.cache.discard(e.digest)
                os.unlink(job.tmp)
                return False
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(job.tmp)
            raise
        job.created = True
        if how == "hardlink":  # the cache's file is durable already; only the rename is new
            os.replace(job.tmp, job.target)
            job.done = True
            self._progress(1, e.size)
        else:
            _start_writeback_path(job.tmp)  # a copy's pages are dirty (a clone's are not)
            self._written(job, cached=True)
        return True

    # -- reusing local content ----------------------------------------------------------------------

    def _adopt(self, job: _FileJob) -> None:
        """Takes over the largest temp file of the job's content (same directory) that an
        ended writer left (``_sweep``), renaming it to the job's own temp name: the chunks it
        holds are then checked in place by ``_reuse``, the rest is fetched into it. The rename
        is atomic, so of two downloads resuming at once only one gets it. Only a regular file
        of this user with one link is taken; it is cut to the entry's size and fsynced first
        (the ended writer's data is on the disk before it is trusted; a writeback error it
        left makes the file worthless, and it is deleted)."""
        cands = self._abandoned.get(job.partial_key)
        uid = os.getuid() if hasattr(os, "getuid") else None
        while cands:
            sizes: list[tuple[int, str]] = []
            for path in cands:
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and uid in (None, st.st_uid):
                    sizes.append((st.st_size, path))
            if not sizes:
                return
            path = max(sizes)[1]
            cands.remove(path)
            try:
                os.rename(path, job.tmp)
            except OSError:
                continue  # taken over by another download meanwhile
            job.created = True
            try:
                fd = os.open(job.tmp, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
                try:
                    st = os.fstat(fd)
                    if not stat.S_ISREG(st.st_mode):
                        raise OSError(f"{job.tmp} is not a regular file")
                    if st.st_size > job.entry.size:
                        os.ftruncate(fd, job.entry.size)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(job.tmp)
                job.created = False
                continue
            job.adopted = True
            return

    def _adopt_all(self, jobs: list[_FileJob]) -> None:
        for job in jobs:
            self._adopt(job)

    def _reuse(self, job: _FileJob, local: dict[bytes, tuple[str, int, int]]) -> int:
        """Writes the blobs found in local files (the old content of changed files, files
        already present, temp files of this content left by interrupted downloads) into the
        job's temp file, each checked against its digest; a temp file the job took over keeps
        the blobs it already holds at their offsets. What cannot be read or does not match
        stays in ``job.blobs`` to be fetched. Returns the bytes reused."""
        fd: int | None = None
        own: int | None = None  # the adopted temp file, read
        sources: dict[str, int] = {}
        left: list[tuple[bytes, int, int]] = []
        reused = unstarted = 0
        try:
            if job.adopted:
                with contextlib.suppress(OSError):
                    own = os.open(job.tmp, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            for d, offset, n in job.blobs:
                data = None
                if own is not None:
                    with contextlib.suppress(OSError):
                        data = os.pread(own, n, offset)
                    if data is not None and len(data) == n and _blake3.blake3(data).digest() == d:
                        job.written = True  # already in place (from the interrupted writer)
                        reused += n
                        continue
                    data = None
                src = local.get(d)
                if src is not None:
                    path, at, _ = src
                    sfd = sources.get(path)
                    if sfd is None:
                        with contextlib.suppress(OSError):
                            sfd = sources[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
                    if sfd is not None:
                        with contextlib.suppress(OSError):
                            data = os.pread(sfd, n, at)
                    if data is not None and (len(data) != n or _blake3.blake3(data).digest() != d):
                        data = None  # the file changed since it was hashed: fetch instead
                if data is None:
                    left.append((d, offset, n))
                    continue
                if fd is None:
                    fd = job.open(self.abort)
                _pwrite_all(fd, data, offset)
                job.written = True
                reused += n
                unstarted += n
                if unstarted >= WRITEBACK_STEP:
                    start_writeback(fd)
                    unstarted = 0
            job.blobs = left
            if fd is not None and unstarted:
                start_writeback(fd)
            if not left and fd is not None:
                os.close(fd)
                fd = None
                self._written(job)
            elif not left and job.adopted:  # complete already: its pages may still be dirty
                _start_writeback_path(job.tmp)
                self._written(job)
        finally:
            for sfd in sources.values():
                os.close(sfd)
            if fd is not None:
                os.close(fd)
            if own is not None:
                os.close(own)
        return reused

    async def _reuse_local(self, jobs: list[_FileJob]) -> None:
        local: dict[bytes, tuple[str, int, int]] = {}
        for j in jobs:
            d = j.local
            if d is None or j.state not in (_PRESENT, _FETCH):
                continue
            if d.chunks:
                for c in d.chunks:
                    local.setdefault(c.digest, (j.target, c.offset, c.length))
            else:
                local.setdefault(d.digest, (j.target, 0, d.size))
        resumable = [
            j for j in jobs if j.state == _FETCH and j.entry.chunks and self._abandoned.get(j.partial_key)
        ]
        if resumable:
            await self.run(self._adopt_all, resumable)  # one thread: jobs of one content share a list
        for j in resumable:  # other temp files of the content (and taken-over ones) as sources
            paths = [j.tmp] if j.adopted else []
            for path in paths + self._abandoned.get(j.partial_key, []):
                for blob, offset, n in j.blobs:  # where the interrupted download put them
                    local.setdefault(blob, (path, offset, n))
        todo = [j for j in jobs if j.state == _FETCH and (j.adopted or any(b[0] in local for b in j.blobs))]
        for n in await asyncio.gather(*(self.run(self._reuse, j, local) for j in todo)):
            self.result.bytes_reused += n

    # -- fetching ----------------------------------------------------------------------------------

    def _plan(self, jobs: list[_FileJob]) -> list[_Range]:
        dests: dict[bytes, list[tuple[_FileJob, int]]] = defaultdict(list)
        for job in jobs:
            e = job.entry
            job.remaining = len(job.blobs)
            for d, offset, n in job.blobs:
                loc = self.index.get(d)
                if loc is None:
                    raise CorruptData(f"{e.path}: blob {d.hex()} is in no pack of this repository")
                if loc.raw != n:
                    raise CorruptData(
                        f"{e.path}: blob {d.hex()} is {loc.raw} bytes in the index, the manifest says {n}"
                    )
                try:  # before any buffer or range is sized by it
                    check_bounds(loc.pack, loc, self.repo.params.max_size)
                except CorruptData as bad:
                    raise CorruptData(f"{e.path}: {bad}") from None
                dests[d].append((job, offset))
        self.dests = dests
        by_pack: dict[bytes, list[IndexEntry]] = defaultdict(list)
        for d in dests:
            loc = self.index[d]
            by_pack[loc.pack].append(loc)
        ranges: list[_Range] = []
        for pack, locs in by_pack.items():
            locs.sort(key=lambda x: x.offset)
            cur: _Range | None = None
            for loc in locs:
                end = loc.offset + loc.stored
                if (
                    cur is not None
                    and loc.offset - cur.end <= self.max_gap
                    and max(end, cur.end) - cur.start <= self.max_range
                ):
                    cur.end = max(cur.end, end)
                    cur.blobs.append(loc)
                else:
                    cur = _Range(pack, loc.offset, end, [loc])
                    ranges.append(cur)
        for r in ranges:  # files complete in manifest order, so few are half-written at a time
            r.seq = min(j.seq for loc in r.blobs for j, _ in dests[loc.digest])
        ranges.sort(key=lambda r: (r.seq, r.pack, r.start))
        return ranges

    async def _fetch(self, r: _Range) -> None:
        # What the range holds in memory: all of it, or (streamed) its two receive buffers.
        held = min(r.size, 2 * FEED_BYTES) if self.repo.store.capabilities.streamed_reads else r.size
        await self.budget.acquire(held)
        gone: _Gone | None = None
        sink = _RangeSink(self, r)
        try:
            try:
                # A request slot and its bytes of the process-wide limits, shared with every
                # other transfer of the process (a put uploading meanwhile, other downloads).
                async with default_limits().slot(r.size):
                    await self._receive(r, sink)
            except (ObjectNotFound, ObjectChanged) as e:  # packs are immutable: it was deleted
                gone = e
            else:
                self.result.requests += 1
            finally:
                self.result.bytes_fetched += sink.received
                await self.run(sink.close)
        finally:
            self.budget.release(held)
        if gone is not None:
            for moved in await self._moved(r, sink.unfinished(), gone):
                await self._fetch(moved)

    async def _receive(self, r: _Range, sink: _RangeSink) -> None:
        """The range's stored bytes into ``sink``: from a store that streams, received into
        two buffers of FEED_BYTES in turn, one filling while a thread hashes and writes the
        other (each still in the CPU's cache); else in one ``get``."""
        store, key = self.repo.store, _obj_key("data", r.pack)
        if not store.capabilities.streamed_reads:
            data = await store.get(key, (r.start, r.end))
            await self.run(sink.feed, [data], True)
            return
        bufs = [self._buffers.pop() if self._buffers else memoryview(bytearray(FEED_BYTES)) for _ in range(2)]
        feeding: asyncio.Future[None] | None = None
        try:
            async with store.open_read(key, (r.start, r.end)) as reader:
                i = 0
                while True:
                    n = await reader.readinto(bufs[i])
                    if feeding is not None:
                        await feeding
                        feeding = None
                    if not n:
                        break
                    feeding = asyncio.ensure_future(self.run(sink.feed, [bufs[i][:n]], False))
                    i ^= 1
                await self.run(sink.feed, [], True)
        except BaseException:
            if feeding is not None:  # its outcome no longer matters (sink.close waits for it)
                feeding.add_done_callback(_ignore_outcome)
            raise
        # Back to the pool only now: on an error a thread may still be reading one of them.
        self._buffers.extend(bufs)

    async def _moved(self, r: _Range, blobs: list[IndexEntry], missing: _Gone) -> list[_Range]:
        """The new locations of ``blobs`` of a range whose pack is gone (before or while it
        was read): `gc` repacked them (docs/GC.md §5; the new copies exist before the old
        pack is deleted). The index is refreshed once per download; a blob it still places
        in a missing pack is an error."""
        async with self._refresh:
            if not self._refreshed:
                self._refreshed = True
                self.index = await self.repo.index()
        out: list[_Range] = []
        for loc in blobs:
            new = self.index.get(loc.digest)
            if new is None or new.pack == r.pack or new.raw != loc.raw:
                who = _names([x for b in r.blobs for x in self.dests[b.digest]])
                raise CorruptData(f"{who}: pack {r.pack.hex()} is missing from the store") from missing
            out.append(_Range(new.pack, new.offset, new.offset + new.stored, [new], r.seq))
        return out

    def _put(self, job: _FileJob, offset: int, data: bytes | memoryview, fds: dict[_FileJob, int]) -> None:
        """Bytes of a blob into the job's temp file (not yet counted: see ``_blob_written``)."""
        fd = fds.get(job)
        if fd is None:
            fd = fds[job] = job.open(self.abort)
        with job.write_lock:
            _pwrite_all(fd, data, offset)
        job.written = True

    def _blob_written(self, job: _FileJob, n: int, fds: dict[_FileJob, int]) -> None:
        """A verified blob of ``n`` bytes is wholly in the job's temp file."""
        with job.lock:
            job.remaining -= 1
            last = job.remaining == 0
            job.unstarted += n
            start = last or job.unstarted >= WRITEBACK_STEP
            if start:
                job.unstarted = 0
        fd = fds[job]
        if start and self.fsync:  # the disk writes while the CPU verifies the rest (WRITEBACK_STEP)
            start_writeback(fd)  # the whole file: its pages written through any fd so far
        if last:
            del fds[job]
            os.close(fd)
            self._written(job)

    def _written(self, job: _FileJob, *, cached: bool = False) -> None:
        """The temp file is complete (and its writeback started): it is made durable and
        renamed with the rest of the window (one syncfs for all of them, see
        syncengine.durable)."""
        with self._pending_lock:
            self._pending.append((job, cached))
        self._progress(1, job.entry.size)

    def _progress(self, files: int, nbytes: int) -> None:
        if self.on_progress is None:
            return
        with self._pending_lock:
            self._done_files += files
            self._done_bytes += nbytes
            done = self._done_files, self._done_bytes
        self.on_progress(*done)

    def _commit(self, batch: SyncBatch, jobs: list[_FileJob]) -> None:
        """Durable temp files → renames → durable directory entries, for the window."""
        with self._pending_lock:
            pending, self._pending = self._pending, []
        pending.sort(key=lambda p: p[0].seq)
        batch.flush(j.tmp for j, _ in pending)
        for job, cached in pending:
            self._finish(job, cached)
        batch.flush_dirs({os.path.dirname(j.target) for j in jobs if j.state != _PRESENT})

    def _finish(self, job: _FileJob, cached: bool) -> None:
        e = job.entry
        os.chmod(job.tmp, file_mode(e.mode, self.umask))
        os.replace(job.tmp, job.target)
        job.done = True
        if not cached and self.fsync and self.cache is not None and self.cache.wants(e.size):
            with contextlib.suppress(OSError):  # a cache that cannot take the file is no error
                self.cache.add(job.target, e.digest, e.size)

    async def _fetch_all(self, ranges: list[_Range]) -> None:
        queue = deque(ranges)

        async def worker() -> None:
            while queue:
                await self._fetch(queue.popleft())

        await gather_all([worker() for _ in range(min(self.concurrency, len(ranges)))])

    # -- windows -------------------------------------------------------------------------------------

    async def window(self, entries: list[ManifestEntry]) -> None:
        res = self.result
        jobs: list[_FileJob] = []
        for e in entries:  # every check that needs no disk, before the disk is touched
            res.files += 1
            parts = check_path(e.path)
            if e.ref is not None:
                res.references.append(e.path)
                res.reference_entries.append(e)
                continue
            check_entry(e)
            jobs.append(_FileJob(e, parts, self.root, self._seq, self.writer))
            self._seq += 1
        # Opened before any write: see syncengine.durable.
        batch = await self.run(SyncBatch if self.fsync else NoSyncBatch, self.root)
        try:
            await self.run(self._prepare_dirs, jobs)  # one thread, in path order
            await gather_all([self.run(self._prepare, j) for j in jobs])  # hashing etc. in parallel
            await self._reuse_local(jobs)
            await self._fetch_all(self._plan([j for j in jobs if j.state == _FETCH and j.blobs]))
            await self.run(self._commit, batch, jobs)
        except BaseException as exc:
            self.abort.set()
            self.wait_threads()  # no thread may create a temp file after the cleanup below
            # Interrupted (cancelled, store unreachable): keep what large files got, for the
            # next run, released (renamed without this process as the writer, so that the next
            # download takes it over even in this process). A refused or corrupt version keeps
            # nothing.
            keep = not isinstance(exc, CorruptData | UnsafePath | PathConflict | ManifestError)
            for j in jobs:
                if j.created and not j.done:
                    with contextlib.suppress(OSError):
                        if keep and j.entry.chunks and (j.written or j.adopted):
                            released = os.path.join(os.path.dirname(j.target), _released_name(j.entry.digest))
                            os.replace(j.tmp, released)  # resumable: see _adopt
                        else:
                            os.unlink(j.tmp)
            raise
        finally:
            self.dests = {}
            self._pending = []
            batch.close()
        # Temp files of content now in place, left by interrupted downloads: used up.
        used = [
            p
            for j in jobs
            if j.entry.chunks and (j.done or j.state == _PRESENT)
            for p in self._abandoned.pop(j.partial_key, [])
        ]
        if used:
            res.swept += await self.run(_remove_files, used)
        for j in jobs:
            if j.state == _PRESENT:
                res.present += 1
            else:
                res.written += 1
                res.bytes_written += j.entry.size
                res.from_cache += j.state == _CACHED

    async def prune(self, reader: ManifestReader, prefix: str) -> None:
        """Checkout: deletes what the version does not have under root/prefix, then empty dirs."""
        extras: list[str] = []
        async for entry, item in _merge(self, reader, self.root, prefix):
            if item is not None and (entry is None or (item.kind != "file" and entry.ref is None)):
                if entry is None and item.kind == "file" and _live_temp(item.abspath):
                    continue  # a concurrent download's temp file: it renames or removes it
                extras.append(item.abspath)
                if len(extras) >= 1024:
                    await self.run(_remove, extras)
                    self.result.removed += len(extras)
                    extras = []
        if extras:
            await self.run(_remove, extras)
            self.result.removed += len(extras)
        await self.run(_remove_empty_dirs, self.root, prefix)


def _remove_files(paths: list[str]) -> int:
    n = 0
    for p in paths:
        with contextlib.suppress(OSError):
            os.unlink(p)
            n += 1
    return n


def _remove(paths: list[str]) -> None:
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)  # files, symlinks (the link itself), FIFOs, sockets


def _remove_empty_dirs(root: str, prefix: str) -> None:
    """Every empty directory the prefix selects (the root, and a folder named by a prefix
    ending in ``/``, stay)."""
    top, start = _scope(root, prefix)
    if top is None:
        return
    with os.scandir(top) as it:
        tops = [e.path for e in it if e.name.startswith(start) and e.is_dir(follow_symlinks=False)]
    for sub in tops:
        for dirpath, _, _ in os.walk(sub, topdown=False, followlinks=False):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)


async def _merge(
    session: _Session, reader: ManifestReader, root: str, prefix: str
) -> AsyncIterator[tuple[ManifestEntry | None, _Item | None]]:
    """The version's entries and the folder's items under prefix, paired by path, in order."""
    walk = _walk(root, prefix)
    items: deque[_Item] = deque()
    exhausted = False

    async def peek() -> _Item | None:
        nonlocal exhausted
        if not items and not exhausted:
            batch = await session.run(lambda: list(islice(walk, 1024)))
            exhausted = not batch
            items.extend(batch)
        return items[0] if items else None

    async for entry in _entries(reader, prefix):
        key = entry.path.encode()
        while (item := await peek()) is not None and item.key < key:
            yield None, items.popleft()
        if item is not None and item.key == key:
            yield entry, items.popleft()
        else:
            yield entry, None
    while await peek() is not None:
        yield None, items.popleft()


async def download(
    repo: Repository,
    record: VersionRecord,
    root: str | os.PathLike[str] | None = None,
    *,
    path_prefix: str | None = None,
    mode: Mode = "download",
    concurrency: int = 16,
    cache: FileCache | None = None,
    max_bytes_in_flight: int = MAX_BYTES_IN_FLIGHT,
    max_gap: int = MAX_GAP,
    max_range: int | None = None,
    stat_cache: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
    fsync: bool = True,
    trust_references: bool | None = None,
) -> DownloadResult:
    """Writes the files of ``record`` under ``root`` (default: :func:`default_root`).

    Only entries whose path starts with ``path_prefix`` when given (a string prefix, as in
    W&B: ``data`` selects ``data/…`` and ``database.csv``; ``data/`` only ``data/…``). Files
    already there with the right content are not fetched again. ``mode="download"`` never
    deletes anything that is not in the version and refuses to replace symlinks or
    directories that stand where the version has a file; ``mode="checkout"`` makes the folder
    (or the paths the prefix selects) exactly the version: it replaces those and then deletes
    everything else, never outside the root.

    Raises ``UnsafePath`` for a path that is absolute, has ``..``, or leads out of the root
    through a symlink; ``CorruptData`` naming the file and blob when stored bytes do not
    match their digest (nothing is written for that file); ``PathConflict``.

    ``fsync=False`` does not wait for the disk (no flush, no early writeback) and leaves
    the files out of the file cache: as safe against a killed process, not against a power
    loss (docs/DOWNLOAD.md).

    References are fetched only when ``trust_references`` (None: when
    ``SYNCENGINE_TRUST_REFERENCES`` names the repository); else the first one met raises
    ``ReferencesNotTrusted`` before the window holding it is written (docs/REFERENCES.md).
    """
    from syncengine.repo.references import require_trust

    if mode not in ("download", "checkout"):
        raise ValueError(f"mode must be 'download' or 'checkout', not {mode!r}")
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    prefix = _norm_prefix(path_prefix)
    if max_range is None:
        max_range = MAX_STREAMED_RANGE if repo.store.capabilities.streamed_reads else MAX_RANGE
    target_root = os.fspath(root) if root is not None else default_root(record)
    real_root = await asyncio.to_thread(_make_root, target_root)
    reader = await repo.manifest(record)
    index = await repo.index()
    d = _Downloader(
        repo,
        real_root,
        index,
        mode=mode,
        concurrency=concurrency,
        cache=cache,
        max_bytes_in_flight=max_bytes_in_flight,
        max_gap=max_gap,
        max_range=max_range,
        use_stat_cache=stat_cache,
        fsync=fsync,
    )
    d.on_progress = on_progress  # (files done, bytes done), from worker threads
    try:
        window: list[ManifestEntry] = []
        blobs = 0
        refs_allowed = False
        async for e in _entries(reader, prefix):
            if e.ref is not None and not refs_allowed:
                require_trust(repo.store, trust_references, e)
                refs_allowed = True
            window.append(e)
            blobs += max(1, len(e.chunks))
            if len(window) >= WINDOW_FILES or blobs >= WINDOW_BLOBS:
                await d.window(window)
                window, blobs = [], 0
        if window:
            await d.window(window)
        if d.result.reference_entries:
            from syncengine.repo.references import fetch as fetch_references

            await fetch_references(repo, d.result.reference_entries, real_root, d.result)
        if mode == "checkout":
            await d.prune(reader, prefix)
    finally:
        await asyncio.to_thread(d.close)
    return d.result


def _make_root(root: str) -> str:
    # A file where the folder, or one above it, would be: named below.
    with contextlib.suppress(FileExistsError, NotADirectoryError):
        os.makedirs(root, exist_ok=True)
    real = os.path.realpath(root)
    if not os.path.isdir(real):
        raise PathConflict(_not_a_folder(root))
    return real


def _not_a_folder(root: str) -> str:
    """Why ``root`` cannot be a download's folder: it, or a folder above it, is a file."""
    if os.path.lexists(root):
        return f"the download folder {root} is a file, not a folder"
    blocker = os.path.dirname(os.path.abspath(root))
    while not os.path.lexists(blocker):
        blocker = os.path.dirname(blocker)
    return f"the download folder {root} cannot be made: {blocker} is a file, not a folder"


# -- verify --------------------------------------------------------------------------------------


async def verify(
    repo: Repository,
    record: VersionRecord,
    root: str | os.PathLike[str],
    *,
    path_prefix: str | None = None,
    stat_cache: bool = True,
    concurrency: int = 16,
    references: bool = False,
    trust_references: bool | None = None,
) -> list[Difference]:
    """How the folder ``root`` (or ``path_prefix`` in it) differs from the version, in path
    order; empty when it holds exactly the version's files with their content. Symlinks are
    never followed (one where the version has a file is ``changed``); directories are not
    compared (versions hold files only). Entries that reference external objects are not
    checked (nor reported missing) unless ``references``: then each must be on disk with its
    logged size (and digest, for checksummed file references), and its source must still be
    what was logged (`references.recheck`: a HEAD or stat, no body fetched) — looked at only
    for a repository trusted for references (``trust_references``, as for `download`)."""
    from syncengine.repo.references import check_copy, recheck

    prefix = _norm_prefix(path_prefix)
    real_root = os.path.realpath(os.fspath(root))
    reader = await repo.manifest(record)
    session = _Session(repo, real_root, concurrency, stat_cache)
    out: list[Difference] = []
    pending: list[tuple[ManifestEntry, asyncio.Future[_Inspection]]] = []
    refs: list[ManifestEntry] = []

    async def drain(limit: int) -> None:
        while len(pending) > limit:
            entry, fut = pending.pop(0)
            seen = await fut
            if not seen.ok:
                out.append(Difference(entry.path, "changed", seen.why))

    try:
        async for entry, item in _merge(session, reader, real_root, prefix):
            if entry is not None and entry.ref is not None and references:
                refs.append(entry)
                if item is None:
                    out.append(Difference(entry.path, "missing", "reference not on disk"))
                elif item.kind != "file":
                    out.append(
                        Difference(entry.path, "changed", f"a {item.kind} where the reference is a file")
                    )
                else:
                    why = await asyncio.to_thread(check_copy, entry, item.abspath, repo.params)
                    if why is not None:
                        out.append(Difference(entry.path, "changed", f"reference copy: {why}"))
            elif item is None:
                assert entry is not None
                if entry.ref is None:
                    out.append(Difference(entry.path, "missing", "not on disk"))
            elif entry is None:
                what = {"file": "file", "symlink": "symlink", "other": "special file"}[item.kind]
                out.append(Difference(_show(item.key), "extra", f"{what} not in the version"))
            elif entry.ref is None:
                fut = asyncio.ensure_future(session.run(session.inspect, item.abspath, entry))
                pending.append((entry, fut))
                await drain(4 * concurrency)
        await drain(0)
    finally:
        for _, waiting in pending:
            waiting.cancel()
        await asyncio.to_thread(session.close)
    for e, why in await recheck(refs, repo.store, repo.params, trust_references):
        out.append(Difference(e.path, "changed", f"source: {why}"))
    out.sort(key=lambda d: d.path.encode("utf-8", "surrogateescape"))
    return out


async def check(
    repo: Repository,
    record: VersionRecord,
    root: str | os.PathLike[str],
    *,
    path_prefix: str | None = None,
    references: bool = False,
    trust_references: bool | None = None,
) -> None:
    """:func:`verify`, raising ``VerifyFailed`` with the list of differences if there are any."""
    diffs = await verify(
        repo, record, root, path_prefix=path_prefix, references=references, trust_references=trust_references
    )
    if diffs:
        raise VerifyFailed(os.fspath(root), diffs)
