# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# The compiled core: BLAKE3, gear/FastCDC chunking and file hashing over reusable buffers, and
# the compact in-memory blob index (BlobIndex; syncengine.repo.blob_index documents it).
import os
import sys

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport UINT64_MAX, int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy
from posix.unistd cimport close

from se_native cimport *

from syncengine.errors import FileChangedError
from syncengine.hashing.digests import Chunk, FileDigest, file_digest_from_chunks
from syncengine.hashing.params import GEAR_SEED

NAME = "native"
#: Bytes per read() when streaming a large file.
PIECE = 256 * 1024


def blake3(data, key=None):
    """BLAKE3 (keyed when `key` is given, 32 bytes) of a bytes-like object."""
    cdef const uint8_t[::1] view = memoryview(data).cast("B")
    cdef const uint8_t[::1] kview
    cdef uint8_t out[32]
    cdef const uint8_t *kptr = NULL
    cdef const uint8_t *ptr = &view[0] if view.shape[0] else <const uint8_t *>b""
    cdef size_t n = view.shape[0]
    if key is not None:
        if len(key) != 32:
            raise ValueError("BLAKE3 key must be 32 bytes")
        kview = key
        kptr = &kview[0]
    with nogil:
        se_blake3(kptr, ptr, n, out)
    return PyBytes_FromStringAndSize(<char *>out, 32)


def blake3_impl():
    """Which SIMD path the C BLAKE3 chose on this CPU."""
    return se_blake3_impl().decode()


cdef int _init_params(se_cdc_params *p, params) except -1:
    if se_cdc_init(p, GEAR_SEED, params.min_size, params.avg_size, params.max_size) != 0:
        raise ValueError(f"invalid chunker parameters {params!r}")
    return 0


def gear_table():
    """The gear table the C chunker built (must equal params.gear_table())."""
    cdef se_cdc_params p
    se_cdc_init(&p, GEAR_SEED, 64, 128, 256)
    return tuple(p.gear[i] for i in range(256))


def cut_points(data, params, bint final=True):
    """Chunk lengths of `data` taken as a whole stream; with ``final=False`` `data` is only the
    start of the rest of a stream, and cutting stops where fewer than max_size bytes are left."""
    cdef se_cdc_params p
    _init_params(&p, params)
    cdef const uint8_t[::1] view = memoryview(data).cast("B")
    cdef size_t pos = 0, end = view.shape[0], n
    cdef size_t max_size = params.max_size
    out = []
    while pos < end and (final or end - pos >= max_size):
        with nogil:
            n = se_cdc_next(&p, &view[pos], end - pos)
        out.append(n)
        pos += n
    return out


cdef object _error(int code, str path, int64_t expected, int64_t got):
    """The one place C error codes become Python exceptions, each naming the path."""
    if code == SE_ERR_SIZE_CHANGED:
        return FileChangedError(path, f"expected {expected} bytes, read {got}")
    if code == SE_ERR_STAT_CHANGED:
        return FileChangedError(path, "size or mtime changed during the read")
    return OSError(code, os.strerror(code), path)


