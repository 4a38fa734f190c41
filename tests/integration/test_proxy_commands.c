/* ringproxy answers single-key commands of every data type as Redis would,
 * from the shard that owns the key; keys and values are binary safe up to
 * 64 MiB; commands it answers itself, unsupported and unknown ones, and
 * cross-shard ones get the documented replies and leave the connection
 * usable. Four real redis-server shards behind one proxy. */
#include <ctype.h>
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

#define MIB (1024 * 1024)

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

/* Fails unless key is on its PROXY RING owner and on no other shard. */
static void expect_on_owner_only(fixture *f, redisContext *c, const char *key)
{
    int owner = fixture_owner(c, key, strlen(key));
    unsigned holders = fixture_holders(f, key, strlen(key));
    if (holders != 1u << owner) {
        fail_msg("key %s: owner s%d, held by shard mask %#x", key, owner + 1, holders);
    }
}

static void test_strings(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);

    fixture_expect_status(fixture_cmd(c, "SET str:a hello"), "OK");
    fixture_expect_str(fixture_cmd(c, "GET str:a"), "hello");
    fixture_expect_int(fixture_cmd(c, "APPEND str:a %s", " world"), 11);
    fixture_expect_int(fixture_cmd(c, "STRLEN str:a"), 11);
    fixture_expect_str(fixture_cmd(c, "GETRANGE str:a 0 4"), "hello");
    fixture_expect_int(fixture_cmd(c, "SETRANGE str:a 6 WORLD"), 11);
    fixture_expect_str(fixture_cmd(c, "GET str:a"), "hello WORLD");
    fixture_expect_nil(fixture_cmd(c, "SET str:a x NX"));
    fixture_expect_str(fixture_cmd(c, "SET str:a again XX GET"), "hello WORLD");
    fixture_expect_str(fixture_cmd(c, "GETSET str:a third"), "again");
    fixture_expect_int(fixture_cmd(c, "SETNX str:b first"), 1);
    fixture_expect_int(fixture_cmd(c, "SETNX str:b second"), 0);
    fixture_expect_str(fixture_cmd(c, "GETDEL str:b"), "first");
    fixture_expect_nil(fixture_cmd(c, "GET str:b"));

    fixture_expect_int(fixture_cmd(c, "INCR str:n"), 1);
    fixture_expect_int(fixture_cmd(c, "INCRBY str:n 41"), 42);
    fixture_expect_int(fixture_cmd(c, "DECR str:n"), 41);
    fixture_expect_int(fixture_cmd(c, "DECRBY str:n 40"), 1);
    fixture_expect_str(fixture_cmd(c, "INCRBYFLOAT str:n 0.5"), "1.5");
    fixture_expect_error(fixture_cmd(c, "INCR str:a"), "ERR value is not an integer");
    fixture_expect_status(fixture_cmd(c, "TYPE str:a"), "string");

    expect_on_owner_only(f, c, "str:a");
    expect_on_owner_only(f, c, "str:n");
    int owner = fixture_owner(c, "str:n", 5);
    fixture_expect_str(fixture_cmd(fixture_shard(f, owner), "GET str:n"), "1.5");
    fixture_close(f, c);
}

