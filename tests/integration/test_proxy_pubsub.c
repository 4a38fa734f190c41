/* Pub/sub through the proxy, across four shards: PUBLISH goes to the
 * channel's owner and SUBSCRIBE listens there, PSUBSCRIBE listens on every
 * shard, confirmations carry the client's total subscription count as one
 * Redis would, messages arrive in RESP2 push format and in order, a
 * subscribed client may only (un)subscribe, PING, QUIT and RESET, PUBSUB
 * CHANNELS/NUMSUB/NUMPAT merge the shards, and the subscriber connections
 * go with the client. A shard that stops answering fails a change with its
 * timeout error after request_timeout, and the client is closed (its own
 * proxy, with a short timeout). Subscribers that stop reading are closed at
 * max_pubsub_output, the proxy's memory stays bounded, and the others are
 * served (their own proxy, with a small max_pubsub_output). */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "fixture.h"

#define ORDERED_MESSAGES 200

/* The stalled-shard group's proxy: a short request_timeout, so that the
 * test is quick. */
#define REQUEST_TIMEOUT_MS 500
/* When a change to a stalled shard may be answered: not before its
 * timeout (less a margin for clocks), and within it plus scheduling
 * slack. */
#define TIMEOUT_EARLIEST_MS 400
#define TIMEOUT_LATEST_MS   3000
/* How long after that error the client may stay open, and how long a
 * request to a healthy shard may take meanwhile. */
#define CLOSE_LATEST_MS 1000
#define LIVE_LATENCY_MS 250

/* The stalled-subscribers group: ten subscribers that never read while
 * STALL_MESSAGES of STALL_MESSAGE_LEN bytes (20 MB) are published to their
 * channel, 200 MB in all if the proxy kept them. Each is closed once 1 MB
 * waits for it, so the proxy's peak RSS stays far below that. */
#define STALLED_SUBSCRIBERS 10
#define STALL_MESSAGES      20000
#define STALL_MESSAGE_LEN   1024
#define STALL_BATCH         500
#define STALL_OUTPUT_MAX    "1mb"
#define STALL_PEAK_KIB      (64 * 1024)
#define STALL_DEADLINE_MS   20000

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

/* Checks a push [kind, name, count] and frees it. */
static void expect_confirm(redisReply *r, const char *kind, const char *name, long long count)
{
    fixture_expect_array(r, 3);
    assert_string_equal(r->element[0]->str, kind);
    if (name) {
        assert_string_equal(r->element[1]->str, name);
    } else {
        assert_int_equal(r->element[1]->type, REDIS_REPLY_NIL);
    }
    assert_int_equal(r->element[2]->integer, count);
    freeReplyObject(r);
}

/* Checks a message (pattern NULL) or pmessage and frees it. */
static void expect_message(redisReply *r, const char *pattern, const char *channel,
                           const char *payload)
{
    if (pattern) {
        fixture_expect_array(r, 4);
        assert_string_equal(r->element[0]->str, "pmessage");
        assert_string_equal(r->element[1]->str, pattern);
        assert_string_equal(r->element[2]->str, channel);
        assert_string_equal(r->element[3]->str, payload);
    } else {
        fixture_expect_array(r, 3);
        assert_string_equal(r->element[0]->str, "message");
        assert_string_equal(r->element[1]->str, channel);
        assert_string_equal(r->element[2]->str, payload);
    }
    freeReplyObject(r);
}

