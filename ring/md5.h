/* MD5 (RFC 1321), private to ring/: twemproxy's md5 key hash and its ketama
 * point placement are defined on MD5 digests, and the default ring seeds its
 * points from the MD5 of a shard name. Not for anything security-related. */
#ifndef RING_MD5_H
#define RING_MD5_H

#include <stddef.h>
#include <stdint.h>

#define MD5_DIGEST_LEN 16

/* The MD5 digest of len bytes of data, in RFC 1321 byte order. */
void md5_digest(const void *data, size_t len, uint8_t digest[MD5_DIGEST_LEN]);

#endif
