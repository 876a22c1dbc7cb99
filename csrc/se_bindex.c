/* The in-memory blob index (se_bindex.h): dense records, a tagged open-addressing table. */
#include "se_bindex.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "se_blake3.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "segment records are read as little-endian integers in place"
#endif

#define BLOCK_RECS ((size_t)1 << SE_IDX_BLOCK_BITS)
#define BLOCK_MASK (BLOCK_RECS - 1)
#define FIRST_RECS 64
#define FIRST_SLOT_BITS 6
#define PREFETCH 8 /* records ahead whose slot is prefetched while adding a segment */
/* More than this many records is refused: record numbers + 1 must fit a u32. */
#define MAX_RECS ((size_t)UINT32_MAX - 1)

static const uint8_t MAGIC[8] = {'S', 'E', 'I', 'N', 'D', 'E', 'X', '1'};

static inline uint64_t load64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

/* Digests are BLAKE3 outputs, so any of their bits would do; mixing all 32 bytes keeps a
 * crafted segment of digests sharing a prefix from piling into one probe run. */
static inline uint64_t digest_hash(const uint8_t *d) {
    uint64_t h = load64(d) ^ rotl64(load64(d + 8), 17) ^ rotl64(load64(d + 16), 31) ^
                 rotl64(load64(d + 24), 47);
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

void se_bindex_init(se_bindex *ix) { memset(ix, 0, sizeof *ix); }

void se_bindex_free(se_bindex *ix) {
    for (size_t i = 0; i < ix->nblocks; i++) free(ix->blocks[i]);
    free(ix->blocks);
    free(ix->slots);
    free(ix->packs);
    free(ix->pack_slots);
    se_bindex_init(ix);
}

const se_bindex_rec *se_bindex_at(const se_bindex *ix, size_t i) {
    assert(i < ix->count);
    return &ix->blocks[i >> SE_IDX_BLOCK_BITS][i & BLOCK_MASK];
}

const uint8_t *se_bindex_pack(const se_bindex *ix, uint32_t i) {
    assert(i < ix->npacks);
    return ix->packs[i];
}

/* A digest's home slot is the top bits of its tag, so a table can double from its slots alone,
 * walking them in order (no record is read, and the writes run nearly sequentially). */
static inline size_t home(uint32_t tag, unsigned bits) { return (size_t)(tag >> (32 - bits)); }

const se_bindex_rec *se_bindex_get(const se_bindex *ix, const uint8_t *digest) {
    if (ix->slots_cap == 0) return NULL;
    uint32_t tag = (uint32_t)(digest_hash(digest) >> 32);
    size_t mask = ix->slots_cap - 1;
    for (size_t i = home(tag, ix->slots_bits);; i = (i + 1) & mask) {
        const se_bindex_slot *s = &ix->slots[i];
        if (s->rec1 == 0) return NULL;
        if (s->tag == tag) {
            const se_bindex_rec *r = se_bindex_at(ix, s->rec1 - 1);
            if (memcmp(r->digest, digest, 32) == 0) return r;
        }
    }
}

/* The table stays at most 70 % full: after a doubling it is ≥ 35 % full, 8 bytes a slot. */
static int slots_reserve(se_bindex *ix, size_t want) {
    unsigned bits = ix->slots_cap ? ix->slots_bits : FIRST_SLOT_BITS;
    while (want * 10 > ((size_t)1 << bits) * 7) bits++;
    size_t cap = (size_t)1 << bits;
    if (cap == ix->slots_cap) return 0;
    if (bits > 32) return SE_IDX_NOMEM;
    se_bindex_slot *slots = calloc(cap, sizeof *slots);
    if (slots == NULL) return SE_IDX_NOMEM;
    size_t mask = cap - 1;
    for (size_t k = 0; k < ix->slots_cap; k++) {
        se_bindex_slot s = ix->slots[k];
        if (s.rec1 == 0) continue;
        size_t i = home(s.tag, bits);
        while (slots[i].rec1 != 0) i = (i + 1) & mask;
        slots[i] = s;
    }
    free(ix->slots);
    ix->slots = slots;
    ix->slots_cap = cap;
    ix->slots_bits = bits;
    return 0;
}

/* Room for records up to number want - 1. */
static int records_reserve(se_bindex *ix, size_t want) {
    if (want > MAX_RECS) return SE_IDX_NOMEM;
    if (want == 0) return 0;
    size_t need_blocks = ((want - 1) >> SE_IDX_BLOCK_BITS) + 1;
    if (need_blocks > ix->blocks_cap) {
        size_t cap = ix->blocks_cap ? ix->blocks_cap : 4;
        while (cap < need_blocks) cap *= 2;
        se_bindex_rec **b = realloc(ix->blocks, cap * sizeof *b);
        if (b == NULL) return SE_IDX_NOMEM;
        ix->blocks = b;
        ix->blocks_cap = cap;
    }
    if (ix->nblocks == 0) {
        size_t cap = FIRST_RECS;
        while (cap < want && cap < BLOCK_RECS) cap *= 2;
        ix->blocks[0] = malloc(cap * sizeof(se_bindex_rec));
        if (ix->blocks[0] == NULL) return SE_IDX_NOMEM;
        ix->nblocks = 1;
        ix->block0_cap = cap;
    } else if (ix->block0_cap < BLOCK_RECS && want > ix->block0_cap) {
        size_t cap = ix->block0_cap;
        while (cap < want && cap < BLOCK_RECS) cap *= 2;
        se_bindex_rec *b = realloc(ix->blocks[0], cap * sizeof(se_bindex_rec));
        if (b == NULL) return SE_IDX_NOMEM;
        ix->blocks[0] = b;
        ix->block0_cap = cap;
    }
    while (ix->nblocks < need_blocks) {
        se_bindex_rec *b = malloc(BLOCK_RECS * sizeof(se_bindex_rec));
        if (b == NULL) return SE_IDX_NOMEM;
        ix->blocks[ix->nblocks++] = b;
    }
    return 0;
}

static inline uint64_t pack_hash(const uint8_t *p) { return digest_hash(p); }

static int packs_grow(se_bindex *ix) {
    size_t cap = ix->packs_cap ? 2 * ix->packs_cap : 16;
    if (cap > MAX_RECS) return SE_IDX_NOMEM;
    uint8_t(*packs)[32] = realloc(ix->packs, cap * 32);
    if (packs == NULL) return SE_IDX_NOMEM;
    ix->packs = packs;
    ix->packs_cap = cap;
    /* The pack table's slots stay at most half full. */
    size_t scap = 2 * cap;
    uint32_t *slots = calloc(scap, sizeof *slots);
    if (slots == NULL) return SE_IDX_NOMEM;
    for (size_t n = 0; n < ix->npacks; n++) {
        size_t i = pack_hash(ix->packs[n]) & (scap - 1);
        while (slots[i] != 0) i = (i + 1) & (scap - 1);
        slots[i] = (uint32_t)(n + 1);
    }
    free(ix->pack_slots);
    ix->pack_slots = slots;
    ix->pack_slots_cap = scap;
    return 0;
}

/* The number of pack `id`, added to the table if new. */
static int intern_pack(se_bindex *ix, const uint8_t *id, uint32_t *out) {
    if (ix->npacks && memcmp(ix->packs[ix->last_pack], id, 32) == 0) {
        *out = ix->last_pack;
        return 0;
    }
    if (ix->npacks == ix->packs_cap) {
        int e = packs_grow(ix);
        if (e) return e;
    }
    size_t mask = ix->pack_slots_cap - 1;
    size_t i = pack_hash(id) & mask;
    for (; ix->pack_slots[i] != 0; i = (i + 1) & mask) {
        uint32_t n = ix->pack_slots[i] - 1;
        if (memcmp(ix->packs[n], id, 32) == 0) {
            *out = ix->last_pack = n;
            return 0;
        }
    }
    uint32_t n = (uint32_t)ix->npacks++;
    memcpy(ix->packs[n], id, 32);
    ix->pack_slots[i] = n + 1;
    *out = ix->last_pack = n;
    return 0;
}

/* Inserts with room already reserved for one more record and slot. */
static int insert(se_bindex *ix, const uint8_t *digest, const uint8_t *pack, uint64_t offset,
                  uint32_t stored, uint32_t raw, uint8_t codec, int *added) {
    uint32_t tag = (uint32_t)(digest_hash(digest) >> 32);
    size_t mask = ix->slots_cap - 1;
    size_t i = home(tag, ix->slots_bits);
    for (; ix->slots[i].rec1 != 0; i = (i + 1) & mask) {
        if (ix->slots[i].tag == tag &&
            memcmp(se_bindex_at(ix, ix->slots[i].rec1 - 1)->digest, digest, 32) == 0) {
            *added = 0;
            return 0;
        }
    }
    uint32_t pno;
    int e = intern_pack(ix, pack, &pno);
    if (e) return e;
    size_t n = ix->count;
    se_bindex_rec *r = &ix->blocks[n >> SE_IDX_BLOCK_BITS][n & BLOCK_MASK];
    memset(r, 0, sizeof *r);  /* padding too: the records are plain bytes to any tool reading them */
    memcpy(r->digest, digest, 32);
    r->offset = offset;
    r->stored = stored;
    r->raw = raw;
    r->pack = pno;
    r->codec = codec;
    ix->slots[i].rec1 = (uint32_t)(n + 1);
    ix->slots[i].tag = tag;
    ix->count = n + 1;
    *added = 1;
    return 0;
}

int se_bindex_add(se_bindex *ix, const uint8_t *digest, const uint8_t *pack, uint64_t offset,
                  uint32_t stored, uint32_t raw, uint8_t codec, int *added) {
    int e = records_reserve(ix, ix->count + 1);
    if (!e) e = slots_reserve(ix, ix->count + 1);
    if (e) return e;
    return insert(ix, digest, pack, offset, stored, raw, codec, added);
}

int se_bindex_check_segment(const uint8_t *sid, const uint8_t *data, size_t len, uint32_t *count,
                            size_t *rows_len) {
    uint8_t name[32];
    se_blake3(NULL, data, len, name);
    *count = 0;
    *rows_len = 0;
    if (memcmp(name, sid, 32) != 0) return SE_IDX_BAD_NAME;
    if (len < 32 + SE_IDX_HEADER_SIZE || memcmp(data, MAGIC, 8) != 0) return SE_IDX_BAD_HEADER;
    uint32_t n;
    memcpy(&n, data + 8, 4);  /* little-endian on every platform this builds for */
    *count = n;
    *rows_len = len - 32 - SE_IDX_HEADER_SIZE;
    if (*rows_len != (size_t)n * SE_IDX_RECORD_SIZE) return SE_IDX_BAD_LENGTH;
    return 0;
}

int se_bindex_add_segment(se_bindex *ix, const uint8_t *data, uint32_t count, size_t *added) {
    *added = 0;
    /* Reserving for every record up front keeps a duplicate-free segment from growing the
     * table more than once; duplicates only leave slack that later adds use. */
    int e = records_reserve(ix, ix->count + count);
    if (!e) e = slots_reserve(ix, ix->count + count);
    if (e) return e;
    const uint8_t *p = data + SE_IDX_HEADER_SIZE;
    for (uint32_t k = 0; k < count; k++, p += SE_IDX_RECORD_SIZE) {
        /* Each insert's slot is a cache miss in a large table: ask for a later one's now. */
        if (k + PREFETCH < count) {
            uint32_t tag = (uint32_t)(digest_hash(p + PREFETCH * SE_IDX_RECORD_SIZE) >> 32);
            __builtin_prefetch(&ix->slots[home(tag, ix->slots_bits)], 1);
        }
        uint64_t offset;
        uint32_t stored, raw;
        memcpy(&offset, p + 64, 8);
        memcpy(&stored, p + 72, 4);
        memcpy(&raw, p + 76, 4);
        int was_added;
        e = insert(ix, p, p + 32, offset, stored, raw, p[80], &was_added);
        if (e) return e;
        *added += (size_t)was_added;
    }
    return 0;
}

size_t se_bindex_nbytes(const se_bindex *ix) {
    size_t recs = 0;
    if (ix->nblocks) recs = ix->block0_cap + (ix->nblocks - 1) * BLOCK_RECS;
    return sizeof *ix + recs * sizeof(se_bindex_rec) + ix->blocks_cap * sizeof(se_bindex_rec *) +
           ix->slots_cap * sizeof(se_bindex_slot) + ix->packs_cap * 32 +
           ix->pack_slots_cap * sizeof(uint32_t);
}
