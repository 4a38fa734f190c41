/* Passwords: clients must AUTH when requirepass is set (constant-time
 * compare, every command refused before it), and the proxy authenticates to
 * shards that require a password, also for MIGRATE while rebalancing and on
 * the connections it reserves for transactions, blocking commands and
 * subscriptions. */
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

#include "fixture.h"
#include "harness.h"

#define NSHARDS   3
#define CLIENT_PW "client-secret"
#define SHARD_PW  "shard-secret"

static harness_proc shards[NSHARDS + 1];
static harness_proc proxy;

static redisContext *authed(void)
{
    redisContext *c = harness_connect(proxy.port);
    assert_non_null(c);
    fixture_expect_status(fixture_cmd(c, "AUTH %s", CLIENT_PW), "OK");
    return c;
}

static int setup(void **state)
{
    (void)state;
    for (int i = 0; i < NSHARDS + 1; i++) {
        if (harness_redis_start(&shards[i]) < 0)
            return -1;
        redisContext *c = harness_connect(shards[i].port);
        if (!c)
            return -1;
        redisReply *r = redisCommand(c, "CONFIG SET requirepass %s", SHARD_PW);
        int ok = r && r->type == REDIS_REPLY_STATUS;
        freeReplyObject(r);
        redisFree(c);
        if (!ok)
            return -1;
    }
    char *ini = harness_ini(shards, NSHARDS,
                            "requirepass = " CLIENT_PW "\nbackend_password = " SHARD_PW "\n");
    int rc = harness_ringproxy_start(&proxy, ini);
    free(ini);
    return rc;
}

static int teardown(void **state)
{
    (void)state;
    harness_proc_stop(&proxy, SIGTERM);
    for (int i = 0; i < NSHARDS + 1; i++)
        harness_proc_stop(&shards[i], SIGTERM);
    return 0;
}

static void test_commands_before_auth_are_refused(void **state)
{
    (void)state;
    redisContext *c = harness_connect(proxy.port);
    assert_non_null(c);
    fixture_expect_error(fixture_cmd(c, "SET k v"), "NOAUTH Authentication required");
    fixture_expect_error(fixture_cmd(c, "PING"), "NOAUTH");
    fixture_expect_error(fixture_cmd(c, "INFO"), "NOAUTH");
    fixture_expect_error(fixture_cmd(c, "PROXY SHARDS"), "NOAUTH");
    fixture_expect_error(fixture_cmd(c, "AUTH wrong"), "WRONGPASS");
    fixture_expect_error(fixture_cmd(c, "AUTH " CLIENT_PW "x"), "WRONGPASS");
    fixture_expect_error(fixture_cmd(c, "AUTH someone %s", CLIENT_PW), "WRONGPASS");
    fixture_expect_error(fixture_cmd(c, "GET k"), "NOAUTH");
    fixture_expect_status(fixture_cmd(c, "AUTH default %s", CLIENT_PW), "OK");
    fixture_expect_status(fixture_cmd(c, "SET k v"), "OK");
    fixture_expect_str(fixture_cmd(c, "GET k"), "v");
    redisFree(c);
}

static void test_hello_auth(void **state)
{
    (void)state;
    redisContext *c = harness_connect(proxy.port);
    assert_non_null(c);
    fixture_expect_error(fixture_cmd(c, "HELLO 2"), "NOAUTH");
    fixture_expect_error(fixture_cmd(c, "HELLO 2 AUTH default nope"), "WRONGPASS");
    redisReply *r = fixture_cmd(c, "HELLO 2 AUTH default %s", CLIENT_PW);
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    freeReplyObject(r);
    fixture_expect_status(fixture_cmd(c, "SET hello-key 1"), "OK");
    redisFree(c);
}

/* Every shard got its keys: the proxy's connections authenticated. */
static void test_backend_password_used(void **state)
{
    (void)state;
    redisContext *c = authed();
    for (int i = 0; i < 300; i++)
        fixture_expect_status(fixture_cmd(c, "SET bk:%d %d", i, i), "OK");
    redisReply *r = fixture_cmd(c, "MGET bk:0 bk:1 bk:2 bk:299");
    fixture_expect_array(r, 4);
    assert_string_equal(r->element[3]->str, "299");
    freeReplyObject(r);
    for (int i = 0; i < NSHARDS; i++) {
        redisContext *s = harness_connect(shards[i].port);
        assert_non_null(s);
        fixture_expect_status(fixture_cmd(s, "AUTH %s", SHARD_PW), "OK");
        r = fixture_cmd(s, "DBSIZE");
        assert_true(r->type == REDIS_REPLY_INTEGER && r->integer > 0);
        freeReplyObject(r);
        redisFree(s);
    }
    /* The password is never shown. */
    r = fixture_cmd(c, "INFO");
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    assert_null(strstr(r->str, CLIENT_PW));
    assert_null(strstr(r->str, SHARD_PW));
    freeReplyObject(r);
    redisFree(c);
}

