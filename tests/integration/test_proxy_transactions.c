/* MULTI/EXEC/DISCARD/WATCH/UNWATCH through the proxy, across four shards:
 * a transaction runs on one shard over a connection reserved for the
 * client, keyless commands join the shard the first key picks, keys on
 * another shard get -CROSSSLOT and abort the transaction as Redis aborts
 * one (-EXECABORT), WATCH conflicts give a nil EXEC, and the reserved
 * connection goes when the client does. A change of the ring ends what is
 * pinned to a shard: transactions, blocked commands, subscriptions. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <cmocka.h>

#include "fixture.h"

#define PIPELINED_TRANSACTIONS 50

static int group_setup(void **state)
{
    fixture *f = fixture_start(NULL);
    *state = f;
    return f != NULL ? 0 : -1;
}

static int group_teardown(void **state)
{
    return fixture_stop(*state);
}

/* First, while no other test left a lingering connection: WATCH reserves
 * one, and the client leaving closes it. */
static void test_client_leaving_closes_its_reserved_connection(void **state)
{
    fixture *f = *state;
    redisContext *admin = fixture_client(f);
    fixture_wait_reserved(admin, 0);
    redisContext *c = fixture_client(f);
    fixture_expect_status(fixture_cmd(c, "WATCH leave:{a}"), "OK");
    fixture_expect_status(fixture_cmd(c, "MULTI"), "OK");
    fixture_expect_status(fixture_cmd(c, "SET leave:{a} 1"), "QUEUED");
    assert_int_equal(fixture_reserved_connections(admin), 1);
    fixture_close(f, c); /* mid-transaction */
    fixture_wait_reserved(admin, 0);
    fixture_expect_nil(fixture_cmd(admin, "GET leave:{a}"));
    fixture_close(f, admin);
}

static void test_transaction_runs_on_the_keys_shard(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);
    fixture_expect_status(fixture_cmd(c, "MULTI"), "OK");
    fixture_expect_status(fixture_cmd(c, "SET tx:{u1}:a 1"), "QUEUED");
    fixture_expect_status(fixture_cmd(c, "INCR tx:{u1}:b"), "QUEUED");
    fixture_expect_status(fixture_cmd(c, "GET tx:{u1}:a"), "QUEUED");
    redisReply *r = fixture_cmd(c, "EXEC");
    fixture_expect_array(r, 3);
    assert_string_equal(r->element[0]->str, "OK");
    assert_int_equal(r->element[1]->integer, 1);
    assert_string_equal(r->element[2]->str, "1");
    freeReplyObject(r);
    int owner = fixture_owner(c, "tx:{u1}:a", 9);
    assert_int_equal(fixture_holders(f, "tx:{u1}:a", 9), 1u << owner);
    assert_int_equal(fixture_holders(f, "tx:{u1}:b", 9), 1u << owner);
    /* After EXEC the client's requests flow as before. */
    fixture_expect_str(fixture_cmd(c, "GET tx:{u1}:a"), "1");
    fixture_close(f, c);
}

static void test_keyless_commands_join_the_transactions_shard(void **state)
{
    redisContext *c = fixture_client(*state);
    fixture_expect_status(fixture_cmd(c, "MULTI"), "OK");
    fixture_expect_status(fixture_cmd(c, "PING"), "QUEUED");
    fixture_expect_status(fixture_cmd(c, "ECHO hi"), "QUEUED");
    fixture_expect_status(fixture_cmd(c, "SET tx:{u2} v"), "QUEUED");
    fixture_expect_status(fixture_cmd(c, "PING after"), "QUEUED");
    redisReply *r = fixture_cmd(c, "EXEC");
    fixture_expect_array(r, 4);
    assert_string_equal(r->element[0]->str, "PONG");
    assert_string_equal(r->element[1]->str, "hi");
    assert_string_equal(r->element[2]->str, "OK");
    assert_string_equal(r->element[3]->str, "after");
    freeReplyObject(r);

    /* Only keyless commands: any shard runs them. Nothing: empty. */
    fixture_expect_status(fixture_cmd(c, "MULTI"), "OK");
    fixture_expect_status(fixture_cmd(c, "PING"), "QUEUED");
    r = fixture_cmd(c, "EXEC");
    fixture_expect_array(r, 1);
    assert_string_equal(r->element[0]->str, "PONG");
    freeReplyObject(r);
    fixture_expect_status(fixture_cmd(c, "MULTI"), "OK");
    r = fixture_cmd(c, "EXEC");
    fixture_expect_array(r, 0);
    freeReplyObject(r);
    fixture_close(*state, c);
}

