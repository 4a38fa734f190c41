/* The ring as a specification: build errors, nutcracker's ketama point
 * counts and placement (against a brute-force model built from MD5 here),
 * wrap-around, weights, balance, monotonicity when shards come and go, and
 * ring_diff agreeing with lookups. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ring/hash.h"
#include "ring/md5.h"
#include "ring/ring.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#define MAX_SHARDS 320
/* Keys for balance: the benchmark's set, so the numbers match. */
#define BALANCE_KEYS 1000000
/* Keys or random hashes for the movement and diff checks. */
#define SAMPLE_KEYS 200000

/* Deterministic random 32-bit hashes (SplitMix64). */
static uint64_t rng_state;

static uint32_t rng_next(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return (uint32_t)((z ^ (z >> 31)) >> 32);
}

/* A shard list written as "name*weight name*weight ..." (weight 1 if
 * omitted), so that test tables read like configs. */
typedef struct shard_list {
    ring_shard_spec specs[MAX_SHARDS];
    char names[MAX_SHARDS][32];
    size_t count;
} shard_list;

static void parse_shards(shard_list *list, const char *text)
{
    memset(list, 0, sizeof(*list));
    char buf[2048];
    snprintf(buf, sizeof(buf), "%s", text);
    char *save = NULL;
    for (char *tok = strtok_r(buf, " ", &save); tok != NULL; tok = strtok_r(NULL, " ", &save)) {
        assert_true(list->count < MAX_SHARDS);
        char *star = strchr(tok, '*');
        uint32_t weight = 1;
        if (star != NULL) {
            *star = '\0';
            weight = (uint32_t)strtoul(star + 1, NULL, 10);
        }
        snprintf(list->names[list->count], sizeof(list->names[0]), "%s", tok);
        list->specs[list->count] = (ring_shard_spec){list->names[list->count], weight};
        list->count++;
    }
}

/* s1..sN, weight 1. */
static void numbered_shards(shard_list *list, size_t n)
{
    memset(list, 0, sizeof(*list));
    assert_true(n <= MAX_SHARDS);
    for (size_t i = 0; i < n; i++) {
        snprintf(list->names[i], sizeof(list->names[0]), "s%zu", i + 1);
        list->specs[i] = (ring_shard_spec){list->names[i], 1};
    }
    list->count = n;
}

static ring *build(const shard_list *list, ring_mode mode)
{
    char err[256] = "";
    ring *r = ring_build(list->specs, list->count, mode, err, sizeof(err));
    if (r == NULL) {
        fail_msg("ring_build: %s", err);
    }
    return r;
}

static const char *owner_name(const ring *r, uint32_t hash)
{
    return ring_shard_name(r, ring_lookup(r, hash));
}

static uint32_t key_hash(size_t i)
{
    char key[32];
    int len = snprintf(key, sizeof(key), "key:%zu", i);
    return hash_key(HASH_MURMUR3, key, (size_t)len, '{', '}');
}

/* ---- build errors ---- */

