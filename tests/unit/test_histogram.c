/* Specification of the latency histogram (proxy/histogram.c): every value
 * lands in a bucket whose upper bound is at least the value and at most
 * 12.5% above it; percentiles are those bounds; counts
 * below a power of two are exact (the Prometheus buckets). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "proxy/histogram.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static void test_bucket_bounds_hold_the_value(void **state)
{
    (void)state;
    static const uint64_t values[] = {0,     1,      7,       8,        9,          15,
                                      16,    17,     100,     1000,     10000,      65535,
                                      65536, 999999, 1000000, 12345678, 4294967295u};
    for (size_t i = 0; i < ARRAY_LEN(values); i++) {
        uint64_t v = values[i];
        unsigned b = histogram_bucket(v);
        uint64_t max = histogram_bucket_max(b);
        assert_true(b < HISTOGRAM_BUCKETS);
        assert_true(max >= v);
        assert_true((max - v) * 8 <= v);             /* within 12.5% */
        for (unsigned below = 0; below < b; below++) /* buckets below end before */
            assert_true(histogram_bucket_max(below) < v);
    }
    for (uint64_t v = 0; v < 8; v++)
        assert_int_equal(histogram_bucket_max(histogram_bucket(v)), v); /* exact */
}

static void test_every_value_up_to_a_million_is_bounded(void **state)
{
    (void)state;
    unsigned last = 0;
    for (uint64_t v = 0; v < 1000000; v++) {
        unsigned b = histogram_bucket(v);
        assert_true(b >= last); /* monotonic */
        last = b;
        uint64_t max = histogram_bucket_max(b);
        if (max < v || (max - v) * 8 > v)
            fail_msg("value %llu: bucket %u ends at %llu", (unsigned long long)v, b,
                     (unsigned long long)max);
    }
}

static void test_huge_values_land_in_the_last_bucket(void **state)
{
    (void)state;
    assert_int_equal(histogram_bucket(UINT64_MAX), HISTOGRAM_BUCKETS - 1);
    assert_int_equal(histogram_bucket((uint64_t)1 << 40), HISTOGRAM_BUCKETS - 1);
    assert_int_equal(histogram_bucket(((uint64_t)1 << 32) - 1), HISTOGRAM_BUCKETS - 2);
    assert_int_equal(histogram_bucket((uint64_t)1 << 32), HISTOGRAM_BUCKETS - 1);
    assert_int_equal(histogram_bucket_max(HISTOGRAM_BUCKETS - 1), UINT64_MAX);
}

static void test_percentiles(void **state)
{
    (void)state;
    histogram *h = calloc(1, sizeof(*h));
    assert_non_null(h);
    assert_int_equal(histogram_percentile(h, 50.0), 0); /* empty */
    /* 1000 values: 1..1000 µs. */
    for (uint64_t v = 1; v <= 1000; v++)
        histogram_record(h, v);
    assert_int_equal(histogram_total(h), 1000);
    static const struct {
        double p;
        uint64_t exact;
    } cases[] = {{50.0, 500}, {99.0, 990}, {99.9, 999}, {100.0, 1000}};
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        uint64_t got = histogram_percentile(h, cases[i].p);
        assert_true(got >= cases[i].exact);
        assert_true((got - cases[i].exact) * 8 <= cases[i].exact);
    }
    free(h);
}

static void test_counts_below_powers_of_two_are_exact(void **state)
{
    (void)state;
    histogram *h = calloc(1, sizeof(*h));
    assert_non_null(h);
    for (uint64_t v = 0; v < 5000; v += 3)
        histogram_record(h, v);
    for (int e = 4; e <= 24; e++) {
        uint64_t below = (uint64_t)1 << e, want = 0;
        for (uint64_t v = 0; v < 5000; v += 3)
            want += v < below;
        assert_int_equal(histogram_count_below(h, below), want);
    }
    free(h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bucket_bounds_hold_the_value),
        cmocka_unit_test(test_every_value_up_to_a_million_is_bounded),
        cmocka_unit_test(test_huge_values_land_in_the_last_bucket),
        cmocka_unit_test(test_percentiles),
        cmocka_unit_test(test_counts_below_powers_of_two_are_exact),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