cdef class FileHasher:
    """Hashes files with one reusable buffer, the GIL released for all reads and hashing.

    One instance per thread. `read_size` caps each read() call (tests shrink it).
    """
    cdef se_cdc_params p
    cdef uint8_t *buf
    cdef size_t cap, read_size, out_cap, limit, piece
    cdef se_chunk *out
    cdef public object params
    cdef public uint64_t bytes_read

    def __cinit__(self, params, size_t buffer_size=0, size_t read_size=0):
        _init_params(&self.p, params)
        self.params = params
        self.limit = params.small_file_limit
        self.cap = buffer_size or 4 * params.max_size
        if self.cap < params.max_size:
            self.cap = params.max_size
        if self.cap < self.limit + 1:
            self.cap = self.limit + 1
        self.read_size = read_size or self.cap
        # Large files stream in pieces that stay in L2 between cutting and hashing.
        self.piece = min(self.read_size, PIECE, self.cap)
        self.out_cap = self.cap // params.min_size + 2
        self.buf = <uint8_t *>PyMem_Malloc(self.cap)
        self.out = <se_chunk *>PyMem_Malloc(self.out_cap * sizeof(se_chunk))
        if self.buf is NULL or self.out is NULL:
            raise MemoryError()
        self.bytes_read = 0

    def __dealloc__(self):
        PyMem_Free(self.buf)
        PyMem_Free(self.out)

    def hash_file(self, path, expected_size=None):
        """Digest of the file at `path`; raises OSError naming the path, or FileChangedError."""
        path = os.fspath(path)
        if expected_size is None:
            expected_size = os.stat(path).st_size
        if expected_size <= self.limit:
            r = self.hash_small_files([path], [expected_size])[0]
            if isinstance(r, BaseException):
                raise r
            return r
        return self._hash_large(path, expected_size)

    cdef _hash_large(self, str path, int64_t expected):
        chunks = self._chunks(path, 0, UINT64_MAX, expected)
        last = chunks[len(chunks) - 1] if chunks else None
        total = last.offset + last.length if last is not None else 0
        if total != expected:
            raise _error(SE_ERR_SIZE_CHANGED, path, expected, total)
        return FileDigest(total, file_digest_from_chunks(chunks), tuple(chunks))

    def hash_range(self, path, uint64_t start, uint64_t stop, int64_t expected_size):
        """Chunks of the file at `path` from offset `start`, taken as a chunk boundary, up to
        the first chunk that ends at or beyond `stop` (or EOF). Used to hash one large file
        in segments on several threads (syncengine.hashing.split)."""
        return self._chunks(os.fspath(path), start, stop, expected_size)

    cdef list _chunks(self, str path, uint64_t start, uint64_t stop, int64_t expected):
        cdef bytes cpath = os.fsencode(path)
        cdef const char *cp = cpath
        cdef int fd = -1, e
        cdef stat st
        cdef se_stream s
        cdef long n, i
        with nogil:
            e = se_open(cp, &fd, &st)
        if e:
            raise _error(e, path, expected, 0)
        s.bytes_read = 0
        chunks = []
        try:
            e = se_stream_init(&s, fd, self.buf, self.piece, start, stop)
            if e:
                raise _error(e, path, expected, 0)
            while True:
                with nogil:
                    n = se_stream_next(&s, &self.p, self.out, self.out_cap)
                if n < 0:
                    raise _error(<int>-n, path, expected, 0)
                if n == 0:
                    break
                for i in range(n):
                    chunks.append(Chunk(self.out[i].offset, self.out[i].length,
                                        PyBytes_FromStringAndSize(<char *>self.out[i].digest, 32)))
            with nogil:
                e = se_check_unchanged(fd, &st)
        finally:
            self.bytes_read += s.bytes_read
            close(fd)
        if e:
            raise _error(e, path, expected, 0)
        if st.st_size != expected:
            raise _error(SE_ERR_SIZE_CHANGED, path, expected, st.st_size)
        return chunks

    def hash_small_files(self, paths, expected_sizes):
        """Digests of files expected to be small; a failure is returned in place, not raised.

        Files expected above the small-file limit are hashed one by one as large files."""
        cdef Py_ssize_t n = len(paths), i
        if any(s > self.limit for s in expected_sizes):
            out = []
            for p, s in zip(paths, expected_sizes):
                try:
                    out.append(self.hash_file(p, s))
                except OSError as e:
                    out.append(e)
            return out
        if n == 0:
            return []
        encoded = [os.fsencode(p) for p in paths]
        cdef const char **cpaths = <const char **>PyMem_Malloc(n * sizeof(char *))
        cdef int64_t *expected = <int64_t *>PyMem_Malloc(n * sizeof(int64_t))
        cdef int64_t *sizes = <int64_t *>PyMem_Malloc(n * sizeof(int64_t))
        cdef int *errs = <int *>PyMem_Malloc(n * sizeof(int))
        cdef bytearray digests = bytearray(32 * n)
        cdef uint8_t *dptr = digests
        cdef uint64_t nread = 0
        try:
            if cpaths is NULL or expected is NULL or sizes is NULL or errs is NULL:
                raise MemoryError()
            for i in range(n):
                cpaths[i] = encoded[i]
                expected[i] = expected_sizes[i]
            with nogil:
                se_hash_small_batch(cpaths, n, expected, self.limit, self.buf, self.cap,
                                    dptr, sizes, errs, &nread)
            self.bytes_read += nread
            out = []
            for i in range(n):
                if errs[i]:
                    out.append(_error(errs[i], paths[i], expected[i], sizes[i]))
                else:
                    out.append(FileDigest(sizes[i], bytes(digests[32 * i:32 * i + 32]), ()))
            return out
        finally:
            PyMem_Free(cpaths)
            PyMem_Free(expected)
            PyMem_Free(sizes)
            PyMem_Free(errs)