static void test_hashes(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);

    fixture_expect_int(fixture_cmd(c, "HSET hash:h f1 v1 f2 v2 f3 v3"), 3);
    fixture_expect_str(fixture_cmd(c, "HGET hash:h f2"), "v2");
    fixture_expect_nil(fixture_cmd(c, "HGET hash:h nope"));
    redisReply *r = fixture_cmd(c, "HMGET hash:h f3 nope f1");
    fixture_expect_array(r, 3);
    assert_string_equal(r->element[0]->str, "v3");
    assert_int_equal(r->element[1]->type, REDIS_REPLY_NIL);
    assert_string_equal(r->element[2]->str, "v1");
    freeReplyObject(r);
    r = fixture_cmd(c, "HGETALL hash:h");
    fixture_expect_array(r, 6);
    freeReplyObject(r);
    fixture_expect_int(fixture_cmd(c, "HINCRBY hash:h counter 5"), 5);
    fixture_expect_int(fixture_cmd(c, "HEXISTS hash:h f1"), 1);
    fixture_expect_int(fixture_cmd(c, "HDEL hash:h f1 nope"), 1);
    fixture_expect_int(fixture_cmd(c, "HLEN hash:h"), 3);
    fixture_expect_status(fixture_cmd(c, "TYPE hash:h"), "hash");

    expect_on_owner_only(f, c, "hash:h");
    int owner = fixture_owner(c, "hash:h", 6);
    fixture_expect_int(fixture_cmd(fixture_shard(f, owner), "HLEN hash:h"), 3);
    fixture_close(f, c);
}

static void test_lists(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);

    fixture_expect_int(fixture_cmd(c, "RPUSH list:l b c d"), 3);
    fixture_expect_int(fixture_cmd(c, "LPUSH list:l a"), 4);
    redisReply *r = fixture_cmd(c, "LRANGE list:l 0 -1");
    fixture_expect_array(r, 4);
    const char *want[] = {"a", "b", "c", "d"};
    for (size_t i = 0; i < 4; i++) {
        assert_string_equal(r->element[i]->str, want[i]);
    }
    freeReplyObject(r);
    fixture_expect_str(fixture_cmd(c, "LINDEX list:l 2"), "c");
    fixture_expect_status(fixture_cmd(c, "LSET list:l 1 B"), "OK");
    fixture_expect_int(fixture_cmd(c, "LPOS list:l B"), 1);
    fixture_expect_str(fixture_cmd(c, "LPOP list:l"), "a");
    fixture_expect_str(fixture_cmd(c, "RPOP list:l"), "d");
    fixture_expect_int(fixture_cmd(c, "LLEN list:l"), 2);
    fixture_expect_int(fixture_cmd(c, "LREM list:l 0 B"), 1);
    fixture_expect_status(fixture_cmd(c, "LTRIM list:l 0 0"), "OK");
    fixture_expect_status(fixture_cmd(c, "TYPE list:l"), "list");

    expect_on_owner_only(f, c, "list:l");
    int owner = fixture_owner(c, "list:l", 6);
    fixture_expect_str(fixture_cmd(fixture_shard(f, owner), "LINDEX list:l 0"), "c");
    fixture_close(f, c);
}

static void test_sets(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);

    fixture_expect_int(fixture_cmd(c, "SADD set:s a b c a"), 3);
    fixture_expect_int(fixture_cmd(c, "SCARD set:s"), 3);
    fixture_expect_int(fixture_cmd(c, "SISMEMBER set:s b"), 1);
    fixture_expect_int(fixture_cmd(c, "SISMEMBER set:s z"), 0);
    redisReply *r = fixture_cmd(c, "SMISMEMBER set:s a z c");
    fixture_expect_array(r, 3);
    assert_int_equal(r->element[0]->integer, 1);
    assert_int_equal(r->element[1]->integer, 0);
    assert_int_equal(r->element[2]->integer, 1);
    freeReplyObject(r);
    r = fixture_cmd(c, "SMEMBERS set:s");
    fixture_expect_array(r, 3);
    freeReplyObject(r);
    fixture_expect_int(fixture_cmd(c, "SREM set:s a z"), 1);
    r = fixture_cmd(c, "SPOP set:s");
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    assert_true(strcmp(r->str, "b") == 0 || strcmp(r->str, "c") == 0);
    freeReplyObject(r);
    fixture_expect_int(fixture_cmd(c, "SCARD set:s"), 1);
    fixture_expect_status(fixture_cmd(c, "TYPE set:s"), "set");

    expect_on_owner_only(f, c, "set:s");
    fixture_close(f, c);
}

