/* RESP3 through the proxy, read as raw bytes (hiredis 0.14 cannot parse
 * RESP3). The oracle is Redis itself: for a command on one shard, the
 * proxy's answer to a RESP3 client must be byte for byte what the owning
 * shard answers a RESP3 client of its own (maps, sets, doubles, nulls,
 * booleans, big numbers, verbatim strings, push messages). What the proxy
 * makes itself (HELLO's map, merged MGET / DEL / EXISTS, CONFIG GET, INFO,
 * errors) is checked against the bytes Redis 7 would send. RESP2 clients
 * of the same proxy see what they always saw. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "fixture.h"

/* Largest reply a test here reads. */
#define RAW_CAP (64 * 1024)

/* A raw connection and the bytes read from it but not taken yet. */
typedef struct raw_conn {
    int fd;
    char in[RAW_CAP];
    size_t len;
} raw_conn;

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

static raw_conn *raw_open(fixture *f, int port)
{
    raw_conn *c = fixture_alloc(f, sizeof(*c));
    c->fd = fixture_raw_connect(port);
    if (c->fd < 0)
        fail_msg("cannot connect to port %d", port);
    return c;
}

static void raw_close(fixture *f, raw_conn *c)
{
    close(c->fd);
    fixture_free(f, c);
}

/* Length of the whole RESP3 element at p (n bytes there), 0 while it is
 * incomplete. Written apart from the proxy's scanner, so the two check
 * each other. */
static size_t frame_len(const char *p, size_t n)
{
    const char *cr = n ? memchr(p, '\r', n) : NULL;
    if (!cr || (size_t)(cr - p) + 2 > n)
        return 0;
    size_t head = (size_t)(cr - p) + 2;
    long long count = strtoll(p + 1, NULL, 10);
    switch (p[0]) {
    case '$':
    case '=':
    case '!':
        if (count < 0)
            return head;
        return n >= head + (size_t)count + 2 ? head + (size_t)count + 2 : 0;
    case '*':
    case '~':
    case '>':
    case '%':
    case '|': {
        if (count < 0)
            return head;
        long long elements = p[0] == '%' || p[0] == '|' ? 2 * count : count;
        if (p[0] == '|')
            elements++; /* the reply the attribute annotates */
        size_t at = head;
        for (long long i = 0; i < elements; i++) {
            size_t e = frame_len(p + at, n - at);
            if (!e)
                return 0;
            at += e;
        }
        return at;
    }
    default: /* + - : , ( _ # : one line */
        return head;
    }
}

/* Reads the next whole reply into out (NUL-terminated); fails the test when
 * none comes within the bound. Returns its length. */
static size_t raw_reply(raw_conn *c, char *out, size_t cap)
{
    long long deadline = fixture_now_ms() + fixture_bound_ms(3000);
    size_t n;
    while ((n = frame_len(c->in, c->len)) == 0) {
        if (fixture_now_ms() > deadline || c->len == sizeof(c->in))
            fail_msg("no whole reply; have %zu bytes: %.*s", c->len, (int)c->len, c->in);
        int closed = 0;
        char chunk[4096];
        size_t got = fixture_raw_read(c->fd, chunk, sizeof(chunk), 1, 100, &closed);
        if (got > sizeof(c->in) - c->len)
            got = sizeof(c->in) - c->len;
        memcpy(c->in + c->len, chunk, got);
        c->len += got;
        if (closed && frame_len(c->in, c->len) == 0)
            fail_msg("connection closed; have %zu bytes: %.*s", c->len, (int)c->len, c->in);
    }
    if (n >= cap)
        fail_msg("reply of %zu bytes over %zu", n, cap);
    memcpy(out, c->in, n);
    out[n] = '\0';
    memmove(c->in, c->in + n, c->len - n);
    c->len -= n;
    return n;
}

/* Sends one command, its arguments given as NULL-terminated strings. */
static void raw_send(raw_conn *c, ...)
{
    const char *args[32];
    size_t argc = 0;
    va_list ap;
    va_start(ap, c);
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL && argc < 32)
        args[argc++] = a;
    va_end(ap);
    char req[4096];
    int len = snprintf(req, sizeof(req), "*%zu\r\n", argc);
    for (size_t i = 0; i < argc; i++)
        len += snprintf(req + len, sizeof(req) - (size_t)len, "$%zu\r\n%s\r\n", strlen(args[i]),
                        args[i]);
    assert_true(len < (int)sizeof(req));
    assert_int_equal(fixture_raw_send(c->fd, req, (size_t)len), 0);
}

