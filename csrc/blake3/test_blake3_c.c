/* test_blake3_c.c: C-level checks of se_blake3 (not part of the build): known answers, every
   kernel against the portable one, incremental against one-shot, with exact-size heap buffers
   so that a sanitizer build catches any over-read. Exit status 0 means all passed.
   Build: gcc -std=gnu11 -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=undefined \
              -o /tmp/test_blake3_c csrc/blake3/test_blake3_c.c */
#include "se_blake3.c" /* for the kernel table: every kernel is checked in one process */

#include <stdio.h>

static const struct {
    size_t len;
    const char *plain, *keyed;
} kat[] = {
    /* blake3 of bytes i % 251, plain and keyed with bytes 0..31, from the blake3 package */
    {0, "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
     "73492b19995d71cdb1e9d74decc09809eb732f1b00bc95c27cb15f9dd4d6478f"},
    {1, "2d3adedff11b61f14c886e35afa036736dcd87a74d27b5c1510225d0f592e213",
     "d08b45c6b127ee94f3f8527a0b82a5f80be1695a0eaec6022e772c0eb95a7e8b"},
    {63, "e9bc37a594daad83be9470df7f7b3798297c3d834ce80ba85d6e207627b7db7b",
     "e471df92f6f7dee100138af7da29695906b0dc34ccde2142a730dd4ebcbc09cc"},
    {64, "4eed7141ea4a5cd4b788606bd23f46e212af9cacebacdc7d1f4c6dc7f2511b98",
     "cfaf838ff320e0d87301dcba02b1a4bb397d65119f57403df2817a51d4025f9b"},
    {65, "de1e5fa0be70df6d2be8fffd0e99ceaa8eb6e8c93a63f2d8d1c30ecb6b263dee",
     "d8a45528bfa93a0d9b7bf4c840b68f64af0b9ad3d0bbd6c1421c2a4cf1cdf3b4"},
    {127, "d81293fda863f008c09e92fc382a81f5a0b4a1251cba1634016a0f86a6bd640d",
     "85f533d496cd9c62af45735983026a3f343afd1b3d8ef440991180f9945e46d6"},
    {128, "f17e570564b26578c33bb7f44643f539624b05df1a76c81f30acd548c44b45ef",
     "fe43a847dfccdfa5f070664fb8b51d7b906341ff81ac4adafbf6a3ffac564def"},
    {1023, "10108970eeda3eb932baac1428c7a2163b0e924c9a9e25b35bba72b28f70bd11",
     "da1f18069871512af22af9f13dc005800dfd52c55f42753b5ae718086fe2ee44"},
    {1024, "42214739f095a406f3fc83deb889744ac00df831c10daa55189b5d121c855af7",
     "f45a9249a627fdf1fcf13c0e6376f6a9a9b2056d6e1b5693a4b119a3453665f9"},
    {1025, "d00278ae47eb27b34faecf67b4fe263f82d5412916c1ffd97c8cb7fb814b8444",
     "82223147a9b804a0c3f9a921b8d8aee250d1a51bb76be72152e6d5e8f27349b3"},
    {2048, "e776b6028c7cd22a4d0ba182a8bf62205d2ef576467e838ed6f2529b85fba24a",
     "636bfa717d4f9fc3e59da9b2e5cce6a2b78eb70469c0fce49da38b5419892423"},
    {2049, "5f4d72f40d7a5f82b15ca2b2e44b1de3c2ef86c426c95c1af0b6879522563030",
     "5442eec85e3fd173dcff07c39cd8cff9689f17224471e655618ed728cf03b056"},
    {3072, "b98cb0ff3623be03326b373de6b9095218513e64f1ee2edd2525c7ad1e5cffd2",
     "66315151ac08f5cdf077f76e1b5f584a4da7b48a75036de5729be38dac835fb7"},
    {3073, "7124b49501012f81cc7f11ca069ec9226cecb8a2c850cfe644e327d22d3e1cd3",
     "66eabf3a0a1a262221ee9eed633621a5065e4e73d098277c7de4162559edb9b4"},
    {4096, "015094013f57a5277b59d8475c0501042c0b642e531b0a1c8f58d2163229e969",
     "e8c6e859e0480c4b062457defd04d2f4303b6cc280a0fe080ec5c4346a171937"},
    {4097, "9b4052b38f1c5fc8b1f9ff7ac7b27cd242487b3d890d15c96a1c25b8aa0fb995",
     "a3b7fe277011b5efcde8a33d90b0edb88c29e73831f34d9b02aebab51c98e2a6"},
    {5120, "9cadc15fed8b5d854562b26a9536d9707cadeda9b143978f319ab34230535833",
     "8bb4f2ab4db1d207713b4240105ec14d57452bc53073c480f8377279fa959a95"},
    {5121, "628bd2cb2004694adaab7bbd778a25df25c47b9d4155a55f8fbd79f2fe154cff",
     "f5e92bc50eb02296aad75a7fb1faf6bf95c0f3eccfaaed506e2448df16b45c0b"},
    {8192, "aae792484c8efe4f19e2ca7d371d8c467ffb10748d8a5a1ae579948f718a2a63",
     "c659141d9d7e6efafd2f274d4307b9ab3369f058c6d03cd5ba17d4518d77bd49"},
    {8193, "bab6c09cb8ce8cf459261398d2e7aef35700bf488116ceb94a36d0f5f1b7bc3b",
     "c666ccf5fa240c07a9d0a6b8ae92c67668b482e7c2751fb5e1d9d7078fa9637e"},
    {16384, "f875d6646de28985646f34ee13be9a576fd515f76b5b0a26bb324735041ddde4",
     "8880ce020ab0459420eee7e95f173d8a0d55c9b499d857880b0c661eb4162bae"},
    {16385, "1dabe216be2578830263b049de1639f39f05a4da616b9b78c7a5e4e41662fd1f",
     "4343c3dd9cc572142984258a08652588589d1683adf926283c37681508a138fe"},
    {31744, "62b6960e1a44bcc1eb1a611a8d6235b6b4b78f32e7abc4fb4c6cdcce94895c47",
     "55253f057bce59e7811fea47ac0e72751ca12c40c4a5b8f3c42e54daa5073272"},
    {65536, "68d647e619a930e7b1082f74f334b0c65a315725569bdc123f0ee11881717bfe",
     "ca2a089711002f4987989e5fab9c11ca9940e94ee258ea062d2bcb402de11ca9"},
    {65537, "7c99f9840a73dfcb6e5bfe4ff6d1558acab7e015640790c26411818bdbe17eca",
     "77630e1400f2542f6c837ad042df8c5299643cfadbba280355f628f1e966b62a"},
    {102400, "bc3e3d41a1146b069abffad3c0d44860cf664390afce4d9661f7902e7943e085",
     "ab2ecf0478e816065ba6039d8ec583cbce8a2335efe903e2d7313c04ba5330d2"},
    {1048577, "2f053cd7472cf0cd2f9adaf45c1180255b91b9a865404a63671a0ee5f792ed33",
     "4dadf5be2ffbc564527befa8fbd3e6645f567caf8f02db7a8fac2f44325bb3d4"},
};

