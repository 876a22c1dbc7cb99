/* se_blake3_simd.h: the W-lane BLAKE3 kernel; se_blake3.c includes it once per x86 SIMD target.
   Each lane hashes its own input (a chunk, or a parent block), so one compression of W-wide
   vectors does W BLAKE3 compressions: vector element i always belongs to lane i.
   The includer defines SIMD_W (4, 8 or 16), SIMD_V / SIMD_Q / SIMD_B (uint32_t / uint64_t /
   uint8_t GCC vectors of 4*W bytes), SIMD_FN (function name), SIMD_TARGET (GCC target string)
   and SIMD_ROT (1 when the target has a vector rotate, i.e. AVX-512; otherwise rotations by 16
   and 8 are byte shuffles). */

#ifdef __clang__
#define SH(a, b, ...) __builtin_shufflevector((a), (b), __VA_ARGS__)
#define SHQ(a, b, ...) ((SIMD_V)__builtin_shufflevector((SIMD_Q)(a), (SIMD_Q)(b), __VA_ARGS__))
#define SHB(x, ...) __builtin_shufflevector((x), (x), __VA_ARGS__)
#else
#define SH(a, b, ...) __builtin_shuffle((a), (b), (SIMD_V){__VA_ARGS__})
#define SHQ(a, b, ...) ((SIMD_V)__builtin_shuffle((SIMD_Q)(a), (SIMD_Q)(b), (SIMD_Q){__VA_ARGS__}))
#define SHB(x, ...) __builtin_shuffle((x), (SIMD_B){__VA_ARGS__})
#endif
#define BC(x) ((SIMD_V){0} + (uint32_t)(x)) /* broadcast */

/* Masks: interleave 32-bit, then 64-bit elements within 128-bit lanes (unpck*; the 64-bit
   step indexes a 64-bit view, else GCC may pick slower permutes), then move 128-bit lanes. */
#if SIMD_W == 4
#define LO32 0, 4, 1, 5
#define HI32 2, 6, 3, 7
#define LO64 0, 2
#define HI64 1, 3
#elif SIMD_W == 8
#define LO32 0, 8, 1, 9, 4, 12, 5, 13
#define HI32 2, 10, 3, 11, 6, 14, 7, 15
#define LO64 0, 4, 2, 6
#define HI64 1, 5, 3, 7
#define LANE_LO 0, 1, 2, 3, 8, 9, 10, 11
#define LANE_HI 4, 5, 6, 7, 12, 13, 14, 15
#else
#define LO32 0, 16, 1, 17, 4, 20, 5, 21, 8, 24, 9, 25, 12, 28, 13, 29
#define HI32 2, 18, 3, 19, 6, 22, 7, 23, 10, 26, 11, 27, 14, 30, 15, 31
#define LO64 0, 8, 2, 10, 4, 12, 6, 14
#define HI64 1, 9, 3, 11, 5, 13, 7, 15
#define LANE_02 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27
#define LANE_13 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31
#endif

/* 4x4 transpose inside every 128-bit lane of rows r0..r3 (words of 4 lanes become rows). */
#define T4(r0, r1, r2, r3, u0, u1, u2, u3) do {                                      \
        SIMD_V t0_ = SH(r0, r1, LO32), t1_ = SH(r0, r1, HI32);                       \
        SIMD_V t2_ = SH(r2, r3, LO32), t3_ = SH(r2, r3, HI32);                       \
        u0 = SHQ(t0_, t2_, LO64); u1 = SHQ(t0_, t2_, HI64);                          \
        u2 = SHQ(t1_, t3_, LO64); u3 = SHQ(t1_, t3_, HI64);                          \
    } while (0)

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n)))) /* GCC emits vprord where it exists */
#if SIMD_ROT
#define ROR16(x) ROR(x, 16)
#define ROR8(x) ROR(x, 8)
#else
#define R16Q(k) 4 * (k) + 2, 4 * (k) + 3, 4 * (k), 4 * (k) + 1
#define R8Q(k) 4 * (k) + 1, 4 * (k) + 2, 4 * (k) + 3, 4 * (k)
#define R16L(k) R16Q(k), R16Q(k + 1), R16Q(k + 2), R16Q(k + 3)
#define R8L(k) R8Q(k), R8Q(k + 1), R8Q(k + 2), R8Q(k + 3)
#if SIMD_W == 4
#define R16M R16L(0)
#define R8M R8L(0)
#elif SIMD_W == 8
#define R16M R16L(0), R16L(4)
#define R8M R8L(0), R8L(4)
#else
#define R16M R16L(0), R16L(4), R16L(8), R16L(12)
#define R8M R8L(0), R8L(4), R8L(8), R8L(12)
#endif
/* No vector rotate before AVX-512, but rotating by whole bytes is one pshufb. */
#define ROR16(x) ((SIMD_V)SHB((SIMD_B)(x), R16M))
#define ROR8(x) ((SIMD_V)SHB((SIMD_B)(x), R8M))
#endif

