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

/* The gear recurrence h = 2h + G[byte], tested after every byte. The loop takes two bytes per
   iteration: the next h is 4h + (2G[a] + G[b]), whose serial part is one shift-add, and the
   in-between value 2h + G[a] is computed beside it rather than on the dependency chain. */
#define GEAR_SCAN(END, THR)                                             \
    while (i + 2 <= (END)) {                                            \
        uint64_t a = g[data[i]], b = g[data[i + 1]];                    \
        uint64_t mid = (h << 1) + a;                                    \
        h = (h << 2) + ((a << 1) + b);                                  \
        if (__builtin_expect(mid < (THR), 0))                           \
            return i + 1;                                               \
        i += 2;                                                         \
        if (__builtin_expect(h < (THR), 0))                             \
            return i;                                                   \
    }                                                                   \
    if (i < (END)) {                                                    \
        h = (h << 1) + g[data[i]];                                      \
        i++;                                                            \
        if (h < (THR))                                                  \
            return i;                                                   \
    }

size_t se_cdc_next(const se_cdc_params *p, const uint8_t *data, size_t len)
{
    if (len <= p->min_size)
        return len;
    size_t limit = len < p->max_size ? len : p->max_size;
    size_t normal = p->avg_size < limit ? p->avg_size : limit;
    const uint64_t *g = p->gear;
    const uint64_t ts = p->thr_small, tl = p->thr_large;
    uint64_t h = 0;
    size_t i = p->min_size;
    GEAR_SCAN(normal, ts)
    GEAR_SCAN(limit, tl)
    return limit;
}