static void test_subscribers_on_every_shard(void **state)
{
    fixture *f = *state;
    redisContext *s = fixture_client(f);
    redisContext *p = fixture_client(f);
    char channel[FIXTURE_SHARDS][64];
    for (int i = 0; i < FIXTURE_SHARDS; i++) {
        fixture_key_on_shard(p, "chan", i, channel[i], sizeof(channel[i]));
    }
    redisAppendCommand(s, "SUBSCRIBE %s %s %s %s", channel[0], channel[1], channel[2], channel[3]);
    for (int i = 0; i < FIXTURE_SHARDS; i++) {
        expect_confirm(fixture_next_reply(s), "subscribe", channel[i], i + 1);
    }
    for (int i = 0; i < FIXTURE_SHARDS; i++) {
        /* Exactly one subscriber: on the owner, where PUBLISH goes. */
        fixture_expect_int(fixture_cmd(p, "PUBLISH %s hello%d", channel[i], i), 1);
        redisReply *n = fixture_cmd(fixture_shard(f, i), "PUBSUB NUMSUB %s", channel[i]);
        assert_int_equal(n->element[1]->integer, 1);
        freeReplyObject(n);
    }
    for (int i = 0; i < FIXTURE_SHARDS; i++) {
        char payload[32];
        snprintf(payload, sizeof(payload), "hello%d", i);
        expect_message(fixture_next_reply(s), NULL, channel[i], payload);
    }
    fixture_close(f, s);
    fixture_close(f, p);
}

static void test_patterns_hear_every_shard(void **state)
{
    fixture *f = *state;
    redisContext *s = fixture_client(f);
    redisContext *p = fixture_client(f);
    expect_confirm(fixture_cmd(s, "PSUBSCRIBE pat:*"), "psubscribe", "pat:*", 1);
    for (int i = 0; i < FIXTURE_SHARDS; i++) {
        char channel[64];
        fixture_key_on_shard(p, "pat", i, channel, sizeof(channel));
        fixture_expect_int(fixture_cmd(p, "PUBLISH %s m%d", channel, i), 1);
        char payload[32];
        snprintf(payload, sizeof(payload), "m%d", i);
        expect_message(fixture_next_reply(s), "pat:*", channel, payload);
    }
    fixture_expect_int(fixture_cmd(p, "PUBLISH other m"), 0);
    fixture_close(f, s);
    fixture_close(f, p);
}

static void test_counts_are_the_clients_totals(void **state)
{
    fixture *f = *state;
    redisContext *s = fixture_client(f);
    char a[64], b[64];
    fixture_key_on_shard(s, "cnt", 0, a, sizeof(a));
    fixture_key_on_shard(s, "cnt", 1, b, sizeof(b));
    redisAppendCommand(s, "SUBSCRIBE %s %s %s", a, b, a);
    expect_confirm(fixture_next_reply(s), "subscribe", a, 1);
    expect_confirm(fixture_next_reply(s), "subscribe", b, 2);
    expect_confirm(fixture_next_reply(s), "subscribe", a, 2);
    redisAppendCommand(s, "PSUBSCRIBE cnt:* x*");
    expect_confirm(fixture_next_reply(s), "psubscribe", "cnt:*", 3);
    expect_confirm(fixture_next_reply(s), "psubscribe", "x*", 4);
    redisAppendCommand(s, "UNSUBSCRIBE %s nosuch", a);
    expect_confirm(fixture_next_reply(s), "unsubscribe", a, 3);
    expect_confirm(fixture_next_reply(s), "unsubscribe", "nosuch", 3);
    /* All channels: one confirmation each; the patterns stay. */
    redisAppendCommand(s, "UNSUBSCRIBE");
    expect_confirm(fixture_next_reply(s), "unsubscribe", b, 2);
    redisAppendCommand(s, "UNSUBSCRIBE");
    expect_confirm(fixture_next_reply(s), "unsubscribe", NULL, 2);
    redisAppendCommand(s, "PUNSUBSCRIBE x*");
    expect_confirm(fixture_next_reply(s), "punsubscribe", "x*", 1);
    redisAppendCommand(s, "PUNSUBSCRIBE");
    expect_confirm(fixture_next_reply(s), "punsubscribe", "cnt:*", 0);
    /* Out of subscribed mode: plain commands again. */
    fixture_expect_status(fixture_cmd(s, "SET cnt v"), "OK");
    fixture_expect_status(fixture_cmd(s, "PING"), "PONG");
    fixture_close(f, s);
}

