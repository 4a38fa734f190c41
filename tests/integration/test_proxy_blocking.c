/* Blocking commands through the proxy, across four shards: each runs on a
 * connection reserved for its client, so the shared shard connections keep
 * serving other clients while it waits; its own timeout is honoured even
 * past request_timeout (300 ms here); the client's next requests wait for
 * its reply, as in Redis; a client that leaves while blocked leaves no
 * blocked connection behind. */
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

/* request_timeout well below the blocking timeouts used. */
#define REQUEST_TIMEOUT_MS 300
/* Requests to the blocked client's shard from another client meanwhile. */
#define TRAFFIC_REQUESTS 300
/* Bound on one of them: far above a loopback round trip, far below what
 * waiting behind the blocked command would take. */
#define TRAFFIC_MAX_MS  100
#define BLOCKED_CLIENTS 24

static int group_setup(void **state)
{
    fixture *f = fixture_start("request_timeout = 300\n");
    *state = f;
    return f != NULL ? 0 : -1;
}

static int group_teardown(void **state)
{
    return fixture_stop(*state);
}

/* A client whose replies may take a while. */
static redisContext *patient_client(fixture *f)
{
    redisContext *c = fixture_client(f);
    struct timeval tv = {10 * harness_timeout_scale(), 0};
    assert_int_equal(redisSetTimeout(c, tv), REDIS_OK);
    return c;
}

/* Sends what was appended, without waiting for replies. */
static void flush_out(redisContext *c)
{
    int done = 0;
    while (!done) {
        assert_int_equal(redisBufferWrite(c, &done), REDIS_OK);
    }
}

/* Blocked clients on a shard, from its INFO clients. */
static long long blocked_on(fixture *f, int shard)
{
    redisReply *r = fixture_cmd(fixture_shard(f, shard), "INFO clients");
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    const char *p = strstr(r->str, "blocked_clients:");
    assert_non_null(p);
    long long n = atoll(p + 16);
    freeReplyObject(r);
    return n;
}

/* Polls until `want` clients are blocked on the shard (bounded: 3 s, times
 * the harness timeout scale). */
static void wait_blocked(fixture *f, int shard, long long want)
{
    long long deadline = fixture_now_ms() + 3000 * harness_timeout_scale(), now;
    while ((now = blocked_on(f, shard)) != want && fixture_now_ms() < deadline) {
        fixture_sleep_ms(10);
    }
    assert_int_equal(now, want);
}

static void test_blpop_wakes_when_another_client_pushes(void **state)
{
    fixture *f = *state;
    redisContext *a = patient_client(f);
    redisContext *b = fixture_client(f);
    int shard = fixture_owner(b, "bq", 2);
    redisAppendCommand(a, "BLPOP bq 0");
    flush_out(a);
    wait_blocked(f, shard, 1);
    fixture_expect_int(fixture_cmd(b, "RPUSH bq x"), 1);
    redisReply *r = fixture_next_reply(a);
    fixture_expect_array(r, 2);
    assert_string_equal(r->element[0]->str, "bq");
    assert_string_equal(r->element[1]->str, "x");
    freeReplyObject(r);
    /* The client goes on normally, on the shared connections. */
    fixture_expect_int(fixture_cmd(a, "LLEN bq"), 0);
    fixture_close(f, a);
    fixture_close(f, b);
}

/* The case: while a BLPOP waits, other clients' requests to the
 * same shard keep their usual latency. */
