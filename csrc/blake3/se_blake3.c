/* se_blake3.c: BLAKE3 tree hashing, incremental hasher and run-time choice of the SIMD kernel. */
#include "se_blake3.h"

#include <stdlib.h>
#include <string.h>

#define BLOCK_LEN 64
#define CHUNK_LEN 1024
/* Full chunks hashed per step: bounds the chaining-value scratch to 4 KiB of stack. */
#define MAX_BATCH 128

enum { CHUNK_START = 1, CHUNK_END = 2, PARENT = 4, ROOT = 8, KEYED_HASH = 16 };

static const uint32_t se_b3_iv[8] = {0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
                                     0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19};

/* Message word order of the 7 rounds (the spec's permutation applied 0..6 times), spelled out
   so that every kernel indexes its message words with constants. */
#define SE_B3_ROUNDS(R)                                                                       \
    R(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)                                   \
    R(2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8)                                   \
    R(3, 4, 10, 12, 13, 2, 7, 14, 6, 5, 9, 0, 11, 15, 8, 1)                                   \
    R(10, 7, 12, 9, 14, 3, 13, 15, 4, 0, 11, 2, 5, 8, 1, 6)                                   \
    R(12, 13, 9, 11, 15, 10, 14, 8, 7, 2, 5, 3, 0, 1, 6, 4)                                   \
    R(9, 14, 11, 5, 8, 12, 15, 1, 13, 3, 0, 10, 2, 6, 4, 7)                                   \
    R(11, 15, 5, 0, 1, 9, 8, 6, 14, 10, 2, 12, 3, 4, 7, 13)

/* One round: G on the four columns, then on the four diagonals (G is defined by the user). */
#define SE_B3_ROUND(s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13, s14, s15)      \
    G(0, 4, 8, 12, s0, s1); G(1, 5, 9, 13, s2, s3);                                           \
    G(2, 6, 10, 14, s4, s5); G(3, 7, 11, 15, s6, s7);                                         \
    G(0, 5, 10, 15, s8, s9); G(1, 6, 11, 12, s10, s11);                                       \
    G(2, 7, 8, 13, s12, s13); G(3, 4, 9, 14, s14, s15);

static inline uint32_t load32(const uint8_t *p)
{
    uint32_t w;
    memcpy(&w, p, 4);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    w = __builtin_bswap32(w);
#endif
    return w;
}

static inline void store32(uint8_t *p, uint32_t w)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    w = __builtin_bswap32(w);
#endif
    memcpy(p, &w, 4);
}

static inline void store_cv(uint8_t out[32], const uint32_t w[8])
{
    for (int i = 0; i < 8; i++)
        store32(out + 4 * i, w[i]);
}

static inline uint32_t ror32(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

/* The compression function, truncated to the 8 words that chaining values and 32-byte roots use.
   out may alias cv. */
static void compress(const uint32_t cv[8], const uint8_t block[BLOCK_LEN], uint32_t block_len,
                     uint64_t counter, uint32_t flags, uint32_t out[8])
{
    uint32_t m[16], v[16];
    for (int i = 0; i < 16; i++)
        m[i] = load32(block + 4 * i);
    for (int i = 0; i < 8; i++)
        v[i] = cv[i];
    for (int i = 0; i < 4; i++)
        v[8 + i] = se_b3_iv[i];
    v[12] = (uint32_t)counter;
    v[13] = (uint32_t)(counter >> 32);
    v[14] = block_len;
    v[15] = flags;
#define G(a, b, c, d, x, y) do {                                                              \
        v[a] += v[b] + m[x]; v[d] = ror32(v[d] ^ v[a], 16);                                   \
        v[c] += v[d];        v[b] = ror32(v[b] ^ v[c], 12);                                   \
        v[a] += v[b] + m[y]; v[d] = ror32(v[d] ^ v[a], 8);                                    \
        v[c] += v[d];        v[b] = ror32(v[b] ^ v[c], 7);                                    \
    } while (0)
    SE_B3_ROUNDS(SE_B3_ROUND)
#undef G
    for (int i = 0; i < 8; i++)
        out[i] = v[i] ^ v[i + 8];
}