static void test_build_errors(void **state)
{
    (void)state;
    char long_name[100];
    memset(long_name, 'n', sizeof(long_name) - 1);
    long_name[sizeof(long_name) - 1] = '\0';
    static const ring_shard_spec ok = {"ok", 1};
    const struct {
        ring_shard_spec specs[3];
        size_t count;
        ring_mode mode;
        const char *error;
    } cases[] = {
        {{{NULL, 0}}, 0, RING_DEFAULT, "no shards"},
        {{{NULL, 1}}, 1, RING_DEFAULT, "shard 1 has no name"},
        {{ok, {"", 1}}, 2, RING_DEFAULT, "shard 2 has no name"},
        {{ok, {"zero", 0}}, 2, RING_DEFAULT, "shard 'zero' has weight 0 (must be >= 1)"},
        {{{"a", 1}, {"b", 1}, {"a", 2}}, 3, RING_DEFAULT, "duplicate shard name 'a'"},
        {{{"a", 1}, {"b", 1}, {"a", 2}}, 3, RING_TWEMPROXY, "duplicate shard name 'a'"},
        {{{"big", 1u << 20}}, 1, RING_DEFAULT, "weights too large: over 16777216 ring points"},
        {{{"big", UINT32_MAX}, ok}, 2, RING_DEFAULT, "total weight 4294967296 is over 4294967295"},
        {{{long_name, 1}}, 1, RING_TWEMPROXY, "is too long for twemproxy placement"},
        {{ok}, 1, (ring_mode)7, "unknown ring mode 7"},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        char err[256] = "";
        ring *r = ring_build(cases[i].specs, cases[i].count, cases[i].mode, err, sizeof(err));
        if (r != NULL) {
            ring_free(r);
            fail_msg("case %zu: built, expected \"%s\"", i, cases[i].error);
        }
        if (strstr(err, cases[i].error) == NULL) {
            fail_msg("case %zu: error \"%s\", expected \"%s\"", i, err, cases[i].error);
        }
    }
    /* A NULL or tiny error buffer is allowed. */
    assert_null(ring_build(NULL, 0, RING_DEFAULT, NULL, 0));
    char tiny[4];
    assert_null(ring_build(NULL, 0, RING_DEFAULT, tiny, sizeof(tiny)));
    assert_string_equal(tiny, "no ");
    /* The longest name nutcracker can place: "<name>-39" in 85 bytes. */
    long_name[82] = '\0';
    ring *r = ring_build(&(ring_shard_spec){long_name, 1}, 1, RING_TWEMPROXY, NULL, 0);
    assert_non_null(r);
    ring_free(r);
    long_name[82] = 'n';
    long_name[83] = '\0';
    assert_null(ring_build(&(ring_shard_spec){long_name, 1}, 1, RING_TWEMPROXY, NULL, 0));
}

static void test_accessors(void **state)
{
    (void)state;
    shard_list list;
    parse_shards(&list, "zeta alpha*3 m");
    ring *r = build(&list, RING_DEFAULT);
    assert_int_equal(ring_shard_count(r), 3);
    /* Indexes are the caller's, whatever the name order. */
    assert_string_equal(ring_shard_name(r, 0), "zeta");
    assert_string_equal(ring_shard_name(r, 1), "alpha");
    assert_string_equal(ring_shard_name(r, 2), "m");
    assert_null(ring_shard_name(r, 3));
    assert_int_equal(ring_shard_points(r, 3), 0);
    /* Points are proportional to weight and add up. */
    size_t unit = ring_shard_points(r, 0);
    assert_true(unit >= 1000);
    assert_int_equal(ring_shard_points(r, 1), 3 * unit);
    assert_int_equal(ring_shard_points(r, 2), unit);
    assert_int_equal(ring_point_count(r), 5 * unit);
    /* Names are copied. */
    strcpy(list.names[0], "XXXX");
    assert_string_equal(ring_shard_name(r, 0), "zeta");
    ring_free(r);
    ring_free(NULL);
}

/* ---- RING_TWEMPROXY: nutcracker's point counts and placement ---- */

/* Expected counts from nutcracker's float32 formula
 * floorf(weight / total * 160 / 4 * n + 1e-10) * 4, worked out by hand in
 * IEEE single precision. */
static const struct {
    const char *shards;
    uint32_t points[8]; /* per shard, in list order */
} twemproxy_counts[] = {
    {"a", {160}},
    {"a b c", {160, 160, 160}},
    {"a*1 b*1 c*2", {120, 120, 240}},
    {"a*1 b*2", {104, 212}},
    {"a*1 b*2 c*3 d*4", {64, 128, 192, 256}},
    {"a*5 b*1", {264, 52}},
    {"a*100 b*1", {316, 0}}, /* too light for a single digest: owns nothing */
    {"a*3 b*3 c*3", {160, 160, 160}},
};

