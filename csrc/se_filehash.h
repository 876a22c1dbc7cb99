/* Read + chunk + hash of files over caller-owned buffers; every function here runs without the GIL. */
#ifndef SE_FILEHASH_H
#define SE_FILEHASH_H

#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

#include "se_blake3.h"
#include "se_cdc.h"

/* Error codes beside positive errno values. */
#define SE_ERR_SIZE_CHANGED (-1)   /* read a different number of bytes than expected */
#define SE_ERR_STAT_CHANGED (-2)   /* size or mtime moved between open and end of read */

typedef struct {
    uint64_t offset;
    uint64_t length;
    uint8_t digest[32];
} se_chunk;

typedef struct {
    int fd;
    uint8_t *buf;
    size_t piece;      /* bytes asked of each read(): small enough to stay in L2 between the
                          cut scan and the hash of the same bytes */
    size_t pos, end;   /* unprocessed data: buf[pos:end] */
    uint64_t offset;   /* file offset of the current chunk's start */
    uint64_t stop_at;  /* no chunk starts at or after this offset (UINT64_MAX: read to EOF) */
    uint64_t bytes_read;
    int eof;
    se_cdc_state cdc;  /* the chunk being cut ... */
    se_b3_hasher b3;   /* ... and hashed, in one pass over each piece */
} se_stream;

/* Opens `path` read-only and fstat()s it. Returns 0 or errno. */
int se_open(const char *path, int *fd, struct stat *st);

/* Returns 0 or SE_ERR_STAT_CHANGED comparing a fresh fstat of fd with `before`. */
int se_check_unchanged(int fd, const struct stat *before);

/* Starts a stream at file offset `start` (a chunk boundary, or a guess at one); chunks stop
   once one ends at or beyond `stop_at`. `buf` holds at least `piece` bytes. Returns 0 or
   errno (from lseek). */
int se_stream_init(se_stream *s, int fd, uint8_t *buf, size_t piece, uint64_t start, uint64_t stop_at);

/* Cuts and hashes the next chunks into out[0:out_cap]. Returns how many (0 once the stream
   is exhausted or stop_at is reached) or -errno on a read error. */
long se_stream_next(se_stream *s, const se_cdc_params *p, se_chunk *out, size_t out_cap);

/* Hashes n whole files expected to hold at most `limit` bytes each (buf cap > limit).
   For file i: digests[32*i] = BLAKE3(content), sizes[i] = bytes read, errs[i] = 0, a
   positive errno, SE_ERR_SIZE_CHANGED or SE_ERR_STAT_CHANGED. */
void se_hash_small_batch(const char *const *paths, size_t n, const int64_t *expected, size_t limit,
                         uint8_t *buf, size_t cap, uint8_t *digests, int64_t *sizes, int *errs,
                         uint64_t *bytes_read);

#endif
