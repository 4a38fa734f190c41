/* Percentiles and cumulative counts of proxy/histogram.h's buckets. */
#include "proxy/histogram.h"

uint64_t histogram_bucket_max(unsigned i)
{
    if (i < HISTOGRAM_SUB)
        return i;
    if (i >= HISTOGRAM_BUCKETS - 1)
        return UINT64_MAX;
    unsigned octave = i / HISTOGRAM_SUB + HISTOGRAM_SUB_BITS - 1;
    uint64_t sub = i % HISTOGRAM_SUB;
    uint64_t width = (uint64_t)1 << (octave - HISTOGRAM_SUB_BITS);
    return ((uint64_t)HISTOGRAM_SUB + sub + 1) * width - 1;
}

uint64_t histogram_total(const histogram *h)
{
    uint64_t n = 0;
    for (unsigned i = 0; i < HISTOGRAM_BUCKETS; i++)
        n += h->count[i];
    return n;
}

uint64_t histogram_percentile(const histogram *h, double p)
{
    uint64_t total = histogram_total(h);
    if (total == 0)
        return 0;
    /* The rank of the value at p: the smallest one with p% of the values
     * at or below it. */
    double want = p / 100.0 * (double)total;
    uint64_t rank = (uint64_t)want;
    if ((double)rank < want || rank == 0)
        rank++;
    uint64_t seen = 0;
    for (unsigned i = 0; i < HISTOGRAM_BUCKETS; i++) {
        seen += h->count[i];
        if (seen >= rank)
            return histogram_bucket_max(i);
    }
    return histogram_bucket_max(HISTOGRAM_BUCKETS - 1);
}

uint64_t histogram_count_below(const histogram *h, uint64_t us)
{
    uint64_t n = 0;
    for (unsigned i = 0; i < HISTOGRAM_BUCKETS && histogram_bucket_max(i) < us; i++)
        n += h->count[i];
    return n;
}
