/* The consistent-hash ring: points placed from shard names, sorted once at
 * build time, then looked up through a small bucket index. Immutable after
 * ring_build, so any number of threads may look up one ring at once. */
#include "ring.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "md5.h"

/* Points per weight unit in RING_DEFAULT mode. A shard's share of the ring is
 * the sum of the arcs ending at its points; with P random points its relative
 * standard deviation is about 1/sqrt(P). Measured with bench/ring_bench (1M
 * keys, max/mean at 10 and 50 shards; build time at 100 shards):
 *   P = 2048: 1.040 and 1.052, both over the targets (1.03, 1.05); 1.9 ms
 *   P = 4096: 1.018 and 1.039; 3.8 ms, 3.2 MB of points
 *   P = 8192: 1.015 and 1.026; 7.8 ms, too close to the 10 ms build budget
 * 4096 meets both balance targets with room and keeps 100 shards' points in
 * cache for lookups. Changing P moves keys, so it is fixed. */
#define RING_POINTS_PER_WEIGHT 4096

/* Upper bound on points in one ring (8 bytes each: 128 MB), so that a huge
 * weight is a config error rather than an allocation failure at reload. */
#define RING_MAX_POINTS (1u << 24)

/* The lookup index has at most 2^16 buckets (256 KB, the top 16 hash bits);
 * smaller rings get about 4 points per bucket. */
#define RING_INDEX_MAX_BITS 16

/* In front of the index: the owner of every 2^16th slice of the hash space
 * (64 KB, one byte each) that holds no point, so most lookups are one load
 * and no search. With 4096 points per shard, 4 shards leave 78% of the
 * slices without a point, 10 shards 54%. The binary search over a bucket
 * mispredicts and misses cache (1.5% of all CPU time at -P 32 before, by
 * perf); this byte is the whole lookup for those keys. Shards whose index
 * does not fit in a byte always search. */
#define RING_OWNER_BITS   16
#define RING_OWNER_SEARCH 0xff

/* nutcracker 0.5.0 ketama constants (src/hashkit/nc_ketama.c). */
#define KETAMA_POINTS_PER_SERVER 160
#define KETAMA_POINTS_PER_DIGEST 4
/* nutcracker formats "<name>-<i>" into a buffer of this size; a longer string
 * would be hashed from past its end, so such names are refused. */
#define KETAMA_MAX_HOSTLEN 86

struct ring {
    uint32_t nshards;
    char **names;           /* by caller index, as given to ring_build */
    uint32_t *shard_points; /* points owned, by caller index */
    uint32_t *by_name;      /* caller indexes in name order (see name_cmp) */
    uint32_t npoints;
    uint64_t *points;     /* sorted ascending: point << 32 | owner (caller index) */
    unsigned index_shift; /* 32 - index bits */
    uint32_t *index;      /* index[b]: first point whose top bits are >= b; one
                             extra entry at the end holds npoints */
    uint8_t *owner;       /* owner[s]: the shard of the whole slice s of the hash space
                             (top RING_OWNER_BITS bits), or RING_OWNER_SEARCH */
};

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* nutcracker's server order (string_compare): shorter names first, then
 * bytewise, so "s9" < "s10". Ties between equal ring points go to the shard
 * that comes first in this order, in both modes, which makes placement a
 * function of the names alone and not of their order in the config. */
static int name_cmp(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la != lb) {
        return la < lb ? -1 : 1;
    }
    return memcmp(a, b, la);
}

typedef struct name_slot {
    const char *name;
    uint32_t shard;
} name_slot;

static int name_slot_cmp(const void *a, const void *b)
{
    const name_slot *x = a, *y = b;
    return name_cmp(x->name, y->name);
}

/* nutcracker's points per server, in float32 exactly as it computes them:
 * floorf(pct * 160 / 4 * n + 1e-10) * 4. The float rounding is the point:
 * 25 or 50 equal shards get 156 points each, not 160. */
