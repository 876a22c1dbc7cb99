/* Read + chunk + hash of files over caller-owned buffers; every function here runs without the GIL. */
#define _GNU_SOURCE
#include "se_filehash.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "se_blake3.h"

int se_open(const char *path, int *fd, struct stat *st)
{
    int f = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (f < 0)
        return errno;
    if (fstat(f, st) != 0) {
        int e = errno;
        close(f);
        return e;
    }
    if (!S_ISREG(st->st_mode)) {
        close(f);
        return S_ISDIR(st->st_mode) ? EISDIR : EINVAL;
    }
    *fd = f;
    return 0;
}

int se_check_unchanged(int fd, const struct stat *before)
{
    struct stat after;
    if (fstat(fd, &after) != 0)
        return errno;
    if (after.st_size != before->st_size || after.st_mtim.tv_sec != before->st_mtim.tv_sec ||
        after.st_mtim.tv_nsec != before->st_mtim.tv_nsec)
        return SE_ERR_STAT_CHANGED;
    return 0;
}

int se_stream_init(se_stream *s, int fd, uint8_t *buf, size_t piece, uint64_t start, uint64_t stop_at)
{
    s->fd = fd;
    s->buf = buf;
    s->piece = piece;
    s->pos = s->end = 0;
    s->offset = start;
    s->stop_at = stop_at;
    s->bytes_read = 0;
    s->eof = 0;
    s->cdc.h = 0;
    s->cdc.len = 0;
    se_b3_init(&s->b3);
    if (start != 0 && lseek(fd, (off_t)start, SEEK_SET) == (off_t)-1)
        return errno;
#ifdef POSIX_FADV_SEQUENTIAL
    posix_fadvise(fd, (off_t)start, 0, POSIX_FADV_SEQUENTIAL);
#endif
    return 0;
}

static void emit(se_stream *s, se_chunk *c)
{
    c->offset = s->offset;
    c->length = s->cdc.len;
    se_b3_finalize(&s->b3, c->digest);
    s->offset += s->cdc.len;
    s->cdc.h = 0;
    s->cdc.len = 0;
    se_b3_init(&s->b3);
}

/* Each piece is read, scanned for a cut and hashed while it is still in cache: the bytes of
   a file cross the memory bus once, as b3sum's do, instead of once per pass. */
long se_stream_next(se_stream *s, const se_cdc_params *p, se_chunk *out, size_t out_cap)
{
    size_t count = 0;
    while (count < out_cap && s->offset < s->stop_at) {
        if (s->pos == s->end) {
            if (s->eof) {
                if (s->cdc.len > 0)
                    emit(s, &out[count++]);
                break;
            }
            ssize_t n = read(s->fd, s->buf, s->piece);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                return -(long)errno;
            }
            s->pos = 0;
            s->end = (size_t)n;
            s->bytes_read += (uint64_t)n;
            if (n == 0)
                s->eof = 1;
            continue;
        }
        int cut;
        size_t used = se_cdc_feed(p, &s->cdc, s->buf + s->pos, s->end - s->pos, &cut);
        se_b3_update(&s->b3, s->buf + s->pos, used);
        s->pos += used;
        if (cut)
            emit(s, &out[count++]);
    }
    return (long)count;
}

static int hash_small(const char *path, int64_t expected, size_t limit, uint8_t *buf, size_t cap,
                      uint8_t *digest, int64_t *size, uint64_t *bytes_read)
{
    int fd;
    struct stat st;
    int e = se_open(path, &fd, &st);
    if (e)
        return e;
    size_t got = 0, want = limit + 1 < cap ? limit + 1 : cap;
    while (got < want) {
        ssize_t n = read(fd, buf + got, want - got);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            e = errno;
            close(fd);
            return e;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    *bytes_read += got;
    *size = (int64_t)got;
    e = se_check_unchanged(fd, &st);
    close(fd);
    if (e)
        return e;
    if ((int64_t)got != expected)
        return SE_ERR_SIZE_CHANGED;
    se_blake3(NULL, buf, got, digest);
    return 0;
}

void se_hash_small_batch(const char *const *paths, size_t n, const int64_t *expected, size_t limit,
                         uint8_t *buf, size_t cap, uint8_t *digests, int64_t *sizes, int *errs,
                         uint64_t *bytes_read)
{
    for (size_t i = 0; i < n; i++)
        errs[i] = hash_small(paths[i], expected[i], limit, buf, cap, digests + 32 * i, &sizes[i], bytes_read);
}
