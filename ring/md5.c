/* MD5 per RFC 1321, one-shot: the ring hashes short strings (shard names,
 * keys), so there is no streaming interface to keep state for. */
#include "md5.h"

#include <string.h>

#define MD5_BLOCK_LEN 64

/* floor(abs(sin(i + 1)) * 2^32), RFC 1321 section 3.4. */
static const uint32_t md5_sine[64] = {
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
    0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
    0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
    0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
    0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
    0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
    0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
};

/* Left-rotation amounts, four per round. */
static const uint8_t md5_shift[4][4] = {
    {7, 12, 17, 22},
    {5, 9, 14, 20},
    {4, 11, 16, 23},
    {6, 10, 15, 21},
};

static uint32_t rotl32(uint32_t x, unsigned n)
{
    return (x << n) | (x >> (32 - n));
}

static uint32_t load_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void store_le32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

/* One step: a = b + rotl(a + f + K[i] + w[g], s), then rotate the roles. */
#define MD5_STEP(f, i, g, s)                                                                       \
    do {                                                                                           \
        uint32_t rotated = rotl32(a + (f) + md5_sine[i] + w[g], s);                                \
        a = d;                                                                                     \
        d = c;                                                                                     \
        c = b;                                                                                     \
        b = b + rotated;                                                                           \
    } while (0)

static void md5_block(uint32_t state[4], const uint8_t *block)
{
    uint32_t w[16];
    for (int i = 0; i < 16; i++) {
        w[i] = load_le32(block + 4 * i);
    }

    /* Four rounds of 16 steps, each with its own mixing function and word
     * order (RFC 1321 section 3.4); loops per round let the compiler unroll
     * without a branch per step. */
    uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
    for (int i = 0; i < 16; i++) {
        MD5_STEP(d ^ (b & (c ^ d)), i, i, md5_shift[0][i % 4]);
    }
    for (int i = 16; i < 32; i++) {
        MD5_STEP(c ^ (d & (b ^ c)), i, (5 * i + 1) % 16, md5_shift[1][i % 4]);
    }
    for (int i = 32; i < 48; i++) {
        MD5_STEP(b ^ c ^ d, i, (3 * i + 5) % 16, md5_shift[2][i % 4]);
    }
    for (int i = 48; i < 64; i++) {
        MD5_STEP(c ^ (b | ~d), i, (7 * i) % 16, md5_shift[3][i % 4]);
    }
    state[0] += a;
    state[1] += b;
    state[2] += c;
    state[3] += d;
}

void md5_digest(const void *data, size_t len, uint8_t digest[MD5_DIGEST_LEN])
{
    uint32_t state[4] = {0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476};
    const uint8_t *in = data;
    size_t full = len - len % MD5_BLOCK_LEN;

    for (size_t off = 0; off < full; off += MD5_BLOCK_LEN) {
        md5_block(state, in + off);
    }

    /* The tail, the 0x80 marker and the 64-bit bit length take one block, or
     * two when fewer than 9 bytes are left after the tail. */
    uint8_t tail[2 * MD5_BLOCK_LEN] = {0};
    size_t rest = len - full;
    if (rest > 0) {
        memcpy(tail, in + full, rest);
    }
    tail[rest] = 0x80;
    size_t tail_len = rest + 9 <= MD5_BLOCK_LEN ? MD5_BLOCK_LEN : 2 * MD5_BLOCK_LEN;
    uint64_t bits = (uint64_t)len * 8;
    store_le32(tail + tail_len - 8, (uint32_t)bits);
    store_le32(tail + tail_len - 4, (uint32_t)(bits >> 32));
    for (size_t off = 0; off < tail_len; off += MD5_BLOCK_LEN) {
        md5_block(state, tail + off);
    }

    for (int i = 0; i < 4; i++) {
        store_le32(digest + 4 * i, state[i]);
    }
}