static void test_sorted_sets(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);

    fixture_expect_int(fixture_cmd(c, "ZADD zset:z 3 c 1 a 2 b"), 3);
    fixture_expect_str(fixture_cmd(c, "ZSCORE zset:z b"), "2");
    redisReply *r = fixture_cmd(c, "ZRANGE zset:z 0 -1 WITHSCORES");
    fixture_expect_array(r, 6);
    const char *want[] = {"a", "1", "b", "2", "c", "3"};
    for (size_t i = 0; i < 6; i++) {
        assert_string_equal(r->element[i]->str, want[i]);
    }
    freeReplyObject(r);
    fixture_expect_int(fixture_cmd(c, "ZRANK zset:z c"), 2);
    fixture_expect_str(fixture_cmd(c, "ZINCRBY zset:z 10 a"), "11");
    fixture_expect_int(fixture_cmd(c, "ZRANK zset:z a"), 2);
    fixture_expect_int(fixture_cmd(c, "ZCOUNT zset:z 2 3"), 2);
    r = fixture_cmd(c, "ZRANGEBYSCORE zset:z 5 +inf");
    fixture_expect_array(r, 1);
    assert_string_equal(r->element[0]->str, "a");
    freeReplyObject(r);
    fixture_expect_int(fixture_cmd(c, "ZREM zset:z b nope"), 1);
    fixture_expect_int(fixture_cmd(c, "ZCARD zset:z"), 2);
    fixture_expect_status(fixture_cmd(c, "TYPE zset:z"), "zset");

    expect_on_owner_only(f, c, "zset:z");
    fixture_close(f, c);
}

static void test_expiry(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);

    fixture_expect_status(fixture_cmd(c, "SET ttl:a v EX 100"), "OK");
    redisReply *r = fixture_cmd(c, "TTL ttl:a");
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    assert_true(r->integer > 90 && r->integer <= 100);
    freeReplyObject(r);
    r = fixture_cmd(c, "PTTL ttl:a");
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    assert_true(r->integer > 90000 && r->integer <= 100000);
    freeReplyObject(r);
    fixture_expect_int(fixture_cmd(c, "PERSIST ttl:a"), 1);
    fixture_expect_int(fixture_cmd(c, "TTL ttl:a"), -1);
    fixture_expect_int(fixture_cmd(c, "EXPIRE ttl:a 50"), 1);
    fixture_expect_int(fixture_cmd(c, "TTL ttl:a"), 50);
    fixture_expect_int(fixture_cmd(c, "EXPIREAT ttl:a 4102444800"), 1);
    fixture_expect_int(fixture_cmd(c, "EXPIRETIME ttl:a"), 4102444800LL);
    fixture_expect_int(fixture_cmd(c, "TTL ttl:nope"), -2);
    fixture_expect_status(fixture_cmd(c, "SETEX ttl:b 100 v"), "OK");
    fixture_expect_status(fixture_cmd(c, "PSETEX ttl:c 100000 v"), "OK");

    /* The TTL is set on the owner shard itself. */
    int owner = fixture_owner(c, "ttl:b", 5);
    r = fixture_cmd(fixture_shard(f, owner), "TTL ttl:b");
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    assert_true(r->integer > 90 && r->integer <= 100);
    freeReplyObject(r);

    /* A key given 50 ms to live is gone shortly after. */
    fixture_expect_status(fixture_cmd(c, "SET ttl:short v PX 50"), "OK");
    fixture_expect_int(fixture_cmd(c, "PEXPIRE ttl:b 50"), 1);
    long long deadline = fixture_now_ms() + fixture_bound_ms(2000);
    long long left = 2;
    while (left > 0 && fixture_now_ms() < deadline) {
        fixture_sleep_ms(20);
        r = fixture_cmd(c, "EXISTS ttl:short");
        left = r->integer;
        freeReplyObject(r);
        r = fixture_cmd(c, "EXISTS ttl:b");
        left += r->integer;
        freeReplyObject(r);
    }
    assert_int_equal(left, 0);
    fixture_close(f, c);
}