static void test_blocked_client_does_not_stall_the_shard(void **state)
{
    fixture *f = *state;
    redisContext *a = patient_client(f);
    redisContext *b = fixture_client(f);
    char queue[64], key[64];
    fixture_key_on_shard(b, "stall", 0, queue, sizeof(queue));
    fixture_key_on_shard(b, "stall-get", 0, key, sizeof(key));
    fixture_expect_status(fixture_cmd(b, "SET %s v", key), "OK");
    redisAppendCommand(a, "BLPOP %s 0", queue);
    flush_out(a);
    wait_blocked(f, 0, 1);
    long long start = fixture_now_ms(), worst = 0;
    for (int i = 0; i < TRAFFIC_REQUESTS; i++) {
        long long t0 = fixture_now_ms();
        fixture_expect_str(fixture_cmd(b, "GET %s", key), "v");
        long long took = fixture_now_ms() - t0;
        worst = took > worst ? took : worst;
    }
    long long scale = harness_timeout_scale();
    assert_true(worst < TRAFFIC_MAX_MS * scale);
    assert_true(fixture_now_ms() - start < TRAFFIC_REQUESTS * 10 * scale);
    /* Still blocked all along (past request_timeout too). */
    assert_int_equal(blocked_on(f, 0), 1);
    fixture_expect_int(fixture_cmd(b, "RPUSH %s done", queue), 1);
    redisReply *r = fixture_next_reply(a);
    fixture_expect_array(r, 2);
    assert_string_equal(r->element[1]->str, "done");
    freeReplyObject(r);
    fixture_close(f, a);
    fixture_close(f, b);
}

static void test_own_timeout_honoured_past_request_timeout(void **state)
{
    fixture *f = *state;
    redisContext *a = patient_client(f);
    long long t0 = fixture_now_ms();
    fixture_expect_nil(fixture_cmd(a, "BLPOP nothing:{t} 1"));
    long long took = fixture_now_ms() - t0;
    long long scale = harness_timeout_scale();
    assert_true(took >= 900 && took < 3000 * scale);
    t0 = fixture_now_ms();
    fixture_expect_nil(fixture_cmd(a, "BRPOPLPUSH nothing:{t} elsewhere:{t} 0.5"));
    took = fixture_now_ms() - t0;
    assert_true(took >= 400 && took < 2500 * scale);
    t0 = fixture_now_ms();
    fixture_expect_nil(fixture_cmd(a, "XREAD BLOCK 600 STREAMS nothing:{x} $"));
    took = fixture_now_ms() - t0;
    assert_true(took >= 500 && took < 2500 * scale);
    /* A timeout Redis refuses is its error, at once. */
    fixture_expect_error(fixture_cmd(a, "BLPOP nothing:{t} -1"), "ERR");
    fixture_close(f, a);
}

/* Redis reads nothing more from a blocked client: its pipelined commands
 * run after the blocking one returns, in order. */
static void test_pipelined_requests_wait_for_the_blocking_reply(void **state)
{
    fixture *f = *state;
    redisContext *a = patient_client(f);
    redisContext *b = fixture_client(f);
    int shard = fixture_owner(b, "pq", 2);
    redisAppendCommand(a, "BLPOP pq 0");
    redisAppendCommand(a, "RPUSH pq mine");
    redisAppendCommand(a, "LRANGE pq 0 -1");
    flush_out(a);
    wait_blocked(f, shard, 1);
    fixture_sleep_ms(100);
    /* Had the RPUSH run, the BLPOP would have taken "mine". */
    fixture_expect_int(fixture_cmd(b, "LLEN pq"), 0);
    fixture_expect_int(fixture_cmd(b, "RPUSH pq other"), 1);
    redisReply *r = fixture_next_reply(a);
    fixture_expect_array(r, 2);
    assert_string_equal(r->element[1]->str, "other");
    freeReplyObject(r);
    fixture_expect_int(fixture_next_reply(a), 1);
    r = fixture_next_reply(a);
    fixture_expect_array(r, 1);
    assert_string_equal(r->element[0]->str, "mine");
    freeReplyObject(r);
    fixture_close(f, a);
    fixture_close(f, b);
}

static void test_client_leaving_while_blocked_unblocks_the_shard(void **state)
{
    fixture *f = *state;
    redisContext *a = patient_client(f);
    redisContext *b = fixture_client(f);
    int shard = fixture_owner(b, "gone", 4);
    redisAppendCommand(a, "BLPOP gone 0");
    flush_out(a);
    wait_blocked(f, shard, 1);
    fixture_close(f, a);
    wait_blocked(f, shard, 0);
    /* Nobody takes the element any more. */
    fixture_expect_int(fixture_cmd(b, "RPUSH gone x"), 1);
    fixture_sleep_ms(50);
    fixture_expect_int(fixture_cmd(b, "LLEN gone"), 1);
    fixture_close(f, b);
}