static void test_keys_on_another_shard_abort_the_transaction(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);
    char a[64], b[64];
    fixture_key_on_shard(c, "cross", 0, a, sizeof(a));
    fixture_key_on_shard(c, "cross", 1, b, sizeof(b));
    fixture_expect_status(fixture_cmd(c, "MULTI"), "OK");
    fixture_expect_status(fixture_cmd(c, "SET %s 1", a), "QUEUED");
    fixture_expect_error(fixture_cmd(c, "SET %s 1", b), "CROSSSLOT");
    fixture_expect_status(fixture_cmd(c, "SET %s 2", a), "QUEUED");
    fixture_expect_error(fixture_cmd(c, "EXEC"),
                         "EXECABORT Transaction discarded because of previous errors");
    fixture_expect_nil(fixture_cmd(c, "GET %s", a));
    fixture_expect_nil(fixture_cmd(c, "GET %s", b));
    /* A multi-key command split in normal use cannot be split in a
     * transaction. */
    fixture_expect_status(fixture_cmd(c, "MULTI"), "OK");
    fixture_expect_error(fixture_cmd(c, "MGET %s %s", a, b), "CROSSSLOT");
    fixture_expect_error(fixture_cmd(c, "EXEC"), "EXECABORT");
    /* The connection goes on normally. */
    fixture_expect_status(fixture_cmd(c, "SET %s ok", b), "OK");
    fixture_close(f, c);
}

static void test_errors_while_queuing_abort_as_redis_does(void **state)
{
    redisContext *c = fixture_client(*state);
    static const char *aborting[] = {"NOSUCHCOMMAND x", "GET",    "KEYS *",
                                     "MONITOR",         "DBSIZE", "SCAN 0",
                                     "SUBSCRIBE ch",    "INFO",   "CLIENT LIST"};
    for (size_t i = 0; i < sizeof(aborting) / sizeof(aborting[0]); i++) {
        fixture_expect_status(fixture_cmd(c, "MULTI"), "OK");
        fixture_expect_status(fixture_cmd(c, "SET tx:{u3} v"), "QUEUED");
        fixture_expect_error(fixture_cmd(c, aborting[i]), "ERR");
        fixture_expect_error(fixture_cmd(c, "EXEC"), "EXECABORT");
        fixture_expect_nil(fixture_cmd(c, "GET tx:{u3}"));
    }
    /* Not aborting, as in Redis: a nested MULTI, WATCH inside MULTI. */
    fixture_expect_status(fixture_cmd(c, "MULTI"), "OK");
    fixture_expect_error(fixture_cmd(c, "MULTI"), "ERR MULTI calls can not be nested");
    fixture_expect_error(fixture_cmd(c, "WATCH tx:{u3}"), "ERR WATCH inside MULTI is not allowed");
    fixture_expect_status(fixture_cmd(c, "SET tx:{u3} v"), "QUEUED");
    redisReply *r = fixture_cmd(c, "EXEC");
    fixture_expect_array(r, 1);
    freeReplyObject(r);
    fixture_expect_str(fixture_cmd(c, "GET tx:{u3}"), "v");
    fixture_close(*state, c);
}

