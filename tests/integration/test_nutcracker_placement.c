/* RING_TWEMPROXY against the real thing: nutcracker 0.5.0 (ketama, fnv1a_64,
 * hash_tag "{}") over four redis-servers writes a set of keys; each key must
 * then sit on the redis that ring_build(RING_TWEMPROXY) + hash_key() names,
 * and nowhere else. Several server lists cover named servers, weights, many
 * servers (the float32 point-count quirk), hash tags, binary keys, the
 * empty key and a point two servers share. Bounded by an alarm; every process is stopped by PID. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "ring/hash.h"
#include "ring/ring.h"

#define REDIS_COUNT 4
/* Keys of the usual shapes written per server list, then the special keys:
 * the empty key (nutcracker hashes it to 0) and a key whose fnv1a_64 is a
 * point that two shards share (see tests/unit/test_ring.c). */
#define KEY_COUNT  2000
#define TIE_KEY    "tie:kwpbbsn"
#define TOTAL_KEYS (KEY_COUNT + 2)
#define KEY_MAX    64
/* Misplaced keys described on failure. */
#define REPORT_MAX 10
/* Replies read back per pipeline flush. */
#define PIPELINE_BATCH 200
/* Whole-run bound: startup of 5 processes and 3 rounds of 2000 keys take
 * about a second; a hang ends the run (children die with it). */
#define TEST_DEADLINE_S 120
#define MAX_SERVERS     32

typedef struct fixture {
    harness_proc redis[REDIS_COUNT];
    harness_proc nutcracker;
} fixture;

static fixture fx;

/* One nutcracker server list: name, weight and which redis serves it. Names
 * may share a redis (nutcracker only rejects duplicate names). */
typedef struct server_list {
    size_t count;
    char names[MAX_SERVERS][32];
    uint32_t weights[MAX_SERVERS];
    int redis_of[MAX_SERVERS];
} server_list;

/* Key i of the test set, in several shapes: plain, hash-tagged (tags repeat,
 * so tagged keys share shards), empty tag, unclosed tag, UTF-8 and bytes
 * >= 0x80 (fnv1a_64 sign-extends them); then the special keys. */
static size_t key_at(size_t i, char *buf)
{
    size_t tag = i / 8 % 50;
    int len;
    switch (i >= KEY_COUNT ? 8 + (int)(i - KEY_COUNT) : (int)(i % 8)) {
    case 0:
        len = snprintf(buf, KEY_MAX, "key:%zu", i);
        break;
    case 1:
        len = snprintf(buf, KEY_MAX, "{user%zu}:profile:%zu", tag, i);
        break;
    case 2:
        len = snprintf(buf, KEY_MAX, "{user%zu}:friends:%zu", tag, i);
        break;
    case 3:
        len = snprintf(buf, KEY_MAX, "order:{%zu}:items:%zu", tag, i);
        break;
    case 4:
        len = snprintf(buf, KEY_MAX, "{}empty-tag:%zu", i);
        break;
    case 5:
        len = snprintf(buf, KEY_MAX, "unclosed{tag:%zu", i);
        break;
    case 6:
        len = snprintf(buf, KEY_MAX, "caf\xc3\xa9:%zu", i);
        break;
    case 7:
        len = snprintf(buf, KEY_MAX, "\xff\x80\xfe-bin:%zu", i);
        break;
    case 8:
        len = 0;
        buf[0] = '\0';
        break;
    default:
        len = snprintf(buf, KEY_MAX, "%s", TIE_KEY);
        break;
    }
    return (size_t)len;
}