/* The next reply must be exactly want. */
static void expect_reply(raw_conn *c, const char *want)
{
    static char got[RAW_CAP];
    raw_reply(c, got, sizeof(got));
    if (strcmp(got, want) != 0)
        fail_msg("got   %s\nwant  %s", got, want);
}

/* The next reply must start with prefix. */
static void expect_prefix(raw_conn *c, const char *prefix)
{
    static char got[RAW_CAP];
    raw_reply(c, got, sizeof(got));
    if (strncmp(got, prefix, strlen(prefix)) != 0)
        fail_msg("got   %s\nwant  %s...", got, prefix);
}

/* A RESP3 connection: HELLO 3 answered with a map. */
static raw_conn *resp3_open(fixture *f, int port)
{
    raw_conn *c = raw_open(f, port);
    raw_send(c, "HELLO", "3", NULL);
    expect_prefix(c, "%7\r\n");
    return c;
}

static void test_hello3_answers_a_map_and_hello2_goes_back(void **state)
{
    fixture *f = *state;
    raw_conn *c = raw_open(f, f->proxy.port);
    raw_send(c, "HELLO", "3", NULL);
    char got[1024];
    raw_reply(c, got, sizeof(got));
    /* redis-py and node-redis read proto and version from this map. */
    assert_non_null(strstr(got, "$6\r\nserver\r\n$9\r\nringproxy\r\n"));
    assert_non_null(strstr(got, "$7\r\nversion\r\n$5\r\n7.0.0\r\n"));
    assert_non_null(strstr(got, "$5\r\nproto\r\n:3\r\n"));
    assert_non_null(strstr(got, "$7\r\nmodules\r\n*0\r\n"));
    assert_int_equal(strncmp(got, "%7\r\n", 4), 0);
    raw_send(c, "GET", "resp3:missing", NULL);
    expect_reply(c, "_\r\n");
    raw_send(c, "HELLO", "2", NULL);
    raw_reply(c, got, sizeof(got));
    assert_int_equal(strncmp(got, "*14\r\n", 5), 0);
    assert_non_null(strstr(got, "$5\r\nproto\r\n:2\r\n"));
    raw_send(c, "GET", "resp3:missing", NULL);
    expect_reply(c, "$-1\r\n");
    raw_send(c, "HELLO", "4", NULL);
    expect_reply(c, "-NOPROTO sorry, this protocol version is not supported\r\n");
    /* Not while WATCHed keys hold a shard connection in RESP2. */
    raw_send(c, "WATCH", "resp3:w", NULL);
    expect_reply(c, "+OK\r\n");
    raw_send(c, "HELLO", "3", NULL);
    expect_prefix(c, "-ERR ringproxy cannot switch the protocol");
    raw_send(c, "UNWATCH", NULL);
    expect_reply(c, "+OK\r\n");
    /* RESET goes back to RESP2, as in Redis 7. */
    raw_send(c, "HELLO", "3", NULL);
    expect_prefix(c, "%7\r\n");
    raw_send(c, "RESET", NULL);
    expect_reply(c, "+RESET\r\n");
    raw_send(c, "GET", "resp3:missing", NULL);
    expect_reply(c, "$-1\r\n");
    raw_close(f, c);
}

/* Sends the same command (up to 6 arguments, NULL-terminated) to the proxy
 * and to the shard that owns key, both RESP3 connections, and compares the
 * replies byte for byte. */
static void same_as_shard(redisContext *ring, raw_conn *proxy, raw_conn **direct, const char *key,
                          ...)
{
    int owner = fixture_owner(ring, key, strlen(key));
    const char *a[7] = {0};
    va_list ap;
    va_start(ap, key);
    for (size_t i = 0; i < 7 && (a[i] = va_arg(ap, const char *)) != NULL; i++)
        assert_true(i < 6);
    va_end(ap);
    char want[RAW_CAP], got[RAW_CAP];
    raw_send(direct[owner], a[0], a[1], a[2], a[3], a[4], a[5], (const char *)NULL);
    raw_reply(direct[owner], want, sizeof(want));
    raw_send(proxy, a[0], a[1], a[2], a[3], a[4], a[5], (const char *)NULL);
    raw_reply(proxy, got, sizeof(got));
    if (strcmp(got, want) != 0)
        fail_msg("%s: proxy %s\nshard %s", a[0], got, want);
}

