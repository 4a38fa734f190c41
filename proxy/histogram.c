/* Percentiles and cumulative counts of proxy/histogram.h's buckets. */
#include "proxy/histogram.h"

#include <string.h>

/* The smallest value (as a double) of the bucket whose number (exponent
 * and eighth, see HISTOGRAM_FIRST) is n. */
static double bucket_low(uint64_t n)
{
    uint64_t bits = n << (52 - HISTOGRAM_SUB_BITS);
    double d;
    memcpy(&d, &bits, sizeof(d));
    return d;
}

unsigned histogram_bucket_edge(uint64_t us)
{
    return us ? HISTOGRAM_BUCKETS - 1 : 0;
}

uint64_t histogram_bucket_max(unsigned i)
{
    if (i == 0)
        return 0;
    if (i >= HISTOGRAM_BUCKETS - 1)
        return UINT64_MAX;
    /* The largest integer below the next bucket's first value. */
    double next = bucket_low((uint64_t)i + HISTOGRAM_FIRST + 1);
    uint64_t n = (uint64_t)next;
    return (double)n == next ? n - 1 : n;
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
