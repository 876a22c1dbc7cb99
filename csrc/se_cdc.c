/* Content-defined chunking: gear rolling hash with FastCDC-style normalized cut points. */
#include "se_cdc.h"

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
   Returns the bytes consumed; *cut is set when the last of them ends a chunk. The loop takes two
   bytes per iteration: the next h is 4h + (2G[a] + G[b]), whose serial part is one shift-add,
   and the in-between value 2h + G[a] is computed beside it rather than on the dependency chain.
   Splitting a scan into several calls gives the same result as one call. */
static inline size_t scan_phase(const uint64_t *g, uint64_t *hp, const uint8_t *d, size_t n, uint64_t thr,
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
    if (st->len >= p->min_size && st->len < p->avg_size && used < len) {
        size_t n = p->avg_size - st->len;
        if (n > len - used)
            n = len - used;
        size_t c = scan_phase(p->gear, &st->h, data + used, n, p->thr_small, cut);
        used += c;
        st->len += c;
        if (*cut)
            return used;
    }
    if (st->len >= p->avg_size && st->len < p->max_size && used < len) {
        size_t n = p->max_size - st->len;
        if (n > len - used)
            n = len - used;
        size_t c = scan_phase(p->gear, &st->h, data + used, n, p->thr_large, cut);
        used += c;
        st->len += c;
        if (*cut)
            return used;
    }
    if (st->len == p->max_size)
        *cut = 1;
    return used;
}
