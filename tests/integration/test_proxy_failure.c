/* A shard that dies or stalls costs only its own keys: they get a fast
 * "-ERR shard sN (...)" within the request timeout, never a silent answer
 * from another shard; the other shards serve on; once the shard is back on
 * its address, its keys work again. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "fixture.h"

/* The proxy's timeouts in this test, and how late an error may come: the
 * request timeout plus scheduling slack. */
#define REQUEST_TIMEOUT_MS 500
#define CONNECT_TIMEOUT_MS 300
#define ERROR_DEADLINE_MS  (REQUEST_TIMEOUT_MS + 700)
/* How long the proxy may take to use a shard again after it is back: the
 * reconnect backoff is capped at 1 s here. */
#define RECONNECT_MAX_MS     1000
#define RECOVERY_DEADLINE_MS (RECONNECT_MAX_MS * 3)
#define KEYS_PER_SHARD       20

#define TEXT_OF(x) #x
#define TEXT(x)    TEXT_OF(x) /* a macro's value as a string literal */

static int group_setup(void **state)
{
    fixture *f = fixture_start("request_timeout = " TEXT(
        REQUEST_TIMEOUT_MS) "\n"
                            "connect_timeout = " TEXT(
                                CONNECT_TIMEOUT_MS) "\n"
                                                    "reconnect_max = " TEXT(RECONNECT_MAX_MS) "\n");
    *state = f;
    return f != NULL ? 0 : -1;
}

static int group_teardown(void **state)
{
    return fixture_stop(*state);
}

/* Keys "<prefix>:<n>", KEYS_PER_SHARD owned by each shard, set through the
 * proxy to their own name. */
typedef struct shard_keys {
    char key[FIXTURE_SHARDS][KEYS_PER_SHARD][32];
} shard_keys;

static void make_keys(redisContext *c, const char *prefix, shard_keys *k)
{
    int count[FIXTURE_SHARDS] = {0};
    int placed = 0;
    for (int n = 0; placed < FIXTURE_SHARDS * KEYS_PER_SHARD; n++) {
        assert_true(n < 100000);
        char key[32];
        snprintf(key, sizeof(key), "%s:%d", prefix, n);
        int s = fixture_owner(c, key, strlen(key));
        if (count[s] < KEYS_PER_SHARD) {
            strcpy(k->key[s][count[s]++], key);
            placed++;
            fixture_expect_status(fixture_cmd(c, "SET %s %s", key, key), "OK");
        }
    }
}

/* Expects the reply to be the shard error for shard index s. */
static void expect_shard_error(fixture *f, redisReply *r, int s)
{
    char prefix[32];
    snprintf(prefix, sizeof(prefix), "ERR shard s%d", s + 1);
    char addr[32];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", f->shards[s].port);
    if (r->type == REDIS_REPLY_ERROR && strstr(r->str, addr) == NULL) {
        char text[256];
        snprintf(text, sizeof(text), "%s", r->str);
        freeReplyObject(r);
        fail_msg("shard error does not name %s: %s", addr, text);
    }
    fixture_expect_error(r, prefix);
}

/* GETs every key of shard s on c, each answered in time with its value. */
static void expect_shard_serves(redisContext *c, const shard_keys *k, int s)
{
    for (int i = 0; i < KEYS_PER_SHARD; i++) {
        long long start = fixture_now_ms();
        fixture_expect_str(fixture_cmd(c, "GET %s", k->key[s][i]), k->key[s][i]);
        assert_true(fixture_now_ms() - start < fixture_bound_ms(ERROR_DEADLINE_MS));
    }
}