static int failures;

static void expect(const char *what, const char *name, size_t len, const uint8_t got[32],
                   const uint8_t want[32])
{
    if (memcmp(got, want, 32) != 0) {
        printf("FAIL %s [%s] len=%zu\n", what, name, len);
        failures++;
    }
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* Hashes a copy in an exact-size heap block, so over-reads are visible to ASan. */
static void hash_exact(const uint8_t *key, const uint8_t *data, size_t len, uint8_t out[32])
{
    uint8_t *copy = malloc(len ? len : 1);
    if (len)
        memcpy(copy, data, len);
    se_blake3(key, copy, len, out);
    free(copy);
}

static void hash_split(const uint8_t *key, const uint8_t *data, size_t len, uint8_t out[32])
{
    se_b3_hasher h;
    if (key)
        se_b3_init_keyed(&h, key);
    else
        se_b3_init(&h);
    for (size_t pos = 0; pos < len;) {
        static const size_t steps[] = {0, 1, 63, 64, 65, 1023, 1024, 1025, 3000, 70000};
        size_t step = rng() % 2 ? steps[rng() % 10] : rng() % 20000;
        if (step > len - pos)
            step = len - pos;
        uint8_t *piece = malloc(step ? step : 1);
        if (step)
            memcpy(piece, data + pos, step);
        se_b3_update(&h, piece, step);
        free(piece);
        pos += step;
    }
    se_b3_finalize(&h, out);
}

static void hex_to_bytes(const char *hex, uint8_t out[32])
{
    for (int i = 0; i < 32; i++) {
        unsigned v;
        sscanf(hex + 2 * i, "%2x", &v);
        out[i] = (uint8_t)v;
    }
}

int main(void)
{
    const size_t max = (3 << 20) + 1;
    uint8_t *data = malloc(max), key[32], out[32], want[32], ref[2][32];
    for (size_t i = 0; i < max; i++)
        data[i] = (uint8_t)(i % 251);
    for (int i = 0; i < 32; i++)
        key[i] = (uint8_t)i;

    int nimpl = (int)(sizeof impls / sizeof impls[0]), tested = 0;
    for (int k = 0; k < nimpl; k++) {
        if (!impls[k].supported())
            continue;
        impl_index = k;
        tested++;
        for (size_t t = 0; t < sizeof kat / sizeof kat[0]; t++) {
            hash_exact(NULL, data, kat[t].len, out);
            hex_to_bytes(kat[t].plain, want);
            expect("known answer", impls[k].name, kat[t].len, out, want);
            hash_exact(key, data, kat[t].len, out);
            hex_to_bytes(kat[t].keyed, want);
            expect("known answer keyed", impls[k].name, kat[t].len, out, want);
        }
    }

    /* Random data: every kernel and the incremental hasher against the portable one-shot. */
    for (size_t i = 0; i < max; i++)
        data[i] = (uint8_t)(rng() >> 11);
    size_t lens[3000];
    int nl = 0;
    for (size_t n = 0; n <= 2100; n++)
        lens[nl++] = n;
    for (size_t c = 2; c < 3000; c += c < 40 ? 1 : 61)
        for (int d = -1; d <= 1; d++)
            lens[nl++] = 1024 * c + d;
    for (int i = 0; i < 40; i++)
        lens[nl++] = rng() % max;
    for (int li = 0; li < nl; li++) {
        size_t n = lens[li];
        impl_index = nimpl - 1;
        se_blake3(NULL, data, n, ref[0]);
        se_blake3(key, data, n, ref[1]);
        for (int k = 0; k < nimpl; k++) {
            if (!impls[k].supported())
                continue;
            impl_index = k;
            for (int keyed = 0; keyed < 2; keyed++) {
                hash_exact(keyed ? key : NULL, data, n, out);
                expect("one-shot vs portable", impls[k].name, n, out, ref[keyed]);
                if (li % 5 == 0) {
                    hash_split(keyed ? key : NULL, data, n, out);
                    expect("incremental vs one-shot", impls[k].name, n, out, ref[keyed]);
                }
            }
        }
    }
    free(data);
    printf("%d kernels, %zu known answers, %d lengths: %d failures\n", tested,
           sizeof kat / sizeof kat[0], nl, failures);
    return failures != 0;
}
