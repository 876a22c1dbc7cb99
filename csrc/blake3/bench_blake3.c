/* bench_blake3.c: single-thread GB/s of se_blake3 per kernel and input size (not in the build).
   Build: gcc -O3 -o /tmp/bench_blake3 csrc/blake3/bench_blake3.c
   Run:   /tmp/bench_blake3 [min_seconds_per_cell]   (one row per kernel this CPU supports) */
#include "se_blake3.c" /* for the kernel table, so every path runs in one process */

#include <stdio.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    /* Round sizes plus odd ones (a partial last chunk, a chunk count that is no power of two),
       which is what content-defined chunks look like. */
    static const size_t sizes[] = {1000,    16 << 10, 17000,  100000,
                                   1 << 20, 1234567,  4 << 20, 16 << 20};
    const int nsizes = sizeof sizes / sizeof sizes[0];
    double min_s = argc > 1 ? atof(argv[1]) : 0.3;
    size_t max = sizes[nsizes - 1];
    uint8_t *buf = malloc(max), out[32];
    for (size_t i = 0; i < max; i++)
        buf[i] = (uint8_t)(i * 2654435761u >> 13);

    printf("%-9s", "GB/s");
    for (int s = 0; s < nsizes; s++)
        printf(" %9zu", sizes[s]);
    printf("\n");
    for (int k = 0; k < (int)(sizeof impls / sizeof impls[0]); k++) {
        if (!impls[k].supported())
            continue;
        impl_index = k;
        printf("%-9s", se_blake3_impl());
        for (int s = 0; s < nsizes; s++) {
            /* Best of 25 short runs over the same buffer (cache-warm for small sizes): the best
               run is the one least disturbed by other processes. */
            double best = 0;
            for (int rep = 0; rep < 25; rep++) {
                size_t iters = 0;
                double t0 = now(), t;
                do {
                    se_blake3(NULL, buf, sizes[s], out);
                    iters++;
                } while ((t = now() - t0) < min_s / 25);
                double gbps = (double)iters * sizes[s] / t / 1e9;
                if (gbps > best)
                    best = gbps;
            }
            printf(" %9.2f", best);
        }
        printf("\n");
    }
    free(buf);
    return out[0] == 0x42; /* keep the result live */
}