static void test_killed_shard_errors_then_recovers(void **state)
{
    fixture *f = *state;
    const int victim = 1; /* s2 */
    redisContext *c = fixture_client(f);
    shard_keys *k = fixture_alloc(f, sizeof(*k));
    make_keys(c, "down", k);

    /* Requests for every shard in flight when the shard dies. */
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < KEYS_PER_SHARD; i++) {
            for (int s = 0; s < FIXTURE_SHARDS; s++) {
                redisAppendCommand(c, "GET %s", k->key[s][i]);
            }
        }
    }
    int done = 0;
    while (!done) {
        assert_int_equal(redisBufferWrite(c, &done), REDIS_OK);
    }
    long long killed_at = fixture_now_ms();
    assert_true(harness_proc_stop(&f->shards[victim], SIGKILL) != -1);
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < KEYS_PER_SHARD; i++) {
            for (int s = 0; s < FIXTURE_SHARDS; s++) {
                redisReply *r = fixture_next_reply(c);
                if (s == victim && r->type == REDIS_REPLY_ERROR) {
                    expect_shard_error(f, r, s);
                } else {
                    /* Answered before the kill, or by a live shard. */
                    fixture_expect_str(r, k->key[s][i]);
                }
            }
        }
    }
    assert_true(fixture_now_ms() - killed_at < fixture_bound_ms(ERROR_DEADLINE_MS));

    /* While it is down: its keys fail fast, reads and writes alike. */
    for (int i = 0; i < KEYS_PER_SHARD; i++) {
        long long start = fixture_now_ms();
        expect_shard_error(f, fixture_cmd(c, "GET %s", k->key[victim][i]), victim);
        expect_shard_error(f, fixture_cmd(c, "SET %s new", k->key[victim][i]), victim);
        long long took = fixture_now_ms() - start;
        if (took >= fixture_bound_ms(ERROR_DEADLINE_MS)) {
            fail_msg("two requests to a dead shard took %lld ms", took);
        }
    }
    /* The other shards serve on, on this connection and on a new one. */
    redisContext *other = fixture_client(f);
    for (int s = 0; s < FIXTURE_SHARDS; s++) {
        if (s != victim) {
            expect_shard_serves(c, k, s);
            expect_shard_serves(other, k, s);
        }
    }
    /* In one pipeline, only the dead shard's replies are errors, in place. */
    int live = (victim + 1) % FIXTURE_SHARDS;
    redisAppendCommand(c, "GET %s", k->key[victim][0]);
    redisAppendCommand(c, "GET %s", k->key[live][0]);
    redisAppendCommand(c, "PING");
    redisAppendCommand(c, "SET %s x", k->key[victim][1]);
    redisAppendCommand(c, "GET %s", k->key[live][1]);
    expect_shard_error(f, fixture_next_reply(c), victim);
    fixture_expect_str(fixture_next_reply(c), k->key[live][0]);
    fixture_expect_status(fixture_next_reply(c), "PONG");
    expect_shard_error(f, fixture_next_reply(c), victim);
    fixture_expect_str(fixture_next_reply(c), k->key[live][1]);
    /* A multi-key read over the dead shard never passes off its keys as
     * missing: an error, or an error in their places. */
    redisReply *r = fixture_cmd(c, "MGET %s %s", k->key[live][2], k->key[victim][2]);
    if (r->type == REDIS_REPLY_ARRAY) {
        fixture_expect_array(r, 2);
        assert_string_equal(r->element[0]->str, k->key[live][2]);
        assert_int_equal(r->element[1]->type, REDIS_REPLY_ERROR);
        freeReplyObject(r);
    } else {
        expect_shard_error(f, r, victim);
    }

    /* Back on the same address (empty: no persistence); the proxy uses it
     * again and its keys are stored there. */
    assert_int_equal(harness_redis_restart(&f->shards[victim]), 0);
    long long deadline = fixture_now_ms() + fixture_bound_ms(RECOVERY_DEADLINE_MS);
    int recovered = 0;
    while (!recovered && fixture_now_ms() < deadline) {
        r = fixture_cmd(c, "SET %s %s", k->key[victim][0], k->key[victim][0]);
        recovered = r->type == REDIS_REPLY_STATUS;
        if (!recovered) {
            expect_shard_error(f, r, victim);
            fixture_sleep_ms(20);
        } else {
            freeReplyObject(r);
        }
    }
    if (!recovered) {
        fail_msg("s%d still failing %lld ms after its restart", victim + 1,
                 fixture_bound_ms(RECOVERY_DEADLINE_MS));
    }
    for (int i = 0; i < KEYS_PER_SHARD; i++) {
        fixture_expect_status(fixture_cmd(c, "SET %s %s", k->key[victim][i], k->key[victim][i]),
                              "OK");
    }
    expect_shard_serves(c, k, victim);
    expect_shard_serves(other, k, victim);
    for (int i = 0; i < KEYS_PER_SHARD; i++) {
        const char *key = k->key[victim][i];
        assert_int_equal(fixture_holders(f, key, strlen(key)), 1u << victim);
    }
    fixture_free(f, k);
    fixture_close(f, other);
    fixture_close(f, c);
}