static void test_single_shard_replies_are_the_shards_own(void **state)
{
    fixture *f = *state;
    redisContext *setup = fixture_client(f);
    fixture_expect_int(fixture_cmd(setup, "HSET r3:h a 1 b 2"), 2);
    fixture_expect_int(fixture_cmd(setup, "SADD r3:s x y"), 2);
    fixture_expect_int(fixture_cmd(setup, "ZADD r3:z 1.5 m 2 n"), 2);
    fixture_expect_status(fixture_cmd(setup, "SET r3:k v"), "OK");
    raw_conn *proxy = resp3_open(f, f->proxy.port);
    raw_conn *direct[FIXTURE_SHARDS];
    for (int i = 0; i < FIXTURE_SHARDS; i++)
        direct[i] = resp3_open(f, f->shards[i].port);

    same_as_shard(setup, proxy, direct, "r3:h", "HGETALL", "r3:h", NULL);     /* map */
    same_as_shard(setup, proxy, direct, "r3:s", "SMEMBERS", "r3:s", NULL);    /* set */
    same_as_shard(setup, proxy, direct, "r3:z", "ZSCORE", "r3:z", "m", NULL); /* double */
    same_as_shard(setup, proxy, direct, "r3:z", "ZRANGE", "r3:z", "0", "-1", "WITHSCORES", NULL);
    same_as_shard(setup, proxy, direct, "r3:none", "GET", "r3:none", NULL);     /* null */
    same_as_shard(setup, proxy, direct, "r3:none", "HGETALL", "r3:none", NULL); /* empty map */
    same_as_shard(setup, proxy, direct, "r3:k", "EXISTS", "r3:k", NULL);
    same_as_shard(setup, proxy, direct, "r3:k", "OBJECT", "ENCODING", "r3:k", NULL);
    same_as_shard(setup, proxy, direct, "r3:k", "HGET", "r3:k", "f", NULL); /* error */
    /* Lua's RESP3 types: boolean, double, big number, verbatim string. */
    same_as_shard(setup, proxy, direct, "r3:k", "EVAL", "redis.setresp(3) return true", "1", "r3:k",
                  NULL);
    same_as_shard(setup, proxy, direct, "r3:k", "EVAL", "return {double=3.5}", "1", "r3:k", NULL);
    same_as_shard(setup, proxy, direct, "r3:k", "EVAL",
                  "return {big_number='123456789012345678901234567890'}", "1", "r3:k", NULL);
    same_as_shard(setup, proxy, direct, "r3:k", "EVAL",
                  "return {verbatim_string={format='txt', string='hi'}}", "1", "r3:k", NULL);
    /* A shard's RESP3 CONFIG GET is a map; so is the proxy's. */
    raw_send(direct[0], "CONFIG", "GET", "maxmemory-policy", NULL);
    char want[512];
    raw_reply(direct[0], want, sizeof(want));
    raw_send(proxy, "CONFIG", "GET", "maxmemory-policy", NULL);
    expect_reply(proxy, want);
    for (int i = 0; i < FIXTURE_SHARDS; i++)
        raw_close(f, direct[i]);
    raw_close(f, proxy);
}