static void test_twemproxy_point_counts(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(twemproxy_counts); i++) {
        shard_list list;
        parse_shards(&list, twemproxy_counts[i].shards);
        ring *r = build(&list, RING_TWEMPROXY);
        size_t total = 0;
        for (uint32_t s = 0; s < list.count; s++) {
            if (ring_shard_points(r, s) != twemproxy_counts[i].points[s]) {
                fail_msg("\"%s\": shard %s has %zu points, expected %u", twemproxy_counts[i].shards,
                         list.names[s], ring_shard_points(r, s), twemproxy_counts[i].points[s]);
            }
            total += twemproxy_counts[i].points[s];
        }
        assert_int_equal(ring_point_count(r), total);
        ring_free(r);
    }
}

/* With n equal shards, pct * 40 * n rounds just below 40 in float32 for some
 * n, and floorf drops a whole digest: 25 and 50 shards get 156 points each. */
static void test_twemproxy_equal_shards(void **state)
{
    (void)state;
    static const struct {
        size_t n;
        uint32_t points;
    } cases[] = {{1, 160},  {2, 160},  {10, 160}, {24, 160}, {25, 156},
                 {26, 160}, {49, 160}, {50, 156}, {51, 160}, {64, 160}};
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        shard_list list;
        numbered_shards(&list, cases[i].n);
        ring *r = build(&list, RING_TWEMPROXY);
        for (uint32_t s = 0; s < list.count; s++) {
            if (ring_shard_points(r, s) != cases[i].points) {
                fail_msg("%zu shards: %zu points, expected %u", cases[i].n, ring_shard_points(r, s),
                         cases[i].points);
            }
        }
        assert_int_equal(ring_point_count(r), cases[i].n * cases[i].points);
        ring_free(r);
    }
}

/* The model: every point of every shard from MD5("<name>-<i>"), sorted by
 * value then by nutcracker's server order (shorter name first, then bytes),
 * looked up by plain binary search. */
typedef struct model_point {
    uint32_t value;
    uint32_t shard;   /* caller index */
    const char *name; /* for the tie-break */
} model_point;

static int model_name_cmp(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    return la != lb ? (la < lb ? -1 : 1) : memcmp(a, b, la);
}

static int model_point_cmp(const void *x, const void *y)
{
    const model_point *a = x, *b = y;
    if (a->value != b->value) {
        return a->value < b->value ? -1 : 1;
    }
    return model_name_cmp(a->name, b->name);
}

static model_point *ketama_model(const shard_list *list, const ring *r, size_t *count)
{
    size_t total = ring_point_count(r);
    model_point *points = calloc(total, sizeof(*points));
    assert_non_null(points);
    size_t n = 0;
    for (uint32_t s = 0; s < list->count; s++) {
        for (size_t i = 0; i < ring_shard_points(r, s) / 4; i++) {
            char host[128];
            int len = snprintf(host, sizeof(host), "%s-%zu", list->names[s], i);
            uint8_t d[MD5_DIGEST_LEN];
            md5_digest(host, (size_t)len, d);
            for (int x = 0; x < 4; x++) {
                const uint8_t *w = d + 4 * x;
                points[n++] = (model_point){(uint32_t)w[0] | (uint32_t)w[1] << 8 |
                                                (uint32_t)w[2] << 16 | (uint32_t)w[3] << 24,
                                            s, list->names[s]};
            }
        }
    }
    assert_int_equal(n, total);
    qsort(points, n, sizeof(*points), model_point_cmp);
    *count = n;
    return points;
}

static uint32_t model_lookup(const model_point *points, size_t n, uint32_t hash)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (points[mid].value < hash) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return points[lo == n ? 0 : lo].shard;
}

