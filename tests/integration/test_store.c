/* The internal-state store (proxy/store.c) in-process against real
 * redis-servers: records land in store_db and nowhere else, compare-and-set,
 * EVALSHA falling back to EVAL when a shard lost its scripts, and the
 * marker: a shard whose store was wiped, or that restarted empty, is noticed
 * and only counts again once restored. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <event2/event.h>

#include "config/config.h"
#include "fixture.h"
#include "proxy/server.h"
#include "proxy/store.h"

/* The process-wide struct the store reaches the event loop through (the
 * daemon defines it in main.c). */
server srv;

#define WAIT_MS 5000

static harness_proc shards[2];
static config *cfg;
static int restores; /* restore hook calls */

/* One call's reply, kept for the test to look at. */
typedef struct outcome {
    int done;
    int type; /* REDIS_REPLY_*, 0 when the call failed */
    long long integer;
    char str[128];
} outcome;

static void on_reply(void *privdata, size_t shard, const redisReply *r)
{
    (void)shard;
    outcome *o = privdata;
    o->done = 1;
    if (!r)
        return;
    o->type = r->type;
    o->integer = r->integer;
    if (r->str)
        snprintf(o->str, sizeof(o->str), "%.*s", (int)r->len, r->str);
}

static void restore_hook(size_t shard)
{
    restores++;
    store_restored(shard, 1); /* nothing of the test's to copy back */
}

/* Runs the loop until *flag or the state wanted (bounded). */
static void run_until_done(outcome *o)
{
    long long deadline = fixture_now_ms() + WAIT_MS * harness_timeout_scale();
    while (!o->done) {
        assert_true(fixture_now_ms() < deadline);
        event_base_loop(srv.base, EVLOOP_ONCE);
    }
}

static void run_until_state(size_t shard, store_state want)
{
    long long deadline = fixture_now_ms() + WAIT_MS * harness_timeout_scale();
    while (store_shard_state(shard) != want) {
        if (fixture_now_ms() > deadline)
            fail_msg("shard %zu is %s, not %s", shard, store_state_name(store_shard_state(shard)),
                     store_state_name(want));
        event_base_loop(srv.base, EVLOOP_ONCE);
    }
}

static outcome cas(size_t shard, const char *key, const char *expected, const char *value)
{
    outcome o = {0};
    assert_int_equal(store_cas(shard, key, expected, value, on_reply, &o), 0);
    run_until_done(&o);
    return o;
}

static int setup(void **state)
{
    (void)state;
    for (int i = 0; i < 2; i++)
        assert_int_equal(harness_redis_start(&shards[i]), 0);
    char ini[512], err[600];
    snprintf(ini, sizeof(ini),
             "[proxy]\nstore_db = 15\nreconnect_min = 20\nreconnect_max = 100\n"
             "[shards]\ns1 = 127.0.0.1:%d\ns2 = 127.0.0.1:%d\n",
             shards[0].port, shards[1].port);
    assert_int_equal(config_load_string(ini, "store.ini", &cfg, err, sizeof(err)), 0);
    srv.base = event_base_new();
    assert_non_null(srv.base);
    store_set_restore_hook(restore_hook);
    assert_int_equal(store_start(cfg, err, sizeof(err)), 0);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    store_shutdown();
    event_base_free(srv.base);
    config_free(cfg);
    for (int i = 0; i < 2; i++)
        if (shards[i].pid)
            harness_proc_stop(&shards[i], SIGTERM);
    return 0;
}

/* Fresh shards have no marker: each is "restored" (the hook) and marked. */
static void test_new_shards_get_a_marker_in_store_db_only(void **state)
{
    (void)state;
    run_until_state(0, STORE_READY);
    run_until_state(1, STORE_READY);
    assert_int_equal(restores, 2);
    assert_int_equal(store_count(), 2);
    assert_string_equal(store_name(1), "s2");
    assert_int_equal(store_index("s2"), 1);
    assert_int_equal(store_index("s9"), -1);
    redisContext *d = harness_connect(shards[0].port);
    fixture_expect_int(fixture_cmd(d, "DBSIZE"), 0);
    fixture_expect_status(fixture_cmd(d, "SELECT 15"), "OK");
    fixture_expect_int(fixture_cmd(d, "EXISTS ringproxy:store:marker"), 1);
    redisFree(d);
}