static uint32_t ketama_points(uint32_t weight, uint32_t total_weight, uint32_t nshards)
{
    float pct = (float)weight / (float)total_weight;
    float per_digest = (float)(pct * KETAMA_POINTS_PER_SERVER / 4 * (float)nshards + 0.0000000001);
    return (uint32_t)(floorf(per_digest) * KETAMA_POINTS_PER_DIGEST);
}

static unsigned decimal_digits(uint32_t v)
{
    unsigned n = 1;
    while (v >= 10) {
        v /= 10;
        n++;
    }
    return n;
}

/* SplitMix64's output function: a bijection on 64 bits with full avalanche,
 * so consecutive counters give independent-looking ring points. */
static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

#define MIX64_GAMMA 0x9e3779b97f4a7c15ULL

/* Appends the RING_DEFAULT points of one shard: point j is the top half of
 * mix64(seed + (j + 1) * gamma), seed being the first 8 MD5 bytes of the
 * name. Point j never depends on the weight, so raising a weight only adds
 * points (keys move only to that shard) and lowering it only removes some. */
static uint64_t *default_points(uint64_t *out, const char *name, uint32_t count, uint32_t shard)
{
    uint8_t digest[MD5_DIGEST_LEN];
    md5_digest(name, strlen(name), digest);
    uint64_t seed = 0;
    for (int i = 7; i >= 0; i--) {
        seed = seed << 8 | digest[i];
    }
    for (uint32_t j = 0; j < count; j++) {
        uint64_t point = mix64(seed + (uint64_t)(j + 1) * MIX64_GAMMA) >> 32;
        *out++ = point << 32 | shard;
    }
    return out;
}

/* Appends nutcracker's ketama points of one shard: the MD5 of "<name>-<i>"
 * for i = 0, 1, ... gives 4 points, its four little-endian words. */
static uint64_t *ketama_points_of(uint64_t *out, const char *name, uint32_t count, uint32_t shard)
{
    char host[KETAMA_MAX_HOSTLEN];
    for (uint32_t i = 0; i < count / KETAMA_POINTS_PER_DIGEST; i++) {
        int len = snprintf(host, sizeof(host), "%s-%u", name, i);
        uint8_t digest[MD5_DIGEST_LEN];
        md5_digest(host, (size_t)len, digest);
        for (int x = 0; x < KETAMA_POINTS_PER_DIGEST; x++) {
            const uint8_t *d = digest + 4 * x;
            uint64_t point =
                (uint32_t)d[0] | (uint32_t)d[1] << 8 | (uint32_t)d[2] << 16 | (uint32_t)d[3] << 24;
            *out++ = point << 32 | shard;
        }
    }
    return out;
}

/* Bits of the lookup index for n points: about 4 points per bucket, at most
 * RING_INDEX_MAX_BITS. */
static unsigned index_bits(uint32_t n)
{
    unsigned bits = 1;
    while (bits < RING_INDEX_MAX_BITS && (4u << bits) < n) {
        bits++;
    }
    return bits;
}

/* Radix sort digits: 11 bits keep each pass's 2048 counters and write
 * streams in L1/L2, three passes cover the 32-bit point. */
#define RING_RADIX_BITS   11
#define RING_RADIX_PASSES 3
#define RING_RADIX_SIZE   (1u << RING_RADIX_BITS)

/* Sorts unsorted[0..n) by point into r->points and fills r->index. An LSD
 * radix sort on the point alone: it is stable, and entries were generated in
 * name order, so equal points stay in name order (the tie-break) without
 * comparing names. Linear in n, where a comparison sort of 400k points
 * alone would take most of the build budget. unsorted is used as scratch
 * space. */