static int group_setup(void **state)
{
    (void)state;
    alarm(TEST_DEADLINE_S);
    for (int i = 0; i < REDIS_COUNT; i++) {
        if (harness_redis_start(&fx.redis[i]) != 0) {
            fprintf(stderr, "cannot start redis-server %d\n", i);
            return -1;
        }
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    for (int i = 0; i < REDIS_COUNT; i++) {
        if (fx.redis[i].pid > 0) {
            harness_proc_stop(&fx.redis[i], SIGTERM);
        }
    }
    return 0;
}

/* After each list: nutcracker stopped, every redis emptied. */
static int case_teardown(void **state)
{
    (void)state;
    if (fx.nutcracker.pid > 0) {
        harness_proc_stop(&fx.nutcracker, SIGTERM);
    }
    for (int i = 0; i < REDIS_COUNT; i++) {
        redisContext *c = harness_connect(fx.redis[i].port);
        if (c == NULL) {
            return -1;
        }
        redisReply *r = redisCommand(c, "FLUSHALL");
        int ok = r != NULL && r->type == REDIS_REPLY_STATUS;
        freeReplyObject(r);
        redisFree(c);
        if (!ok) {
            return -1;
        }
    }
    return 0;
}

static void start_nutcracker(const server_list *list)
{
    char yaml[8192];
    size_t off = (size_t)snprintf(yaml, sizeof(yaml),
                                  "placement:\n"
                                  "  listen: 127.0.0.1:%%PORT%%\n"
                                  "  hash: fnv1a_64\n"
                                  "  distribution: ketama\n"
                                  "  hash_tag: \"{}\"\n"
                                  "  redis: true\n"
                                  "  auto_eject_hosts: false\n"
                                  "  timeout: 2000\n"
                                  "  servers:\n");
    for (size_t s = 0; s < list->count; s++) {
        off += (size_t)snprintf(yaml + off, sizeof(yaml) - off, "   - 127.0.0.1:%d:%u %s\n",
                                fx.redis[list->redis_of[s]].port, list->weights[s], list->names[s]);
        assert_true(off < sizeof(yaml));
    }
    if (harness_nutcracker_start(&fx.nutcracker, yaml) != 0) {
        fail_msg("cannot start nutcracker");
    }
}

/* Reads one pipelined reply, failing the test on a transport error. */
static redisReply *next_reply(redisContext *c)
{
    void *reply = NULL;
    if (redisGetReply(c, &reply) != REDIS_OK || reply == NULL) {
        fail_msg("redis: %s", c->errstr);
    }
    return reply;
}

static void write_keys_through_nutcracker(void)
{
    redisContext *c = harness_connect(fx.nutcracker.port);
    assert_non_null(c);
    char key[KEY_MAX];
    for (size_t first = 0; first < TOTAL_KEYS; first += PIPELINE_BATCH) {
        size_t last = first + PIPELINE_BATCH;
        last = last > TOTAL_KEYS ? TOTAL_KEYS : last;
        for (size_t i = first; i < last; i++) {
            size_t len = key_at(i, key);
            redisAppendCommand(c, "SET %b %b", key, len, key, len);
        }
        for (size_t i = first; i < last; i++) {
            redisReply *r = next_reply(c);
            if (r->type != REDIS_REPLY_STATUS || strcmp(r->str, "OK") != 0) {
                fail_msg("SET key %zu through nutcracker: %s", i,
                         r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
            }
            freeReplyObject(r);
        }
    }
    redisFree(c);
}

/* Which redis holds the key, -1 if none, -2 if several: for the message.
 * Only on connections with no pipelined replies pending. */
static int actual_redis(redisContext *const *conns, const char *key, size_t len)
{
    int found = -1;
    for (int i = 0; i < REDIS_COUNT; i++) {
        redisReply *r = redisCommand(conns[i], "EXISTS %b", key, len);
        assert_non_null(r);
        if (r->integer == 1) {
            found = found == -1 ? i : -2;
        }
        freeReplyObject(r);
    }
    return found;
}

static void check_placement(const server_list *list)
{
    ring_shard_spec specs[MAX_SERVERS];
    for (size_t s = 0; s < list->count; s++) {
        specs[s] = (ring_shard_spec){list->names[s], list->weights[s]};
    }
    char err[256];
    ring *r = ring_build(specs, list->count, RING_TWEMPROXY, err, sizeof(err));
    if (r == NULL) {
        fail_msg("ring_build: %s", err);
    }

    start_nutcracker(list);
    write_keys_through_nutcracker();

    redisContext *conns[REDIS_COUNT];
    for (int i = 0; i < REDIS_COUNT; i++) {
        conns[i] = harness_connect(fx.redis[i].port);
        assert_non_null(conns[i]);
    }

    /* Each key is on its predicted redis (GET returns the key itself)... */
    static int predicted[TOTAL_KEYS];
    char key[KEY_MAX];
    size_t per_redis[REDIS_COUNT] = {0};
    for (size_t i = 0; i < TOTAL_KEYS; i++) {
        size_t len = key_at(i, key);
        uint32_t shard = ring_lookup(r, hash_key(HASH_FNV1A_64, key, len, '{', '}'));
        predicted[i] = list->redis_of[shard];
        per_redis[predicted[i]]++;
        redisAppendCommand(conns[predicted[i]], "GET %b", key, len);
    }
    size_t misplaced = 0;
    size_t reported[REPORT_MAX];
    for (size_t i = 0; i < TOTAL_KEYS; i++) {
        size_t len = key_at(i, key);
        redisReply *reply = next_reply(conns[predicted[i]]);
        int ok = reply->type == REDIS_REPLY_STRING && reply->len == len &&
                 memcmp(reply->str, key, len) == 0;
        freeReplyObject(reply);
        if (!ok && misplaced < REPORT_MAX) {
            reported[misplaced] = i;
        }
        misplaced += !ok;
    }
    /* Explained once the pipelines are drained. */
    for (size_t k = 0; k < misplaced && k < REPORT_MAX; k++) {
        size_t len = key_at(reported[k], key);
        fprintf(stderr, "key %zu (%zu bytes): predicted on redis %d, found on %d\n", reported[k],
                len, predicted[reported[k]], actual_redis(conns, key, len));
    }
    /* ...and, as the key counts add up, on no other redis. */
    size_t total = 0;
    for (int i = 0; i < REDIS_COUNT; i++) {
        redisReply *reply = redisCommand(conns[i], "DBSIZE");
        assert_non_null(reply);
        assert_int_equal(reply->type, REDIS_REPLY_INTEGER);
        assert_int_equal((size_t)reply->integer, per_redis[i]);
        total += (size_t)reply->integer;
        freeReplyObject(reply);
        redisFree(conns[i]);
    }
    ring_free(r);
    assert_int_equal(misplaced, 0);
    assert_int_equal(total, TOTAL_KEYS);
}

/* Named servers, listed out of name order (nutcracker sorts "s9" before
 * "s10"), one with weight 2, one redis each: every redis gets keys. */
static void test_named_weighted_servers(void **state)
{
    (void)state;
    server_list list = {.count = 4,
                        .names = {"s10", "s9", "alpha", "b"},
                        .weights = {1, 1, 2, 1},
                        .redis_of = {0, 1, 2, 3}};
    check_placement(&list);
}

/* 25 equal servers: nutcracker's float32 arithmetic gives each 156 points,
 * not 160; a ring with 160 would misplace some keys. */
static void test_twenty_five_equal_servers(void **state)
{
    (void)state;
    server_list list = {.count = 25};
    for (size_t s = 0; s < list.count; s++) {
        snprintf(list.names[s], sizeof(list.names[s]), "node%zu", s + 1);
        list.weights[s] = 1;
        list.redis_of[s] = (int)(s % REDIS_COUNT);
    }
    check_placement(&list);
}

/* Uneven weights, several names per redis. */
static void test_uneven_weights(void **state)
{
    (void)state;
    server_list list = {.count = 6,
                        .names = {"cache-a", "cache-b", "cache-c", "cache-d", "cache-e", "x"},
                        .weights = {1, 2, 3, 4, 5, 9},
                        .redis_of = {0, 1, 2, 3, 0, 1}};
    check_placement(&list);
}

/* "t8975" and "t15161" share the point TIE_KEY hashes to: nutcracker gives
 * it to "t8975", the name it sorts first (shorter first), as the ring does. */
static void test_tied_point(void **state)
{
    (void)state;
    server_list list = {
        .count = 2, .names = {"t15161", "t8975"}, .weights = {1, 1}, .redis_of = {0, 1}};
    check_placement(&list);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_named_weighted_servers, case_teardown),
        cmocka_unit_test_teardown(test_twenty_five_equal_servers, case_teardown),
        cmocka_unit_test_teardown(test_uneven_weights, case_teardown),
        cmocka_unit_test_teardown(test_tied_point, case_teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
