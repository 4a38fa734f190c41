/* A small log-bucketed latency histogram: 8 buckets per power of two of
 * microseconds, so a bucket is at most 12.5% wide and recording a value is
 * a few instructions (no HDR histogram's sub-bucket arithmetic). Buckets
 * that no integer falls in (between 1 and 8 µs) stay empty. It feeds
 * INFO latencystats and the Prometheus duration histograms. */
#ifndef PROXY_HISTOGRAM_H
#define PROXY_HISTOGRAM_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Sub-buckets per power of two: a bucket spans 1/8 of its octave, so a
 * value reported as its bucket's upper bound is at most 12.5% above the
 * true one. Values under 8 µs have a bucket each (exact). */
#define HISTOGRAM_SUB_BITS 3
/* Octaves kept: values under 2^32 µs (about 71 minutes) are bounded to
 * 12.5%; longer ones share the last bucket, reported as unbounded. */
#define HISTOGRAM_OCTAVES 32
/* Bucket 0 holds 0 µs; then 2^HISTOGRAM_SUB_BITS per octave; the last
 * holds everything longer. */
#define HISTOGRAM_BUCKETS (2 + (HISTOGRAM_OCTAVES << HISTOGRAM_SUB_BITS))
/* A value's double has its octave in the exponent and the eighth of it in
 * the top three bits of the mantissa: bits 49 and up of the double are
 * (exponent << 3 | eighth). This is that number for 1 µs, less one, so
 * that 1 µs is bucket 1. */
#define HISTOGRAM_FIRST ((1023u << HISTOGRAM_SUB_BITS) - 1)

/* Counts of values per bucket. Plain counters, so histograms of several
 * processes add up bucket by bucket. */
typedef struct histogram {
    uint64_t count[HISTOGRAM_BUCKETS];
} histogram;

/* The bucket of 0 µs and of values from 2^HISTOGRAM_OCTAVES µs up: out of
 * line, so that the common case takes one rarely taken branch for both. */
__attribute__((cold, noinline)) unsigned histogram_bucket_edge(uint64_t us);

/* The bucket of a value in µs: read off its double's exponent and top
 * mantissa bits, a handful of instructions on the request path. The
 * signed conversion is one instruction (an unsigned one needs several);
 * what it gets wrong (values from 2^63, negative) is out of range with 0
 * and the values from 2^HISTOGRAM_OCTAVES: one unsigned comparison finds
 * them all. */
static inline uint64_t histogram_slot_raw(uint64_t us)
{
    double d = (double)(int64_t)us;
    uint64_t bits;
    memcpy(&bits, &d, sizeof(bits));
    return (bits >> (52 - HISTOGRAM_SUB_BITS)) - HISTOGRAM_FIRST; /* wraps for 0 µs */
}

/* The bucket of 1 µs to 2^HISTOGRAM_OCTAVES - 1 µs is histogram_slot_raw;
 * the rest are above HISTOGRAM_BUCKETS - 2 there. */
static inline size_t histogram_slot(uint64_t us)
{
    uint64_t i = histogram_slot_raw(us);
    if (__builtin_expect(i > HISTOGRAM_BUCKETS - 2, 0))
        return histogram_bucket_edge(us);
    return (size_t)i;
}

static inline unsigned histogram_bucket(uint64_t us)
{
    return (unsigned)histogram_slot(us);
}

/* Counts one value, in µs. */
static inline void histogram_record(histogram *h, uint64_t us)
{
    h->count[histogram_slot(us)]++;
}

/* The largest value (µs) that falls in bucket i: what a percentile in that
 * bucket is reported as, as HDR's highest equivalent value. */
uint64_t histogram_bucket_max(unsigned i);

/* The value (µs) at percentile p (0 < p <= 100) of the values counted: the
 * upper bound of the bucket holding it. 0 when nothing was counted. */
uint64_t histogram_percentile(const histogram *h, double p);

/* The number of values counted below us µs; exact when us is a power of
 * two (a bucket boundary). A reading of n µs from the loop clock is a
 * duration in [n, n + 1) µs, so this is what a Prometheus bucket
 * {le="us/1e6"} counts. */
uint64_t histogram_count_below(const histogram *h, uint64_t us);

/* The number of values counted. */
uint64_t histogram_total(const histogram *h);

#endif