/* CLIENT LIST shows a client waiting for a blocking reply as held; a QUIT
 * pipelined behind it waits too, is answered after it, and then the proxy
 * closes the connection (held -> reading -> closing). */
static void test_quit_behind_a_blocking_command_closes_after_its_reply(void **state)
{
    fixture *f = *state;
    redisContext *a = patient_client(f);
    redisContext *b = fixture_client(f);
    int shard = fixture_owner(b, "quitq", 5);
    redisReply *r = fixture_cmd(a, "CLIENT ID");
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    long long id = r->integer;
    freeReplyObject(r);
    char want[64];
    snprintf(want, sizeof(want), "id=%lld ", id);
    r = fixture_cmd(b, "CLIENT LIST ID %lld", id);
    assert_non_null(strstr(r->str, " state=reading\n"));
    freeReplyObject(r);

    redisAppendCommand(a, "BLPOP quitq 0");
    redisAppendCommand(a, "QUIT");
    flush_out(a);
    wait_blocked(f, shard, 1);
    r = fixture_cmd(b, "CLIENT LIST ID %lld", id);
    assert_int_equal(strncmp(r->str, want, strlen(want)), 0);
    assert_non_null(strstr(r->str, " flags=b "));
    assert_non_null(strstr(r->str, " state=held\n"));
    freeReplyObject(r);

    fixture_expect_int(fixture_cmd(b, "RPUSH quitq v"), 1);
    r = fixture_next_reply(a);
    fixture_expect_array(r, 2);
    assert_string_equal(r->element[1]->str, "v");
    freeReplyObject(r);
    fixture_expect_status(fixture_next_reply(a), "OK");
    void *eof = NULL;
    assert_int_equal(redisGetReply(a, &eof), REDIS_ERR);
    assert_null(eof);
    assert_int_equal(a->err, REDIS_ERR_EOF);
    fixture_expect_str(fixture_cmd(b, "CLIENT LIST ID %lld", id), "");
    fixture_close(f, a);
    fixture_close(f, b);
}

static void test_other_blocking_commands(void **state)
{
    fixture *f = *state;
    redisContext *a = patient_client(f);
    redisContext *b = fixture_client(f);
    struct {
        const char *wait;  /* the blocking command */
        const char *wake;  /* what wakes it */
        const char *first; /* first element of its reply (a key), NULL: a bulk reply */
    } cases[] = {
        {"BRPOP {o}l1 0", "RPUSH {o}l1 v", "{o}l1"},
        {"BLMOVE {o}l2 {o}l3 LEFT RIGHT 0", "RPUSH {o}l2 v", NULL},
        {"BRPOPLPUSH {o}l4 {o}l5 0", "RPUSH {o}l4 v", NULL},
        {"BZPOPMIN {o}z1 0", "ZADD {o}z1 1 v", "{o}z1"},
        {"BZPOPMAX {o}z2 0", "ZADD {o}z2 1 v", "{o}z2"},
        {"BLMPOP 0 2 {o}l6 {o}l7 LEFT", "RPUSH {o}l7 v", "{o}l7"},
        {"BZMPOP 0 1 {o}z3 MIN", "ZADD {o}z3 1 v", "{o}z3"},
        {"XREAD BLOCK 0 STREAMS {o}s1 $", "XADD {o}s1 * f v", NULL},
    };
    int shard = fixture_owner(b, "{o}", 3);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        redisAppendCommand(a, cases[i].wait);
        flush_out(a);
        wait_blocked(f, shard, 1);
        redisReply *w = fixture_cmd(b, cases[i].wake);
        assert_int_not_equal(w->type, REDIS_REPLY_ERROR);
        freeReplyObject(w);
        redisReply *r = fixture_next_reply(a);
        if (cases[i].first) {
            assert_int_equal(r->type, REDIS_REPLY_ARRAY);
            assert_string_equal(r->element[0]->str, cases[i].first);
        } else {
            assert_true(r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_ARRAY);
        }
        freeReplyObject(r);
    }
    char a_key[64], b_key[64];
    fixture_key_on_shard(b, "bx", 0, a_key, sizeof(a_key));
    fixture_key_on_shard(b, "bx", 1, b_key, sizeof(b_key));
    fixture_expect_error(fixture_cmd(a, "BLPOP %s %s 0", a_key, b_key), "CROSSSLOT");
    fixture_close(f, a);
    fixture_close(f, b);
}