static void sort_points(ring *r, uint64_t *unsorted, uint32_t n, unsigned bits)
{
    unsigned shift = 64 - bits;
    uint32_t nbuckets = 1u << bits;
    uint32_t *index = r->index;

    /* One read pass counts every digit and the index buckets. */
    static const unsigned digit_shift[RING_RADIX_PASSES] = {32, 32 + RING_RADIX_BITS,
                                                            32 + 2 * RING_RADIX_BITS};
    uint32_t counts[RING_RADIX_PASSES][RING_RADIX_SIZE] = {{0}};
    for (uint32_t i = 0; i < n; i++) {
        uint64_t e = unsorted[i];
        for (int pass = 0; pass < RING_RADIX_PASSES; pass++) {
            counts[pass][(e >> digit_shift[pass]) & (RING_RADIX_SIZE - 1)]++;
        }
        index[(e >> shift) + 1]++;
    }
    for (uint32_t b = 0; b < nbuckets; b++) {
        index[b + 1] += index[b];
    }

    /* An odd number of passes ends in r->points. */
    uint64_t *src = unsorted, *dst = r->points;
    for (int pass = 0; pass < RING_RADIX_PASSES; pass++) {
        uint32_t *start = counts[pass];
        uint32_t sum = 0;
        for (uint32_t d = 0; d < RING_RADIX_SIZE; d++) {
            uint32_t c = start[d];
            start[d] = sum;
            sum += c;
        }
        for (uint32_t i = 0; i < n; i++) {
            uint64_t e = src[i];
            dst[start[(e >> digit_shift[pass]) & (RING_RADIX_SIZE - 1)]++] = e;
        }
        uint64_t *tmp = src;
        src = dst;
        dst = tmp;
    }
    r->index_shift = 32 - bits;
}

static uint32_t search(const ring *r, uint32_t hash);

/* Fills r->owner from the sorted points: a slice owns a byte when no point
 * falls inside it, since every hash in it then finds the same next point.
 * One pass over the points marks the slices that hold one. */
static void fill_owner(ring *r)
{
    const uint32_t slices = 1u << RING_OWNER_BITS;
    const unsigned shift = 32 - RING_OWNER_BITS;
    uint32_t next = 0; /* first slice not yet filled */
    for (uint32_t i = 0; i <= r->npoints; i++) {
        /* Slices before this point's own slice hold no point. */
        uint32_t slice = i < r->npoints ? (uint32_t)(r->points[i] >> 32) >> shift : slices;
        for (; next < slice; next++) {
            uint32_t o = search(r, next << shift);
            r->owner[next] = o < RING_OWNER_SEARCH ? (uint8_t)o : RING_OWNER_SEARCH;
        }
        if (slice < slices && next == slice) {
            r->owner[next] = RING_OWNER_SEARCH;
            next++;
        }
    }
}

