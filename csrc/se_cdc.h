/* Content-defined chunking: gear rolling hash with FastCDC-style normalized cut points. */
#ifndef SE_CDC_H
#define SE_CDC_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    size_t min_size, avg_size, max_size;
    uint64_t thr_small, thr_large; /* cut where the gear hash is below these (before/after avg) */
    uint64_t gear[256];
} se_cdc_params;

/* Fills thresholds and tables; returns 0, or -1 if the sizes are invalid
   (avg a power of two >= 64, 0 < min < avg < max). */
int se_cdc_init(se_cdc_params *p, uint64_t seed, size_t min_size, size_t avg_size, size_t max_size);

/* Length of the chunk at the start of data[0:len]. The caller guarantees that data holds
   at least max_size bytes or everything left of the stream; the result is then a function
   of content alone, whatever the buffering. */
size_t se_cdc_next(const se_cdc_params *p, const uint8_t *data, size_t len);

/* Streaming form of se_cdc_next: the state of the chunk being cut. Start each chunk at {0, 0}. */
typedef struct {
    uint64_t h;   /* gear hash */
    size_t len;   /* bytes of the chunk consumed so far */
} se_cdc_state;

/* Consumes bytes of data[0:len] into the current chunk; returns how many. *cut is set when the
   chunk ends after them (it may also end at EOF, which the caller knows). Feeding a stream in
   any pieces gives exactly the chunks of se_cdc_next. */
size_t se_cdc_feed(const se_cdc_params *p, se_cdc_state *st, const uint8_t *data, size_t len, int *cut);

/* Which cut-point scan runs: "avx512" (x86-64 with AVX-512 F/BW/VBMI) or "scalar". Chosen once,
   at the first scan; SE_CDC_FORCE=scalar in the environment forces the scalar loop. Every path
   gives the same cut points. */
const char *se_cdc_impl(void);

#endif