static void test_discard_and_misplaced_exec(void **state)
{
    redisContext *c = fixture_client(*state);
    fixture_expect_error(fixture_cmd(c, "EXEC"), "ERR EXEC without MULTI");
    fixture_expect_error(fixture_cmd(c, "DISCARD"), "ERR DISCARD without MULTI");
    fixture_expect_status(fixture_cmd(c, "MULTI"), "OK");
    fixture_expect_status(fixture_cmd(c, "SET tx:{u4} v"), "QUEUED");
    fixture_expect_status(fixture_cmd(c, "DISCARD"), "OK");
    fixture_expect_nil(fixture_cmd(c, "GET tx:{u4}"));
    fixture_expect_status(fixture_cmd(c, "MULTI"), "OK");
    fixture_expect_status(fixture_cmd(c, "PING"), "QUEUED");
    fixture_expect_status(fixture_cmd(c, "DISCARD"), "OK");
    fixture_expect_error(fixture_cmd(c, "EXEC"), "ERR EXEC without MULTI");
    fixture_close(*state, c);
}

static void test_watch_conflict_gives_nil_exec(void **state)
{
    fixture *f = *state;
    redisContext *a = fixture_client(f);
    redisContext *b = fixture_client(f);
    fixture_expect_status(fixture_cmd(a, "SET watch:{w1} 0"), "OK");
    fixture_expect_status(fixture_cmd(a, "WATCH watch:{w1}"), "OK");
    fixture_expect_str(fixture_cmd(a, "GET watch:{w1}"), "0");
    fixture_expect_status(fixture_cmd(b, "SET watch:{w1} changed"), "OK");
    fixture_expect_status(fixture_cmd(a, "MULTI"), "OK");
    fixture_expect_status(fixture_cmd(a, "SET watch:{w1} mine"), "QUEUED");
    redisReply *r = fixture_cmd(a, "EXEC");
    assert_int_equal(r->type, REDIS_REPLY_NIL);
    freeReplyObject(r);
    fixture_expect_str(fixture_cmd(a, "GET watch:{w1}"), "changed");

    /* No conflict: it commits. */
    fixture_expect_status(fixture_cmd(a, "WATCH watch:{w1}"), "OK");
    fixture_expect_status(fixture_cmd(a, "MULTI"), "OK");
    fixture_expect_status(fixture_cmd(a, "SET watch:{w1} mine"), "QUEUED");
    r = fixture_cmd(a, "EXEC");
    fixture_expect_array(r, 1);
    freeReplyObject(r);
    fixture_expect_str(fixture_cmd(b, "GET watch:{w1}"), "mine");

    /* The client's own write between WATCH and EXEC counts too, as in
     * Redis: it travels on the reserved connection, in order. */
    fixture_expect_status(fixture_cmd(a, "WATCH watch:{w1}"), "OK");
    fixture_expect_status(fixture_cmd(a, "SET watch:{w1} self"), "OK");
    fixture_expect_status(fixture_cmd(a, "MULTI"), "OK");
    fixture_expect_status(fixture_cmd(a, "SET watch:{w1} lost"), "QUEUED");
    r = fixture_cmd(a, "EXEC");
    assert_int_equal(r->type, REDIS_REPLY_NIL);
    freeReplyObject(r);
    fixture_expect_str(fixture_cmd(a, "GET watch:{w1}"), "self");
    fixture_close(f, a);
    fixture_close(f, b);
}

static void test_unwatch_discard_and_reset_forget_the_watch(void **state)
{
    fixture *f = *state;
    redisContext *a = fixture_client(f);
    redisContext *b = fixture_client(f);
    const char *how[] = {"UNWATCH", "RESET", "DISCARD"};
    for (size_t i = 0; i < sizeof(how) / sizeof(how[0]); i++) {
        fixture_expect_status(fixture_cmd(a, "WATCH watch:{w2}"), "OK");
        if (strcmp(how[i], "DISCARD") == 0) {
            fixture_expect_status(fixture_cmd(a, "MULTI"), "OK");
            fixture_expect_status(fixture_cmd(a, "DISCARD"), "OK");
        } else {
            fixture_expect_status(fixture_cmd(a, how[i]), i == 1 ? "RESET" : "OK");
        }
        fixture_expect_status(fixture_cmd(b, "SET watch:{w2} other%d", (int)i), "OK");
        fixture_expect_status(fixture_cmd(a, "MULTI"), "OK");
        fixture_expect_status(fixture_cmd(a, "SET watch:{w2} mine%d", (int)i), "QUEUED");
        redisReply *r = fixture_cmd(a, "EXEC");
        fixture_expect_array(r, 1);
        freeReplyObject(r);
    }
    fixture_expect_status(fixture_cmd(a, "UNWATCH"), "OK"); /* nothing watched */
    fixture_close(f, a);
    fixture_close(f, b);
}