static void test_compare_and_set(void **state)
{
    (void)state;
    outcome o = cas(0, "epoch", NULL, "1"); /* absent: set */
    assert_int_equal(o.type, REDIS_REPLY_INTEGER);
    assert_int_equal(o.integer, 1);
    assert_int_equal(cas(0, "epoch", NULL, "9").integer, 0); /* exists now */
    assert_int_equal(cas(0, "epoch", "2", "3").integer, 0);  /* not 2 */
    assert_int_equal(cas(0, "epoch", "1", "2").integer, 1);
    /* each shard has its own records */
    assert_int_equal(cas(1, "epoch", NULL, "7").integer, 1);

    const char *argv[2] = {"GET", "epoch"};
    size_t lens[2] = {3, 5};
    outcome get = {0};
    assert_int_equal(store_call(0, on_reply, &get, 2, argv, lens), 0);
    run_until_done(&get);
    assert_string_equal(get.str, "2");
    redisContext *d = harness_connect(shards[0].port);
    fixture_expect_nil(fixture_cmd(d, "GET epoch")); /* not in database 0 */
    redisFree(d);
}

/* A shard that lost its scripts (restart, SCRIPT FLUSH) answers NOSCRIPT
 * to EVALSHA: the same call goes again as EVAL. */
static void test_noscript_falls_back_to_eval(void **state)
{
    (void)state;
    redisContext *d = harness_connect(shards[0].port);
    fixture_expect_status(fixture_cmd(d, "SCRIPT FLUSH"), "OK");
    redisFree(d);
    assert_int_equal(cas(0, "epoch", "2", "4").integer, 1);
    assert_int_equal(cas(0, "epoch", "4", "5").integer, 1);
}

/* A store wiped under a live connection is noticed on the next script
 * (NOMARKER), and the shard counts again once restored. */
static void test_wiped_store_is_noticed_and_restored(void **state)
{
    (void)state;
    int before = restores;
    redisContext *d = harness_connect(shards[1].port);
    fixture_expect_status(fixture_cmd(d, "FLUSHALL"), "OK");
    redisFree(d);
    outcome o = cas(1, "epoch", "7", "8");
    assert_int_equal(o.type, REDIS_REPLY_ERROR);
    assert_true(strncmp(o.str, "NOMARKER", 8) == 0);
    assert_int_not_equal(store_shard_state(1), STORE_READY);
    run_until_state(1, STORE_READY);
    assert_int_equal(restores, before + 1);
}

/* A shard restarted empty: down while it is gone, restored on return. */
static void test_restarted_shard_is_restored_before_ready(void **state)
{
    (void)state;
    int before = restores;
    harness_proc_stop(&shards[0], SIGKILL);
    run_until_state(0, STORE_DOWN);
    outcome o = {0};
    const char *argv[1] = {"PING"};
    size_t lens[1] = {4};
    assert_int_equal(store_call(0, on_reply, &o, 1, argv, lens), -1); /* refused at once */
    assert_int_equal(harness_redis_restart(&shards[0]), 0);
    run_until_state(0, STORE_READY);
    assert_int_equal(restores, before + 1);
    assert_int_equal(cas(0, "epoch", NULL, "1").integer, 1); /* empty again */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_shards_get_a_marker_in_store_db_only),
        cmocka_unit_test(test_compare_and_set),
        cmocka_unit_test(test_noscript_falls_back_to_eval),
        cmocka_unit_test(test_wiped_store_is_noticed_and_restored),
        cmocka_unit_test(test_restarted_shard_is_restored_before_ready),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
