/* Key hash functions and hash-tag extraction. The twemproxy-compatible
 * functions reproduce nutcracker 0.5.0 on x86-64 (little-endian, signed
 * char) on every platform, so a compat ring places keys as nutcracker does
 * wherever ringproxy runs. */
#include "hash.h"

#include <assert.h>
#include <string.h>

#include "md5.h"

/* Why MurmurHash3_x86_32 is the default: it mixes every input bit into every
 * output bit, so the high bits that pick a ring point are uniform even for
 * keys that differ in one trailing character ("user:1", "user:2", ...), and
 * it hashes 4 bytes per step. Measured by bench/ring_bench over 1M keys
 * "key:<n>" on the default ring of 10 shards (max/mean keys per shard;
 * ns per hash): murmur3 1.018, 3.4 ns; murmur 1.015, 2.7 ns; fnv1a_64 1.025,
 * 4.2 ns; md5 1.019, 118 ns; crc32 10.0 (every key went to one shard: its
 * values span only 0..32767). murmur (MurmurHash2) balances as well but has
 * the flaws murmur3 fixed (weak mixing of the last block, collisions on
 * repeated 4-byte patterns). fnv1a ends with a multiply by 0x1b3, so keys
 * that differ only in their last byte land within 2^17 of each other. */

static uint32_t rotl32(uint32_t x, unsigned n)
{
    return (x << n) | (x >> (32 - n));
}

/* Unaligned little-endian load: both murmurs are defined on little-endian
 * words, and key bytes have no alignment. */
static uint32_t load_le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint32_t hash_murmur3_32(const char *key, size_t len)
{
    const uint32_t c1 = 0xcc9e2d51;
    const uint32_t c2 = 0x1b873593;
    const unsigned char *data = (const unsigned char *)key;
    size_t nblocks = len / 4;
    uint32_t h = 0; /* seed */

    for (size_t i = 0; i < nblocks; i++) {
        uint32_t k = load_le32(data + 4 * i);
        k *= c1;
        k = rotl32(k, 15);
        k *= c2;
        h ^= k;
        h = rotl32(h, 13);
        h = h * 5 + 0xe6546b64;
    }

    const unsigned char *tail = data + 4 * nblocks;
    uint32_t k = 0;
    switch (len & 3) {
    case 3:
        k ^= (uint32_t)tail[2] << 16;
        __attribute__((fallthrough));
    case 2:
        k ^= (uint32_t)tail[1] << 8;
        __attribute__((fallthrough));
    case 1:
        k ^= tail[0];
        k *= c1;
        k = rotl32(k, 15);
        k *= c2;
        h ^= k;
        break;
    default:
        break;
    }

    /* The length is mixed in modulo 2^32, as the reference code's int len. */
    h ^= (uint32_t)len;
    h ^= h >> 16;
    h *= 0x85ebca6b;
    h ^= h >> 13;
    h *= 0xc2b2ae35;
    h ^= h >> 16;
    return h;
}

/* twemproxy's "fnv1a_64" keeps only the low 32 bits of the 64-bit FNV
 * offset basis and prime, which gives the same result as the low 32 bits of
 * a real FNV-1a 64. Each byte goes through (uint32_t)(char), i.e. is
 * sign-extended on x86: bytes >= 0x80 flip the high 24 bits too. */
static uint32_t hash_fnv1a_64(const char *key, size_t len)
{
    uint32_t h = 0x84222325;
    for (size_t i = 0; i < len; i++) {
        h ^= (uint32_t)(int32_t)(signed char)key[i];
        h *= 0x1b3;
    }
    return h;
}

/* CRC-32 (IEEE 802.3, reflected polynomial 0xedb88320) a nibble at a time:
 * a 16-entry table is short enough to check by eye. */
static const uint32_t crc32_nibble[16] = {
    0x00000000, 0x1db71064, 0x3b6e20c8, 0x26d930ac, 0x76dc4190, 0x6b6b51f4, 0x4db26158, 0x5005713c,
    0xedb88320, 0xf00f9344, 0xd6d6a3e8, 0xcb61b38c, 0x9b64c2b0, 0x86d3d2d4, 0xa00ae278, 0xbdbdf21c,
};

/* twemproxy's "crc32" is libmemcached's: bits 16..30 of the standard CRC-32,
 * so values only span 0..32767. */
