/* Content-defined chunking: gear rolling hash with FastCDC-style normalized cut points. */
#include "se_cdc.h"

#include <stdlib.h>
#include <string.h>

static uint64_t splitmix64_next(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

int se_cdc_init(se_cdc_params *p, uint64_t seed, size_t min_size, size_t avg_size, size_t max_size)
{
    if (avg_size < 64 || (avg_size & (avg_size - 1)) != 0)
        return -1;
    if (!(0 < min_size && min_size < avg_size && avg_size < max_size))
        return -1;
    unsigned bits = 0;
    while (((size_t)1 << bits) < avg_size)
        bits++;
    p->min_size = min_size;
    p->avg_size = avg_size;
    p->max_size = max_size;
    p->thr_small = (uint64_t)1 << (64 - (bits + 2));
    p->thr_large = (uint64_t)1 << (64 - (bits - 2));
    uint64_t state = seed;
    for (int i = 0; i < 256; i++) {
        p->gear[i] = splitmix64_next(&state);
    }
    return 0;
}

/* Runs the gear recurrence h = 2h + G[byte] over d[0:n], testing for a cut after every byte.
   Returns the bytes consumed; *cut is set when the last of them ends a chunk (and left alone
   otherwise). The loop takes two bytes per iteration: the next h is 4h + (2G[a] + G[b]), whose
   serial part is one shift-add, and the in-between value 2h + G[a] is computed beside it rather
   than on the dependency chain. Splitting a scan into several calls gives the same result as
   one call. This is the definition every faster path below must reproduce exactly. */
static inline size_t scan_scalar(const uint64_t *g, uint64_t *hp, const uint8_t *d, size_t n, uint64_t thr,
                                 int *cut)
{
    uint64_t h = *hp;
    size_t k = 0;
    while (k + 2 <= n) {
        uint64_t a = g[d[k]], b = g[d[k + 1]];
        uint64_t mid = (h << 1) + a;
        h = (h << 2) + ((a << 1) + b);
        if (__builtin_expect(mid < thr, 0)) {
            *hp = mid;
            *cut = 1;
            return k + 1;
        }
        k += 2;
        if (__builtin_expect(h < thr, 0)) {
            *hp = h;
            *cut = 1;
            return k;
        }
    }
    if (k < n) {
        h = (h << 1) + g[d[k]];
        k++;
        if (h < thr)
            *cut = 1;
    }
    *hp = h;
    return k;
}

/* ---------------------------------------------------------------------------------------------
   AVX-512 (VBMI) scan, bit-identical to scan_scalar.

   Because h shifts left one bit per byte, 64 steps after any point h no longer depends on what
   came before: h_i = sum_{j<64} G[d_(i-j)] << j (mod 2^64). So a stretch of the input can be
   scanned by a lane that starts 64 bytes early with h = 0 (a warm-up whose values are not
   tested) and from then on holds exactly the value the sequential scan would hold. A block of
   the input is cut into 16 lanes of S bytes (plus 64), scanned side by side in two vectors of
   8 x 64-bit lanes; lane L reads d[L*S + t], t = 0 .. S + 63:

     lane 0                 [0, S + 64)                   starts on the exact h carried in
     lane L = 1..15         [L*S + 64, (L+1)*S + 64)      after its warm-up [L*S, L*S + 64)

   The lanes advance 64 steps (a "group") at a time and keep, per lane, the minimum of every h
   they passed; a lane has a hit in the group when that minimum is below the threshold. Lanes
   are in position order, so the block's first cut is the first hit of the lowest lane that has
   one: its group is rescanned by scan_scalar from the h the lane had at the group's start. Hits
   are rare (one per 2^(bits+-2) bytes), so this costs nothing measurable. Without a hit, lane 15
   ends holding the exact h at the block's end, which the next block's lane 0 starts from.
   Shorter inputs, and what is left after the last block, go to scan_scalar; so calls of any
   size, and a scan split into calls anywhere, give exactly scan_scalar's result.

   Table lookups, with no gathers (slow on the machines this was measured on): a vector holds 64
   indices = 8 lanes x 8 consecutive steps. Each byte plane p of the 256-entry gear table (byte p
   of every entry) is four 64-byte vectors; two masked VPERMI2B (entries < 128, then >= 128) look
   up plane p for all 64 indices, and three rounds of unpacks (bytes, words, dwords) turn the 8
   planes into 8 vectors of 64-bit gear values, one per step, lane L in qword L. The index bytes
   are laid out while transposing the input rows (load_rows) so that the unpacks' in-lane order
   comes out as exactly that.
   --------------------------------------------------------------------------------------------- */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SE_CDC_X86 1
#include <immintrin.h>

#define SE_AVX512 __attribute__((target("avx512f,avx512bw,avx512vbmi")))
#define SE_AVX512_INLINE static inline __attribute__((always_inline, target("avx512f,avx512bw,avx512vbmi")))

enum {
    SIMD_LANES = 16, /* two vectors of 8 x 64-bit lanes */
    MAX_GROUPS = 33, /* per block: S = 64 * (groups - 1) = 2 KiB per lane, 32 KiB + 64 in all */
};

/* A block of ng >= 2 groups: 16 lanes of S = 64 * (ng - 1) bytes, lane 0 64 bytes longer. */
static inline size_t block_bytes(size_t ng) { return SIMD_LANES * 64 * (ng - 1) + 64; }

#define SIMD_MIN_BYTES (SIMD_LANES * 64 + 64) /* one group after the warm-up */

/* t[4p + c] = byte p of G[64c .. 64c + 63]. */
typedef struct {
    __m512i t[32];
} plane_tables;

/* 8x8 transpose of 64-bit elements: out[i] qword j = in[j] qword i. */
SE_AVX512_INLINE void transpose_qwords(const __m512i in[8], __m512i out[8])
{
    __m512i x[8], y[8];
    for (int k = 0; k < 4; k++) {
        x[2 * k] = _mm512_unpacklo_epi64(in[2 * k], in[2 * k + 1]);     /* even qwords of rows 2k, 2k+1 */
        x[2 * k + 1] = _mm512_unpackhi_epi64(in[2 * k], in[2 * k + 1]); /* odd qwords */
    }
    for (int e = 0; e < 2; e++) {
        y[e] = _mm512_shuffle_i64x2(x[e], x[2 + e], 0x88);     /* qwords {0,4}+e of rows 0-3 */
        y[2 + e] = _mm512_shuffle_i64x2(x[e], x[2 + e], 0xdd); /* qwords {2,6}+e of rows 0-3 */
        y[4 + e] = _mm512_shuffle_i64x2(x[4 + e], x[6 + e], 0x88);
        y[6 + e] = _mm512_shuffle_i64x2(x[4 + e], x[6 + e], 0xdd);
    }
    for (int e = 0; e < 2; e++) {
        out[0 + e] = _mm512_shuffle_i64x2(y[e], y[4 + e], 0x88);
        out[4 + e] = _mm512_shuffle_i64x2(y[e], y[4 + e], 0xdd);
        out[2 + e] = _mm512_shuffle_i64x2(y[2 + e], y[6 + e], 0x88);
        out[6 + e] = _mm512_shuffle_i64x2(y[2 + e], y[6 + e], 0xdd);
    }
}

SE_AVX512 static void build_plane_tables(const uint64_t *g, plane_tables *pt)
{
    /* Within each vector of 8 entries, gather byte p of every entry into qword p... */
    const __m512i bytes_by_plane = _mm512_set_epi8(
        63, 55, 47, 39, 31, 23, 15, 7, 62, 54, 46, 38, 30, 22, 14, 6, 61, 53, 45, 37, 29, 21, 13, 5, 60, 52, 44,
        36, 28, 20, 12, 4, 59, 51, 43, 35, 27, 19, 11, 3, 58, 50, 42, 34, 26, 18, 10, 2, 57, 49, 41, 33, 25, 17, 9,
        1, 56, 48, 40, 32, 24, 16, 8, 0);
    for (int c = 0; c < 4; c++) {
        __m512i w[8], out[8];
        for (int j = 0; j < 8; j++)
            w[j] = _mm512_permutexvar_epi8(bytes_by_plane, _mm512_loadu_si512((const void *)(g + 64 * c + 8 * j)));
        /* ...then qword p of vector j becomes qword j of plane p's vector. */
        transpose_qwords(w, out);
        for (int p = 0; p < 8; p++)
            pt->t[4 * p + c] = out[p];
    }
}

/* Loads 64 steps of 8 lanes (rows b, b + S, ..., b + 7S) as d[q], q = 0..7: steps 8q..8q+7, with
   128-bit lane m holding the bytes of lanes 2m and 2m+1 interleaved (step s of lane 2m+u at byte
   2s + u), the order the lookup's unpacks need to produce canonical lanes. */
SE_AVX512_INLINE void load_rows(const uint8_t *b, size_t S, __m512i d[8])
{
    __m512i x[8], y[8];
    for (int k = 0; k < 4; k++) {
        __m512i r0 = _mm512_loadu_si512((const void *)(b + (2 * k) * S));
        __m512i r1 = _mm512_loadu_si512((const void *)(b + (2 * k + 1) * S));
        x[k] = _mm512_unpacklo_epi8(r0, r1);     /* lanes 2k, 2k+1; 128-bit lane m: steps 16m..16m+7 */
        x[4 + k] = _mm512_unpackhi_epi8(r0, r1); /* steps 16m+8..16m+15 */
    }
    /* x[4e + k], 128-bit lane m = lane pair k, q = 2m + e: transpose the 4x4 blocks for each e. */
    for (int e = 0; e < 2; e++) {
        y[4 * e + 0] = _mm512_shuffle_i64x2(x[4 * e + 0], x[4 * e + 1], 0x44);
        y[4 * e + 1] = _mm512_shuffle_i64x2(x[4 * e + 0], x[4 * e + 1], 0xee);
        y[4 * e + 2] = _mm512_shuffle_i64x2(x[4 * e + 2], x[4 * e + 3], 0x44);
        y[4 * e + 3] = _mm512_shuffle_i64x2(x[4 * e + 2], x[4 * e + 3], 0xee);
        d[0 + e] = _mm512_shuffle_i64x2(y[4 * e + 0], y[4 * e + 2], 0x88);
        d[2 + e] = _mm512_shuffle_i64x2(y[4 * e + 0], y[4 * e + 2], 0xdd);
        d[4 + e] = _mm512_shuffle_i64x2(y[4 * e + 1], y[4 * e + 3], 0x88);
        d[6 + e] = _mm512_shuffle_i64x2(y[4 * e + 1], y[4 * e + 3], 0xdd);
    }
}

/* 8 steps of 8 lanes: looks up the gear values of the indices in x (laid out as load_rows
   makes them), advances h by the 8 steps and folds every intermediate h into the running min. */
SE_AVX512_INLINE void gear_steps(const plane_tables *pt, __m512i x, __m512i *hv, __m512i *mv)
{
    const __mmask64 hi = _mm512_movepi8_mask(x);
    __m512i p[8], a[8], b[8], c[8];
    for (int k = 0; k < 8; k++) {
        __m512i lo = _mm512_mask2_permutex2var_epi8(pt->t[4 * k], x, ~hi, pt->t[4 * k + 1]);
        p[k] = _mm512_mask2_permutex2var_epi8(pt->t[4 * k + 2], lo, hi, pt->t[4 * k + 3]);
    }
    for (int k = 0; k < 4; k++) {
        a[2 * k] = _mm512_unpacklo_epi8(p[2 * k], p[2 * k + 1]);
        a[2 * k + 1] = _mm512_unpackhi_epi8(p[2 * k], p[2 * k + 1]);
    }
    for (int e = 0; e < 2; e++)
        for (int k = 0; k < 2; k++) {
            b[4 * k + 2 * e] = _mm512_unpacklo_epi16(a[4 * k + e], a[4 * k + 2 + e]);
            b[4 * k + 2 * e + 1] = _mm512_unpackhi_epi16(a[4 * k + e], a[4 * k + 2 + e]);
        }
    for (int e = 0; e < 2; e++)
        for (int f = 0; f < 2; f++) {
            c[4 * e + 2 * f] = _mm512_unpacklo_epi32(b[2 * e + f], b[4 + 2 * e + f]);
            c[4 * e + 2 * f + 1] = _mm512_unpackhi_epi32(b[2 * e + f], b[4 + 2 * e + f]);
        }
    __m512i h = *hv, m = *mv;
    for (int r = 0; r < 8; r++) {
        h = _mm512_add_epi64(_mm512_add_epi64(h, h), c[r]);
        m = _mm512_min_epu64(m, h);
    }
    *hv = h;
    *mv = m;
}

/* Scans one block of block_bytes(ng) bytes at d, h = *hp on entry. Returns the length up to
   the block's first cut (*cut set, *hp = h there), or the block length (*hp = h at its end). */
SE_AVX512 static size_t scan_block(const plane_tables *pt, const uint64_t *g, uint64_t *hp, const uint8_t *d,
                                   size_t ng, uint64_t thr, int *cut)
{
    const size_t S = 64 * (ng - 1), next = block_bytes(ng);
    const __m512i thrv = _mm512_set1_epi64((long long)thr);
    __m512i hv0 = _mm512_maskz_set1_epi64(1, (long long)*hp), hv1 = _mm512_setzero_si512();
    unsigned found = 0; /* lanes with a hit */
    size_t hit_group[SIMD_LANES];
    uint64_t hit_h[SIMD_LANES];

    for (size_t gi = 0; gi < ng; gi++) {
        __m512i d0[8], d1[8];
        load_rows(d + 64 * gi, S, d0);
        load_rows(d + 64 * gi + 8 * S, S, d1);
        /* The lanes read 16 short streams, which the hardware prefetchers follow poorly when
           the data come from memory: ask for the same rows of the next block. (A prefetch past
           the end of the input is harmless; the address is computed as an integer.) */
        for (int L = 0; L < SIMD_LANES; L++)
            _mm_prefetch((const char *)((uintptr_t)d + next + (size_t)L * S + 64 * gi), _MM_HINT_T0);
        const __m512i h0start = hv0, h1start = hv1;
        __m512i mv0 = _mm512_set1_epi64(-1), mv1 = _mm512_set1_epi64(-1);
#pragma GCC unroll 8
        for (int q = 0; q < 8; q++) {
            gear_steps(pt, d0[q], &hv0, &mv0);
            gear_steps(pt, d1[q], &hv1, &mv1);
        }
        unsigned k = (unsigned)_mm512_cmplt_epu64_mask(mv0, thrv) | (unsigned)_mm512_cmplt_epu64_mask(mv1, thrv) << 8;
        if (gi == 0)
            k &= 1; /* lanes 1..15 were warming up */
        unsigned fresh = k & ~found;
        if (__builtin_expect(fresh != 0, 0)) {
            uint64_t hs[SIMD_LANES];
            _mm512_storeu_si512((void *)hs, h0start);
            _mm512_storeu_si512((void *)(hs + 8), h1start);
            found |= fresh;
            while (fresh) {
                int L = __builtin_ctz(fresh);
                fresh &= fresh - 1;
                hit_group[L] = gi;
                hit_h[L] = hs[L];
            }
            if (found & 1)
                break; /* nothing before lane 0's first hit can cut */
        }
    }
    if (found) {
        int L = __builtin_ctz(found);
        size_t at = (size_t)L * S + 64 * hit_group[L];
        uint64_t h = hit_h[L];
        int c = 0;
        size_t used = scan_scalar(g, &h, d + at, 64, thr, &c);
        /* c is set: these are the 64 steps in which the vector code saw the hit */
        *hp = h;
        *cut = c;
        return at + used;
    }
    uint64_t last[8];
    _mm512_storeu_si512((void *)last, hv1);
    *hp = last[7];
    return block_bytes(ng);
}

SE_AVX512 static size_t scan_avx512(const uint64_t *g, uint64_t *hp, const uint8_t *d, size_t n, uint64_t thr,
                                    int *cut)
{
    plane_tables pt;
    build_plane_tables(g, &pt);
    size_t pos = 0;
    while (n - pos >= SIMD_MIN_BYTES) {
        size_t ng = (n - pos - 64) / (SIMD_LANES * 64) + 1;
        if (ng > MAX_GROUPS)
            ng = MAX_GROUPS;
        int c = 0;
        pos += scan_block(&pt, g, hp, d + pos, ng, thr, &c);
        if (c) {
            *cut = 1;
            return pos;
        }
    }
    return pos + scan_scalar(g, hp, d + pos, n - pos, thr, cut);
}

static int avx512_usable(void)
{
    __builtin_cpu_init(); /* we may run before libgcc's constructor */
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vbmi");
}
#endif /* x86-64 */

enum { IMPL_UNKNOWN = 0, IMPL_SCALAR = 1, IMPL_AVX512 = 2 };
static int cdc_impl = IMPL_UNKNOWN; /* written once, same value by every racing thread */

static int detect_impl(void)
{
    const char *force = getenv("SE_CDC_FORCE");
    if (force && strcmp(force, "scalar") == 0)
        return IMPL_SCALAR;
#ifdef SE_CDC_X86
    if (avx512_usable())
        return IMPL_AVX512;
#endif
    return IMPL_SCALAR;
}

static inline int get_impl(void)
{
    int i = __atomic_load_n(&cdc_impl, __ATOMIC_RELAXED);
    if (__builtin_expect(i == IMPL_UNKNOWN, 0)) {
        i = detect_impl();
        __atomic_store_n(&cdc_impl, i, __ATOMIC_RELAXED);
    }
    return i;
}

const char *se_cdc_impl(void) { return get_impl() == IMPL_AVX512 ? "avx512" : "scalar"; }

static size_t scan_phase(const uint64_t *g, uint64_t *hp, const uint8_t *d, size_t n, uint64_t thr, int *cut)
{
#ifdef SE_CDC_X86
    if (n >= SIMD_MIN_BYTES && get_impl() == IMPL_AVX512)
        return scan_avx512(g, hp, d, n, thr, cut);
#endif
    return scan_scalar(g, hp, d, n, thr, cut);
}

size_t se_cdc_next(const se_cdc_params *p, const uint8_t *data, size_t len)
{
    if (len <= p->min_size)
        return len;
    size_t limit = len < p->max_size ? len : p->max_size;
    size_t normal = p->avg_size < limit ? p->avg_size : limit;
    uint64_t h = 0;
    int cut = 0;
    size_t i = p->min_size;
    i += scan_phase(p->gear, &h, data + i, normal - i, p->thr_small, &cut);
    if (cut)
        return i;
    i += scan_phase(p->gear, &h, data + i, limit - i, p->thr_large, &cut);
    return i;
}

size_t se_cdc_feed(const se_cdc_params *p, se_cdc_state *st, const uint8_t *data, size_t len, int *cut)
{
    size_t used = 0;
    *cut = 0;
    if (st->len < p->min_size) {
        size_t skip = p->min_size - st->len;
        if (skip > len)
            skip = len;
        st->len += skip;
        used = skip;
    }
    /* Two phases: the strict threshold up to avg_size, the loose one up to max_size. */
    const size_t starts[2] = {p->min_size, p->avg_size}, ends[2] = {p->avg_size, p->max_size};
    const uint64_t thresholds[2] = {p->thr_small, p->thr_large};
    for (int phase = 0; phase < 2; phase++) {
        if (st->len < starts[phase] || st->len >= ends[phase] || used >= len)
            continue;
        size_t n = ends[phase] - st->len;
        if (n > len - used)
            n = len - used;
        size_t c = scan_phase(p->gear, &st->h, data + used, n, thresholds[phase], cut);
        used += c;
        st->len += c;
        if (*cut)
            return used;
    }
    if (st->len == p->max_size)
        *cut = 1;
    return used;
}
