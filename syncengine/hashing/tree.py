"""Parallel hashing of input trees: scan, stat-cache answers, thread pool for the rest, sorted output.

Results come out in the scan's order (UTF-8 byte order of paths) with bounded work in flight,
so a tree of 10^7 files streams through in bounded memory. Small files travel to the worker
threads in batches, so per-file Python overhead does not dominate; each worker owns one
hasher and its reusable buffer.
"""

from __future__ import annotations

import heapq
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, NamedTuple

from syncengine.errors import ConfigError, FileChangedError
from syncengine.hashing import backend
from syncengine.hashing.digests import Chunk, FileDigest, file_digest_from_chunks
from syncengine.hashing.params import DEFAULT_PARAMS, ChunkerParams
from syncengine.hashing.split import merge_segments, segment_starts
from syncengine.hashing.stat_cache import StatCache, StatKey, now_ns
from syncengine.scan import ScanEntry, ScanWarning, SymlinkPolicy, scan

if TYPE_CHECKING:
    from concurrent.futures import Future

#: A batch of small files handed to one worker at a time.
BATCH_FILES = 256
BATCH_BYTES = 8 << 20
_TO_EOF = (1 << 63) - 1


class Source(NamedTuple):
    """One input: a directory or file, and the path prefix its entries get."""

    root: str
    prefix: str = ""


class HashedFile(NamedTuple):
    entry: ScanEntry
    digest: FileDigest
    cached: bool
    #: The hasher stored the file's new blobs as it read them (put's ingest hashers).
    packed: bool = False


@dataclass
class TreeStats:
    """What a tree hash did; filled while results stream out."""

    files: int = 0
    bytes: int = 0
    bytes_read: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    warnings: list[ScanWarning] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)


def sources_for(paths: Sequence[str]) -> list[Source]:
    """Inputs named on a command line: one path is the root itself; several get their basenames
    as prefixes (two inputs with the same basename are an error)."""
    if len(paths) == 1:
        return [Source(paths[0])]
    seen: dict[str, str] = {}
    out = []
    for p in paths:
        name = os.path.basename(os.path.normpath(os.path.abspath(p)))
        if name in seen:
            raise ConfigError(f"inputs {seen[name]!r} and {p!r} would both be stored as {name!r}/")
        seen[name] = p
        out.append(Source(p, name))
    return out


def _order_key(src: Source) -> str:
    return src.prefix if os.path.isfile(src.root) else src.prefix + "/"


class _Slot:
    """One pending result in output order."""

    __slots__ = ("cached", "entry", "job", "plain", "result")

    def __init__(self, entry: ScanEntry) -> None:
        self.entry = entry
        self.cached = False
        self.plain = False  # hashed by `known_impl`
        self.job: _Job | None = None
        self.result: FileDigest | OSError | None = None


class _Job:
    """Work in the pool whose results fill one or more slots once every future is done."""

    __slots__ = ("finish", "futures", "slots")

    def __init__(
        self,
        slots: list[_Slot],
        futures: list[Future[Any]],
        finish: Callable[[list[Any]], list[FileDigest | OSError]],
    ) -> None:
        self.slots = slots
        self.futures = futures
        self.finish = finish
        for s in slots:
            s.job = self

    def done(self) -> bool:
        return all(f.done() for f in self.futures)

    def resolve(self) -> None:
        results = self.finish([f.result() for f in self.futures])
        for s, r in zip(self.slots, results, strict=True):
            s.result, s.job = r, None


