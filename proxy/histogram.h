/* A small log-bucketed latency histogram: 8 buckets per power of two of
 * microseconds, so a bucket is at most 12.5% wide and recording a value is
 * a few instructions (no HDR histogram's sub-bucket arithmetic). It feeds
 * INFO latencystats and the Prometheus duration histograms. */
#ifndef PROXY_HISTOGRAM_H
#define PROXY_HISTOGRAM_H

#include <stddef.h>
#include <stdint.h>

/* Sub-buckets per power of two: a bucket spans 1/8 of its octave, so a
 * value reported as its bucket's upper bound is at most 12.5% above the
 * true one. Values under 8 µs have a bucket each (exact). */
#define HISTOGRAM_SUB_BITS 3
#define HISTOGRAM_SUB      (1u << HISTOGRAM_SUB_BITS)
/* Largest octave kept: 2^31 µs (about 36 minutes); longer values land in
 * the last bucket. */
#define HISTOGRAM_MAX_OCTAVE 31
#define HISTOGRAM_BUCKETS    (HISTOGRAM_SUB * (HISTOGRAM_MAX_OCTAVE - HISTOGRAM_SUB_BITS + 2))

/* Counts of values per bucket. Plain counters, so histograms of several
 * processes add up bucket by bucket. */
typedef struct histogram {
    uint64_t count[HISTOGRAM_BUCKETS];
} histogram;

/* The bucket of a value in µs. */
static inline unsigned histogram_bucket(uint64_t us)
{
    if (us < HISTOGRAM_SUB)
        return (unsigned)us;
    unsigned octave = 63u - (unsigned)__builtin_clzll(us);
    if (octave > HISTOGRAM_MAX_OCTAVE)
        return HISTOGRAM_BUCKETS - 1;
    unsigned sub = (unsigned)(us >> (octave - HISTOGRAM_SUB_BITS)) & (HISTOGRAM_SUB - 1);
    return HISTOGRAM_SUB * (octave - HISTOGRAM_SUB_BITS + 1) + sub;
}

/* Counts one value, in µs. */
static inline void histogram_record(histogram *h, uint64_t us)
{
    h->count[histogram_bucket(us)]++;
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