static void test_twemproxy_matches_model(void **state)
{
    (void)state;
    /* Names whose length-first order differs from strcmp order, listed out
     * of order, with unequal weights. */
    static const char *const configs[] = {
        "s10 s9*2 alpha b",
        "shard-b shard-a shard-c*2 shard-d",
        "127.0.0.1:7001 127.0.0.1:7002 127.0.0.1:7003*3",
        "s1 s2 s3 s4 s5 s6 s7 s8 s9 s10 s11 s12 s13 s14 s15 s16 s17 s18 s19 s20 s21 s22 s23 "
        "s24 s25",
        "t15161 t8975", /* a tied point, see test_twemproxy_tie_goes_to_name_first */
    };
    for (size_t c = 0; c < ARRAY_LEN(configs); c++) {
        shard_list list;
        parse_shards(&list, configs[c]);
        ring *r = build(&list, RING_TWEMPROXY);
        size_t n;
        model_point *points = ketama_model(&list, r, &n);

        /* Every point, its neighbours, both ends of the hash space. */
        for (size_t i = 0; i < n; i++) {
            uint32_t v = points[i].value;
            assert_int_equal(ring_lookup(r, v), model_lookup(points, n, v));
            assert_int_equal(ring_lookup(r, v - 1), model_lookup(points, n, v - 1));
            assert_int_equal(ring_lookup(r, v + 1), model_lookup(points, n, v + 1));
        }
        rng_state = c;
        for (size_t i = 0; i < SAMPLE_KEYS; i++) {
            uint32_t h = rng_next();
            assert_int_equal(ring_lookup(r, h), model_lookup(points, n, h));
        }

        /* Wrap-around: past the last point, the first point's shard. */
        uint32_t first = points[0].shard;
        assert_int_equal(ring_lookup(r, 0), first);
        assert_int_equal(ring_lookup(r, points[0].value), first);
        if (points[n - 1].value != UINT32_MAX) {
            assert_int_equal(ring_lookup(r, points[n - 1].value + 1), first);
            assert_int_equal(ring_lookup(r, UINT32_MAX), first);
        }
        assert_int_equal(ring_lookup(r, points[n - 1].value), points[n - 1].shard);
        free(points);
        ring_free(r);
    }
}

/* Past 254 shards an owner no longer fits the lookup's byte table, whose
 * slices then always search: lookups must still match the model, for the
 * shards below that index and above it. */
static void test_many_shards_match_model(void **state)
{
    (void)state;
    shard_list list;
    numbered_shards(&list, 300);
    ring *r = build(&list, RING_TWEMPROXY);
    size_t n;
    model_point *points = ketama_model(&list, r, &n);
    int high = 0;
    rng_state = 300;
    for (size_t i = 0; i < SAMPLE_KEYS; i++) {
        uint32_t h = rng_next();
        uint32_t want = model_lookup(points, n, h);
        assert_int_equal(ring_lookup(r, h), want);
        high |= want >= 255;
    }
    assert_true(high);
    free(points);
    ring_free(r);
}

/* "t8975" and "t15161" each have a ketama point at 3263848, one of the
 * collisions among the names t0..t19999. nutcracker sorts its continuum with
 * a stable qsort after adding servers in name order (shorter first), so at a
 * tie the shard whose name sorts first there wins: "t8975", though strcmp
 * would put "t15161" first. "tie:kwpbbsn" is a key whose fnv1a_64 is exactly
 * that point; the integration test sends it through nutcracker. */
#define TIE_POINT 3263848u
#define TIE_KEY   "tie:kwpbbsn"

static void test_twemproxy_tie_goes_to_name_first(void **state)
{
    (void)state;
    assert_int_equal(hash_key(HASH_FNV1A_64, TIE_KEY, strlen(TIE_KEY), '{', '}'), TIE_POINT);
    static const char *const orders[] = {"t8975 t15161", "t15161 t8975"};
    for (size_t i = 0; i < ARRAY_LEN(orders); i++) {
        shard_list list;
        parse_shards(&list, orders[i]);
        ring *r = build(&list, RING_TWEMPROXY);
        size_t n;
        model_point *points = ketama_model(&list, r, &n);
        size_t tied = 0;
        for (size_t k = 0; k < n; k++) {
            tied += points[k].value == TIE_POINT;
        }
        assert_int_equal(tied, 2);
        assert_string_equal(owner_name(r, TIE_POINT), "t8975");
        free(points);
        ring_free(r);
    }
}