static void test_proxy_made_replies_are_resp3(void **state)
{
    fixture *f = *state;
    redisContext *setup = fixture_client(f);
    char a[64], b[64], none[64];
    fixture_key_on_shard(setup, "r3m", 0, a, sizeof(a));
    fixture_key_on_shard(setup, "r3m", 1, b, sizeof(b));
    fixture_key_on_shard(setup, "r3none", 2, none, sizeof(none));
    fixture_expect_status(fixture_cmd(setup, "SET %s A", a), "OK");
    fixture_expect_status(fixture_cmd(setup, "SET %s B", b), "OK");
    raw_conn *c = resp3_open(f, f->proxy.port);

    /* MGET across shards: an array with RESP3's null for the missing key. */
    raw_send(c, "MGET", a, none, b, NULL);
    expect_reply(c, "*3\r\n$1\r\nA\r\n_\r\n$1\r\nB\r\n");
    raw_send(c, "EXISTS", a, b, none, NULL);
    expect_reply(c, ":2\r\n");
    raw_send(c, "CLIENT", "GETNAME", NULL);
    expect_reply(c, "_\r\n");
    raw_send(c, "CLIENT", "SETNAME", "r3name", NULL);
    expect_reply(c, "+OK\r\n");
    /* Text replies are verbatim strings, as Redis 7 sends them. */
    raw_send(c, "INFO", "server", NULL);
    expect_prefix(c, "=");
    raw_send(c, "CLIENT", "INFO", NULL);
    char got[4096];
    raw_reply(c, got, sizeof(got));
    assert_int_equal(got[0], '=');
    assert_non_null(strstr(got, "txt:id="));
    assert_non_null(strstr(got, "name=r3name"));
    /* The proxy's own CONFIG GET keys: a map of one entry. */
    raw_send(c, "CONFIG", "GET", "max_clients", NULL);
    expect_reply(c, "%1\r\n$11\r\nmax_clients\r\n$5\r\n10000\r\n");
    raw_send(c, "DEL", a, b, none, NULL);
    expect_reply(c, ":2\r\n");
    raw_send(c, "MGET", a, b, NULL);
    expect_reply(c, "*2\r\n_\r\n_\r\n");
    /* Errors are the same lines in both protocols. */
    raw_send(c, "NOSUCHCOMMAND", NULL);
    expect_prefix(c, "-ERR unknown command 'NOSUCHCOMMAND'");
    raw_send(c, "GET", NULL);
    expect_reply(c, "-ERR wrong number of arguments for 'get' command\r\n");
    raw_send(c, "RENAME", a, b, NULL);
    expect_prefix(c, "-CROSSSLOT ");
    /* Client-side caching stays unsupported, with a clear error. */
    raw_send(c, "CLIENT", "TRACKING", "on", NULL);
    expect_reply(c, "-ERR unsupported command 'client|tracking' in ringproxy\r\n");
    raw_close(f, c);
}

static void test_pubsub_messages_are_push_frames(void **state)
{
    fixture *f = *state;
    redisContext *pub = fixture_client(f);
    int owner = fixture_owner(pub, "r3ch", 4);
    raw_conn *proxy = resp3_open(f, f->proxy.port);
    raw_conn *direct = resp3_open(f, f->shards[owner].port);
    char want[512];
    raw_send(direct, "SUBSCRIBE", "r3ch", NULL);
    raw_reply(direct, want, sizeof(want));
    raw_send(proxy, "SUBSCRIBE", "r3ch", NULL);
    expect_reply(proxy, want); /* >3 subscribe r3ch :1 */
    fixture_expect_int(fixture_cmd(pub, "PUBLISH r3ch hello"), 2);
    raw_reply(direct, want, sizeof(want));
    assert_int_equal(want[0], '>');
    expect_reply(proxy, want); /* >3 message r3ch hello */
    /* RESP3 lets a subscribed client run commands, as Redis does; its
     * PING answers as outside subscribed mode. */
    raw_send(proxy, "SET", "r3:sub", "1", NULL);
    expect_reply(proxy, "+OK\r\n");
    raw_send(proxy, "PING", NULL);
    expect_reply(proxy, "+PONG\r\n");
    /* A pattern's messages too; the confirmations carry the client's total. */
    raw_send(proxy, "PSUBSCRIBE", "r3c*", NULL);
    expect_reply(proxy, ">3\r\n$10\r\npsubscribe\r\n$4\r\nr3c*\r\n:2\r\n");
    fixture_expect_int(fixture_cmd(pub, "PUBLISH r3ch again"), 3);
    char first[512], second[512];
    raw_reply(proxy, first, sizeof(first));
    raw_reply(proxy, second, sizeof(second));
    const char *msg = ">3\r\n$7\r\nmessage\r\n$4\r\nr3ch\r\n$5\r\nagain\r\n";
    const char *pmsg = ">4\r\n$8\r\npmessage\r\n$4\r\nr3c*\r\n$4\r\nr3ch\r\n$5\r\nagain\r\n";
    assert_true((strcmp(first, msg) == 0 && strcmp(second, pmsg) == 0) ||
                (strcmp(first, pmsg) == 0 && strcmp(second, msg) == 0));
    /* Switching protocol with subscriptions open is refused. */
    raw_send(proxy, "HELLO", "2", NULL);
    expect_prefix(proxy, "-ERR ringproxy cannot switch the protocol");
    raw_send(proxy, "UNSUBSCRIBE", NULL);
    expect_reply(proxy, ">3\r\n$11\r\nunsubscribe\r\n$4\r\nr3ch\r\n:1\r\n");
    raw_send(proxy, "PUNSUBSCRIBE", NULL);
    expect_reply(proxy, ">3\r\n$12\r\npunsubscribe\r\n$4\r\nr3c*\r\n:0\r\n");
    raw_send(proxy, "UNSUBSCRIBE", NULL);
    expect_reply(proxy, ">3\r\n$11\r\nunsubscribe\r\n_\r\n:0\r\n");
    raw_close(f, direct);
    raw_close(f, proxy);
}

