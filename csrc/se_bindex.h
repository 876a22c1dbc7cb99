/* The in-memory blob index: digest -> pack location, ~75 bytes a blob (docs/HASHING.md).
 *
 * Records live in a dense array (in insertion order, in blocks so growth never copies more
 * than one block); an open-addressing table of 8-byte slots (record number + 32 hash bits)
 * finds them by digest; a slot's home is the top bits of its tag. Pack ids are interned: a record names its pack by a u32.
 * Nothing here touches Python; the caller serialises mutation (the Cython class holds the GIL
 * while it inserts).
 */
#ifndef SE_BINDEX_H
#define SE_BINDEX_H

#include <stddef.h>
#include <stdint.h>

/* Error codes of se_bindex_check_segment (beside 0) and of the adding functions. */
#define SE_IDX_BAD_NAME (-1)    /* BLAKE3 of the bytes is not the segment id */
#define SE_IDX_BAD_HEADER (-2)  /* no "SEINDEX1" magic + count */
#define SE_IDX_BAD_LENGTH (-3)  /* the records do not fill count * 81 bytes */
#define SE_IDX_NOMEM (-4)       /* allocation failed (or more than 2^32 - 2 blobs/packs) */

#define SE_IDX_RECORD_SIZE 81   /* one segment record: digest, pack, offset, stored, raw, codec */
#define SE_IDX_HEADER_SIZE 12   /* "SEINDEX1" + count u32le */

/* 2^14 records (896 KiB) a block; block 0 starts small and doubles up to this. */
#define SE_IDX_BLOCK_BITS 14

typedef struct {
    uint8_t digest[32];
    uint64_t offset;
    uint32_t stored;
    uint32_t raw;
    uint32_t pack;   /* index into the pack table */
    uint8_t codec;
} se_bindex_rec;     /* 56 bytes with padding */

typedef struct {
    uint32_t rec1;   /* record number + 1; 0: empty */
    uint32_t tag;    /* high hash bits: most misses never touch a record */
} se_bindex_slot;

typedef struct {
    se_bindex_rec **blocks;
    size_t nblocks, blocks_cap;
    size_t block0_cap;       /* records block 0 has room for (until it is full-size) */
    size_t count;
    se_bindex_slot *slots;
    size_t slots_cap;        /* 2^slots_bits, or 0 */
    unsigned slots_bits;
    uint8_t (*packs)[32];
    size_t npacks, packs_cap;
    uint32_t *pack_slots;    /* pack number + 1; 0: empty */
    size_t pack_slots_cap;
    uint32_t last_pack;      /* segments name few packs: the last one is tried first */
} se_bindex;

void se_bindex_init(se_bindex *ix);
void se_bindex_free(se_bindex *ix);

/* The record for `digest`, or NULL. */
const se_bindex_rec *se_bindex_get(const se_bindex *ix, const uint8_t *digest);

/* Record number i (0 <= i < count), in insertion order. */
const se_bindex_rec *se_bindex_at(const se_bindex *ix, size_t i);

/* The 32-byte id of pack number i. */
const uint8_t *se_bindex_pack(const se_bindex *ix, uint32_t i);

/* Adds one location unless `digest` is present (the first location stays); *added says
 * which. Returns 0 or SE_IDX_NOMEM. */
int se_bindex_add(se_bindex *ix, const uint8_t *digest, const uint8_t *pack, uint64_t offset,
                  uint32_t stored, uint32_t raw, uint8_t codec, int *added);

/* Checks a whole segment as docs/FORMAT.md defines it: BLAKE3(data) == sid, the magic and
 * that count records fill the body. Sets *count (and *rows_len, the bytes after the header).
 * Reads only `data`: safe without the GIL. Returns 0 or SE_IDX_BAD_*. */
int se_bindex_check_segment(const uint8_t *sid, const uint8_t *data, size_t len, uint32_t *count,
                            size_t *rows_len);

/* Adds the records of a checked segment (data as given to se_bindex_check_segment), first
 * location winning; *added counts new digests. Returns 0 or SE_IDX_NOMEM (records before the
 * failure stay added: adding the segment again completes it). */
int se_bindex_add_segment(se_bindex *ix, const uint8_t *data, uint32_t count, size_t *added);

/* Bytes allocated by the index (records, slots, pack table). */
size_t se_bindex_nbytes(const se_bindex *ix);

#endif