ring *ring_build(const ring_shard_spec *shards, size_t nshards, ring_mode mode, char *err,
                 size_t errlen)
{
    if (nshards == 0) {
        set_err(err, errlen, "no shards");
        return NULL;
    }
    if (nshards > RING_MAX_POINTS) {
        set_err(err, errlen, "too many shards (%zu)", nshards);
        return NULL;
    }
    if (mode != RING_DEFAULT && mode != RING_TWEMPROXY) {
        set_err(err, errlen, "unknown ring mode %d", (int)mode);
        return NULL;
    }
    uint64_t total_weight = 0;
    for (size_t i = 0; i < nshards; i++) {
        if (shards[i].name == NULL || shards[i].name[0] == '\0') {
            set_err(err, errlen, "shard %zu has no name", i + 1);
            return NULL;
        }
        if (shards[i].weight == 0) {
            set_err(err, errlen, "shard '%s' has weight 0 (must be >= 1)", shards[i].name);
            return NULL;
        }
        total_weight += shards[i].weight;
    }
    if (total_weight > UINT32_MAX) {
        set_err(err, errlen, "total weight %llu is over %u", (unsigned long long)total_weight,
                UINT32_MAX);
        return NULL;
    }

    uint32_t n = (uint32_t)nshards;
    ring *r = calloc(1, sizeof(*r));
    name_slot *slots = calloc(n, sizeof(*slots));
    uint64_t *unsorted = NULL;
    if (r == NULL || slots == NULL) {
        goto oom;
    }
    r->nshards = n;
    r->names = calloc(n, sizeof(*r->names));
    r->shard_points = calloc(n, sizeof(*r->shard_points));
    r->by_name = calloc(n, sizeof(*r->by_name));
    if (r->names == NULL || r->shard_points == NULL || r->by_name == NULL) {
        goto oom;
    }
    for (uint32_t i = 0; i < n; i++) {
        r->names[i] = strdup(shards[i].name);
        if (r->names[i] == NULL) {
            goto oom;
        }
        slots[i].name = r->names[i];
        slots[i].shard = i;
    }

    qsort(slots, n, sizeof(*slots), name_slot_cmp);
    for (uint32_t i = 0; i < n; i++) {
        if (i > 0 && name_cmp(slots[i - 1].name, slots[i].name) == 0) {
            set_err(err, errlen, "duplicate shard name '%s'", slots[i].name);
            goto fail;
        }
        r->by_name[i] = slots[i].shard;
    }

    uint64_t total_points = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t weight = shards[i].weight;
        uint64_t count;
        if (mode == RING_DEFAULT) {
            count = (uint64_t)weight * RING_POINTS_PER_WEIGHT;
        } else {
            count = ketama_points(weight, (uint32_t)total_weight, n);
            size_t longest =
                strlen(r->names[i]) + 1 + decimal_digits(count > 0 ? (uint32_t)count / 4 - 1 : 0);
            if (longest >= KETAMA_MAX_HOSTLEN) {
                set_err(err, errlen, "shard name '%s' is too long for twemproxy placement",
                        r->names[i]);
                goto fail;
            }
        }
        total_points += count;
        if (total_points > RING_MAX_POINTS) {
            set_err(err, errlen, "weights too large: over %u ring points", RING_MAX_POINTS);
            goto fail;
        }
        r->shard_points[i] = (uint32_t)count;
    }
    r->npoints = (uint32_t)total_points;

    unsorted = malloc(total_points * sizeof(*unsorted));
    r->points = malloc(total_points * sizeof(*r->points));
    unsigned bits = index_bits(r->npoints);
    r->index = calloc(((size_t)1 << bits) + 1, sizeof(*r->index));
    r->owner = malloc((size_t)1 << RING_OWNER_BITS);
    if (unsorted == NULL || r->points == NULL || r->index == NULL || r->owner == NULL) {
        goto oom;
    }
    /* Generated in name order: the stable sort keeps that order among equal
     * points, so the first of them (the one lookups find) belongs to the
     * shard whose name sorts first. */
    uint64_t *end = unsorted;
    for (uint32_t rank = 0; rank < n; rank++) {
        uint32_t shard = r->by_name[rank];
        if (mode == RING_DEFAULT) {
            end = default_points(end, r->names[shard], r->shard_points[shard], shard);
        } else {
            end = ketama_points_of(end, r->names[shard], r->shard_points[shard], shard);
        }
    }
    sort_points(r, unsorted, r->npoints, bits);
    fill_owner(r);

    free(unsorted);
    free(slots);
    return r;

oom:
    set_err(err, errlen, "out of memory");
fail:
    free(unsorted);
    free(slots);
    ring_free(r);
    return NULL;
}

void ring_free(ring *r)
{
    if (r == NULL) {
        return;
    }
    if (r->names != NULL) {
        for (uint32_t i = 0; i < r->nshards; i++) {
            free(r->names[i]);
        }
    }
    free(r->names);
    free(r->shard_points);
    free(r->by_name);
    free(r->points);
    free(r->index);
    free(r->owner);
    free(r);
}

/* The search of ring_lookup, without the owner table. */
static uint32_t search(const ring *r, uint32_t hash)
{
    uint32_t bucket = hash >> r->index_shift;
    uint32_t lo = r->index[bucket];
    uint32_t hi = r->index[bucket + 1];
    /* Every point in [lo, hi) shares the hash's top bits; if none is >= hash,
     * the answer is the first point of a later bucket, i.e. index hi. */
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if ((uint32_t)(r->points[mid] >> 32) < hash) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if (lo == r->npoints) {
        lo = 0;
    }
    return (uint32_t)r->points[lo];
}