/* Reserved connections AUTH too: a transaction, a blocking command and a
 * subscription work, and RESET (undone on the shard without RESET) leaves
 * the reserved connection usable for the next transaction. */
static void test_reserved_connections_authenticate(void **state)
{
    (void)state;
    redisContext *c = authed();
    redisContext *s = authed();
    fixture_expect_status(fixture_cmd(c, "WATCH rsv:{a}"), "OK");
    fixture_expect_status(fixture_cmd(c, "RESET"), "RESET");
    fixture_expect_status(fixture_cmd(c, "AUTH %s", CLIENT_PW), "OK");
    fixture_expect_status(fixture_cmd(c, "MULTI"), "OK");
    fixture_expect_status(fixture_cmd(c, "SET rsv:{a} 1"), "QUEUED");
    fixture_expect_status(fixture_cmd(c, "INCR rsv:{a}"), "QUEUED");
    redisReply *r = fixture_cmd(c, "EXEC");
    fixture_expect_array(r, 2);
    assert_int_equal(r->element[1]->integer, 2);
    freeReplyObject(r);
    fixture_expect_int(fixture_cmd(c, "RPUSH rsv:{q} x"), 1);
    r = fixture_cmd(c, "BLPOP rsv:{q} 1");
    fixture_expect_array(r, 2);
    freeReplyObject(r);
    r = fixture_cmd(s, "SUBSCRIBE rsv:ch");
    fixture_expect_array(r, 3);
    freeReplyObject(r);
    fixture_expect_int(fixture_cmd(c, "PUBLISH rsv:ch hi"), 1);
    r = fixture_next_reply(s);
    fixture_expect_array(r, 3);
    assert_string_equal(r->element[2]->str, "hi");
    freeReplyObject(r);
    redisFree(s);
    redisFree(c);
}

/* Adding a shard moves keys with MIGRATE ... AUTH between password-protected
 * shards; everything stays readable. */
static void test_rebalance_with_passwords(void **state)
{
    (void)state;
    redisContext *c = authed();
    for (int i = 0; i < 2000; i++)
        fixture_expect_status(fixture_cmd(c, "SET mv:%d %d", i, i), "OK");
    char *ini = harness_ini(shards, NSHARDS + 1,
                            "requirepass = " CLIENT_PW "\nbackend_password = " SHARD_PW "\n");
    /* harness_ini leaves %PORT% for the listen port: put the proxy's in. */
    char path[400], port[16];
    snprintf(path, sizeof(path), "%s/proxy.ini", proxy.dir);
    snprintf(port, sizeof(port), "%d", proxy.port);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    for (const char *p = ini; *p; p++) {
        if (strncmp(p, "%PORT%", 6) == 0) {
            fputs(port, f);
            p += 5;
        } else {
            fputc(*p, f);
        }
    }
    fclose(f);
    free(ini);
    fixture_expect_status(fixture_cmd(c, "PROXY RELOAD"), "OK");
    int idle = 0;
    long long deadline = fixture_now_ms() + fixture_bound_ms(10000);
    while (!idle && fixture_now_ms() < deadline) {
        redisReply *r = fixture_cmd(c, "INFO rebalance");
        idle = strstr(r->str, "rebalance_state:idle") && strstr(r->str, "rebalance_completed:1");
        freeReplyObject(r);
        if (!idle)
            fixture_sleep_ms(50);
    }
    assert_true(idle);
    for (int i = 0; i < 2000; i++) {
        redisReply *r = fixture_cmd(c, "GET mv:%d", i);
        assert_int_equal(r->type, REDIS_REPLY_STRING);
        assert_int_equal(atoi(r->str), i);
        freeReplyObject(r);
    }
    redisContext *s = harness_connect(shards[NSHARDS].port);
    assert_non_null(s);
    fixture_expect_status(fixture_cmd(s, "AUTH %s", SHARD_PW), "OK");
    redisReply *r = fixture_cmd(s, "DBSIZE");
    assert_true(r->type == REDIS_REPLY_INTEGER && r->integer > 100);
    freeReplyObject(r);
    redisFree(s);
    redisFree(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_commands_before_auth_are_refused),
        cmocka_unit_test(test_hello_auth),
        cmocka_unit_test(test_backend_password_used),
        cmocka_unit_test(test_reserved_connections_authenticate),
        cmocka_unit_test(test_rebalance_with_passwords),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