static void test_stalled_shard_times_out(void **state)
{
    fixture *f = *state;
    const int victim = 2; /* s3 */
    redisContext *c = fixture_client(f);
    redisContext *other = fixture_client(f);
    shard_keys *k = fixture_alloc(f, sizeof(*k));
    make_keys(c, "stall", k);

    /* A stopped process keeps its sockets open but never answers. Nothing
     * is asserted while it is stopped, so that a failure cannot leave it so. */
    assert_int_equal(kill(f->shards[victim].pid, SIGSTOP), 0);
    long long start = fixture_now_ms();
    redisReply *stalled = redisCommand(c, "GET %s", k->key[victim][0]);
    long long stalled_ms = fixture_now_ms() - start;
    start = fixture_now_ms();
    redisReply *live = redisCommand(other, "GET %s", k->key[(victim + 1) % FIXTURE_SHARDS][0]);
    long long live_ms = fixture_now_ms() - start;
    start = fixture_now_ms();
    redisReply *again = redisCommand(c, "GET %s", k->key[victim][1]);
    long long again_ms = fixture_now_ms() - start;
    assert_int_equal(kill(f->shards[victim].pid, SIGCONT), 0);

    assert_non_null(stalled);
    expect_shard_error(f, stalled, victim);
    if (stalled_ms >= fixture_bound_ms(ERROR_DEADLINE_MS)) {
        fail_msg("a stalled shard's request took %lld ms (timeout %d)", stalled_ms,
                 REQUEST_TIMEOUT_MS);
    }
    assert_non_null(live);
    fixture_expect_str(live, k->key[(victim + 1) % FIXTURE_SHARDS][0]);
    assert_true(live_ms < fixture_bound_ms(REQUEST_TIMEOUT_MS));
    assert_non_null(again);
    expect_shard_error(f, again, victim);
    assert_true(again_ms < fixture_bound_ms(ERROR_DEADLINE_MS));

    /* Resumed, the shard serves again (its data was never lost). */
    long long deadline = fixture_now_ms() + fixture_bound_ms(RECOVERY_DEADLINE_MS);
    int recovered = 0;
    while (!recovered && fixture_now_ms() < deadline) {
        redisReply *r = fixture_cmd(c, "GET %s", k->key[victim][0]);
        recovered = r->type == REDIS_REPLY_STRING;
        if (recovered) {
            fixture_expect_str(r, k->key[victim][0]);
        } else {
            expect_shard_error(f, r, victim);
            fixture_sleep_ms(20);
        }
    }
    if (!recovered) {
        fail_msg("s%d still failing %lld ms after SIGCONT", victim + 1,
                 fixture_bound_ms(RECOVERY_DEADLINE_MS));
    }
    expect_shard_serves(c, k, victim);
    fixture_free(f, k);
    fixture_close(f, other);
    fixture_close(f, c);
}

/* SIGTERM: the proxy stops accepting, answers the requests it holds (here
 * one waiting on a briefly stalled shard), then exits 0. Last test of the
 * group: it stops the proxy. */
static void test_sigterm_finishes_inflight_then_exits_0(void **state)
{
    fixture *f = *state;
    const int slow = 0; /* s1 */
    redisContext *c = fixture_client(f);
    shard_keys *k = fixture_alloc(f, sizeof(*k));
    make_keys(c, "term", k);

    redisContext *admin = fixture_client(f);
    assert_int_equal(kill(f->shards[slow].pid, SIGSTOP), 0);
    long long input_before = fixture_info_int(admin, "total_net_input_bytes");
    char *request = NULL;
    int request_len = redisFormatCommand(&request, "GET %s", k->key[slow][0]);
    assert_true(request_len > 0);
    assert_int_equal(redisAppendFormattedCommand(c, request, (size_t)request_len), REDIS_OK);
    redisFreeCommand(request);
    int done = 0;
    while (!done) {
        assert_int_equal(redisBufferWrite(c, &done), REDIS_OK);
    }
    /* The proxy has read the GET (and forwards what it reads at once). */
    fixture_wait_info_at_least(admin, "total_net_input_bytes", input_before + request_len);
    fixture_close(f, admin);
    int term = kill(f->proxy.pid, SIGTERM);
    fixture_wait_log(&f->proxy, "SIGTERM: no new clients");
    /* New clients are no longer served: refused, or closed unanswered. */
    int late = fixture_raw_connect(f->proxy.port);
    char buf[64] = "";
    int late_closed = 1;
    if (late >= 0) {
        fixture_raw_send(late, "PING\r\n", 6);
        fixture_raw_read(late, buf, sizeof(buf), 7, fixture_bound_ms(300), &late_closed);
        close(late);
    }
    assert_int_equal(kill(f->shards[slow].pid, SIGCONT), 0);

    assert_int_equal(term, 0);
    fixture_expect_str(fixture_next_reply(c), k->key[slow][0]);
    if (!late_closed || buf[0] != '\0') {
        fail_msg("a client connecting after SIGTERM got \"%s\"%s", buf,
                 late_closed ? "" : " and stayed connected");
    }
    /* Signal 0: wait for the exit the first SIGTERM started. */
    long long start = fixture_now_ms();
    int status = harness_proc_stop(&f->proxy, 0);
    assert_true(fixture_now_ms() - start < fixture_bound_ms(2000));
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    fixture_free(f, k);
    fixture_close(f, c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_killed_shard_errors_then_recovers),
        cmocka_unit_test(test_stalled_shard_times_out),
        cmocka_unit_test(test_sigterm_finishes_inflight_then_exits_0),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