static void test_blocking_inside_multi_and_watch(void **state)
{
    fixture *f = *state;
    redisContext *a = patient_client(f);
    /* Inside MULTI a blocking command does not block, as in Redis. */
    fixture_expect_status(fixture_cmd(a, "MULTI"), "OK");
    fixture_expect_status(fixture_cmd(a, "BLPOP empty:{m} 0"), "QUEUED");
    redisReply *r = fixture_cmd(a, "EXEC");
    fixture_expect_array(r, 1);
    assert_int_equal(r->element[0]->type, REDIS_REPLY_NIL);
    freeReplyObject(r);
    /* While WATCHing, on the watched shard; then the transaction. */
    fixture_expect_status(fixture_cmd(a, "WATCH w:{m}"), "OK");
    fixture_expect_nil(fixture_cmd(a, "BLPOP empty:{m} 0.2"));
    fixture_expect_status(fixture_cmd(a, "MULTI"), "OK");
    fixture_expect_status(fixture_cmd(a, "SET w:{m} 1"), "QUEUED");
    r = fixture_cmd(a, "EXEC");
    fixture_expect_array(r, 1);
    freeReplyObject(r);
    char other[64];
    int shard = fixture_owner(a, "w:{m}", 5);
    fixture_key_on_shard(a, "bw", (shard + 1) % FIXTURE_SHARDS, other, sizeof(other));
    fixture_expect_status(fixture_cmd(a, "WATCH w:{m}"), "OK");
    fixture_expect_error(fixture_cmd(a, "BLPOP %s 0", other), "CROSSSLOT");
    fixture_expect_status(fixture_cmd(a, "UNWATCH"), "OK");
    fixture_close(f, a);
}

static void test_many_blocked_clients_across_shards(void **state)
{
    fixture *f = *state;
    redisContext *clients[BLOCKED_CLIENTS];
    redisContext *b = fixture_client(f);
    for (int i = 0; i < BLOCKED_CLIENTS; i++) {
        clients[i] = patient_client(f);
        redisAppendCommand(clients[i], "BLPOP many:%d 5", i);
        flush_out(clients[i]);
    }
    long long deadline = fixture_now_ms() + 3000 * harness_timeout_scale(), blocked = 0;
    while (fixture_now_ms() < deadline) {
        blocked = 0;
        for (int s = 0; s < FIXTURE_SHARDS; s++) {
            blocked += blocked_on(f, s);
        }
        if (blocked == BLOCKED_CLIENTS) {
            break;
        }
        fixture_sleep_ms(10);
    }
    assert_int_equal(blocked, BLOCKED_CLIENTS);
    for (int i = 0; i < BLOCKED_CLIENTS; i++) {
        fixture_expect_int(fixture_cmd(b, "RPUSH many:%d v%d", i, i), 1);
    }
    for (int i = 0; i < BLOCKED_CLIENTS; i++) {
        redisReply *r = fixture_next_reply(clients[i]);
        fixture_expect_array(r, 2);
        char want[32];
        snprintf(want, sizeof(want), "v%d", i);
        assert_string_equal(r->element[1]->str, want);
        freeReplyObject(r);
        fixture_close(f, clients[i]);
    }
    fixture_close(f, b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_blpop_wakes_when_another_client_pushes),
        cmocka_unit_test(test_blocked_client_does_not_stall_the_shard),
        cmocka_unit_test(test_own_timeout_honoured_past_request_timeout),
        cmocka_unit_test(test_pipelined_requests_wait_for_the_blocking_reply),
        cmocka_unit_test(test_client_leaving_while_blocked_unblocks_the_shard),
        cmocka_unit_test(test_quit_behind_a_blocking_command_closes_after_its_reply),
        cmocka_unit_test(test_other_blocking_commands),
        cmocka_unit_test(test_blocking_inside_multi_and_watch),
        cmocka_unit_test(test_many_blocked_clients_across_shards),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