/* A batch of equally shaped, independent hashes: n inputs `stride` bytes apart, each made of
   nblocks full 64-byte blocks (16 for a chunk, 1 for a parent node). */
struct many {
    size_t stride, nblocks;
    const uint32_t *key;
    uint32_t ctr_inc;            /* counter step between inputs: 1 for chunks, 0 for parents */
    uint32_t flags, first, last; /* flags of every block, plus those of the first / last block */
};

typedef void kernel_fn(const struct many *j, const uint8_t *in, uint64_t counter, size_t n,
                       uint8_t *out);

/* out may overlap in as in the SIMD kernels: input i is fully read before output i is written. */
static void many_portable(const struct many *j, const uint8_t *in, uint64_t counter, size_t n,
                          uint8_t *out)
{
    for (size_t i = 0; i < n; i++, in += j->stride, counter += j->ctr_inc, out += 32) {
        uint32_t cv[8];
        memcpy(cv, j->key, sizeof cv);
        for (size_t b = 0; b < j->nblocks; b++) {
            uint32_t f = j->flags | (b == 0 ? j->first : 0) | (b + 1 == j->nblocks ? j->last : 0);
            compress(cv, in + BLOCK_LEN * b, BLOCK_LEN, counter, f, cv);
        }
        store_cv(out, cv);
    }
}

struct impl {
    const char *name;
    int (*supported)(void);
    kernel_fn *k[3]; /* 4-, 8- and 16-lane kernels, NULL where absent */
};

static int supported_always(void) { return 1; }

/* -DSE_BLAKE3_NO_SIMD builds the portable code alone, as on other architectures. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(SE_BLAKE3_NO_SIMD)
#define SE_B3_X86 1
typedef uint32_t v4u __attribute__((vector_size(16)));
typedef uint32_t v8u __attribute__((vector_size(32)));
typedef uint32_t v16u __attribute__((vector_size(64)));
typedef uint64_t v2q __attribute__((vector_size(16)));
typedef uint64_t v4q __attribute__((vector_size(32)));
typedef uint64_t v8q __attribute__((vector_size(64)));
typedef uint8_t v16b __attribute__((vector_size(16)));
typedef uint8_t v32b __attribute__((vector_size(32)));
typedef uint8_t v64b __attribute__((vector_size(64)));

#define SIMD_W 4
#define SIMD_V v4u
#define SIMD_Q v2q
#define SIMD_B v16b
#define SIMD_FN many4_sse41
#define SIMD_TARGET "sse4.1"
#define SIMD_ROT 0
#include "se_blake3_simd.h"

#define SIMD_W 4
#define SIMD_V v4u
#define SIMD_Q v2q
#define SIMD_B v16b
#define SIMD_FN many4_avx2
#define SIMD_TARGET "avx2"
#define SIMD_ROT 0
#include "se_blake3_simd.h"

#define SIMD_W 8
#define SIMD_V v8u
#define SIMD_Q v4q
#define SIMD_B v32b
#define SIMD_FN many8_avx2
#define SIMD_TARGET "avx2"
#define SIMD_ROT 0
#include "se_blake3_simd.h"

#define SIMD_W 4
#define SIMD_V v4u
#define SIMD_Q v2q
#define SIMD_B v16b
#define SIMD_FN many4_avx512
#define SIMD_TARGET "avx512f,avx512vl"
#define SIMD_ROT 1
#include "se_blake3_simd.h"

#define SIMD_W 8
#define SIMD_V v8u
#define SIMD_Q v4q
#define SIMD_B v32b
#define SIMD_FN many8_avx512
#define SIMD_TARGET "avx512f,avx512vl"
#define SIMD_ROT 1
#include "se_blake3_simd.h"

#define SIMD_W 16
#define SIMD_V v16u
#define SIMD_Q v8q
#define SIMD_B v64b
#define SIMD_FN many16_avx512
#define SIMD_TARGET "avx512f,avx512vl"
#define SIMD_ROT 1
#include "se_blake3_simd.h"

/* libgcc's checks include the OS (XCR0) enabling the wider registers. */
static int supported_sse41(void) { return __builtin_cpu_supports("sse4.1"); }
static int supported_avx2(void) { return __builtin_cpu_supports("avx2"); }
static int supported_avx512(void)
{
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
}
#endif