/* ---- RING_DEFAULT ---- */

/* Placement is a function of names and weights: any order of the list
 * gives every hash the same owner name. */
static void test_placement_ignores_list_order(void **state)
{
    (void)state;
    static const char *const orders[] = {"a b*2 c d", "d c b*2 a", "b*2 d a c"};
    for (int mode = RING_DEFAULT; mode <= RING_TWEMPROXY; mode++) {
        shard_list lists[ARRAY_LEN(orders)];
        ring *rings[ARRAY_LEN(orders)];
        for (size_t i = 0; i < ARRAY_LEN(orders); i++) {
            parse_shards(&lists[i], orders[i]);
            rings[i] = build(&lists[i], (ring_mode)mode);
        }
        rng_state = 42;
        for (size_t k = 0; k < SAMPLE_KEYS; k++) {
            uint32_t h = rng_next();
            for (size_t i = 1; i < ARRAY_LEN(orders); i++) {
                assert_string_equal(owner_name(rings[0], h), owner_name(rings[i], h));
            }
        }
        for (size_t i = 0; i < ARRAY_LEN(orders); i++) {
            ring_free(rings[i]);
        }
    }
}

/* Past the last point a hash wraps to the first point: 0 and 2^32-1 have the
 * same owner (no point sits at exactly 2^32-1 for these names), and a single
 * shard owns everything. */
static void test_default_wraps_around(void **state)
{
    (void)state;
    for (size_t n = 1; n <= 12; n++) {
        shard_list list;
        numbered_shards(&list, n);
        ring *r = build(&list, RING_DEFAULT);
        assert_int_equal(ring_lookup(r, 0), ring_lookup(r, UINT32_MAX));
        ring_free(r);
    }
    shard_list one;
    parse_shards(&one, "only");
    ring *r = build(&one, RING_DEFAULT);
    static const uint32_t hashes[] = {0, 1, 0x7fffffff, 0x80000000u, UINT32_MAX - 1, UINT32_MAX};
    for (size_t i = 0; i < ARRAY_LEN(hashes); i++) {
        assert_int_equal(ring_lookup(r, hashes[i]), 0);
    }
    ring_free(r);
}

/* Shares of keys per shard: max/mean and min/mean over the benchmark keys. */
static void key_shares(const ring *r, size_t nkeys, double *max_ratio, double *min_ratio)
{
    size_t n = ring_shard_count(r);
    size_t *counts = calloc(n, sizeof(*counts));
    assert_non_null(counts);
    for (size_t i = 0; i < nkeys; i++) {
        counts[ring_lookup(r, key_hash(i))]++;
    }
    size_t max = 0, min = SIZE_MAX;
    for (size_t s = 0; s < n; s++) {
        max = counts[s] > max ? counts[s] : max;
        min = counts[s] < min ? counts[s] : min;
    }
    free(counts);
    double mean = (double)nkeys / (double)n;
    *max_ratio = (double)max / mean;
    *min_ratio = (double)min / mean;
}

/* The balance targets of the default ring over 1M keys "key:<n>". */
static void test_default_balance(void **state)
{
    (void)state;
    static const struct {
        size_t shards;
        double max_ratio;
        double min_ratio;
    } cases[] = {{4, 1.03, 0.95}, {10, 1.03, 0.95}, {50, 1.05, 0.95}};
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        shard_list list;
        numbered_shards(&list, cases[i].shards);
        ring *r = build(&list, RING_DEFAULT);
        double max_ratio, min_ratio;
        key_shares(r, BALANCE_KEYS, &max_ratio, &min_ratio);
        ring_free(r);
        if (max_ratio > cases[i].max_ratio || min_ratio < cases[i].min_ratio) {
            fail_msg("%zu shards: max/mean %.3f (<= %.2f), min/mean %.3f (>= %.2f)",
                     cases[i].shards, max_ratio, cases[i].max_ratio, min_ratio, cases[i].min_ratio);
        }
    }
}