static void test_subscribed_mode_allows_only_pubsub_commands(void **state)
{
    fixture *f = *state;
    redisContext *s = fixture_client(f);
    expect_confirm(fixture_cmd(s, "SUBSCRIBE mode"), "subscribe", "mode", 1);
    redisReply *r = fixture_cmd(s, "PING");
    fixture_expect_array(r, 2);
    assert_string_equal(r->element[0]->str, "pong");
    assert_string_equal(r->element[1]->str, "");
    freeReplyObject(r);
    r = fixture_cmd(s, "PING hi");
    fixture_expect_array(r, 2);
    assert_string_equal(r->element[1]->str, "hi");
    freeReplyObject(r);
    fixture_expect_error(fixture_cmd(s, "GET mode"),
                         "ERR Can't execute 'get': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING "
                         "/ QUIT / RESET are allowed in this context");
    fixture_expect_error(fixture_cmd(s, "MULTI"), "ERR Can't execute 'multi'");
    /* RESET leaves subscribed mode. */
    fixture_expect_status(fixture_cmd(s, "RESET"), "RESET");
    fixture_expect_nil(fixture_cmd(s, "GET mode"));
    redisContext *p = fixture_client(f);
    fixture_expect_int(fixture_cmd(p, "PUBLISH mode x"), 0);
    fixture_close(f, p);
    /* QUIT answers and closes, subscribed or not. */
    expect_confirm(fixture_cmd(s, "SUBSCRIBE mode"), "subscribe", "mode", 1);
    fixture_expect_status(fixture_cmd(s, "QUIT"), "OK");
    fixture_close(f, s);
}

static void test_messages_arrive_in_order(void **state)
{
    fixture *f = *state;
    redisContext *s = fixture_client(f);
    redisContext *p = fixture_client(f);
    redisAppendCommand(s, "SUBSCRIBE ordered:{1} ordered:{2}");
    expect_confirm(fixture_next_reply(s), "subscribe", "ordered:{1}", 1);
    expect_confirm(fixture_next_reply(s), "subscribe", "ordered:{2}", 2);
    for (int i = 0; i < ORDERED_MESSAGES; i++) {
        redisAppendCommand(p, "PUBLISH ordered:{1} %d", i);
    }
    for (int i = 0; i < ORDERED_MESSAGES; i++) {
        fixture_expect_int(fixture_next_reply(p), 1);
    }
    for (int i = 0; i < ORDERED_MESSAGES; i++) {
        char payload[32];
        snprintf(payload, sizeof(payload), "%d", i);
        expect_message(fixture_next_reply(s), NULL, "ordered:{1}", payload);
    }
    /* Once the UNSUBSCRIBE is confirmed, nothing more arrives for it. */
    expect_confirm(fixture_cmd(s, "UNSUBSCRIBE ordered:{1}"), "unsubscribe", "ordered:{1}", 1);
    fixture_expect_int(fixture_cmd(p, "PUBLISH ordered:{1} late"), 0);
    fixture_expect_int(fixture_cmd(p, "PUBLISH ordered:{2} last"), 1);
    expect_message(fixture_next_reply(s), NULL, "ordered:{2}", "last");
    fixture_close(f, s);
    fixture_close(f, p);
}

static void test_pubsub_introspection_merges_shards(void **state)
{
    fixture *f = *state;
    redisContext *s1 = fixture_client(f);
    redisContext *s2 = fixture_client(f);
    redisContext *c = fixture_client(f);
    char a[64], b[64];
    fixture_key_on_shard(c, "intro", 0, a, sizeof(a));
    fixture_key_on_shard(c, "intro", 3, b, sizeof(b));
    redisAppendCommand(s1, "SUBSCRIBE %s %s", a, b);
    expect_confirm(fixture_next_reply(s1), "subscribe", a, 1);
    expect_confirm(fixture_next_reply(s1), "subscribe", b, 2);
    expect_confirm(fixture_cmd(s2, "SUBSCRIBE %s", a), "subscribe", a, 1);
    redisAppendCommand(s2, "PSUBSCRIBE intro:* other:*");
    expect_confirm(fixture_next_reply(s2), "psubscribe", "intro:*", 2);
    expect_confirm(fixture_next_reply(s2), "psubscribe", "other:*", 3);

    redisReply *r = fixture_cmd(c, "PUBSUB CHANNELS intro:*");
    fixture_expect_array(r, 2);
    int found_a = 0, found_b = 0;
    for (size_t i = 0; i < r->elements; i++) {
        found_a |= strcmp(r->element[i]->str, a) == 0;
        found_b |= strcmp(r->element[i]->str, b) == 0;
    }
    assert_true(found_a && found_b);
    freeReplyObject(r);
    r = fixture_cmd(c, "PUBSUB NUMSUB %s %s intro:none", a, b);
    fixture_expect_array(r, 6);
    assert_string_equal(r->element[0]->str, a);
    assert_int_equal(r->element[1]->integer, 2);
    assert_string_equal(r->element[2]->str, b);
    assert_int_equal(r->element[3]->integer, 1);
    assert_int_equal(r->element[5]->integer, 0);
    freeReplyObject(r);
    fixture_expect_int(fixture_cmd(c, "PUBSUB NUMPAT"), 2);
    fixture_close(f, s1);
    fixture_close(f, s2);
    fixture_close(f, c);
}

