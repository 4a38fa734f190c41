/* Key hash functions and hash-tag extraction: pure functions, no I/O. */
#ifndef RING_HASH_H
#define RING_HASH_H

#include <stddef.h>
#include <stdint.h>

/* The hash that turns a key (or its hash tag) into a 32-bit ring position.
 * HASH_MURMUR3 is the default; the others reproduce twemproxy's functions of
 * the same name bit for bit so that compat = twemproxy places keys as
 * nutcracker does. */
typedef enum hash_kind {
    HASH_MURMUR3 = 0, /* MurmurHash3_x86_32, seed 0: fast, well distributed (default) */
    HASH_FNV1A_64,    /* twemproxy's fnv1a_64: 32-bit result, bytes sign-extended */
    HASH_CRC32,       /* twemproxy's crc32: bits 16..30 of IEEE CRC-32, so 0..32767 */
    HASH_MD5,         /* twemproxy's md5: first 4 digest bytes, little-endian */
    HASH_MURMUR,      /* twemproxy's murmur (MurmurHash2, seed 0xdeadbeef * len) */
    HASH_KIND_COUNT
} hash_kind;

/* Parses a `hash =` value ("murmur3", "fnv1a_64", "crc32", "md5", "murmur").
 * Returns 0 and sets *out, or -1 for an unknown name. */
__attribute__((warn_unused_result)) int hash_from_name(const char *name, hash_kind *out);

/* The config name of a hash kind; "?" for an out-of-range value. */
const char *hash_name(hash_kind kind);

/* Hashes len bytes of key with the given function (a valid hash_kind). */
uint32_t hash_bytes(hash_kind kind, const char *key, size_t len);

/* The part of a key that decides its shard: the bytes between the first
 * `open` char and the next `close` char after it, when that text is non-empty;
 * otherwise the whole key. tag_open == 0 disables hash tags. */
void hash_tag_span(const char *key, size_t len, char tag_open, char tag_close, const char **span,
                   size_t *span_len);

/* hash_bytes() of hash_tag_span(): the ring position of a key. An empty key
 * hashes to 0 with every kind, as nutcracker does. */
uint32_t hash_key(hash_kind kind, const char *key, size_t len, char tag_open, char tag_close);

#endif