#define G(a, b, c, d, x, y) do {                                                     \
        v[a] = v[a] + v[b] + m[x]; v[d] = ROR16(v[d] ^ v[a]);                        \
        v[c] = v[c] + v[d];        v[b] = ROR(v[b] ^ v[c], 12);                      \
        v[a] = v[a] + v[b] + m[y]; v[d] = ROR8(v[d] ^ v[a]);                         \
        v[c] = v[c] + v[d];        v[b] = ROR(v[b] ^ v[c], 7);                       \
    } while (0)

/* Hashes n <= W inputs starting at `in`, j->stride bytes apart (lanes past n redo input 0 and are
   discarded), and writes their 32-byte chaining values to out. Reads all of a block before
   writing any output, so out may overlap in for single-block (parent) jobs. */
__attribute__((target(SIMD_TARGET))) static void
SIMD_FN(const struct many *j, const uint8_t *in, uint64_t counter, size_t n, uint8_t *out)
{
    const uint8_t *p[SIMD_W];
    uint32_t lo[SIMD_W], hi[SIMD_W], tmp[8][SIMD_W];
    SIMD_V h[8], m[16], v[16], clo, chi;

    for (size_t i = 0; i < SIMD_W; i++) {
        size_t lane = i < n ? i : 0;
        uint64_t c = counter + lane * j->ctr_inc;
        p[i] = in + lane * j->stride;
        lo[i] = (uint32_t)c;
        hi[i] = (uint32_t)(c >> 32);
    }
    memcpy(&clo, lo, sizeof clo);
    memcpy(&chi, hi, sizeof chi);
    for (int i = 0; i < 8; i++)
        h[i] = BC(j->key[i]);

    for (size_t b = 0; b < j->nblocks; b++) {
        /* Lane i's 64-byte block is one row; transposing gives m[w] = word w of every lane. */
        for (int g = 0; g < 16 / SIMD_W; g++) {
            SIMD_V r[SIMD_W], u[SIMD_W];
            for (int i = 0; i < SIMD_W; i++)
                memcpy(&r[i], p[i] + 64 * b + sizeof(SIMD_V) * g, sizeof(SIMD_V));
            for (int q = 0; q < SIMD_W; q += 4)
                T4(r[q], r[q + 1], r[q + 2], r[q + 3], u[q], u[q + 1], u[q + 2], u[q + 3]);
#if SIMD_W == 4
            for (int k = 0; k < 4; k++)
                m[4 * g + k] = u[k];
#elif SIMD_W == 8
            for (int k = 0; k < 4; k++) {
                m[8 * g + k] = SH(u[k], u[4 + k], LANE_LO);
                m[8 * g + 4 + k] = SH(u[k], u[4 + k], LANE_HI);
            }
#else
            for (int k = 0; k < 4; k++) {
                SIMD_V a = SH(u[k], u[4 + k], LANE_02), c = SH(u[8 + k], u[12 + k], LANE_02);
                SIMD_V d = SH(u[k], u[4 + k], LANE_13), e = SH(u[8 + k], u[12 + k], LANE_13);
                m[k] = SH(a, c, LANE_02);
                m[8 + k] = SH(a, c, LANE_13);
                m[4 + k] = SH(d, e, LANE_02);
                m[12 + k] = SH(d, e, LANE_13);
            }
#endif
        }
        uint32_t f = j->flags | (b == 0 ? j->first : 0) | (b + 1 == j->nblocks ? j->last : 0);
        for (int i = 0; i < 8; i++)
            v[i] = h[i];
        for (int i = 0; i < 4; i++)
            v[8 + i] = BC(se_b3_iv[i]);
        v[12] = clo;
        v[13] = chi;
        v[14] = BC(64);
        v[15] = BC(f);
        SE_B3_ROUNDS(SE_B3_ROUND)
        for (int i = 0; i < 8; i++)
            h[i] = v[i] ^ v[i + 8];
    }

    /* After a 4x4 transpose per 128-bit lane, lane k of u[w] holds words 0-3 (u[4+w]: 4-7) of
       the chaining value of input 4k+w. */
    SIMD_V u[8];
    T4(h[0], h[1], h[2], h[3], u[0], u[1], u[2], u[3]);
    T4(h[4], h[5], h[6], h[7], u[4], u[5], u[6], u[7]);
    memcpy(tmp, u, sizeof tmp);
    for (size_t i = 0; i < n; i++) {
        memcpy(out + 32 * i, &tmp[i % 4][4 * (i / 4)], 16);
        memcpy(out + 32 * i + 16, &tmp[4 + i % 4][4 * (i / 4)], 16);
    }
}

#undef SH
#undef SHB
#undef SHQ
#undef SIMD_Q
#undef BC
#undef LO32
#undef HI32
#undef LO64
#undef HI64
#undef LANE_LO
#undef LANE_HI
#undef LANE_02
#undef LANE_13
#undef T4
#undef ROR
#undef ROR16
#undef ROR8
#undef R16Q
#undef R8Q
#undef R16L
#undef R8L
#undef R16M
#undef R8M
#undef G
#undef SIMD_W
#undef SIMD_V
#undef SIMD_B
#undef SIMD_FN
#undef SIMD_TARGET
#undef SIMD_ROT