/* Key share follows weight. */
static void test_default_weights(void **state)
{
    (void)state;
    static const struct {
        const char *shards;
        double share[4]; /* expected fraction of keys, in list order */
    } cases[] = {
        {"a b*2 c", {0.25, 0.5, 0.25}},
        {"a*3 b", {0.75, 0.25}},
        {"x*1 y*2 z*3 w*4", {0.1, 0.2, 0.3, 0.4}},
    };
    for (size_t c = 0; c < ARRAY_LEN(cases); c++) {
        shard_list list;
        parse_shards(&list, cases[c].shards);
        ring *r = build(&list, RING_DEFAULT);
        size_t counts[4] = {0};
        for (size_t i = 0; i < SAMPLE_KEYS; i++) {
            counts[ring_lookup(r, key_hash(i))]++;
        }
        for (size_t s = 0; s < list.count; s++) {
            double share = (double)counts[s] / SAMPLE_KEYS;
            double expected = cases[c].share[s];
            /* 5% relative: four standard deviations of a weight-1 share. */
            if (share < expected * 0.95 || share > expected * 1.05) {
                fail_msg("\"%s\": %s has %.4f of the keys, expected %.4f", cases[c].shards,
                         list.names[s], share, expected);
            }
        }
        ring_free(r);
    }
}

/* Moving from one shard list to another: every key whose owner changes must
 * go to a shard allowed by the case (`moved_to`, or anything if NULL) and
 * come from one allowed by `moved_from`; the moved fraction must be within
 * 20% of `moved_fraction`. */
typedef struct movement_case {
    const char *before;
    const char *after;
    const char *moved_from; /* space-separated names, or NULL for any */
    const char *moved_to;
    double moved_fraction;
} movement_case;

static int name_in(const char *name, const char *list)
{
    if (list == NULL) {
        return 1;
    }
    size_t len = strlen(name);
    for (const char *p = list; (p = strstr(p, name)) != NULL; p += len) {
        if ((p == list || p[-1] == ' ') && (p[len] == ' ' || p[len] == '\0')) {
            return 1;
        }
    }
    return 0;
}

static const movement_case movement_cases[] = {
    /* Adding a shard only moves keys to it, about its share of them. */
    {"s1 s2 s3 s4 s5 s6 s7 s8 s9 s10", "s1 s2 s3 s4 s5 s6 s7 s8 s9 s10 s11", NULL, "s11", 1.0 / 11},
    {"a b c", "a b c new", NULL, "new", 1.0 / 4},
    {"a b c", "a b c heavy*2", NULL, "heavy", 2.0 / 5},
    {"a", "a b", NULL, "b", 1.0 / 2},
    /* Removing a shard only moves its keys. */
    {"s1 s2 s3 s4 s5 s6 s7 s8 s9 s10", "s1 s2 s3 s4 s6 s7 s8 s9 s10", "s5", NULL, 1.0 / 10},
    {"a b c", "b c", "a", NULL, 1.0 / 3},
    {"a b*2 c", "a c", "b", NULL, 2.0 / 4},
    /* A heavier shard only gains keys; a lighter one only loses some. */
    {"a b c", "a b*3 c", NULL, "b", 3.0 / 5 - 1.0 / 3},
    {"a b*3 c", "a b c", "b", NULL, 3.0 / 5 - 1.0 / 3},
};