/* Last: no subscriber left from earlier tests once they have closed. */
static void test_subscriber_connections_go_with_the_client(void **state)
{
    fixture *f = *state;
    redisContext *admin = fixture_client(f);
    fixture_wait_reserved(admin, 0);
    redisContext *s = fixture_client(f);
    /* A pattern needs every shard. */
    expect_confirm(fixture_cmd(s, "PSUBSCRIBE gone:*"), "psubscribe", "gone:*", 1);
    assert_int_equal(fixture_reserved_connections(admin), FIXTURE_SHARDS);
    redisReply *r = fixture_cmd(admin, "CLIENT LIST TYPE pubsub");
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    assert_non_null(strstr(r->str, " psub=1 "));
    freeReplyObject(r);
    fixture_close(f, s);
    fixture_wait_reserved(admin, 0);
    fixture_expect_int(fixture_cmd(admin, "PUBSUB NUMPAT"), 0);
    /* Unsubscribing from everything closes them too. */
    s = fixture_client(f);
    char a[64];
    fixture_key_on_shard(s, "gone", 2, a, sizeof(a));
    expect_confirm(fixture_cmd(s, "SUBSCRIBE %s", a), "subscribe", a, 1);
    assert_int_equal(fixture_reserved_connections(admin), 1);
    expect_confirm(fixture_cmd(s, "UNSUBSCRIBE"), "unsubscribe", a, 0);
    fixture_wait_reserved(admin, 0);
    fixture_close(f, s);
    fixture_close(f, admin);
}

/* ---- a shard that stops answering (its own proxy: request_timeout) ---- */

/* Every shard running again, whatever a test left (it may have failed half
 * way with one stopped). */
static int resume_shards(void **state)
{
    fixture *f = *state;
    for (int i = 0; i < FIXTURE_SHARDS; i++) {
        if (f->shards[i].pid != 0) {
            kill(f->shards[i].pid, SIGCONT);
        }
    }
    return 0;
}

static int stalled_group_setup(void **state)
{
    char lines[64];
    snprintf(lines, sizeof(lines), "request_timeout = %d\n", REQUEST_TIMEOUT_MS);
    fixture *f = fixture_start(lines);
    *state = f;
    return f != NULL ? 0 : -1;
}

static int stalled_group_teardown(void **state)
{
    resume_shards(state);
    return fixture_stop(*state);
}

/* Sends what c has buffered without reading a reply. */
static void send_buffered(redisContext *c)
{
    int done = 0;
    while (!done) {
        assert_int_equal(redisBufferWrite(c, &done), REDIS_OK);
    }
}

