/* se_blake3.h: BLAKE3 (hash and keyed_hash modes, 32-byte output) for syncengine's native core. */
#ifndef SE_BLAKE3_H
#define SE_BLAKE3_H

#include <stddef.h>
#include <stdint.h>

#define SE_B3_OUT_LEN 32
#define SE_B3_KEY_LEN 32
/* 2^54 chunks of 1 KiB cover any 64-bit length; +1 for a subtree pair that is merged lazily. */
#define SE_B3_MAX_DEPTH 55

#ifdef __cplusplus
extern "C" {
#endif

/* One-shot BLAKE3 of a contiguous buffer, 32-byte output. key == NULL: plain hash mode;
   otherwise keyed_hash mode with the 32-byte key. Thread-safe, allocates nothing,
   no mutable global state except one-time, race-free CPU feature detection. */
void se_blake3(const uint8_t *key, const void *input, size_t len, uint8_t out[SE_B3_OUT_LEN]);

/* Name of the kernel chosen at run time: "avx512", "avx2", "sse41" or "portable".
   The environment variable SE_BLAKE3_FORCE=<name>, read once at the first call into this
   module, selects a slower kernel (ignored if unknown or unsupported by the CPU). */
const char *se_blake3_impl(void);

/* Incremental hasher. Fields are private; the struct is public only so it can live on the stack. */
struct se_b3_hasher {
    uint32_t key[8];
    uint32_t cv[8];           /* chaining value of the chunk being filled */
    uint64_t chunk_counter;   /* index of that chunk */
    uint8_t buf[64];          /* its latest block, kept back because it may be the chunk's last */
    uint8_t buf_len;
    uint8_t blocks_done;      /* blocks of that chunk already compressed */
    uint8_t flags;            /* 0 or KEYED_HASH */
    uint8_t stack_len;
    uint8_t stack[SE_B3_MAX_DEPTH][32]; /* chaining values of finished subtrees, largest first */
};
typedef struct se_b3_hasher se_b3_hasher;

void se_b3_init(se_b3_hasher *h);
void se_b3_init_keyed(se_b3_hasher *h, const uint8_t key[SE_B3_KEY_LEN]);
void se_b3_update(se_b3_hasher *h, const void *input, size_t len);
/* Does not modify h: more input may follow and finalize may be called again. */
void se_b3_finalize(const se_b3_hasher *h, uint8_t out[SE_B3_OUT_LEN]);

#ifdef __cplusplus
}
#endif
#endif