uint32_t ring_lookup(const ring *r, uint32_t hash)
{
    uint8_t owner = r->owner[hash >> (32 - RING_OWNER_BITS)];
    return owner != RING_OWNER_SEARCH ? owner : search(r, hash);
}

size_t ring_shard_count(const ring *r)
{
    return r->nshards;
}

size_t ring_point_count(const ring *r)
{
    return r->npoints;
}

size_t ring_shard_points(const ring *r, uint32_t shard)
{
    return shard < r->nshards ? r->shard_points[shard] : 0;
}

const char *ring_shard_name(const ring *r, uint32_t shard)
{
    return shard < r->nshards ? r->names[shard] : NULL;
}

/* Growable output of ring_diff. */
typedef struct range_list {
    ring_range *ranges;
    size_t count;
    size_t cap;
} range_list;

static int range_list_add(range_list *list, uint32_t start, uint32_t end, uint32_t from,
                          uint32_t to)
{
    if (list->count > 0) {
        ring_range *last = &list->ranges[list->count - 1];
        if (last->end + 1 == start && last->end != UINT32_MAX && last->from == from &&
            last->to == to) {
            last->end = end;
            return 0;
        }
    }
    if (list->count == list->cap) {
        size_t cap = list->cap ? list->cap * 2 : 64;
        ring_range *grown = realloc(list->ranges, cap * sizeof(*grown));
        if (grown == NULL) {
            return -1;
        }
        list->ranges = grown;
        list->cap = cap;
    }
    list->ranges[list->count++] = (ring_range){start, end, from, to};
    return 0;
}

int ring_diff(const ring *old_ring, const ring *new_ring, ring_range **out, size_t *count)
{
    *out = NULL;
    *count = 0;

    /* renamed[i]: the new index of old shard i, or UINT32_MAX if it is gone;
     * both name orders are sorted, so one merge pass matches them. */
    uint32_t *renamed = malloc(old_ring->nshards * sizeof(*renamed));
    if (renamed == NULL) {
        return -1;
    }
    for (uint32_t i = 0, j = 0; i < old_ring->nshards; i++) {
        uint32_t old_shard = old_ring->by_name[i];
        const char *name = old_ring->names[old_shard];
        renamed[old_shard] = UINT32_MAX;
        while (j < new_ring->nshards && name_cmp(new_ring->names[new_ring->by_name[j]], name) < 0) {
            j++;
        }
        if (j < new_ring->nshards && strcmp(new_ring->names[new_ring->by_name[j]], name) == 0) {
            renamed[old_shard] = new_ring->by_name[j];
        }
    }

    /* Walk both point lists at once. Within one step, [start, end] ends at
     * the next point of either ring, so each ring has a single owner on it:
     * the owner of its first point >= start (or of its first point overall,
     * past its last point). */
    range_list list = {0};
    const uint64_t *op = old_ring->points, *np = new_ring->points;
    uint32_t on = old_ring->npoints, nn = new_ring->npoints;
    uint32_t i = 0, j = 0;
    uint64_t start = 0;
    while (start <= UINT32_MAX) {
        while (i < on && (op[i] >> 32) < start) {
            i++;
        }
        while (j < nn && (np[j] >> 32) < start) {
            j++;
        }
        uint32_t old_end = i < on ? (uint32_t)(op[i] >> 32) : UINT32_MAX;
        uint32_t new_end = j < nn ? (uint32_t)(np[j] >> 32) : UINT32_MAX;
        uint32_t from = (uint32_t)op[i < on ? i : 0];
        uint32_t to = (uint32_t)np[j < nn ? j : 0];
        uint32_t end = old_end < new_end ? old_end : new_end;
        if (renamed[from] != to && range_list_add(&list, (uint32_t)start, end, from, to) != 0) {
            free(list.ranges);
            free(renamed);
            return -1;
        }
        start = (uint64_t)end + 1;
    }

    free(renamed);
    *out = list.ranges;
    *count = list.count;
    return 0;
}
