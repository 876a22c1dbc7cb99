"""Hashing and packing from one read: how `put` turns new files into packs.

`TreeHasher` calls a *file hasher* per worker thread. For a put, :class:`IngestHasher` is that
hasher: it reads each file once, cuts and hashes it from the bytes it read, and hands every
blob the repository lacks — those very bytes — to the thread's own pack. Nothing is read a
second time and nothing is hashed twice, and the bytes stored under a digest are the bytes
that digest was computed from (a file changing under the put cannot put a wrong blob in a
pack). A file whose size, mtime or ctime moved while it was read is an error
(:class:`FileChangedError`), as with the plain hashers; blobs already packed from it are
valid blobs that simply stay unreferenced.

A full pack is given to ``on_pack`` (the put uploads it); a hashing thread waits while
``max_packs`` packs are out (backpressure). Blob bytes are copied into *arenas*: one reused
buffer of about a pack for each pack being filled or out, so at most ``max_packs`` + one per
hashing thread exist, and the put's data memory is bounded by that many pack sizes plus one
read window per thread, whatever the file sizes. No allocation is made per blob (per-blob
allocations freed by other threads made glibc's heaps grow well past the data they held).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Container, Sequence
from typing import Any, Final

from syncengine.errors import FileChangedError, SyncEngineError
from syncengine.hashing.digests import Chunk, FileDigest, file_digest_from_chunks
from syncengine.hashing.params import ChunkerParams
from syncengine.repo.pack import BlobLocation, PackWriter
from syncengine.store.base import HashedParts

__all__ = ["WINDOW", "Ingest", "IngestAborted", "IngestHasher"]

#: Bytes read per step from a large file (plus up to max_size carried over).
WINDOW: Final = 16 << 20

#: (pack id, pack body, blob locations, done) of a finished pack; whoever writes it calls
#: ``done()`` once the write is over (succeeded or failed): its buffers and slot are free again.
PackDone = Callable[[bytes, HashedParts, list[BlobLocation], Callable[[], None]], None]


class IngestAborted(SyncEngineError):
    """The put stopped (an upload failed or it was cancelled): hashing threads give up."""


class Ingest:
    """What the hashing threads of one put share: the blobs already known or queued, the
    packs out, the counters."""

    def __init__(
        self,
        params: ChunkerParams,
        impl: Any,
        known: Container[bytes],
        pack_target: int,
        max_packs: int,
        on_pack: PackDone,
    ) -> None:
        self.params = params
        self.impl = impl
        self.known = known
        self.pack_target = pack_target
        self.on_pack = on_pack
        self.queued: set[bytes] = set()
        self.lock = threading.Lock()
        self._slots = threading.Semaphore(max_packs)  # one per pack out
        self._free: list[bytearray] = []  # arenas to reuse
        self.arena_size = pack_target + params.max_size + 4096
        self.aborted = threading.Event()
        self.hashers: list[IngestHasher] = []
        self.new_blobs = 0
        self.new_bytes = 0

    def file_hasher(self, params: ChunkerParams) -> IngestHasher:
        """The factory `TreeHasher` calls once per worker thread (as ``impl.FileHasher``)."""
        h = IngestHasher(self, params)
        with self.lock:
            self.hashers.append(h)
        return h

    def claim(self, digest: bytes) -> bool:
        """True once per digest the repository lacks: the caller stores that blob."""
        if digest in self.known:
            return False
        with self.lock:
            if digest in self.queued:
                return False
            self.queued.add(digest)
            return True

    def counted(self, nbytes: int) -> None:
        with self.lock:
            self.new_blobs += 1
            self.new_bytes += nbytes

    def _acquire(self) -> None:
        while not self._slots.acquire(timeout=0.1):
            if self.aborted.is_set():
                raise IngestAborted("the put stopped")
        if self.aborted.is_set():
            self._slots.release()
            raise IngestAborted("the put stopped")

    def take_arena(self) -> bytearray:
        """A buffer for one pack's blob bytes (a recycled one when there is one)."""
        with self.lock:
            if self._free:
                return self._free.pop()
        return bytearray(self.arena_size)

    def _release(self, arenas: list[bytearray]) -> None:
        """A pack given to ``on_pack`` is written (or failed): its arenas can be reused and
        its slot taken again."""
        with self.lock:
            self._free.extend(arenas)
        self._slots.release()

    def ship(self, writer: PackWriter) -> None:
        """Finishes ``writer``'s pack and hands it on, waiting while too many are out."""
        self._acquire()
        arenas = writer.arenas
        try:
            pid, body, locs = writer.finish_parts()
        except BaseException:
            self._release(arenas)
            raise
        self.on_pack(pid, body, locs, functools.partial(self._release, arenas))

    def abort(self) -> None:
        self.aborted.set()

    def leftovers(self, extra: PackWriter | None = None) -> list[PackWriter]:
        """The threads' partly filled packs (and ``extra``), merged into as few packs near
        the target as they fit in; call once the threads are done. A small put thus writes
        one pack, not one per thread."""
        writers = [h.writer for h in self.hashers if len(h.writer)]
        for h in self.hashers:
            h.writer, h._arena, h._fill = PackWriter(), None, 0
        if extra is not None and len(extra):
            writers.append(extra)
        merged: list[PackWriter] = []
        for w in sorted(writers, key=lambda w: w.size, reverse=True):
            for m in merged:
                if m.size + w.size <= self.pack_target:
                    m.absorb(w)
                    break
            else:
                merged.append(w)
        return merged

    @property
    def bytes_read(self) -> int:
        return sum(h.bytes_read for h in self.hashers)