static void test_transactions_and_blocking_speak_resp3(void **state)
{
    fixture *f = *state;
    raw_conn *c = resp3_open(f, f->proxy.port);
    int owner = fixture_owner(fixture_client(f), "{r3t}", 5);
    raw_conn *direct = resp3_open(f, f->shards[owner].port);
    raw_send(c, "MULTI", NULL);
    expect_reply(c, "+OK\r\n");
    raw_send(c, "HSET", "{r3t}h", "f", "1", NULL);
    expect_reply(c, "+QUEUED\r\n");
    raw_send(c, "HGETALL", "{r3t}h", NULL);
    expect_reply(c, "+QUEUED\r\n");
    raw_send(c, "EXEC", NULL);
    expect_reply(c, "*2\r\n:1\r\n%1\r\n$1\r\nf\r\n$1\r\n1\r\n");
    /* A blocking command's timeout: RESP3's null, as the shard sends it. */
    char want[64];
    raw_send(direct, "BLPOP", "{r3t}list", "0.1", NULL);
    raw_reply(direct, want, sizeof(want));
    raw_send(c, "BLPOP", "{r3t}list", "0.1", NULL);
    expect_reply(c, want);
    assert_string_equal(want, "_\r\n");
    raw_send(c, "RPUSH", "{r3t}list", "x", NULL);
    expect_reply(c, ":1\r\n");
    raw_send(c, "BLPOP", "{r3t}list", "1", NULL);
    expect_reply(c, "*2\r\n$9\r\n{r3t}list\r\n$1\r\nx\r\n");
    raw_close(f, direct);
    raw_close(f, c);
}

/* RESP2 clients of the proxy that also serves RESP3 ones see what a RESP2
 * client of Redis sees, byte for byte. */
static void test_resp2_clients_are_unchanged(void **state)
{
    fixture *f = *state;
    raw_conn *r3 = resp3_open(f, f->proxy.port);
    raw_send(r3, "HSET", "r3:h2", "a", "1", NULL);
    expect_reply(r3, ":1\r\n");
    int owner = fixture_owner(fixture_client(f), "r3:h2", 5);
    raw_conn *r2 = raw_open(f, f->proxy.port);
    raw_conn *direct = raw_open(f, f->shards[owner].port);
    const char *cmds[][3] = {{"HGETALL", "r3:h2", NULL},
                             {"GET", "r3:none", NULL},
                             {"SMEMBERS", "r3:h2", NULL},
                             {"HGET", "r3:h2", "a"}};
    for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
        char want[1024];
        raw_send(direct, cmds[i][0], cmds[i][1], cmds[i][2], NULL);
        raw_reply(direct, want, sizeof(want));
        raw_send(r2, cmds[i][0], cmds[i][1], cmds[i][2], NULL);
        expect_reply(r2, want);
    }
    raw_send(r2, "CONFIG", "GET", "max_clients", NULL);
    expect_reply(r2, "*2\r\n$11\r\nmax_clients\r\n$5\r\n10000\r\n");
    raw_send(r2, "CLIENT", "GETNAME", NULL);
    expect_reply(r2, "$-1\r\n");
    raw_send(r2, "INFO", "server", NULL);
    expect_prefix(r2, "$");
    raw_send(r2, "MGET", "r3:none", "r3:h2x", NULL);
    expect_reply(r2, "*2\r\n$-1\r\n$-1\r\n");
    raw_close(f, direct);
    raw_close(f, r2);
    raw_close(f, r3);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hello3_answers_a_map_and_hello2_goes_back),
        cmocka_unit_test(test_single_shard_replies_are_the_shards_own),
        cmocka_unit_test(test_proxy_made_replies_are_resp3),
        cmocka_unit_test(test_pubsub_messages_are_push_frames),
        cmocka_unit_test(test_transactions_and_blocking_speak_resp3),
        cmocka_unit_test(test_resp2_clients_are_unchanged),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