static void test_binary_safe_keys_and_values(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);

    static const char key[] = "bin:\r\nkey\0with nul\r\n*1\r\n$4\r\nPING\r\n";
    size_t key_len = sizeof(key) - 1;
    char value[512];
    for (size_t i = 0; i < sizeof(value); i++) {
        value[i] = (char)(i % 256);
    }
    memcpy(value, "\r\n\0$-1\r\n", 8);
    fixture_expect_status(fixture_cmd(c, "SET %b %b", key, key_len, value, sizeof(value)), "OK");
    fixture_expect_bin(fixture_cmd(c, "GET %b", key, key_len), value, sizeof(value));
    fixture_expect_int(fixture_cmd(c, "STRLEN %b", key, key_len), (long long)sizeof(value));

    /* Stored byte for byte on exactly the owner shard. */
    int owner = fixture_owner(c, key, key_len);
    assert_int_equal(fixture_holders(f, key, key_len), 1u << owner);
    fixture_expect_bin(fixture_cmd(fixture_shard(f, owner), "GET %b", key, key_len), value,
                       sizeof(value));

    /* Binary hash fields and list elements too. */
    fixture_expect_int(fixture_cmd(c, "HSET bin:h %b %b", "f\0\r\n", (size_t)4, "\0", (size_t)1),
                       1);
    fixture_expect_bin(fixture_cmd(c, "HGET bin:h %b", "f\0\r\n", (size_t)4), "\0", 1);
    fixture_close(f, c);
}

static void test_empty_value_and_empty_key(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);

    fixture_expect_status(fixture_cmd(c, "SET empty:v %s", ""), "OK");
    fixture_expect_bin(fixture_cmd(c, "GET empty:v"), "", 0);
    fixture_expect_int(fixture_cmd(c, "STRLEN empty:v"), 0);
    fixture_expect_int(fixture_cmd(c, "EXISTS empty:v"), 1);

    fixture_expect_status(fixture_cmd(c, "SET %b nothing-in-the-name", "", (size_t)0), "OK");
    fixture_expect_str(fixture_cmd(c, "GET %b", "", (size_t)0), "nothing-in-the-name");
    int owner = fixture_owner(c, "", 0);
    assert_int_equal(fixture_holders(f, "", 0), 1u << owner);
    fixture_expect_int(fixture_cmd(c, "DEL %b", "", (size_t)0), 1);
    fixture_close(f, c);
}

/* SET then GET a value of len bytes and check it, through the proxy and on
 * the owner shard. */
static void big_value_round_trip(fixture *f, const char *key, size_t len)
{
    redisContext *c = fixture_client(f);
    struct timeval tv = fixture_bound_tv(30000);
    assert_int_equal(redisSetTimeout(c, tv), REDIS_OK);
    char *value = fixture_alloc(f, len);
    for (size_t i = 0; i < len; i++) {
        value[i] = (char)('a' + (i * 7 + i / 4096) % 26);
    }
    memcpy(value, "\r\n", 2);
    memcpy(value + len - 2, "\r\n", 2);

    fixture_expect_status(fixture_cmd(c, "SET %s %b", key, value, len), "OK");
    fixture_expect_int(fixture_cmd(c, "STRLEN %s", key), (long long)len);
    fixture_expect_bin(fixture_cmd(c, "GET %s", key), value, len);
    /* The connection is still in step after the big reply. */
    fixture_expect_status(fixture_cmd(c, "PING"), "PONG");

    int owner = fixture_owner(c, key, strlen(key));
    redisContext *shard = fixture_shard(f, owner);
    assert_int_equal(redisSetTimeout(shard, tv), REDIS_OK);
    fixture_expect_int(fixture_cmd(shard, "STRLEN %s", key), (long long)len);
    fixture_expect_int(fixture_cmd(c, "DEL %s", key), 1);
    fixture_free(f, value);
    fixture_close(f, c);
}

static void test_1mib_value(void **state)
{
    big_value_round_trip(*state, "big:1m", 1 * MIB);
}

