# C declarations of the native core (csrc/*.h) for the Cython module.
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t


cdef extern from "<sys/stat.h>" nogil:
    cdef struct stat:
        long st_size

cdef extern from "se_blake3.h" nogil:
    void se_blake3(const uint8_t *key, const void *data, size_t length, uint8_t *out)
    const char *se_blake3_impl()

cdef extern from "se_cdc.h" nogil:
    ctypedef struct se_cdc_params:
        size_t min_size, avg_size, max_size
        uint64_t gear[256]
    int se_cdc_init(se_cdc_params *p, uint64_t seed, size_t min_size, size_t avg_size, size_t max_size)
    size_t se_cdc_next(const se_cdc_params *p, const uint8_t *data, size_t length)

cdef extern from "se_filehash.h" nogil:
    int SE_ERR_SIZE_CHANGED
    int SE_ERR_STAT_CHANGED
    ctypedef struct se_chunk:
        uint64_t offset
        uint64_t length
        uint8_t digest[32]
    ctypedef struct se_stream:
        uint64_t bytes_read
    int se_open(const char *path, int *fd, stat *st)
    int se_check_unchanged(int fd, const stat *before)
    int se_stream_init(se_stream *s, int fd, uint8_t *buf, size_t piece, uint64_t start, uint64_t stop_at)
    long se_stream_next(se_stream *s, const se_cdc_params *p, se_chunk *out, size_t out_cap)
    void se_hash_small_batch(const char *const *paths, size_t n, const int64_t *expected, size_t limit,
                             uint8_t *buf, size_t cap, uint8_t *digests, int64_t *sizes, int *errs,
                             uint64_t *bytes_read)

cdef extern from "se_bindex.h" nogil:
    int SE_IDX_BAD_NAME
    int SE_IDX_BAD_HEADER
    int SE_IDX_BAD_LENGTH
    int SE_IDX_NOMEM
    ctypedef struct se_bindex_rec:
        uint8_t digest[32]
        uint64_t offset
        uint32_t stored
        uint32_t raw
        uint32_t pack
        uint8_t codec
    ctypedef struct se_bindex:
        size_t count
        size_t npacks
    void se_bindex_init(se_bindex *ix)
    void se_bindex_free(se_bindex *ix)
    const se_bindex_rec *se_bindex_get(const se_bindex *ix, const uint8_t *digest)
    const se_bindex_rec *se_bindex_at(const se_bindex *ix, size_t i)
    const uint8_t *se_bindex_pack(const se_bindex *ix, uint32_t i)
    int se_bindex_add(se_bindex *ix, const uint8_t *digest, const uint8_t *pack, uint64_t offset,
                      uint32_t stored, uint32_t raw, uint8_t codec, int *added)
    int se_bindex_check_segment(const uint8_t *sid, const uint8_t *data, size_t length,
                                uint32_t *count, size_t *rows_len)
    int se_bindex_add_segment(se_bindex *ix, const uint8_t *data, uint32_t count, size_t *added)
    size_t se_bindex_nbytes(const se_bindex *ix)