# -- the blob index ------------------------------------------------------------------------

#: What one 32-byte bytes object costs (the pack ids handed out).
_BYTES32 = sys.getsizeof(bytes(32))

# syncengine.repo.pack imports this module's package: its names are bound on first use.
cdef object _IndexEntry = None
cdef object _CorruptData = None
# IndexEntry(...) runs a Python-level __new__; tuple.__new__ on its class makes the same
# object several times faster.
cdef object _tuple_new = tuple.__new__


cdef int _bind_pack_types() except -1:
    global _IndexEntry, _CorruptData
    if _IndexEntry is None:
        from syncengine.repo.pack import CorruptData, IndexEntry
        _IndexEntry, _CorruptData = IndexEntry, CorruptData
    return 0


cdef object _index_error(int code, bytes sid, size_t rows_len, uint32_t count):
    """The one place the index's C error codes become Python exceptions (the messages are
    syncengine.repo.pack.decode_index's)."""
    if code == SE_IDX_BAD_NAME:
        return _CorruptData(f"index segment {sid.hex()} does not match its name")
    if code == SE_IDX_BAD_HEADER:
        return _CorruptData(f"index segment {sid.hex()}: bad header")
    if code == SE_IDX_BAD_LENGTH:
        return _CorruptData(f"index segment {sid.hex()}: {rows_len} bytes for {count} entries")
    return MemoryError("the blob index could not grow (out of memory, or 2^32 blobs)")


cdef inline const uint8_t *_digest_ptr(object digest):
    """The 32 bytes of a bytes digest, or NULL for anything else (never present)."""
    if type(digest) is bytes and PyBytes_GET_SIZE(digest) == 32:
        return <const uint8_t *>PyBytes_AS_STRING(digest)
    return NULL