static void test_watch_keys_must_share_a_shard(void **state)
{
    redisContext *c = fixture_client(*state);
    char a[64], b[64];
    fixture_key_on_shard(c, "wx", 0, a, sizeof(a));
    fixture_key_on_shard(c, "wx", 1, b, sizeof(b));
    fixture_expect_error(fixture_cmd(c, "WATCH %s %s", a, b), "CROSSSLOT");
    fixture_expect_status(fixture_cmd(c, "WATCH %s", a), "OK");
    fixture_expect_error(fixture_cmd(c, "WATCH %s", b), "CROSSSLOT");
    /* Keys elsewhere still work outside the transaction. */
    fixture_expect_status(fixture_cmd(c, "SET %s v", b), "OK");
    fixture_expect_status(fixture_cmd(c, "MULTI"), "OK");
    fixture_expect_error(fixture_cmd(c, "SET %s v", b), "CROSSSLOT");
    fixture_expect_error(fixture_cmd(c, "EXEC"), "EXECABORT");
    fixture_close(*state, c);
}

/* Transactions pipelined among plain commands: every reply in order, and
 * each transaction sees the writes sent before it. */
static void test_pipelined_transactions_keep_order(void **state)
{
    redisContext *c = fixture_client(*state);
    for (int i = 0; i < PIPELINED_TRANSACTIONS; i++) {
        redisAppendCommand(c, "SET pipe:{p} %d", i * 10);
        redisAppendCommand(c, "MULTI");
        redisAppendCommand(c, "INCR pipe:{p}");
        redisAppendCommand(c, "GET pipe:{p}");
        redisAppendCommand(c, "EXEC");
        redisAppendCommand(c, "INCR pipe:{p}");
    }
    for (int i = 0; i < PIPELINED_TRANSACTIONS; i++) {
        fixture_expect_status(fixture_next_reply(c), "OK");
        fixture_expect_status(fixture_next_reply(c), "OK");
        fixture_expect_status(fixture_next_reply(c), "QUEUED");
        fixture_expect_status(fixture_next_reply(c), "QUEUED");
        redisReply *r = fixture_next_reply(c);
        fixture_expect_array(r, 2);
        assert_int_equal(r->element[0]->integer, i * 10 + 1);
        char want[32];
        snprintf(want, sizeof(want), "%d", i * 10 + 1);
        assert_string_equal(r->element[1]->str, want);
        freeReplyObject(r);
        fixture_expect_int(fixture_next_reply(c), i * 10 + 2);
    }
    fixture_close(*state, c);
}

/* ---- a ring change ---- */

static int ring_group_setup(void **state)
{
    /* s4 runs but is not in the ring yet. */
    fixture *f = fixture_start_some("watch_config = no\n", FIXTURE_SHARDS - 1);
    *state = f;
    return f != NULL ? 0 : -1;
}

/* Adds shard s4 to proxy.ini's [shards] (the last section) and reloads. */
static void add_last_shard(fixture *f, redisContext *c)
{
    char path[400];
    snprintf(path, sizeof(path), "%s/proxy.ini", f->proxy.dir);
    FILE *ini = fopen(path, "a");
    assert_non_null(ini);
    fprintf(ini, "s%d = 127.0.0.1:%d\n", FIXTURE_SHARDS, f->shards[FIXTURE_SHARDS - 1].port);
    fclose(ini);
    fixture_expect_status(fixture_cmd(c, "PROXY RELOAD"), "OK");
}