static void test_stopped_shard_times_out_a_subscription_then_closes(void **state)
{
    fixture *f = *state;
    const int victim = 1; /* s2 */
    const int live = 0;
    redisContext *admin = fixture_client(f);
    char channel[64], live_key[64];
    fixture_key_on_shard(admin, "stalled", victim, channel, sizeof(channel));
    fixture_key_on_shard(admin, "live", live, live_key, sizeof(live_key));
    fixture_expect_status(fixture_cmd(admin, "SET %s v", live_key), "OK");
    long long timeouts_before = fixture_info_int(admin, "errors_shard_timeout");
    redisContext *sub = fixture_client(f);
    redisContext *psub = fixture_client(f);
    redisContext *bystander = fixture_client(f);

    /* A stopped process keeps its sockets open and never answers. Nothing
     * is asserted while it is stopped; the teardown resumes it anyway. */
    kill(f->shards[victim].pid, SIGSTOP);
    long long start = fixture_now_ms();
    /* A channel it owns, and a pattern, which every shard must take. */
    redisAppendCommand(sub, "SUBSCRIBE %s", channel);
    redisAppendCommand(psub, "PSUBSCRIBE stalled:*");
    send_buffered(sub);
    send_buffered(psub);
    /* Meanwhile another client's request to a healthy shard is served. */
    long long t0 = fixture_now_ms();
    redisReply *live_reply = redisCommand(bystander, "GET %s", live_key);
    long long live_ms = fixture_now_ms() - t0;
    redisReply *sub_reply = NULL, *psub_reply = NULL;
    int sub_rc = redisGetReply(sub, (void **)&sub_reply);
    long long sub_ms = fixture_now_ms() - start;
    int psub_rc = redisGetReply(psub, (void **)&psub_reply);
    long long psub_ms = fixture_now_ms() - start;
    /* Then each client is closed: its subscriptions on the shard are in
     * an unknown state. */
    redisReply *after = NULL, *psub_after = NULL;
    int after_rc = redisGetReply(sub, (void **)&after);
    long long closed_ms = fixture_now_ms() - start;
    int psub_after_rc = redisGetReply(psub, (void **)&psub_after);
    int sub_err = sub->err, psub_err = psub->err;
    kill(f->shards[victim].pid, SIGCONT);

    char error[128];
    snprintf(error, sizeof(error), "ERR shard s%d (127.0.0.1:%d) timeout", victim + 1,
             f->shards[victim].port);
    assert_non_null(live_reply);
    fixture_expect_str(live_reply, "v");
    if (live_ms > fixture_bound_ms(LIVE_LATENCY_MS)) {
        fail_msg("a healthy shard's GET took %lld ms while s%d was stopped", live_ms, victim + 1);
    }
    assert_int_equal(sub_rc, REDIS_OK);
    assert_int_equal(sub_reply->type, REDIS_REPLY_ERROR);
    assert_string_equal(sub_reply->str, error);
    freeReplyObject(sub_reply);
    assert_int_equal(psub_rc, REDIS_OK);
    assert_int_equal(psub_reply->type, REDIS_REPLY_ERROR);
    assert_string_equal(psub_reply->str, error);
    freeReplyObject(psub_reply);
    if (sub_ms < TIMEOUT_EARLIEST_MS || sub_ms > fixture_bound_ms(TIMEOUT_LATEST_MS) ||
        psub_ms < TIMEOUT_EARLIEST_MS || psub_ms > fixture_bound_ms(TIMEOUT_LATEST_MS)) {
        fail_msg("timeout errors after %lld and %lld ms (request_timeout %d ms)", sub_ms, psub_ms,
                 REQUEST_TIMEOUT_MS);
    }
    assert_int_equal(after_rc, REDIS_ERR);
    assert_null(after);
    assert_int_equal(sub_err, REDIS_ERR_EOF);
    assert_int_equal(psub_after_rc, REDIS_ERR);
    assert_null(psub_after);
    assert_int_equal(psub_err, REDIS_ERR_EOF);
    if (closed_ms - sub_ms > fixture_bound_ms(CLOSE_LATEST_MS)) {
        fail_msg("closed %lld ms after its error", closed_ms - sub_ms);
    }
    fixture_wait_log(&f->proxy, "no confirmation of client");
    fixture_wait_log(&f->proxy,
                     "a shard did not confirm a subscription change within request_timeout");
    assert_int_equal(fixture_info_int(admin, "errors_shard_timeout"), timeouts_before + 2);
    fixture_close(f, sub);
    fixture_close(f, psub);

    /* Every subscriber connection of the two clients closed, so the shard,
     * once awake, drops whatever it took of the changes. */
    fixture_wait_reserved(admin, 0);
    long long deadline = fixture_now_ms() + fixture_bound_ms(3000);
    long long numsub = -1;
    while (numsub != 0 && fixture_now_ms() < deadline) {
        redisReply *r = fixture_cmd(fixture_shard(f, victim), "PUBSUB NUMSUB %s", channel);
        fixture_expect_array(r, 2);
        numsub = r->element[1]->integer;
        freeReplyObject(r);
        if (numsub != 0) {
            fixture_sleep_ms(20);
        }
    }
    assert_int_equal(numsub, 0);
    /* And a new client subscribes there and hears a message. */
    sub = fixture_client(f);
    expect_confirm(fixture_cmd(sub, "SUBSCRIBE %s", channel), "subscribe", channel, 1);
    fixture_expect_int(fixture_cmd(admin, "PUBLISH %s back", channel), 1);
    expect_message(fixture_next_reply(sub), NULL, channel, "back");
    fixture_close(f, sub);
    fixture_close(f, bystander);
    fixture_close(f, admin);
}