def _stat_key(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _read_into(fd: int, view: memoryview) -> int:
    """Fills ``view`` from ``fd``; fewer bytes only at end of file."""
    got = 0
    while got < len(view):
        n = os.readv(fd, [view[got:]])
        if n == 0:
            break
        got += n
    return got


class IngestHasher:
    """A file hasher (the interface of `FileHasher`: ``hash_file``, ``hash_small_files``,
    ``bytes_read``) that packs the new blobs it sees. One per thread."""

    def __init__(self, ingest: Ingest, params: ChunkerParams) -> None:
        self.ingest = ingest
        self.params = params
        self.limit = params.small_file_limit
        self.writer = PackWriter()
        self.bytes_read = 0
        self._buf: bytearray | None = None
        self._arena: memoryview | None = None  # the writer's arena, and how much of it is used
        self._fill = 0

    # -- the FileHasher interface ---------------------------------------------------------

    def hash_small_files(self, paths: Sequence[str], sizes: Sequence[int]) -> list[FileDigest | OSError]:
        out: list[FileDigest | OSError] = []
        for path, size in zip(paths, sizes, strict=True):
            try:
                out.append(self.hash_file(path, size))
            except OSError as e:
                out.append(e)
        return out

    def hash_file(self, path: str, expected_size: int | None = None) -> FileDigest:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            before = os.fstat(fd)
            expected = before.st_size if expected_size is None else expected_size
            if before.st_size != expected:
                raise FileChangedError(path, f"expected {expected} bytes, found {before.st_size}")
            if expected <= self.limit:
                digest = self._small(fd, path, expected)
            else:
                digest = self._large(fd, path, expected)
            if _stat_key(os.fstat(fd)) != _stat_key(before):
                raise FileChangedError(path, "size or mtime changed during the read")
            return digest
        finally:
            os.close(fd)

    # -- reading, hashing, packing ------------------------------------------------------------

    def _offer(self, digest: bytes, data: bytes | memoryview) -> None:
        ing = self.ingest
        if ing.aborted.is_set():
            raise IngestAborted("the put stopped")
        if not ing.claim(digest):
            return
        n = len(data)
        if self._arena is not None and self._fill + n > len(self._arena):
            self.flush()  # (compressible blobs: the raw bytes outgrew the arena first)
        if self._arena is None:
            arena = ing.take_arena()
            self.writer.arenas.append(arena)
            self._arena, self._fill = memoryview(arena), 0
        raw = self._arena[self._fill : self._fill + n]
        raw[:] = data  # out of the reused read buffer, into the pack's arena
        self._fill += n
        self.writer.add(digest, raw)
        ing.counted(n)
        if self.writer.size >= ing.pack_target:
            self.flush()

    def flush(self) -> None:
        """Ships this thread's pack if it holds anything."""
        if len(self.writer):
            writer, self.writer = self.writer, PackWriter()
            self._arena, self._fill = None, 0
            self.ingest.ship(writer)

    def _small(self, fd: int, path: str, expected: int) -> FileDigest:
        data = os.read(fd, expected + 1)
        while len(data) < expected + 1:
            more = os.read(fd, expected + 1 - len(data))
            if not more:
                break
            data += more
        self.bytes_read += len(data)
        if len(data) != expected:
            raise FileChangedError(path, f"expected {expected} bytes, read {len(data)}")
        digest: bytes = self.ingest.impl.blake3(data)
        self._offer(digest, data)
        return FileDigest(expected, digest, ())

    def _large(self, fd: int, path: str, expected: int) -> FileDigest:
        impl, params = self.ingest.impl, self.params
        if self._buf is None:
            self._buf = bytearray(WINDOW + params.max_size)
        view = memoryview(self._buf)
        chunks: list[Chunk] = []
        start = 0  # file offset of view[0]
        carry = 0  # bytes at the front of the buffer not yet cut
        while True:
            got = _read_into(fd, view[carry:])
            self.bytes_read += got
            end = carry + got
            final = end < len(view)  # short read: end of file
            off = 0
            for length in impl.cut_points(view[:end], params, final):
                piece = view[off : off + length]
                digest: bytes = impl.blake3(piece)
                chunks.append(Chunk(start + off, length, digest))
                self._offer(digest, piece)
                off += length
            if final:
                break
            view[: end - off] = view[off:end]
            start += off
            carry = end - off
        total = start + end
        if total != expected:
            raise FileChangedError(path, f"expected {expected} bytes, read {total}")
        return FileDigest(total, file_digest_from_chunks(chunks), tuple(chunks))
