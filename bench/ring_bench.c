/* Ring micro-benchmark: balance, movement on growth, lookup and build speed
 * of the default ring (RING_DEFAULT, murmur3), checked against the targets
 * of the ring design. Prints a markdown table (copied into bench/README.md)
 * and exits 1 if a placement target (balance, movement) is missed; timing
 * misses are reported but do not fail, since they depend on the machine.
 *
 * Usage: ring_bench [keys]   (default 1000000) */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ring/hash.h"
#include "ring/ring.h"

#define BENCH_DEFAULT_KEYS   1000000
#define BENCH_MAX_SHARDS     100
#define BENCH_TIMING_RUNS    7
#define BENCH_BUILD_RUNS     11
#define BENCH_KEY_MAX        32
#define BENCH_SHARD_NAME_MAX 16

/* Targets: balance max/mean at 10 and 50 shards, moved fraction relative to
 * 1/11, lookup ns at 100 shards, build ms at 100 shards. */
#define TARGET_BALANCE_10  1.03
#define TARGET_BALANCE_50  1.05
#define TARGET_MOVED_RATIO 1.05
#define TARGET_LOOKUP_NS   50.0
#define TARGET_BUILD_MS    10.0

static char shard_names[BENCH_MAX_SHARDS + 1][BENCH_SHARD_NAME_MAX];
static ring_shard_spec shard_specs[BENCH_MAX_SHARDS + 1];

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int double_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, size_t n)
{
    qsort(v, n, sizeof(*v), double_cmp);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* A ring over s1..sN, weight 1 each; exits on failure (a benchmark with a
 * broken ring has nothing to report). */
static ring *build_ring(size_t nshards, ring_mode mode)
{
    char err[256];
    ring *r = ring_build(shard_specs, nshards, mode, err, sizeof(err));
    if (r == NULL) {
        fprintf(stderr, "ring_bench: ring_build(%zu shards): %s\n", nshards, err);
        exit(2);
    }
    return r;
}

/* Key i of the benchmark set: "key:<i>", the shape of typical Redis keys. */
static size_t bench_key(char *buf, size_t i)
{
    return (size_t)snprintf(buf, BENCH_KEY_MAX, "key:%zu", i);
}

static uint32_t *hash_keys(hash_kind kind, size_t nkeys)
{
    uint32_t *hashes = malloc(nkeys * sizeof(*hashes));
    if (hashes == NULL) {
        fprintf(stderr, "ring_bench: out of memory\n");
        exit(2);
    }
    char key[BENCH_KEY_MAX];
    for (size_t i = 0; i < nkeys; i++) {
        size_t len = bench_key(key, i);
        hashes[i] = hash_key(kind, key, len, '{', '}');
    }
    return hashes;
}

typedef struct balance {
    double max_ratio; /* largest shard / mean */
    double min_ratio; /* smallest shard / mean */
} balance;

static balance measure_balance(const ring *r, const uint32_t *hashes, size_t nkeys)
{
    size_t n = ring_shard_count(r);
    size_t *counts = calloc(n, sizeof(*counts));
    if (counts == NULL) {
        exit(2);
    }
    for (size_t i = 0; i < nkeys; i++) {
        counts[ring_lookup(r, hashes[i])]++;
    }
    size_t max = 0, min = SIZE_MAX;
    for (size_t s = 0; s < n; s++) {
        max = counts[s] > max ? counts[s] : max;
        min = counts[s] < min ? counts[s] : min;
    }
    free(counts);
    double mean = (double)nkeys / (double)n;
    return (balance){(double)max / mean, (double)min / mean};
}

/* Median over runs of the mean time of one ring_lookup over all hashes. */
static double measure_lookup_ns(const ring *r, const uint32_t *hashes, size_t nkeys)
{
    double runs[BENCH_TIMING_RUNS];
    volatile uint32_t sink = 0;
    for (int run = 0; run < BENCH_TIMING_RUNS; run++) {
        uint32_t acc = 0;
        double t0 = now_ns();
        for (size_t i = 0; i < nkeys; i++) {
            acc += ring_lookup(r, hashes[i]);
        }
        runs[run] = (now_ns() - t0) / (double)nkeys;
        sink += acc;
    }
    (void)sink;
    return median(runs, BENCH_TIMING_RUNS);
}

static double measure_build_ms(size_t nshards, ring_mode mode)
{
    double runs[BENCH_BUILD_RUNS];
    for (int run = 0; run < BENCH_BUILD_RUNS; run++) {
        double t0 = now_ns();
        ring *r = build_ring(nshards, mode);
        runs[run] = (now_ns() - t0) / 1e6;
        ring_free(r);
    }
    return median(runs, BENCH_BUILD_RUNS);
}

/* Median over runs of the mean time of one hash_bytes over the keys,
 * formatted beforehand so that only hashing is timed. */
static double measure_hash_ns(hash_kind kind, size_t nkeys)
{
    char(*keys)[BENCH_KEY_MAX] = malloc(nkeys * sizeof(*keys));
    size_t *lens = malloc(nkeys * sizeof(*lens));
    if (keys == NULL || lens == NULL) {
        fprintf(stderr, "ring_bench: out of memory\n");
        exit(2);
    }
    for (size_t i = 0; i < nkeys; i++) {
        lens[i] = bench_key(keys[i], i);
    }
    double runs[BENCH_TIMING_RUNS];
    volatile uint32_t sink = 0;
    for (int run = 0; run < BENCH_TIMING_RUNS; run++) {
        uint32_t acc = 0;
        double t0 = now_ns();
        for (size_t i = 0; i < nkeys; i++) {
            acc += hash_bytes(kind, keys[i], lens[i]);
        }
        runs[run] = (now_ns() - t0) / (double)nkeys;
        sink += acc;
    }
    (void)sink;
    free(keys);
    free(lens);
    return median(runs, BENCH_TIMING_RUNS);
}

static const char *verdict(int ok)
{
    return ok ? "ok" : "MISSED";
}

int main(int argc, char **argv)
{
    size_t nkeys = BENCH_DEFAULT_KEYS;
    if (argc > 1) {
        nkeys = strtoul(argv[1], NULL, 10);
        if (nkeys == 0) {
            fprintf(stderr, "usage: %s [keys]\n", argv[0]);
            return 2;
        }
    }
    for (size_t i = 0; i <= BENCH_MAX_SHARDS; i++) {
        snprintf(shard_names[i], sizeof(shard_names[i]), "s%zu", i + 1);
        shard_specs[i] = (ring_shard_spec){shard_names[i], 1};
    }

    int placement_ok = 1;
    uint32_t *hashes = hash_keys(HASH_MURMUR3, nkeys);

    printf("Ring benchmark: RING_DEFAULT, hash murmur3, %zu keys \"key:<n>\", shards s1..sN "
           "weight 1\n\n",
           nkeys);
    printf("| measure | value | target | |\n|---|---|---|---|\n");

    static const size_t balance_shards[] = {4, 10, 50};
    for (size_t k = 0; k < sizeof(balance_shards) / sizeof(balance_shards[0]); k++) {
        size_t n = balance_shards[k];
        ring *r = build_ring(n, RING_DEFAULT);
        balance b = measure_balance(r, hashes, nkeys);
        ring_free(r);
        double target = n == 10 ? TARGET_BALANCE_10 : n == 50 ? TARGET_BALANCE_50 : 0;
        if (target > 0) {
            int ok = b.max_ratio <= target;
            placement_ok &= ok;
            printf("| balance max/mean, %zu shards | %.3f | <= %.2f | %s |\n", n, b.max_ratio,
                   target, verdict(ok));
        } else {
            printf("| balance max/mean, %zu shards | %.3f | | |\n", n, b.max_ratio);
        }
        printf("| balance min/mean, %zu shards | %.3f | | |\n", n, b.min_ratio);
    }

    {
        ring *r10 = build_ring(10, RING_DEFAULT);
        ring *r11 = build_ring(11, RING_DEFAULT);
        size_t moved = 0, moved_elsewhere = 0;
        for (size_t i = 0; i < nkeys; i++) {
            uint32_t before = ring_lookup(r10, hashes[i]);
            uint32_t after = ring_lookup(r11, hashes[i]);
            /* s1..s10 have the same index in both rings; s11 is index 10. */
            if (before != after) {
                moved++;
                moved_elsewhere += after != 10;
            }
        }
        ring_free(r10);
        ring_free(r11);
        double fraction = (double)moved / (double)nkeys;
        double limit = TARGET_MOVED_RATIO / 11.0;
        int ok = fraction <= limit;
        placement_ok &= ok && moved_elsewhere == 0;
        printf("| moved when s11 joins s1..s10 | %.4f (1/11 = %.4f) | <= %.4f | %s |\n", fraction,
               1.0 / 11.0, limit, verdict(ok));
        printf("| moved keys that went to s11 | %s (%zu of %zu) | all | %s |\n",
               moved_elsewhere == 0 ? "all" : "NOT all", moved - moved_elsewhere, moved,
               verdict(moved_elsewhere == 0));
    }

    static const size_t lookup_shards[] = {4, 10, 100};
    for (size_t k = 0; k < sizeof(lookup_shards) / sizeof(lookup_shards[0]); k++) {
        size_t n = lookup_shards[k];
        ring *r = build_ring(n, RING_DEFAULT);
        double ns = measure_lookup_ns(r, hashes, nkeys);
        size_t npoints = ring_point_count(r);
        ring_free(r);
        if (n == 100) {
            printf("| lookup ns/key, %zu shards (%zu points), median of %d | %.1f | <= %.0f | %s "
                   "|\n",
                   n, npoints, BENCH_TIMING_RUNS, ns, TARGET_LOOKUP_NS,
                   verdict(ns <= TARGET_LOOKUP_NS));
        } else {
            printf("| lookup ns/key, %zu shards (%zu points), median of %d | %.1f | | |\n", n,
                   npoints, BENCH_TIMING_RUNS, ns);
        }
    }

    {
        double ms = measure_build_ms(100, RING_DEFAULT);
        printf("| build ms, 100 shards, median of %d | %.2f | <= %.0f | %s |\n", BENCH_BUILD_RUNS,
               ms, TARGET_BUILD_MS, verdict(ms <= TARGET_BUILD_MS));
    }
    free(hashes);

    /* Why murmur3 is the default: the same balance measure for every hash,
     * and its speed, on the same keys. */
    printf("\nHash functions on the same keys (default ring, 10 shards):\n\n");
    printf("| hash | balance max/mean | balance min/mean | ns/hash |\n|---|---|---|---|\n");
    {
        ring *r = build_ring(10, RING_DEFAULT);
        for (int kind = 0; kind < HASH_KIND_COUNT; kind++) {
            uint32_t *h = hash_keys((hash_kind)kind, nkeys);
            balance b = measure_balance(r, h, nkeys);
            free(h);
            printf("| %s | %.3f | %.3f | %.1f |\n", hash_name((hash_kind)kind), b.max_ratio,
                   b.min_ratio, measure_hash_ns((hash_kind)kind, nkeys));
        }
        ring_free(r);
    }

    /* For comparison: nutcracker's ketama ring (160 points per shard). */
    printf("\nRING_TWEMPROXY for comparison (fnv1a_64):\n\n");
    printf("| shards | balance max/mean | balance min/mean |\n|---|---|---|\n");
    {
        uint32_t *h = hash_keys(HASH_FNV1A_64, nkeys);
        for (size_t k = 0; k < sizeof(balance_shards) / sizeof(balance_shards[0]); k++) {
            ring *r = build_ring(balance_shards[k], RING_TWEMPROXY);
            balance b = measure_balance(r, h, nkeys);
            ring_free(r);
            printf("| %zu | %.3f | %.3f |\n", balance_shards[k], b.max_ratio, b.min_ratio);
        }
        free(h);
    }

    printf("\nplacement targets: %s\n", placement_ok ? "met" : "MISSED");
    return placement_ok ? 0 : 1;
}