static void test_default_monotonic(void **state)
{
    (void)state;
    for (size_t c = 0; c < ARRAY_LEN(movement_cases); c++) {
        const movement_case *m = &movement_cases[c];
        shard_list before, after;
        parse_shards(&before, m->before);
        parse_shards(&after, m->after);
        ring *old_ring = build(&before, RING_DEFAULT);
        ring *new_ring = build(&after, RING_DEFAULT);
        size_t moved = 0;
        for (size_t i = 0; i < SAMPLE_KEYS; i++) {
            uint32_t h = key_hash(i);
            const char *from = owner_name(old_ring, h);
            const char *to = owner_name(new_ring, h);
            if (strcmp(from, to) == 0) {
                continue;
            }
            moved++;
            if (!name_in(from, m->moved_from) || !name_in(to, m->moved_to)) {
                fail_msg("\"%s\" -> \"%s\": key:%zu moved %s -> %s", m->before, m->after, i, from,
                         to);
            }
        }
        double fraction = (double)moved / SAMPLE_KEYS;
        if (fraction < m->moved_fraction * 0.8 || fraction > m->moved_fraction * 1.2) {
            fail_msg("\"%s\" -> \"%s\": moved %.4f, expected about %.4f", m->before, m->after,
                     fraction, m->moved_fraction);
        }
        ring_free(old_ring);
        ring_free(new_ring);
    }
}

/* ---- ring_diff ---- */

static const ring_range *find_range(const ring_range *ranges, size_t count, uint32_t h)
{
    size_t lo = 0, hi = count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (ranges[mid].end < h) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo < count && ranges[lo].start <= h ? &ranges[lo] : NULL;
}

/* h is in a range iff its owner's name changes, and then from/to are the
 * old and new owners. */
static void check_diff_at(const ring *old_ring, const ring *new_ring, const ring_range *ranges,
                          size_t count, uint32_t h)
{
    uint32_t from = ring_lookup(old_ring, h);
    uint32_t to = ring_lookup(new_ring, h);
    int changed = strcmp(ring_shard_name(old_ring, from), ring_shard_name(new_ring, to)) != 0;
    const ring_range *range = find_range(ranges, count, h);
    if (changed != (range != NULL)) {
        fail_msg("hash %u: owner %s -> %s, but %s", h, ring_shard_name(old_ring, from),
                 ring_shard_name(new_ring, to), range ? "in a diff range" : "in no diff range");
    }
    if (range != NULL) {
        assert_int_equal(range->from, from);
        assert_int_equal(range->to, to);
    }
}

static const struct {
    const char *before;
    const char *after;
    ring_mode old_mode;
    ring_mode new_mode;
} diff_cases[] = {
    {"s1 s2 s3 s4 s5 s6 s7 s8 s9 s10", "s1 s2 s3 s4 s5 s6 s7 s8 s9 s10 s11", RING_DEFAULT,
     RING_DEFAULT},
    {"a b c d", "a c d", RING_DEFAULT, RING_DEFAULT},
    {"a b c", "a b*2 c", RING_DEFAULT, RING_DEFAULT},
    {"a b c", "c x b", RING_DEFAULT, RING_DEFAULT}, /* reordered, one replaced */
    {"a b c", "x y", RING_DEFAULT, RING_DEFAULT},   /* nothing in common */
    {"a b", "a b", RING_DEFAULT, RING_DEFAULT},     /* identical */
    {"a", "a b", RING_TWEMPROXY, RING_TWEMPROXY},
    {"a b c", "a b c d", RING_TWEMPROXY, RING_TWEMPROXY},
    {"a b c", "a b c", RING_TWEMPROXY, RING_DEFAULT}, /* compat mode switched off */
};