class TreeHasher:
    """Hashes input trees with a pool of threads and an optional stat cache.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()); _ = (d / "a.txt").write_bytes(b"hi")
    >>> [h.entry.path for h in TreeHasher(stat_cache=None).hash([Source(str(d))])]
    ['a.txt']
    """

    def __init__(
        self,
        params: ChunkerParams = DEFAULT_PARAMS,
        *,
        threads: int | None = None,
        stat_cache: StatCache | None = None,
        impl: Any = None,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        follow_symlinks: SymlinkPolicy = "within",
        include_vcs: bool = False,
        on_progress: Callable[[int, int], None] | None = None,
        clock: Callable[[], int] = now_ns,
    ) -> None:
        self.params = params
        self.threads = threads or os.cpu_count() or 1
        self.cache = stat_cache
        self.impl = impl or backend.impl
        self.include = include
        self.exclude = exclude
        self.follow_symlinks = follow_symlinks
        self.include_vcs = include_vcs  # see syncengine.scan.VCS_DIRS
        self.on_progress = on_progress
        self.clock = clock
        #: Set by :meth:`pack_while_reading`: the plain implementation, kept for edited files.
        self.known_impl: Any = None
        self.stats = TreeStats()
        self._local = threading.local()
        self._hashers: list[Any] = []
        self._lock = threading.Lock()

    def _hasher(self, plain: bool = False) -> Any:
        attr = "plain" if plain else "hasher"
        h = getattr(self._local, attr, None)
        if h is None:
            h = (self.known_impl if plain else self.impl).FileHasher(self.params)
            setattr(self._local, attr, h)
            with self._lock:
                self._hashers.append(h)
        return h

    def pack_while_reading(self, file_hasher: Callable[[ChunkerParams], Any]) -> None:
        """Put's mode: ``file_hasher(params)`` makes each thread's hasher, one that stores the
        new blobs of what it reads (results come out ``packed``, files are not split). Large
        files the stat cache has seen before — edited files, most of whose chunks the
        repository holds — still go to the plain implementation, split over the threads, and
        come out not packed."""
        self.known_impl, self.impl = self.impl, SimpleNamespace(FileHasher=file_hasher)

    def _edited(self, entry: ScanEntry) -> bool:
        """A large file to hash with ``known_impl``: the stat cache has a row for it."""
        return self.known_impl is not None and self.cache is not None and self.cache.known(entry.abspath)

    def _split_hasher(self) -> Any:
        """The hasher of split files (``hash_range``)."""
        return self._hasher(plain=self.known_impl is not None)

    def _small_batch(self, paths: list[str], sizes: list[int]) -> list[FileDigest | OSError]:
        return list(self._hasher().hash_small_files(paths, sizes))

    def _large(self, path: str, size: int, plain: bool = False) -> list[FileDigest | OSError]:
        try:
            return [self._hasher(plain).hash_file(path, size)]
        except OSError as e:
            return [e]

    def _merge_one(
        self, entry: ScanEntry, starts: list[int], chains: list[list[Chunk] | OSError]
    ) -> list[FileDigest | OSError]:
        return [self._merge(entry, starts, chains)]

    def _segment(self, path: str, start: int, stop: int, size: int) -> list[Chunk] | OSError:
        try:
            return list(self._split_hasher().hash_range(path, start, stop, size))
        except OSError as e:
            return e

    def _merge(
        self, entry: ScanEntry, starts: list[int], chains: list[list[Chunk] | OSError]
    ) -> FileDigest | OSError:
        """Joins the segments of a split file; the file must still have the stat the scan saw,
        or its segments could come from different versions of it."""
        try:
            for c in chains:
                if isinstance(c, OSError):
                    raise c
            hasher = self._split_hasher()
            path, size = entry.abspath, entry.size

            def more(start: int, stop: int) -> list[Chunk]:
                return list(hasher.hash_range(path, start, stop, size))

            chunks = merge_segments(starts, chains, more)  # type: ignore[arg-type]
            total = chunks[-1].offset + chunks[-1].length if chunks else 0
            st = os.stat(path)
            if total != size or (st.st_size, st.st_mtime_ns, st.st_ctime_ns) != (
                size,
                entry.mtime_ns,
                entry.ctime_ns,
            ):
                raise FileChangedError(path, "modified while its segments were hashed")
        except OSError as e:
            return e
        return FileDigest(size, file_digest_from_chunks(chunks), tuple(chunks))

    def scan(self, sources: Sequence[Source]) -> Iterator[ScanEntry]:
        """All sources' entries merged into one path-ordered stream (prefixes may nest, e.g.
        a folder at the root plus a file added under `sub/`); a path given twice is an error."""
        walks = [
            scan(
                src.root,
                prefix=src.prefix,
                include=self.include,
                exclude=self.exclude,
                follow_symlinks=self.follow_symlinks,
                on_warning=self.stats.warnings.append,
                include_vcs=self.include_vcs,
            )
            for src in sorted(sources, key=_order_key)
        ]
        if not walks:
            return
        if len(walks) == 1:  # one walk never yields a path twice
            yield from walks[0]
            return
        last: ScanEntry | None = None
        for entry in heapq.merge(*walks, key=lambda e: e.path.encode()):
            if last is not None and entry.path == last.path:
                raise ConfigError(f"{entry.path!r} is given twice: by {last.abspath} and by {entry.abspath}")
            last = entry
            yield entry

    def hash(self, sources: Sequence[Source]) -> Iterator[HashedFile]:
        """Every regular file under `sources`, hashed, in path order. Files that cannot be read
        are left out of the output and listed in `stats.errors`."""
        stats = self.stats
        limit = self.params.small_file_limit
        max_pending = self.threads * 4
        pending: deque[_Slot] = deque()
        in_flight = 0
        batch: list[_Slot] = []
        batch_bytes = 0
        started = self.clock()

        from concurrent.futures import ThreadPoolExecutor  # with logging, ~5 ms: not for a scan

        with ThreadPoolExecutor(self.threads, thread_name_prefix="syncengine-hash") as pool:

            def submit(slots: list[_Slot], futures: list[Future[Any]], finish: Callable[..., Any]) -> None:
                nonlocal in_flight
                _Job(slots, futures, finish)
                in_flight += len(futures)

            def submit_batch() -> None:
                nonlocal batch, batch_bytes
                paths = [s.entry.abspath for s in batch]
                sizes = [s.entry.size for s in batch]
                submit(batch, [pool.submit(self._small_batch, paths, sizes)], lambda r: r[0])
                batch, batch_bytes = [], 0

            def drain(everything: bool) -> Iterator[HashedFile]:
                """Yields finished results from the front; waits while too much is in flight
                (or, with `everything`, until nothing is left)."""
                nonlocal in_flight
                while pending:
                    slot = pending[0]
                    if slot.result is None:
                        job = slot.job
                        if job is None:
                            return  # still in the batch being filled
                        if not (everything or in_flight >= max_pending or job.done()):
                            return
                        job.resolve()
                        in_flight -= len(job.futures)
                    pending.popleft()
                    packed = self.known_impl is not None and not (slot.cached or slot.plain)
                    out = self._finish(slot.entry, slot.result, slot.cached, started, packed)  # type: ignore[arg-type]
                    if out is not None:
                        yield out

            for entry in self.scan(sources):
                slot = _Slot(entry)
                key = StatKey(entry.dev, entry.ino, entry.size, entry.mtime_ns, entry.ctime_ns)
                hit = self.cache.lookup(entry.abspath, key) if self.cache is not None else None
                if hit is not None:
                    slot.result = hit
                    slot.cached = True
                    stats.cache_hits += 1
                elif entry.size <= limit:
                    batch.append(slot)
                    batch_bytes += entry.size
                    if len(batch) >= BATCH_FILES or batch_bytes >= BATCH_BYTES:
                        submit_batch()
                elif ((plain := self._edited(entry)) or self.known_impl is None) and len(
                    starts := segment_starts(entry.size, self.threads)
                ) > 1:
                    slot.plain = plain
                    stops = [*starts[1:], _TO_EOF]
                    futs = [
                        pool.submit(self._segment, entry.abspath, a, b, entry.size)
                        for a, b in zip(starts, stops, strict=True)
                    ]
                    submit([slot], futs, partial(self._merge_one, entry, starts))
                else:
                    slot.plain = self._edited(entry)
                    fut = pool.submit(self._large, entry.abspath, entry.size, slot.plain)
                    submit([slot], [fut], lambda r: r[0])
                pending.append(slot)
                if slot.result is None:
                    stats.cache_misses += 1
                yield from drain(everything=False)
            if batch:
                submit_batch()
            yield from drain(everything=True)
        stats.bytes_read = sum(h.bytes_read for h in self._hashers)
        if self.cache is not None:
            # Only a whole-directory walk knows which files are gone.
            if not (self.include or self.exclude) and all(os.path.isdir(s.root) for s in sources):
                self.cache.prune_unseen()
            self.cache.flush()

    def _finish(
        self, entry: ScanEntry, result: FileDigest | OSError, cached: bool, started: int, packed: bool = False
    ) -> HashedFile | None:
        stats = self.stats
        if isinstance(result, OSError):
            stats.errors.append((entry.path, result.strerror or str(result)))
            return None
        if self.cache is not None and not cached:
            key = StatKey(entry.dev, entry.ino, entry.size, entry.mtime_ns, entry.ctime_ns)
            self.cache.store(entry.abspath, key, result, started)
        stats.files += 1
        stats.bytes += result.size
        if self.on_progress is not None:
            self.on_progress(stats.files, stats.bytes)
        return HashedFile(entry, result, cached, packed)