/* Best first; the last entry always works. */
static const struct impl impls[] = {
#ifdef SE_B3_X86
    {"avx512", supported_avx512, {many4_avx512, many8_avx512, many16_avx512}},
    {"avx2", supported_avx2, {many4_avx2, many8_avx2, NULL}},
    {"sse41", supported_sse41, {many4_sse41, NULL, NULL}},
#endif
    {"portable", supported_always, {NULL, NULL, NULL}},
};

static int impl_index = -1; /* into impls; written once, same value by every racing thread */

static int detect_impl(void)
{
#ifdef SE_B3_X86
    __builtin_cpu_init(); /* we may run before libgcc's constructor */
#endif
    const char *force = getenv("SE_BLAKE3_FORCE");
    int best = -1;
    for (int i = 0; i < (int)(sizeof impls / sizeof impls[0]); i++) {
        if (!impls[i].supported())
            continue;
        if (best < 0)
            best = i;
        if (force && strcmp(force, impls[i].name) == 0)
            return i;
    }
    return best;
}

static const struct impl *get_impl(void)
{
    int i = __atomic_load_n(&impl_index, __ATOMIC_RELAXED);
    if (i < 0) {
        i = detect_impl();
        __atomic_store_n(&impl_index, i, __ATOMIC_RELAXED);
    }
    return &impls[i];
}

const char *se_blake3_impl(void) { return get_impl()->name; }

/* Runs the whole batch, on the smallest kernel that covers what is left (idle lanes cost less
   than another, narrower pass), else on the widest. A single input goes to the scalar code,
   which beats one busy lane of a vector pass. */
static void hash_many(const struct impl *im, const struct many *j, const uint8_t *in,
                      uint64_t counter, size_t n, uint8_t *out)
{
    while (n > 0) {
        kernel_fn *k = many_portable;
        size_t w = n;
        for (int i = 0; i < 3 && n > 1; i++) {
            if (!im->k[i])
                continue;
            k = im->k[i];
            w = (size_t)4 << i;
            if (w >= n)
                break;
        }
        if (w > n)
            w = n;
        k(j, in, counter, w, out);
        in += w * j->stride;
        counter += w * j->ctr_inc;
        out += 32 * w;
        n -= w;
    }
}

/* A compression waiting for its flags to be known: ROOT, or a chaining value. */
struct node {
    uint32_t cv[8];
    uint8_t block[BLOCK_LEN];
    uint32_t len, flags;
    uint64_t counter;
};

static size_t chunk_len(const se_b3_hasher *h)
{
    return (size_t)h->blocks_done * BLOCK_LEN + h->buf_len;
}

static void chunk_reset(se_b3_hasher *h, uint64_t counter)
{
    memcpy(h->cv, h->key, sizeof h->cv);
    h->chunk_counter = counter;
    h->buf_len = 0;
    h->blocks_done = 0;
}

static uint32_t chunk_flags(const se_b3_hasher *h)
{
    return h->flags | (h->blocks_done ? 0 : CHUNK_START);
}

/* len must fit in the current chunk. The last block stays buffered: only later input can tell
   that it is not the chunk's final block. */