static void test_ring_diff(void **state)
{
    (void)state;
    for (size_t c = 0; c < ARRAY_LEN(diff_cases); c++) {
        shard_list before, after;
        parse_shards(&before, diff_cases[c].before);
        parse_shards(&after, diff_cases[c].after);
        ring *old_ring = build(&before, diff_cases[c].old_mode);
        ring *new_ring = build(&after, diff_cases[c].new_mode);
        ring_range *ranges = NULL;
        size_t count = 0;
        assert_int_equal(ring_diff(old_ring, new_ring, &ranges, &count), 0);
        assert_true((count == 0) == (ranges == NULL));

        /* Sorted, disjoint, and merged: neighbours that touch differ in
         * from or to. */
        uint64_t covered = 0;
        for (size_t i = 0; i < count; i++) {
            assert_true(ranges[i].start <= ranges[i].end);
            covered += (uint64_t)ranges[i].end - ranges[i].start + 1;
            if (i > 0) {
                assert_true(ranges[i - 1].end < ranges[i].start);
                if (ranges[i - 1].end + 1 == ranges[i].start) {
                    assert_true(ranges[i - 1].from != ranges[i].from ||
                                ranges[i - 1].to != ranges[i].to);
                }
            }
        }

        /* Both ends of every range and the hashes just outside them, then
         * random hashes. */
        for (size_t i = 0; i < count; i++) {
            check_diff_at(old_ring, new_ring, ranges, count, ranges[i].start);
            check_diff_at(old_ring, new_ring, ranges, count, ranges[i].end);
            check_diff_at(old_ring, new_ring, ranges, count, ranges[i].start - 1);
            check_diff_at(old_ring, new_ring, ranges, count, ranges[i].end + 1);
        }
        rng_state = 1000 + c;
        size_t changed = 0;
        for (size_t i = 0; i < SAMPLE_KEYS; i++) {
            uint32_t h = rng_next();
            check_diff_at(old_ring, new_ring, ranges, count, h);
            changed += find_range(ranges, count, h) != NULL;
        }
        /* The ranges' measure matches the sampled moved fraction (4 sigma). */
        double measured = (double)changed / SAMPLE_KEYS;
        double exact = (double)covered / 4294967296.0;
        assert_true(measured > exact - 0.005 && measured < exact + 0.005);

        free(ranges);
        ring_free(old_ring);
        ring_free(new_ring);
    }
}

/* Identical rings differ nowhere; disjoint ones everywhere. */
static void test_ring_diff_extremes(void **state)
{
    (void)state;
    shard_list a, b;
    parse_shards(&a, "p q r");
    parse_shards(&b, "x");
    ring *ra = build(&a, RING_DEFAULT);
    ring *ra2 = build(&a, RING_DEFAULT);
    ring *rb = build(&b, RING_DEFAULT);
    static ring_range sentinel;
    ring_range *ranges = &sentinel;
    size_t count = 99;
    assert_int_equal(ring_diff(ra, ra2, &ranges, &count), 0);
    assert_int_equal(count, 0);
    assert_null(ranges);

    /* To a single shard: one range per run of equal old owner, covering all
     * of 0..2^32-1, every one going to x. */
    assert_int_equal(ring_diff(ra, rb, &ranges, &count), 0);
    assert_true(count > 0);
    assert_int_equal(ranges[0].start, 0);
    assert_int_equal(ranges[count - 1].end, UINT32_MAX);
    for (size_t i = 0; i < count; i++) {
        assert_int_equal(ranges[i].to, 0);
        if (i > 0) {
            assert_int_equal(ranges[i - 1].end + 1, ranges[i].start);
        }
    }
    free(ranges);
    ring_free(ra);
    ring_free(ra2);
    ring_free(rb);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_build_errors),
        cmocka_unit_test(test_accessors),
        cmocka_unit_test(test_twemproxy_point_counts),
        cmocka_unit_test(test_twemproxy_equal_shards),
        cmocka_unit_test(test_twemproxy_matches_model),
        cmocka_unit_test(test_many_shards_match_model),
        cmocka_unit_test(test_twemproxy_tie_goes_to_name_first),
        cmocka_unit_test(test_placement_ignores_list_order),
        cmocka_unit_test(test_default_wraps_around),
        cmocka_unit_test(test_default_balance),
        cmocka_unit_test(test_default_weights),
        cmocka_unit_test(test_default_monotonic),
        cmocka_unit_test(test_ring_diff),
        cmocka_unit_test(test_ring_diff_extremes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
