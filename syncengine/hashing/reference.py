"""Pure-Python reference of the hashing core: the specification the C core must match byte for byte."""

from __future__ import annotations

import os
from collections.abc import Sequence

import blake3 as _blake3

from syncengine.errors import FileChangedError
from syncengine.hashing.digests import Chunk, FileDigest, file_digest_from_chunks
from syncengine.hashing.params import ChunkerParams, gear_table

NAME = "python"
_M64 = (1 << 64) - 1
_GEAR = gear_table()


def blake3(data: bytes | bytearray | memoryview, key: bytes | None = None) -> bytes:
    """BLAKE3 (keyed when `key` is given) of `data`, 32 bytes."""
    if key is None:
        return _blake3.blake3(data).digest()
    return _blake3.blake3(data, key=key).digest()


def next_cut(params: ChunkerParams, data: bytes | bytearray | memoryview, start: int, end: int) -> int:
    """Length of the chunk starting at `start`, given `data[start:end]` is all that remains
    of the stream or holds at least ``max_size`` bytes (docs/FORMAT.md, "Chunking")."""
    n = end - start
    if n <= params.min_size:
        return n
    limit = min(n, params.max_size)
    normal = min(params.avg_size, limit)
    thr_small, thr_large = params.thresholds
    gear = _GEAR
    h = 0
    i = start + params.min_size
    for stop, threshold in ((start + normal, thr_small), (start + limit, thr_large)):
        while i < stop:
            h = ((h << 1) + gear[data[i]]) & _M64
            i += 1
            if h < threshold:
                return i - start
    return limit


def cut_points(data: bytes | bytearray | memoryview, params: ChunkerParams, final: bool = True) -> list[int]:
    """Chunk lengths of `data` taken as a whole stream; with ``final=False`` `data` is only the
    start of the rest of a stream, and cutting stops where fewer than ``max_size`` bytes are
    left (the lengths returned are then exactly those the whole stream gives)."""
    out = []
    pos, end = 0, len(data)
    while pos < end and (final or end - pos >= params.max_size):
        n = next_cut(params, data, pos, end)
        out.append(n)
        pos += n
    return out


class FileHasher:
    """Hashes files with one reusable buffer; one instance per thread.

    `read_size` caps each read() call (tests shrink it to prove boundaries do not depend on it).
    """

    def __init__(self, params: ChunkerParams, buffer_size: int = 0, read_size: int = 0) -> None:
        self.params = params
        self.buffer_size = max(buffer_size or 4 * params.max_size, params.max_size)
        self.read_size = read_size or self.buffer_size
        self.bytes_read = 0

    def hash_file(self, path: str, expected_size: int | None = None) -> FileDigest:
        """Digest of the file at `path`; raises OSError naming the path, or FileChangedError."""
        with open(path, "rb", buffering=0) as f:
            before = os.fstat(f.fileno())
            size = before.st_size if expected_size is None else expected_size
            if size <= self.params.small_file_limit:
                data = self._read_all(f, self.params.small_file_limit + 1)
                self._check(path, len(data), size, before, os.fstat(f.fileno()))
                return FileDigest(len(data), blake3(data), ())
            chunks = self._chunk_stream(f, 0, None)
            total = chunks[-1].offset + chunks[-1].length if chunks else 0
            self._check(path, total, size, before, os.fstat(f.fileno()))
        if total <= self.params.small_file_limit:
            raise FileChangedError(path, f"shrank to {total} bytes")
        return FileDigest(total, file_digest_from_chunks(chunks), tuple(chunks))

    def hash_range(self, path: str, start: int, stop: int, expected_size: int) -> list[Chunk]:
        """Chunks from offset `start`, taken as a chunk boundary, up to the first chunk that
        ends at or beyond `stop` (or EOF); see syncengine.hashing.split."""
        with open(path, "rb", buffering=0) as f:
            before = os.fstat(f.fileno())
            f.seek(start)
            chunks = self._chunk_stream(f, start, stop)
            self._check(path, before.st_size, expected_size, before, os.fstat(f.fileno()))
        return chunks

    def hash_small_files(
        self, paths: Sequence[str], expected_sizes: Sequence[int]
    ) -> list[FileDigest | OSError]:
        """Digests of files expected to be small; a failure is returned in place, not raised."""
        out: list[FileDigest | OSError] = []
        for path, size in zip(paths, expected_sizes, strict=True):
            try:
                out.append(self.hash_file(path, size))
            except OSError as e:
                out.append(e)
        return out

    def _read_all(self, f: object, limit: int) -> bytes:
        parts = []
        got = 0
        read = f.read  # type: ignore[attr-defined]
        while got < limit:
            b = read(min(self.read_size, limit - got))
            if not b:
                break
            parts.append(b)
            got += len(b)
        self.bytes_read += got
        return b"".join(parts)

    def _chunk_stream(self, f: object, start: int, stop: int | None) -> list[Chunk]:
        params = self.params
        readinto = f.readinto  # type: ignore[attr-defined]
        buf = bytearray(self.buffer_size)
        view = memoryview(buf)
        pos = end = 0
        offset = start  # file offset of buf[pos]
        eof = False
        chunks: list[Chunk] = []
        while stop is None or offset < stop:
            if not eof and end - pos < params.max_size:
                buf[: end - pos] = buf[pos:end]
                end -= pos
                pos = 0
                fill = len(buf) if stop is None else min(len(buf), stop - offset + params.max_size)
                while end < fill:
                    n = readinto(view[end : min(fill, end + self.read_size)])
                    if not n:
                        eof = True
                        break
                    end += n
                    self.bytes_read += n
            if pos == end:
                return chunks
            n = next_cut(params, buf, pos, end)
            chunks.append(Chunk(offset, n, blake3(view[pos : pos + n])))
            pos += n
            offset += n
        return chunks

    @staticmethod
    def _check(path: str, got: int, expected: int, before: os.stat_result, after: os.stat_result) -> None:
        if got != expected:
            raise FileChangedError(path, f"expected {expected} bytes, read {got}")
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            raise FileChangedError(path, "size or mtime changed during the read")