static void test_64mib_value(void **state)
{
    big_value_round_trip(*state, "big:64m", 64 * MIB);
}

static void test_ping_echo_select(void **state)
{
    redisContext *c = fixture_client(*state);
    fixture_expect_status(fixture_cmd(c, "PING"), "PONG");
    fixture_expect_str(fixture_cmd(c, "PING %s", "hello there"), "hello there");
    fixture_expect_bin(fixture_cmd(c, "ECHO %b", "a\0\r\nb", (size_t)5), "a\0\r\nb", 5);
    fixture_expect_status(fixture_cmd(c, "SELECT 0"), "OK");
    fixture_expect_error(fixture_cmd(c, "SELECT 1"), "ERR");
    /* Still on db 0 and still usable. */
    fixture_expect_status(fixture_cmd(c, "SET select:k v"), "OK");
    fixture_expect_str(fixture_cmd(c, "GET select:k"), "v");
    fixture_close(*state, c);
}

static void test_quit_replies_ok_then_closes(void **state)
{
    fixture *f = *state;
    int fd = fixture_raw_connect(f->proxy.port);
    assert_true(fd >= 0);
    static const char req[] = "*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nQUIT\r\n*1\r\n$4\r\nPING\r\n";
    assert_int_equal(fixture_raw_send(fd, req, sizeof(req) - 1), 0);
    char buf[256];
    int closed;
    size_t n = fixture_raw_read(fd, buf, sizeof(buf), sizeof(buf) - 1, 2000, &closed);
    close(fd);
    /* The PING before QUIT is answered, QUIT gets +OK, nothing after it. */
    assert_string_equal(buf, "+PONG\r\n+OK\r\n");
    assert_int_equal(n, 12);
    assert_true(closed);

    /* Inline QUIT, as typed in telnet. */
    fd = fixture_raw_connect(f->proxy.port);
    assert_true(fd >= 0);
    assert_int_equal(fixture_raw_send(fd, "QUIT\r\n", 6), 0);
    fixture_raw_read(fd, buf, sizeof(buf), sizeof(buf) - 1, 2000, &closed);
    close(fd);
    assert_string_equal(buf, "+OK\r\n");
    assert_true(closed);
}

static void test_info_has_sections(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);
    redisReply *r = fixture_cmd(c, "INFO");
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    char *lower = strndup(r->str, r->len);
    assert_non_null(lower);
    for (char *p = lower; *p != '\0'; p++) {
        *p = (char)tolower((unsigned char)*p);
    }
    const char *sections[] = {"# server\r\n", "# clients\r\n", "# stats\r\n", "# shards\r\n"};
    for (size_t i = 0; i < sizeof(sections) / sizeof(sections[0]); i++) {
        if (!fixture_contains(lower, r->len, sections[i])) {
            fail_msg("INFO lacks section %s", sections[i]);
        }
    }
    /* Every line is "# Section", "key:value" or empty, Redis INFO format. */
    for (char *line = lower; line != NULL && *line != '\0';) {
        char *end = strstr(line, "\r\n");
        assert_non_null(end);
        *end = '\0';
        if (line[0] != '\0' && line[0] != '#' && strchr(line, ':') == NULL) {
            fail_msg("INFO line is not key:value: %s", line);
        }
        line = end + 2;
    }
    /* The shards section names every shard with its address. */
    for (int i = 0; i < FIXTURE_SHARDS; i++) {
        char addr[64];
        snprintf(addr, sizeof(addr), "127.0.0.1:%d", f->shards[i].port);
        if (!fixture_contains(r->str, r->len, addr)) {
            fail_msg("INFO shards lacks s%d at %s", i + 1, addr);
        }
    }
    char pid[32];
    snprintf(pid, sizeof(pid), ":%d\r\n", (int)f->proxy.pid);
    assert_true(fixture_contains(r->str, r->len, pid));
    free(lower);
    freeReplyObject(r);
    fixture_close(f, c);
}