cdef class BlobIndex:
    """digest → IndexEntry of every blob, ~75 bytes a blob (see syncengine.repo.blob_index).

    The GIL is held while records are inserted, so lookups and adds from several threads are
    safe; only the BLAKE3 check of a segment's bytes runs without it.
    """
    cdef se_bindex ix
    cdef list _packs  # bytes of each pack id, made on its first lookup
    cdef Py_ssize_t _pack_objects

    def __cinit__(self):
        _bind_pack_types()
        se_bindex_init(&self.ix)
        self._packs = []
        self._pack_objects = 0

    def __dealloc__(self):
        se_bindex_free(&self.ix)

    cdef object _pack(self, uint32_t n):
        if n >= len(self._packs):
            self._packs.extend([None] * (self.ix.npacks - len(self._packs)))
        p = self._packs[n]
        if p is None:
            p = PyBytes_FromStringAndSize(<const char *>se_bindex_pack(&self.ix, n), 32)
            self._packs[n] = p
            self._pack_objects += 1
        return p

    cdef object _entry(self, const se_bindex_rec *r, object digest):
        if digest is None:
            digest = PyBytes_FromStringAndSize(<const char *>r.digest, 32)
        return _tuple_new(_IndexEntry, (digest, self._pack(r.pack), r.offset, r.stored, r.raw, r.codec))

    cdef const se_bindex_rec *_find(self, object digest):
        cdef const uint8_t *d = _digest_ptr(digest)
        if d is NULL:
            return NULL
        return se_bindex_get(&self.ix, d)

    def add_segment(self, segment_id, data):
        """Checks an index segment as decode_index does (CorruptData with its messages) and
        adds its records, a digest already present keeping its location. Returns how many
        digests were new."""
        cdef bytes sid = bytes(segment_id)
        cdef const uint8_t[::1] view = memoryview(data).cast("B")
        cdef const uint8_t *ptr = &view[0] if view.shape[0] else <const uint8_t *>b""
        cdef size_t n = view.shape[0], rows_len = 0, added = 0
        cdef uint32_t count = 0
        cdef int e
        if len(sid) != 32:
            raise _index_error(SE_IDX_BAD_NAME, sid, 0, 0)
        cdef const uint8_t *sp = <const uint8_t *>PyBytes_AS_STRING(sid)
        with nogil:
            e = se_bindex_check_segment(sp, ptr, n, &count, &rows_len)
        if e:
            raise _index_error(e, sid, rows_len, count)
        # GIL held: no other thread sees the table while it grows.
        e = se_bindex_add_segment(&self.ix, ptr, count, &added)
        if e:
            raise _index_error(e, sid, 0, 0)
        return added

    def add(self, entry):
        """Adds one IndexEntry unless its digest is present; True if it was added."""
        digest, pack, offset, stored, raw, codec = entry
        cdef bytes dg = bytes(digest), pk = bytes(pack)
        cdef const uint8_t *d = _digest_ptr(dg)
        if d is NULL or len(pk) != 32:
            raise ValueError("an index entry's digest and pack id are 32 bytes each")
        cdef int added = 0
        cdef int e = se_bindex_add(&self.ix, d, <const uint8_t *>PyBytes_AS_STRING(pk),
                                   offset, stored, raw, codec, &added)
        if e:
            raise _index_error(e, b"", 0, 0)
        return bool(added)

    def setdefault(self, digest, entry):
        """The entry for `digest`, adding `entry` (whose digest it must be) if absent."""
        if bytes(digest) != bytes(entry[0]):
            raise ValueError("setdefault: the entry's digest is not the key")
        cdef const se_bindex_rec *r = self._find(digest)
        if r is not NULL:
            return self._entry(r, None)
        self.add(entry)
        return entry

    def get(self, digest, default=None):
        """The IndexEntry of `digest`, or `default`."""
        cdef const se_bindex_rec *r = self._find(digest)
        if r is NULL:
            return default
        return self._entry(r, digest)

    def __getitem__(self, digest):
        cdef const se_bindex_rec *r = self._find(digest)
        if r is NULL:
            raise KeyError(digest)
        return self._entry(r, digest)

    def __contains__(self, digest):
        return self._find(digest) is not NULL

    def __len__(self):
        return self.ix.count

    def __iter__(self):
        """The digests, in the order they were added."""
        cdef size_t i = 0
        while i < self.ix.count:
            yield PyBytes_FromStringAndSize(<const char *>se_bindex_at(&self.ix, i).digest, 32)
            i += 1

    def keys(self):
        return iter(self)

    def values(self):
        """The IndexEntry of every blob, in the order they were added."""
        cdef size_t i = 0
        while i < self.ix.count:
            yield self._entry(se_bindex_at(&self.ix, i), None)
            i += 1

    def items(self):
        """(digest, IndexEntry) of every blob, in the order they were added."""
        for e in self.values():
            yield e[0], e

    @property
    def nbytes(self):
        """Bytes this index holds: its C tables plus the pack ids handed out as bytes."""
        return (se_bindex_nbytes(&self.ix) + 8 * len(self._packs)
                + self._pack_objects * _BYTES32)

    def __repr__(self):
        return f"<BlobIndex (native): {self.ix.count} blobs in {self.ix.npacks} packs>"