/* ---- subscribers that stop reading (their own proxy) ---- */

static int slow_group_setup(void **state)
{
    fixture *f = fixture_start("max_pubsub_output = " STALL_OUTPUT_MAX "\n");
    *state = f;
    return f != NULL ? 0 : -1;
}

/* Reads and discards what fd receives until the proxy closes it; 1 when it
 * did within the deadline. */
static int drained_until_closed(int fd, long long deadline_ms)
{
    static char sink[64 * 1024];
    int closed = 0;
    while (!closed && fixture_now_ms() < deadline_ms) {
        fixture_raw_read(fd, sink, sizeof(sink), sizeof(sink) - 1, 200, &closed);
    }
    return closed;
}

static void test_stalled_subscribers_are_closed_and_memory_bounded(void **state)
{
    fixture *f = *state;
    redisContext *admin = fixture_client(f);
    redisContext *healthy = fixture_client(f);
    char stall[64], calm[64];
    fixture_key_on_shard(admin, "stall", 0, stall, sizeof(stall));
    fixture_key_on_shard(admin, "calm", 1, calm, sizeof(calm));
    long long dropped_before = fixture_info_int(admin, "clients_dropped");
    expect_confirm(fixture_cmd(healthy, "SUBSCRIBE %s", calm), "subscribe", calm, 1);

    /* Ten subscribers that read their confirmation, then nothing more. */
    char subscribe[160], confirmation[160];
    int sub_len = snprintf(subscribe, sizeof(subscribe), "*2\r\n$9\r\nSUBSCRIBE\r\n$%zu\r\n%s\r\n",
                           strlen(stall), stall);
    int conf_len = snprintf(confirmation, sizeof(confirmation),
                            "*3\r\n$9\r\nsubscribe\r\n$%zu\r\n%s\r\n:1\r\n", strlen(stall), stall);
    int fds[STALLED_SUBSCRIBERS];
    for (int i = 0; i < STALLED_SUBSCRIBERS; i++) {
        fds[i] = fixture_raw_connect(f->proxy.port);
        assert_true(fds[i] >= 0);
        int small = 64 * 1024;
        setsockopt(fds[i], SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
        assert_int_equal(fixture_raw_send(fds[i], subscribe, (size_t)sub_len), 0);
        char got[160];
        int closed = 0;
        size_t n = fixture_raw_read(fds[i], got, sizeof(got), (size_t)conf_len,
                                    (int)fixture_bound_ms(2000), &closed);
        assert_int_equal(n, conf_len);
        assert_memory_equal(got, confirmation, (size_t)conf_len);
    }

    /* The flood, pipelined in batches; one message to the healthy
     * subscriber's channel in the middle of it. */
    char *payload = fixture_alloc(f, STALL_MESSAGE_LEN);
    memset(payload, 'm', STALL_MESSAGE_LEN);
    long peak = 0;
    for (int sent = 0; sent < STALL_MESSAGES; sent += STALL_BATCH) {
        for (int i = 0; i < STALL_BATCH; i++) {
            redisAppendCommand(admin, "PUBLISH %s %b", stall, payload, (size_t)STALL_MESSAGE_LEN);
        }
        for (int i = 0; i < STALL_BATCH; i++) {
            redisReply *r = fixture_next_reply(admin);
            assert_int_equal(r->type, REDIS_REPLY_INTEGER);
            freeReplyObject(r);
        }
        if (sent == STALL_MESSAGES / 2) {
            fixture_expect_int(fixture_cmd(admin, "PUBLISH %s during", calm), 1);
        }
        long rss = fixture_rss_kib(f->proxy.pid);
        peak = rss > peak ? rss : peak;
    }

    /* Every stalled subscriber is closed, the reason logged and counted,
     * and its subscriber connection goes from the shard. */
    long long deadline = fixture_now_ms() + fixture_bound_ms(STALL_DEADLINE_MS);
    for (int i = 0; i < STALLED_SUBSCRIBERS; i++) {
        if (!drained_until_closed(fds[i], deadline)) {
            fail_msg("stalled subscriber %d is still connected after %d messages of %d bytes", i,
                     STALL_MESSAGES, STALL_MESSAGE_LEN);
        }
        close(fds[i]);
    }
    fixture_wait_log(&f->proxy, "max_pubsub_output");
    fixture_wait_info_at_least(admin, "clients_dropped", dropped_before + STALLED_SUBSCRIBERS);
    long long numsub = -1;
    while (numsub != 0 && fixture_now_ms() < deadline) {
        redisReply *r = fixture_cmd(fixture_shard(f, 0), "PUBSUB NUMSUB %s", stall);
        numsub = r->element[1]->integer;
        freeReplyObject(r);
        if (numsub != 0) {
            fixture_sleep_ms(20);
        }
    }
    assert_int_equal(numsub, 0);

    /* The healthy subscriber heard everything sent to it and is still
     * subscribed; ordinary clients are served. */
    expect_message(fixture_next_reply(healthy), NULL, calm, "during");
    fixture_expect_int(fixture_cmd(admin, "PUBLISH %s after", calm), 1);
    expect_message(fixture_next_reply(healthy), NULL, calm, "after");
    fixture_expect_status(fixture_cmd(admin, "SET stall:after ok"), "OK");
    fixture_expect_str(fixture_cmd(admin, "GET stall:after"), "ok");

    long hwm = fixture_peak_rss_kib(f->proxy.pid);
    if (!fixture_memory_instrumented(f->proxy.pid) && hwm > STALL_PEAK_KIB) {
        fail_msg("proxy peak RSS %ld KiB (sampled %ld) with %d stalled subscribers and "
                 "max_pubsub_output = %s, bound %d KiB",
                 hwm, peak, STALLED_SUBSCRIBERS, STALL_OUTPUT_MAX, STALL_PEAK_KIB);
    }
    print_message("proxy peak RSS %ld KiB with %d stalled subscribers\n", hwm, STALLED_SUBSCRIBERS);
    fixture_free(f, payload);
    fixture_close(f, healthy);
    fixture_close(f, admin);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_subscribers_on_every_shard),
        cmocka_unit_test(test_patterns_hear_every_shard),
        cmocka_unit_test(test_counts_are_the_clients_totals),
        cmocka_unit_test(test_subscribed_mode_allows_only_pubsub_commands),
        cmocka_unit_test(test_messages_arrive_in_order),
        cmocka_unit_test(test_pubsub_introspection_merges_shards),
        cmocka_unit_test(test_subscriber_connections_go_with_the_client),
    };
    const struct CMUnitTest stalled_tests[] = {
        cmocka_unit_test_teardown(test_stopped_shard_times_out_a_subscription_then_closes,
                                  resume_shards),
    };
    const struct CMUnitTest slow_tests[] = {
        cmocka_unit_test(test_stalled_subscribers_are_closed_and_memory_bounded),
    };
    int failed = cmocka_run_group_tests_name("pubsub", tests, group_setup, group_teardown);
    failed += cmocka_run_group_tests_name("pubsub with a stalled shard", stalled_tests,
                                          stalled_group_setup, stalled_group_teardown);
    failed += cmocka_run_group_tests_name("pubsub with stalled subscribers", slow_tests,
                                          slow_group_setup, group_teardown);
    return failed;
}