static void chunk_absorb(se_b3_hasher *h, const uint8_t *in, size_t len)
{
    while (len > 0) {
        if (h->buf_len == BLOCK_LEN) {
            compress(h->cv, h->buf, BLOCK_LEN, h->chunk_counter, chunk_flags(h), h->cv);
            h->blocks_done++;
            h->buf_len = 0;
        }
        if (h->buf_len == 0) {
            for (; len > BLOCK_LEN; in += BLOCK_LEN, len -= BLOCK_LEN) {
                compress(h->cv, in, BLOCK_LEN, h->chunk_counter, chunk_flags(h), h->cv);
                h->blocks_done++;
            }
        }
        size_t take = (size_t)(BLOCK_LEN - h->buf_len);
        if (take > len)
            take = len;
        memcpy(h->buf + h->buf_len, in, take);
        h->buf_len += (uint8_t)take;
        in += take;
        len -= take;
    }
}

static void chunk_node(const se_b3_hasher *h, struct node *o)
{
    memcpy(o->cv, h->cv, sizeof o->cv);
    memcpy(o->block, h->buf, h->buf_len);
    memset(o->block + h->buf_len, 0, BLOCK_LEN - h->buf_len);
    o->len = h->buf_len;
    o->flags = chunk_flags(h) | CHUNK_END;
    o->counter = h->chunk_counter;
}

static void parent_node(const se_b3_hasher *h, const uint8_t left[32], const uint8_t right[32],
                        struct node *o)
{
    memcpy(o->cv, h->key, sizeof o->cv);
    memcpy(o->block, left, 32);
    memcpy(o->block + 32, right, 32);
    o->len = BLOCK_LEN;
    o->flags = h->flags | PARENT;
    o->counter = 0;
}

static void node_cv(const struct node *o, uint8_t cv[32])
{
    uint32_t w[8];
    compress(o->cv, o->block, o->len, o->counter, o->flags, w);
    store_cv(cv, w);
}

/* Merges the newest stack entries until one complete subtree per set bit of `chunks` remains,
   the shape of the first `chunks` chunks. */
static void merge_stack(se_b3_hasher *h, uint64_t chunks)
{
    while (h->stack_len > __builtin_popcountll(chunks)) {
        struct node o;
        parent_node(h, h->stack[h->stack_len - 2], h->stack[h->stack_len - 1], &o);
        node_cv(&o, h->stack[h->stack_len - 2]);
        h->stack_len--;
    }
}

/* Pushes the chaining value of the subtree starting at chunk `counter`. Entries are merged only
   now, when it is clear that the previous subtree was not the last one (else its root is the
   root of everything, which needs the ROOT flag). */
static void push_cv(se_b3_hasher *h, const uint8_t cv[32], uint64_t counter)
{
    merge_stack(h, counter);
    memcpy(h->stack[h->stack_len++], cv, 32);
}

/* Hashes n full chunks: all of them in as few SIMD passes as possible, then each aligned
   power-of-two subtree among them level by level down to its two children. The children's
   parent is left to push_cv or finalize, since it is the root if the subtree ends the input. */
static void hash_chunks(const struct impl *im, se_b3_hasher *h, const uint8_t *in, size_t n)
{
    uint8_t cvs[MAX_BATCH * 32];
    const struct many chunks = {.stride = CHUNK_LEN, .nblocks = CHUNK_LEN / BLOCK_LEN,
                                .key = h->key, .ctr_inc = 1, .flags = h->flags,
                                .first = CHUNK_START, .last = CHUNK_END};
    const struct many parents = {.stride = BLOCK_LEN, .nblocks = 1, .key = h->key, .ctr_inc = 0,
                                 .flags = h->flags | PARENT, .first = 0, .last = 0};
    hash_many(im, &chunks, in, h->chunk_counter, n, cvs);
    for (size_t i = 0; i < n;) {
        uint64_t counter = h->chunk_counter + i;
        size_t k = (size_t)1 << (63 - __builtin_clzll((unsigned long long)(n - i)));
        while (counter & (k - 1))
            k /= 2;
        uint8_t *sub = cvs + 32 * i;
        /* In place: parent p reads bytes [64p, 64p+64) and writes [32p, 32p+32). */
        for (size_t m = k; m > 2; m /= 2)
            hash_many(im, &parents, sub, 0, m / 2, sub);
        push_cv(h, sub, counter);
        if (k > 1)
            push_cv(h, sub + 32, counter + k / 2);
        i += k;
    }
}