static uint32_t hash_crc32(const char *key, size_t len)
{
    uint32_t crc = 0xffffffff;
    for (size_t i = 0; i < len; i++) {
        crc ^= (unsigned char)key[i];
        crc = (crc >> 4) ^ crc32_nibble[crc & 0xf];
        crc = (crc >> 4) ^ crc32_nibble[crc & 0xf];
    }
    return ((~crc) >> 16) & 0x7fff;
}

/* twemproxy's "md5": the first four digest bytes as a little-endian word. */
static uint32_t hash_md5(const char *key, size_t len)
{
    uint8_t digest[MD5_DIGEST_LEN];
    md5_digest(key, len, digest);
    return (uint32_t)digest[0] | (uint32_t)digest[1] << 8 | (uint32_t)digest[2] << 16 |
           (uint32_t)digest[3] << 24;
}

/* twemproxy's "murmur": MurmurHash2 with seed 0xdeadbeef * len, words read
 * little-endian (nutcracker reads them natively, on x86). */
static uint32_t hash_murmur2(const char *key, size_t len)
{
    const uint32_t m = 0x5bd1e995;
    const unsigned char *data = (const unsigned char *)key;
    uint32_t len32 = (uint32_t)len;
    uint32_t h = (0xdeadbeef * len32) ^ len32;

    while (len >= 4) {
        uint32_t k = load_le32(data);
        k *= m;
        k ^= k >> 24;
        k *= m;
        h *= m;
        h ^= k;
        data += 4;
        len -= 4;
    }

    switch (len) {
    case 3:
        h ^= (uint32_t)data[2] << 16;
        __attribute__((fallthrough));
    case 2:
        h ^= (uint32_t)data[1] << 8;
        __attribute__((fallthrough));
    case 1:
        h ^= data[0];
        h *= m;
        break;
    default:
        break;
    }

    h ^= h >> 13;
    h *= m;
    h ^= h >> 15;
    return h;
}

typedef uint32_t (*hash_fn)(const char *key, size_t len);

/* Indexed by hash_kind; the names are the `hash =` config values. */
static const struct {
    const char *name;
    hash_fn fn;
} hash_table[HASH_KIND_COUNT] = {
    [HASH_MURMUR3] = {"murmur3", hash_murmur3_32}, [HASH_FNV1A_64] = {"fnv1a_64", hash_fnv1a_64},
    [HASH_CRC32] = {"crc32", hash_crc32},          [HASH_MD5] = {"md5", hash_md5},
    [HASH_MURMUR] = {"murmur", hash_murmur2},
};

int hash_from_name(const char *name, hash_kind *out)
{
    if (name == NULL) {
        return -1;
    }
    for (int kind = 0; kind < HASH_KIND_COUNT; kind++) {
        if (strcmp(name, hash_table[kind].name) == 0) {
            *out = (hash_kind)kind;
            return 0;
        }
    }
    return -1;
}

const char *hash_name(hash_kind kind)
{
    if ((unsigned)kind >= HASH_KIND_COUNT) {
        return "?";
    }
    return hash_table[kind].name;
}

uint32_t hash_bytes(hash_kind kind, const char *key, size_t len)
{
    assert((unsigned)kind < HASH_KIND_COUNT);
    if ((unsigned)kind >= HASH_KIND_COUNT) {
        kind = HASH_MURMUR3; /* NDEBUG builds: the default, rather than a wild call */
    }
    return hash_table[kind].fn(key, len);
}

void hash_tag_span(const char *key, size_t len, char tag_open, char tag_close, const char **span,
                   size_t *span_len)
{
    *span = key;
    *span_len = len;
    if (tag_open == '\0' || len == 0) {
        return;
    }
    const char *open = memchr(key, tag_open, len);
    if (open == NULL) {
        return;
    }
    const char *after = open + 1;
    const char *close = memchr(after, tag_close, (size_t)(key + len - after));
    if (close == NULL || close == after) {
        return;
    }
    *span = after;
    *span_len = (size_t)(close - after);
}

uint32_t hash_key(hash_kind kind, const char *key, size_t len, char tag_open, char tag_close)
{
    const char *span;
    size_t span_len;
    hash_tag_span(key, len, tag_open, tag_close, &span, &span_len);
    /* nutcracker maps an empty key to hash 0 whatever the function; murmur3
     * of "" is 0 anyway, so one rule serves every kind. */
    if (span_len == 0) {
        return 0;
    }
    return hash_bytes(kind, span, span_len);
}
