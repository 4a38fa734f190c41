/* Pub/sub through the proxy, across four shards: PUBLISH goes to the
 * channel's owner and SUBSCRIBE listens there, PSUBSCRIBE listens on every
 * shard, confirmations carry the client's total subscription count as one
 * Redis would, messages arrive in RESP2 push format and in order, a
 * subscribed client may only (un)subscribe, PING, QUIT and RESET, PUBSUB
 * CHANNELS/NUMSUB/NUMPAT merge the shards, and the subscriber connections
 * go with the client. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "fixture.h"

#define ORDERED_MESSAGES 200

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

/* Reserved (here: subscriber) connections open to all shards, from INFO
 * shards. */
static int reserved_connections(redisContext *c)
{
    redisReply *r = fixture_cmd(c, "INFO shards");
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    int total = 0;
    for (const char *p = strstr(r->str, "reserved="); p; p = strstr(p + 1, "reserved=")) {
        total += atoi(p + 9);
    }
    freeReplyObject(r);
    return total;
}

/* Polls until `want` reserved connections are open (bounded: 3 s, times
 * the harness timeout scale). */
static void wait_reserved(redisContext *c, int want)
{
    long long deadline = fixture_now_ms() + 3000 * harness_timeout_scale();
    int now;
    while ((now = reserved_connections(c)) != want && fixture_now_ms() < deadline) {
        fixture_sleep_ms(20);
    }
    assert_int_equal(now, want);
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
    redisFree(s);
    redisFree(p);
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
    redisFree(s);
    redisFree(p);
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
    redisFree(s);
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
    redisFree(p);
    /* QUIT answers and closes, subscribed or not. */
    expect_confirm(fixture_cmd(s, "SUBSCRIBE mode"), "subscribe", "mode", 1);
    fixture_expect_status(fixture_cmd(s, "QUIT"), "OK");
    redisFree(s);
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
    redisFree(s);
    redisFree(p);
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
    redisFree(s1);
    redisFree(s2);
    redisFree(c);
}

/* Last: no subscriber left from earlier tests once they have closed. */
static void test_subscriber_connections_go_with_the_client(void **state)
{
    fixture *f = *state;
    redisContext *admin = fixture_client(f);
    wait_reserved(admin, 0);
    redisContext *s = fixture_client(f);
    /* A pattern needs every shard. */
    expect_confirm(fixture_cmd(s, "PSUBSCRIBE gone:*"), "psubscribe", "gone:*", 1);
    assert_int_equal(reserved_connections(admin), FIXTURE_SHARDS);
    redisReply *r = fixture_cmd(admin, "CLIENT LIST TYPE pubsub");
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    assert_non_null(strstr(r->str, " psub=1 "));
    freeReplyObject(r);
    redisFree(s);
    wait_reserved(admin, 0);
    fixture_expect_int(fixture_cmd(admin, "PUBSUB NUMPAT"), 0);
    /* Unsubscribing from everything closes them too. */
    s = fixture_client(f);
    char a[64];
    fixture_key_on_shard(s, "gone", 2, a, sizeof(a));
    expect_confirm(fixture_cmd(s, "SUBSCRIBE %s", a), "subscribe", a, 1);
    assert_int_equal(reserved_connections(admin), 1);
    expect_confirm(fixture_cmd(s, "UNSUBSCRIBE"), "unsubscribe", a, 0);
    wait_reserved(admin, 0);
    redisFree(s);
    redisFree(admin);
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
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