static void test_proxy_shards_lists_every_shard(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);
    redisReply *r = fixture_cmd(c, "PROXY SHARDS");
    assert_int_not_equal(r->type, REDIS_REPLY_ERROR);
    /* Whatever the layout, each shard's name and port appear in it. */
    char text[8192];
    fixture_reply_text(r, text, sizeof(text));
    freeReplyObject(r);
    for (int i = 0; i < FIXTURE_SHARDS; i++) {
        char name[16], port[16];
        snprintf(name, sizeof(name), "s%d", i + 1);
        snprintf(port, sizeof(port), "%d", f->shards[i].port);
        if (strstr(text, name) == NULL || strstr(text, port) == NULL) {
            fail_msg("PROXY SHARDS lacks %s port %s: %s", name, port, text);
        }
    }
    fixture_close(f, c);
}

static void test_proxy_ring_names_the_owner(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);
    unsigned seen = 0;
    for (int i = 0; i < 64; i++) {
        char key[32];
        snprintf(key, sizeof(key), "ring:%d", i);
        fixture_expect_status(fixture_cmd(c, "SET %s v", key), "OK");
        int owner = fixture_owner(c, key, strlen(key));
        assert_int_equal(fixture_holders(f, key, strlen(key)), 1u << owner);
        seen |= 1u << owner;
        /* The answer is stable. */
        assert_int_equal(fixture_owner(c, key, strlen(key)), owner);
    }
    /* 64 keys over 4 shards: each shard owns some. */
    assert_int_equal(seen, (1u << FIXTURE_SHARDS) - 1);
    fixture_close(f, c);
}

static void test_dbsize_is_the_sum_over_shards(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);
    for (int i = 0; i < 40; i++) {
        fixture_expect_status(fixture_cmd(c, "SET dbsize:%d v", i), "OK");
    }
    long long sum = fixture_shards_dbsize(f);
    assert_true(sum >= 40);
    fixture_expect_int(fixture_cmd(c, "DBSIZE"), sum);
    fixture_close(f, c);
}

static void test_connection_commands_answered(void **state)
{
    redisContext *c = fixture_client(*state);
    fixture_expect_status(fixture_cmd(c, "CLIENT SETNAME tester"), "OK");
    fixture_expect_str(fixture_cmd(c, "CLIENT GETNAME"), "tester");
    redisReply *r = fixture_cmd(c, "CLIENT ID");
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    freeReplyObject(r);
    r = fixture_cmd(c, "TIME");
    fixture_expect_array(r, 2);
    assert_true(atoll(r->element[0]->str) > 1600000000LL);
    freeReplyObject(r);
    r = fixture_cmd(c, "HELLO 2");
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    assert_true(r->elements >= 2 && r->elements % 2 == 0);
    freeReplyObject(r);
    r = fixture_cmd(c, "COMMAND COUNT");
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    assert_true(r->integer > 100);
    freeReplyObject(r);
    fixture_expect_status(fixture_cmd(c, "PING"), "PONG");
    fixture_close(*state, c);
}

/* Commands the proxy does not support: an error naming the command, and the
 * connection keeps working. */
static void test_unsupported_commands_keep_connection(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);
    fixture_expect_error(fixture_cmd(c, "MONITOR"),
                         "ERR unsupported command 'monitor' in ringproxy");
    const char *unsupported[] = {
        "WAIT 1 0",        "SSUBSCRIBE ch", "SPUBLISH ch m",      "CONFIG REWRITE",
        "DEBUG SLEEP 0",   "SWAPDB 0 1",    "MOVE k 1",           "CLUSTER INFO",
        "SHUTDOWN NOSAVE", "LASTSAVE",      "CLIENT TRACKING on",
    };
    for (size_t i = 0; i < sizeof(unsupported) / sizeof(unsupported[0]); i++) {
        fixture_expect_error(fixture_cmd(c, unsupported[i]), "ERR unsupported command");
        fixture_expect_status(fixture_cmd(c, "PING"), "PONG");
    }
    /* SHUTDOWN, DEBUG SLEEP and the rest reached no shard. */
    for (int i = 0; i < FIXTURE_SHARDS; i++) {
        assert_int_equal(harness_wait_ping(f->shards[i].port, 1000), 0);
    }
    fixture_expect_status(fixture_cmd(c, "SET unsupported:k v"), "OK");
    fixture_expect_str(fixture_cmd(c, "GET unsupported:k"), "v");
    fixture_close(f, c);
}