static void init_with(se_b3_hasher *h, const uint32_t key[8], uint8_t flags)
{
    memcpy(h->key, key, sizeof h->key);
    h->flags = flags;
    h->stack_len = 0;
    chunk_reset(h, 0);
}

void se_b3_init(se_b3_hasher *h) { init_with(h, se_b3_iv, 0); }

void se_b3_init_keyed(se_b3_hasher *h, const uint8_t key[SE_B3_KEY_LEN])
{
    uint32_t k[8];
    for (int i = 0; i < 8; i++)
        k[i] = load32(key + 4 * i);
    init_with(h, k, KEYED_HASH);
}

void se_b3_update(se_b3_hasher *h, const void *input, size_t len)
{
    const uint8_t *in = input;
    if (len == 0)
        return;
    size_t have = chunk_len(h);
    if (have > 0) {
        size_t take = CHUNK_LEN - have < len ? CHUNK_LEN - have : len;
        chunk_absorb(h, in, take);
        in += take;
        len -= take;
        if (len == 0)
            return; /* the chunk stays open: it may be the last one */
        struct node o;
        uint8_t cv[32];
        chunk_node(h, &o);
        node_cv(&o, cv);
        push_cv(h, cv, h->chunk_counter);
        chunk_reset(h, h->chunk_counter + 1);
    }
    if (len > CHUNK_LEN) {
        const struct impl *im = get_impl();
        /* Full chunks straight from the input. A last chunk that is full is hashed here too:
           its chaining value is final, and it is not the root as at least two chunks remain. */
        while (len > CHUNK_LEN) {
            size_t n = len / CHUNK_LEN < MAX_BATCH ? len / CHUNK_LEN : MAX_BATCH;
            hash_chunks(im, h, in, n);
            h->chunk_counter += n;
            in += n * CHUNK_LEN;
            len -= n * CHUNK_LEN;
        }
    }
    chunk_absorb(h, in, len);
    /* The open chunk has input, so every pushed subtree is complete: merge them, leaving
       finalize a stack it can fold from the top. */
    if (len > 0)
        merge_stack(h, h->chunk_counter);
}

void se_b3_finalize(const se_b3_hasher *h, uint8_t out[SE_B3_OUT_LEN])
{
    struct node o;
    size_t i = h->stack_len;
    /* An empty chunk after earlier input means the input ended on a chunk boundary, with the
       last subtree pushed as a pair (or as a lone chunk), never merged: fold the stack from the
       top, letting its last merge be the root. Otherwise the open chunk is the rightmost node. */
    if (i == 0 || chunk_len(h) > 0) {
        chunk_node(h, &o);
    } else {
        i -= 2;
        parent_node(h, h->stack[i], h->stack[i + 1], &o);
    }
    while (i > 0) {
        uint8_t right[32];
        node_cv(&o, right);
        i--;
        parent_node(h, h->stack[i], right, &o);
    }
    uint32_t w[8];
    compress(o.cv, o.block, o.len, o.counter, o.flags | ROOT, w);
    store_cv(out, w);
}

void se_blake3(const uint8_t *key, const void *input, size_t len, uint8_t out[SE_B3_OUT_LEN])
{
    se_b3_hasher h;
    if (key)
        se_b3_init_keyed(&h, key);
    else
        se_b3_init(&h);
    se_b3_update(&h, input, len);
    se_b3_finalize(&h, out);
}
