/* The consistent-hash ring: an immutable sorted array of {point, shard} built
 * from shard names and weights, looked up by key hash. Pure, no I/O. */
#ifndef RING_RING_H
#define RING_RING_H

#include <stddef.h>
#include <stdint.h>

/* How points are placed. */
typedef enum ring_mode {
    RING_DEFAULT = 0, /* ringproxy's placement: many points per weight unit (see ring.c) */
    RING_TWEMPROXY,   /* nutcracker 0.5.0 ketama placement, bit for bit */
} ring_mode;

/* One shard as the ring sees it: the NAME places it, so changing an address
 * moves no key. */
typedef struct ring_shard_spec {
    const char *name; /* copied by ring_build */
    uint32_t weight;  /* >= 1 */
} ring_shard_spec;

typedef struct ring ring;

/* Builds a ring over shards[0..nshards). Placement depends only on the
 * names and weights, not on their order in the array. Returns NULL with a
 * reason in err (no shards, empty name, zero weight, duplicate name, weights
 * so large the ring would exceed its point limit, a name too long for
 * RING_TWEMPROXY, out of memory). */
__attribute__((warn_unused_result)) ring *ring_build(const ring_shard_spec *shards, size_t nshards,
                                                     ring_mode mode, char *err, size_t errlen);

void ring_free(ring *r);

/* The owner of a hash: the shard of the first point >= hash, wrapping to the
 * first point. Returns an index into the shards array given to ring_build. */
uint32_t ring_lookup(const ring *r, uint32_t hash);

size_t ring_shard_count(const ring *r);
size_t ring_point_count(const ring *r);
/* Points owned by shard i (index as given to ring_build); 0 if out of range.
 * In RING_TWEMPROXY mode a shard with a tiny weight may own none. */
size_t ring_shard_points(const ring *r, uint32_t shard);
/* Name of shard i as given to ring_build; NULL if out of range. */
const char *ring_shard_name(const ring *r, uint32_t shard);

/* One hash range whose owner differs between two rings: every hash h with
 * start <= h <= end (no wrap: a range across 2^32 is split in two) belongs to
 * shard `from` (index in the old ring) before and `to` (index in the new ring)
 * after. Shards are matched by name. */
typedef struct ring_range {
    uint32_t start;
    uint32_t end;
    uint32_t from;
    uint32_t to;
} ring_range;

/* Computes the ranges that change owner from old_ring to new_ring, sorted by
 * start, adjacent ranges with the same from/to merged. *out is malloc'd (NULL
 * when *count is 0); the caller frees it. Returns 0, or -1 when out of memory. */
__attribute__((warn_unused_result)) int ring_diff(const ring *old_ring, const ring *new_ring,
                                                  ring_range **out, size_t *count);

#endif