static void test_unknown_command_keeps_connection(void **state)
{
    redisContext *c = fixture_client(*state);
    fixture_expect_error(fixture_cmd(c, "NOSUCHCOMMAND a b"), "ERR unknown command");
    fixture_expect_error(fixture_cmd(c, "GETT k"), "ERR unknown command");
    fixture_expect_status(fixture_cmd(c, "SET unknown:k v"), "OK");
    fixture_expect_str(fixture_cmd(c, "GET unknown:k"), "v");
    /* Wrong arity is an error too, not a dropped connection. */
    fixture_expect_error(fixture_cmd(c, "GET"), "ERR");
    fixture_expect_error(fixture_cmd(c, "SET onlykey"), "ERR");
    fixture_expect_status(fixture_cmd(c, "PING"), "PONG");
    fixture_close(*state, c);
}

/* Errors in the middle of a pipeline do not shift the replies around them. */
static void test_errors_inside_pipeline_keep_order(void **state)
{
    redisContext *c = fixture_client(*state);
    for (int round = 0; round < 20; round++) {
        redisAppendCommand(c, "SET pipe-err:%d v%d", round, round);
        redisAppendCommand(c, "MONITOR");
        redisAppendCommand(c, "GET pipe-err:%d", round);
        redisAppendCommand(c, "NOSUCHCOMMAND %d", round);
        redisAppendCommand(c, "ECHO e%d", round);
        redisAppendCommand(c, "SWAPDB 0 1");
        redisAppendCommand(c, "INCR pipe-err:counter");
    }
    for (int round = 0; round < 20; round++) {
        char v[16];
        snprintf(v, sizeof(v), "v%d", round);
        char e[16];
        snprintf(e, sizeof(e), "e%d", round);
        fixture_expect_status(fixture_next_reply(c), "OK");
        fixture_expect_error(fixture_next_reply(c), "ERR unsupported command");
        fixture_expect_str(fixture_next_reply(c), v);
        fixture_expect_error(fixture_next_reply(c), "ERR unknown command");
        fixture_expect_str(fixture_next_reply(c), e);
        fixture_expect_error(fixture_next_reply(c), "ERR unsupported command");
        fixture_expect_int(fixture_next_reply(c), round + 1);
    }
    fixture_close(*state, c);
}

/* Two keys (distinct prefixes) owned by different shards. */
static void keys_on_two_shards(redisContext *c, const char *prefix, char *a, char *b, size_t cap)
{
    snprintf(a, cap, "%s:0", prefix);
    int owner_a = fixture_owner(c, a, strlen(a));
    for (int i = 1; i < 1000; i++) {
        snprintf(b, cap, "%s:%d", prefix, i);
        if (fixture_owner(c, b, strlen(b)) != owner_a) {
            return;
        }
    }
    fail_msg("no key of prefix %s off shard s%d", prefix, owner_a + 1);
}