static void test_ring_change_ends_what_is_pinned_to_a_shard(void **state)
{
    fixture *f = *state;
    redisContext *admin = fixture_client(f);
    redisContext *w = fixture_client(f);
    redisContext *b = fixture_client(f);
    redisContext *s = fixture_client(f);
    struct timeval tv = {10 * harness_timeout_scale(), 0};
    assert_int_equal(redisSetTimeout(b, tv), REDIS_OK);
    fixture_expect_status(fixture_cmd(w, "WATCH ring:{a}"), "OK");
    fixture_expect_status(fixture_cmd(w, "MULTI"), "OK");
    fixture_expect_status(fixture_cmd(w, "SET ring:{a} 1"), "QUEUED");
    redisReply *r = fixture_cmd(s, "SUBSCRIBE ring:ch");
    fixture_expect_array(r, 3);
    freeReplyObject(r);
    redisAppendCommand(b, "BLPOP ring:{q} 0");
    int done = 0;
    while (!done) {
        assert_int_equal(redisBufferWrite(b, &done), REDIS_OK);
    }
    fixture_wait_reserved(admin, 3);

    add_last_shard(f, admin);
    /* The blocked command gets an error and may be sent again. */
    fixture_expect_error(fixture_next_reply(b), "ERR shard");
    /* The transaction does not commit on a shard that may have lost its
     * keys. */
    fixture_expect_error(fixture_cmd(w, "EXEC"), "EXECABORT");
    /* The subscriber is closed, to subscribe again on the new ring. */
    redisReply *gone = NULL;
    assert_int_not_equal(redisGetReply(s, (void **)&gone), REDIS_OK);
    fixture_wait_reserved(admin, 0);
    /* All of it works again on the new ring, once keys have moved (a
     * transaction on a moving key gets TRYAGAIN meanwhile). */
    long long deadline = fixture_now_ms() + 5000 * harness_timeout_scale();
    int idle = 0;
    while (!idle && fixture_now_ms() < deadline) {
        r = fixture_cmd(admin, "INFO rebalance");
        idle = strstr(r->str, "rebalance_state:idle") != NULL;
        freeReplyObject(r);
        if (!idle) {
            fixture_sleep_ms(20);
        }
    }
    assert_true(idle);
    fixture_expect_status(fixture_cmd(w, "WATCH ring:{a}"), "OK");
    fixture_expect_status(fixture_cmd(w, "MULTI"), "OK");
    fixture_expect_status(fixture_cmd(w, "SET ring:{a} 2"), "QUEUED");
    r = fixture_cmd(w, "EXEC");
    fixture_expect_array(r, 1);
    freeReplyObject(r);
    fixture_expect_nil(fixture_cmd(b, "BLPOP ring:{q} 0.1"));
    fixture_close(f, admin);
    fixture_close(f, w);
    fixture_close(f, b);
    fixture_close(f, s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_client_leaving_closes_its_reserved_connection),
        cmocka_unit_test(test_transaction_runs_on_the_keys_shard),
        cmocka_unit_test(test_keyless_commands_join_the_transactions_shard),
        cmocka_unit_test(test_keys_on_another_shard_abort_the_transaction),
        cmocka_unit_test(test_errors_while_queuing_abort_as_redis_does),
        cmocka_unit_test(test_discard_and_misplaced_exec),
        cmocka_unit_test(test_watch_conflict_gives_nil_exec),
        cmocka_unit_test(test_unwatch_discard_and_reset_forget_the_watch),
        cmocka_unit_test(test_watch_keys_must_share_a_shard),
        cmocka_unit_test(test_pipelined_transactions_keep_order),
    };
    const struct CMUnitTest ring_tests[] = {
        cmocka_unit_test(test_ring_change_ends_what_is_pinned_to_a_shard),
    };
    int failed = cmocka_run_group_tests_name("transactions", tests, group_setup, group_teardown);
    failed +=
        cmocka_run_group_tests_name("ring change", ring_tests, ring_group_setup, group_teardown);
    return failed;
}