static void test_crossslot_for_keys_on_two_shards(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);
    char a[64], b[64];
    keys_on_two_shards(c, "cross", a, b, sizeof(a));
    fixture_expect_status(fixture_cmd(c, "SET %s va", a), "OK");
    fixture_expect_error(fixture_cmd(c, "RENAME %s %s", a, b), "CROSSSLOT");
    /* Nothing moved: the source is intact on its shard, the target nowhere. */
    fixture_expect_str(fixture_cmd(c, "GET %s", a), "va");
    assert_int_equal(fixture_holders(f, a, strlen(a)), 1u << fixture_owner(c, a, strlen(a)));
    assert_int_equal(fixture_holders(f, b, strlen(b)), 0);

    fixture_expect_int(fixture_cmd(c, "DEL %s", a), 1);
    fixture_expect_int(fixture_cmd(c, "SADD %s x y", a), 2);
    fixture_expect_int(fixture_cmd(c, "SADD %s y z", b), 2);
    fixture_expect_error(fixture_cmd(c, "SINTER %s %s", a, b), "CROSSSLOT");
    fixture_expect_error(fixture_cmd(c, "SMOVE %s %s x", a, b), "CROSSSLOT");
    fixture_expect_error(fixture_cmd(c, "SUNIONSTORE %s %s %s", a, a, b), "CROSSSLOT");
    fixture_expect_int(fixture_cmd(c, "SCARD %s", a), 2);
    fixture_expect_status(fixture_cmd(c, "PING"), "PONG");
    fixture_close(f, c);
}

static void test_same_shard_commands_with_hash_tags(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);
    fixture_expect_status(fixture_cmd(c, "SET {user:7}:name alice"), "OK");
    fixture_expect_status(fixture_cmd(c, "RENAME {user:7}:name {user:7}:copy"), "OK");
    fixture_expect_nil(fixture_cmd(c, "GET {user:7}:name"));
    fixture_expect_str(fixture_cmd(c, "GET {user:7}:copy"), "alice");
    int owner = fixture_owner(c, "{user:7}:copy", strlen("{user:7}:copy"));
    assert_int_equal(fixture_holders(f, "{user:7}:copy", strlen("{user:7}:copy")), 1u << owner);

    fixture_expect_int(fixture_cmd(c, "SADD {user:7}:a x y"), 2);
    fixture_expect_int(fixture_cmd(c, "SADD {user:7}:b y z"), 2);
    redisReply *r = fixture_cmd(c, "SINTER {user:7}:a {user:7}:b");
    fixture_expect_array(r, 1);
    assert_string_equal(r->element[0]->str, "y");
    freeReplyObject(r);
    fixture_expect_int(fixture_cmd(c, "SMOVE {user:7}:a {user:7}:b x"), 1);
    fixture_expect_int(fixture_cmd(c, "SCARD {user:7}:b"), 3);
    /* A command whose keys are all one key is on one shard, tag or not. */
    fixture_expect_status(fixture_cmd(c, "SET same:k v"), "OK");
    fixture_expect_status(fixture_cmd(c, "RENAME same:k same:k"), "OK");
    fixture_close(f, c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_strings),
        cmocka_unit_test(test_hashes),
        cmocka_unit_test(test_lists),
        cmocka_unit_test(test_sets),
        cmocka_unit_test(test_sorted_sets),
        cmocka_unit_test(test_expiry),
        cmocka_unit_test(test_binary_safe_keys_and_values),
        cmocka_unit_test(test_empty_value_and_empty_key),
        cmocka_unit_test(test_1mib_value),
        cmocka_unit_test(test_64mib_value),
        cmocka_unit_test(test_ping_echo_select),
        cmocka_unit_test(test_quit_replies_ok_then_closes),
        cmocka_unit_test(test_info_has_sections),
        cmocka_unit_test(test_proxy_shards_lists_every_shard),
        cmocka_unit_test(test_proxy_ring_names_the_owner),
        cmocka_unit_test(test_dbsize_is_the_sum_over_shards),
        cmocka_unit_test(test_connection_commands_answered),
        cmocka_unit_test(test_unsupported_commands_keep_connection),
        cmocka_unit_test(test_unknown_command_keeps_connection),
        cmocka_unit_test(test_errors_inside_pipeline_keep_order),
        cmocka_unit_test(test_crossslot_for_keys_on_two_shards),
        cmocka_unit_test(test_same_shard_commands_with_hash_tags),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
