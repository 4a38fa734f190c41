/* Whole-keyspace commands and scripts across four shards: SCAN walks the
 * shards one after the other (every key exactly once per full pass, MATCH,
 * COUNT and TYPE passed through), KEYS merges every shard, RANDOMKEY finds
 * the one shard that has keys, FLUSHDB/FLUSHALL fan out (or are refused
 * with allow_flush = no), SCRIPT LOAD/EXISTS/FLUSH and FUNCTION LOAD fan
 * out so EVALSHA and FCALL work on any shard, EVAL routes by its keys (or
 * to script_default_shard without keys), PUBLISH goes to its channel's
 * owner, XREAD without BLOCK is forwarded, and CLIENT INFO/LIST and RESET
 * speak for the proxy's own clients. */
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

#define SCAN_KEYS 1000
/* A full SCAN pass asks for about SCAN_KEYS / COUNT pages plus one per
 * shard; this bounds the loop far above that. */
#define SCAN_MAX_PAGES 2000

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

static void flushall(redisContext *c)
{
    fixture_expect_status(fixture_cmd(c, "FLUSHALL"), "OK");
}

static void test_scan_returns_every_key_exactly_once(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);
    flushall(c);
    for (int i = 0; i < SCAN_KEYS; i++) {
        redisAppendCommand(c, "SET scan:%d v", i);
    }
    for (int i = 0; i < SCAN_KEYS; i++) {
        fixture_expect_status(fixture_next_reply(c), "OK");
    }
    static int seen[SCAN_KEYS];
    memset(seen, 0, sizeof(seen));
    unsigned long long cursor = 0;
    int pages = 0, shards_seen = 0, last_shard = -1;
    do {
        redisReply *r = fixture_cmd(c, "SCAN %llu COUNT 50", cursor);
        fixture_expect_array(r, 2);
        /* The cursor's low 10 bits name the shard the page came from. */
        int shard = (int)(cursor & 1023);
        if (shard != last_shard) {
            assert_int_equal(shard, last_shard + 1);
            last_shard = shard;
            shards_seen++;
        }
        const redisReply *keys = r->element[1];
        for (size_t i = 0; i < keys->elements; i++) {
            const char *k = keys->element[i]->str;
            assert_int_equal(strncmp(k, "scan:", 5), 0);
            int n = atoi(k + 5);
            assert_true(n >= 0 && n < SCAN_KEYS);
            seen[n]++;
            assert_int_equal(fixture_owner(c, k, strlen(k)), shard);
        }
        cursor = strtoull(r->element[0]->str, NULL, 10);
        freeReplyObject(r);
        assert_true(++pages < SCAN_MAX_PAGES);
    } while (cursor != 0);
    assert_int_equal(shards_seen, FIXTURE_SHARDS);
    for (int i = 0; i < SCAN_KEYS; i++) {
        if (seen[i] != 1) {
            fail_msg("scan:%d seen %d times", i, seen[i]);
        }
    }
    fixture_close(f, c);
}

static void test_scan_match_count_and_type(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);
    fixture_expect_int(fixture_cmd(c, "HSET scan:hash f v"), 1);
    /* MATCH scan:1*: 1, 10-19, 100-199 */
    int matched = 0, pages = 0, hashes = 0;
    unsigned long long cursor = 0;
    do {
        redisReply *r = fixture_cmd(c, "SCAN %llu MATCH scan:1* COUNT 1000", cursor);
        fixture_expect_array(r, 2);
        for (size_t i = 0; i < r->element[1]->elements; i++) {
            assert_int_equal(strncmp(r->element[1]->element[i]->str, "scan:1", 6), 0);
            matched++;
        }
        cursor = strtoull(r->element[0]->str, NULL, 10);
        freeReplyObject(r);
        assert_true(++pages < SCAN_MAX_PAGES);
    } while (cursor != 0);
    assert_int_equal(matched, 111);
    cursor = 0;
    do {
        redisReply *r = fixture_cmd(c, "SCAN %llu TYPE hash", cursor);
        fixture_expect_array(r, 2);
        for (size_t i = 0; i < r->element[1]->elements; i++) {
            assert_string_equal(r->element[1]->element[i]->str, "scan:hash");
            hashes++;
        }
        cursor = strtoull(r->element[0]->str, NULL, 10);
        freeReplyObject(r);
        assert_true(++pages < 2 * SCAN_MAX_PAGES);
    } while (cursor != 0);
    assert_int_equal(hashes, 1);

    fixture_expect_error(fixture_cmd(c, "SCAN abc"), "ERR invalid cursor");
    fixture_expect_error(fixture_cmd(c, "SCAN -1"), "ERR invalid cursor");
    /* shard index 1023: no such shard */
    fixture_expect_error(fixture_cmd(c, "SCAN 1023"), "ERR invalid cursor");
    /* a shard's own errors pass through */
    fixture_expect_error(fixture_cmd(c, "SCAN 0 COUNT 0"), "ERR");
    fixture_close(f, c);
}

/* What redis-cli users run: --scan walks every shard's keys once, and a
 * transaction piped to it runs. */
static void test_redis_cli_scan_and_transaction(void **state)
{
    fixture *f = *state;
    char cmd[256];
    snprintf(cmd, sizeof(cmd),
             "timeout 20 redis-cli -p %d --scan --pattern 'scan:*' | sort -u | wc -l",
             f->proxy.port);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    int lines = -1;
    assert_int_equal(fscanf(p, "%d", &lines), 1);
    assert_int_equal(pclose(p), 0);
    assert_int_equal(lines, SCAN_KEYS + 1); /* and scan:hash */
    snprintf(cmd, sizeof(cmd),
             "printf 'MULTI\\nSET cli:{t} 41\\nINCR cli:{t}\\nEXEC\\n' | "
             "timeout 20 redis-cli -p %d",
             f->proxy.port);
    p = popen(cmd, "r");
    assert_non_null(p);
    char out[512];
    size_t n = fread(out, 1, sizeof(out) - 1, p);
    out[n] = '\0';
    assert_int_equal(pclose(p), 0);
    if (!strstr(out, "QUEUED") || !strstr(out, "42")) {
        fail_msg("redis-cli transaction printed: %s", out);
    }
}

static void test_keys_merges_every_shard(void **state)
{
    redisContext *c = fixture_client(*state);
    redisReply *r = fixture_cmd(c, "KEYS scan:1*");
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    assert_int_equal(r->elements, 111);
    freeReplyObject(r);
    r = fixture_cmd(c, "KEYS nothing:*");
    fixture_expect_array(r, 0);
    freeReplyObject(r);
    fixture_expect_int(fixture_cmd(c, "DBSIZE"), SCAN_KEYS + 2); /* scan:hash, cli:{t} */
    fixture_close(*state, c);
}

static void test_randomkey_tries_every_shard(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);
    flushall(c);
    fixture_expect_nil(fixture_cmd(c, "RANDOMKEY"));
    /* One key, on the last shard: every RANDOMKEY finds it, whichever
     * shard it asks first. */
    char key[64];
    fixture_key_on_shard(c, "random", FIXTURE_SHARDS - 1, key, sizeof(key));
    fixture_expect_status(fixture_cmd(c, "SET %s v", key), "OK");
    for (int i = 0; i < 40; i++) {
        fixture_expect_str(fixture_cmd(c, "RANDOMKEY"), key);
    }
    fixture_close(f, c);
}

static void test_flushdb_and_flushall_fan_out(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);
    for (int i = 0; i < 100; i++) {
        fixture_expect_status(fixture_cmd(c, "SET flush:%d v", i), "OK");
    }
    assert_true(fixture_shards_dbsize(f) >= 100);
    fixture_expect_status(fixture_cmd(c, "FLUSHDB"), "OK");
    for (int i = 0; i < FIXTURE_SHARDS; i++) {
        fixture_expect_int(fixture_cmd(fixture_shard(f, i), "DBSIZE"), 0);
    }
    fixture_expect_status(fixture_cmd(c, "SET flush:x v"), "OK");
    fixture_expect_status(fixture_cmd(c, "FLUSHALL ASYNC"), "OK");
    fixture_expect_int(fixture_cmd(c, "DBSIZE"), 0);
    fixture_expect_error(fixture_cmd(c, "FLUSHDB NOW"), "ERR");
    fixture_close(f, c);
}

static void test_scripts_load_exists_flush_everywhere(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);
    fixture_expect_status(fixture_cmd(c, "SCRIPT FLUSH"), "OK");
    redisReply *r = fixture_cmd(c, "SCRIPT LOAD %s", "return KEYS[1]");
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    char sha[64];
    snprintf(sha, sizeof(sha), "%s", r->str);
    freeReplyObject(r);
    for (int i = 0; i < FIXTURE_SHARDS; i++) {
        r = fixture_cmd(fixture_shard(f, i), "SCRIPT EXISTS %s", sha);
        fixture_expect_array(r, 1);
        assert_int_equal(r->element[0]->integer, 1);
        freeReplyObject(r);
        /* EVALSHA works whichever shard the key leads to */
        char key[64];
        fixture_key_on_shard(c, "evalsha", i, key, sizeof(key));
        fixture_expect_str(fixture_cmd(c, "EVALSHA %s 1 %s", sha, key), key);
    }
    r = fixture_cmd(c, "SCRIPT EXISTS %s 0000000000000000000000000000000000000000", sha);
    fixture_expect_array(r, 2);
    assert_int_equal(r->element[0]->integer, 1);
    assert_int_equal(r->element[1]->integer, 0);
    freeReplyObject(r);
    /* A script on one shard only does not exist for the proxy's clients:
     * EVALSHA would fail for keys elsewhere. */
    r = fixture_cmd(fixture_shard(f, 1), "SCRIPT LOAD %s", "return 'only on s2'");
    char lone[64];
    snprintf(lone, sizeof(lone), "%s", r->str);
    freeReplyObject(r);
    r = fixture_cmd(c, "SCRIPT EXISTS %s", lone);
    fixture_expect_array(r, 1);
    assert_int_equal(r->element[0]->integer, 0);
    freeReplyObject(r);
    /* A script that does not compile: every shard says so, the same way. */
    fixture_expect_error(fixture_cmd(c, "SCRIPT LOAD %s", "return ("), "ERR");
    fixture_expect_status(fixture_cmd(c, "SCRIPT FLUSH"), "OK");
    r = fixture_cmd(c, "SCRIPT EXISTS %s", sha);
    assert_int_equal(r->element[0]->integer, 0);
    freeReplyObject(r);
    fixture_expect_error(fixture_cmd(c, "EVALSHA %s 1 k", sha), "NOSCRIPT");
    fixture_close(f, c);
}

static void test_eval_routes_by_keys(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);
    const char *set = "return redis.call('set', KEYS[1], ARGV[1])";
    for (int i = 0; i < FIXTURE_SHARDS; i++) {
        char key[64];
        fixture_key_on_shard(c, "eval", i, key, sizeof(key));
        fixture_expect_status(fixture_cmd(c, "EVAL %s 1 %s v%d", set, key, i), "OK");
        assert_int_equal(fixture_holders(f, key, strlen(key)), 1u << i);
    }
    char a[64], b[64];
    fixture_key_on_shard(c, "eval2", 0, a, sizeof(a));
    fixture_key_on_shard(c, "eval2", 1, b, sizeof(b));
    fixture_expect_error(fixture_cmd(c, "EVAL %s 2 %s %s", "return 1", a, b), "CROSSSLOT");
    fixture_expect_error(fixture_cmd(c, "FCALL f 2 %s %s", a, b), "CROSSSLOT");
    fixture_expect_int(fixture_cmd(c, "EVAL %s 2 {t}a {t}b", "return #KEYS"), 2);
    /* No keys: the default shard, the first of the file. */
    char other[64];
    fixture_key_on_shard(c, "evalzero", 2, other, sizeof(other));
    fixture_expect_status(
        fixture_cmd(c, "EVAL %s 0 %s", "return redis.call('set', ARGV[1], 'x')", other), "OK");
    assert_int_equal(fixture_holders(f, other, strlen(other)), 1u << 0);
    fixture_expect_int(fixture_cmd(fixture_shard(f, 0), "DEL %s", other), 1);
    fixture_close(f, c);
}

static void test_functions_load_everywhere(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);
    const char *lib = "#!lua name=ringlib\n"
                      "redis.register_function{function_name='echokey', flags={'no-writes'},"
                      " callback=function(keys, args) return keys[1] end}";
    fixture_expect_str(fixture_cmd(c, "FUNCTION LOAD %s", lib), "ringlib");
    for (int i = 0; i < FIXTURE_SHARDS; i++) {
        char key[64];
        fixture_key_on_shard(c, "fcall", i, key, sizeof(key));
        fixture_expect_str(fixture_cmd(c, "FCALL echokey 1 %s", key), key);
        fixture_expect_str(fixture_cmd(c, "FCALL_RO echokey 1 %s", key), key);
    }
    fixture_expect_error(fixture_cmd(c, "FUNCTION LOAD %s", lib), "ERR");
    fixture_expect_status(fixture_cmd(c, "FUNCTION DELETE ringlib"), "OK");
    fixture_expect_error(fixture_cmd(c, "FCALL echokey 1 k"), "ERR");
    fixture_expect_error(fixture_cmd(c, "FUNCTION DELETE ringlib"), "ERR");
    fixture_close(f, c);
}

static void test_publish_goes_to_the_channels_owner(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);
    for (int i = 0; i < FIXTURE_SHARDS; i++) {
        char channel[64];
        fixture_key_on_shard(c, "news", i, channel, sizeof(channel));
        /* A subscriber straight on the owner, and one on another shard. */
        redisContext *owner = harness_connect(f->shards[i].port);
        redisContext *elsewhere = harness_connect(f->shards[(i + 1) % FIXTURE_SHARDS].port);
        assert_non_null(owner);
        assert_non_null(elsewhere);
        redisReply *r = fixture_cmd(owner, "SUBSCRIBE %s", channel);
        freeReplyObject(r);
        r = fixture_cmd(elsewhere, "SUBSCRIBE %s", channel);
        freeReplyObject(r);
        fixture_expect_int(fixture_cmd(c, "PUBLISH %s hello", channel), 1);
        redisReply *m = fixture_next_reply(owner);
        fixture_expect_array(m, 3);
        assert_string_equal(m->element[2]->str, "hello");
        freeReplyObject(m);
        redisFree(owner);
        redisFree(elsewhere);
    }
    fixture_close(f, c);
}

static void test_xread_without_block_is_forwarded(void **state)
{
    redisContext *c = fixture_client(*state);
    redisReply *r = fixture_cmd(c, "XADD xr:{s} * f v");
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    freeReplyObject(r);
    r = fixture_cmd(c, "XREAD COUNT 10 STREAMS xr:{s} 0");
    fixture_expect_array(r, 1);
    freeReplyObject(r);
    fixture_expect_status(fixture_cmd(c, "XGROUP CREATE xr:{s} g 0"), "OK");
    r = fixture_cmd(c, "XREADGROUP GROUP g alice COUNT 1 STREAMS xr:{s} >");
    fixture_expect_array(r, 1);
    freeReplyObject(r);
    char a[64], b[64];
    fixture_key_on_shard(c, "xr", 0, a, sizeof(a));
    fixture_key_on_shard(c, "xr", 1, b, sizeof(b));
    fixture_expect_error(fixture_cmd(c, "XREAD STREAMS %s %s 0 0", a, b), "CROSSSLOT");
    fixture_close(*state, c);
}

static void test_client_info_list_and_reset(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);
    redisContext *other = fixture_client(f);
    fixture_expect_status(fixture_cmd(c, "CLIENT SETNAME lister"), "OK");
    redisReply *r = fixture_cmd(c, "CLIENT ID");
    long long id = r->integer;
    freeReplyObject(r);
    r = fixture_cmd(other, "CLIENT ID");
    long long other_id = r->integer;
    freeReplyObject(r);

    char want[64];
    r = fixture_cmd(c, "CLIENT INFO");
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    snprintf(want, sizeof(want), "id=%lld ", id);
    assert_non_null(strstr(r->str, want));
    assert_non_null(strstr(r->str, " name=lister "));
    assert_non_null(strstr(r->str, " addr=127.0.0.1:"));
    assert_non_null(strstr(r->str, " age="));
    assert_non_null(strstr(r->str, " cmd=client|info"));
    freeReplyObject(r);

    r = fixture_cmd(c, "CLIENT LIST");
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    snprintf(want, sizeof(want), "id=%lld ", other_id);
    assert_non_null(strstr(r->str, want));
    snprintf(want, sizeof(want), "id=%lld ", id);
    assert_non_null(strstr(r->str, want));
    freeReplyObject(r);

    r = fixture_cmd(c, "CLIENT LIST ID %lld", other_id);
    snprintf(want, sizeof(want), "id=%lld ", other_id);
    assert_int_equal(strncmp(r->str, want, strlen(want)), 0);
    size_t lines = 0;
    for (size_t i = 0; i < r->len; i++) {
        lines += r->str[i] == '\n';
    }
    assert_int_equal(lines, 1);
    freeReplyObject(r);
    fixture_expect_str(fixture_cmd(c, "CLIENT LIST TYPE pubsub"), "");
    fixture_expect_error(fixture_cmd(c, "CLIENT LIST TYPE bogus"), "ERR Unknown client type");
    fixture_expect_error(fixture_cmd(c, "CLIENT LIST ID x"), "ERR Invalid client ID");

    /* RESET: a fresh connection's state, the same id. */
    fixture_expect_status(fixture_cmd(c, "MULTI"), "OK");
    fixture_expect_status(fixture_cmd(c, "RESET"), "RESET");
    fixture_expect_nil(fixture_cmd(c, "CLIENT GETNAME"));
    fixture_expect_error(fixture_cmd(c, "EXEC"), "ERR EXEC without MULTI");
    fixture_expect_int(fixture_cmd(c, "CLIENT ID"), id);
    fixture_close(f, other);
    fixture_close(f, c);
}

/* ---- a proxy configured otherwise ---- */

static int config_group_setup(void **state)
{
    fixture *f = fixture_start("allow_flush = no\n"
                               "script_default_shard = s3\n"
                               "requirepass = secret\n");
    *state = f;
    return f != NULL ? 0 : -1;
}

static redisContext *authed_client(fixture *f)
{
    redisContext *c = fixture_client(f);
    fixture_expect_status(fixture_cmd(c, "AUTH secret"), "OK");
    return c;
}

static void test_flush_refused_when_not_allowed(void **state)
{
    fixture *f = *state;
    redisContext *c = authed_client(f);
    fixture_expect_status(fixture_cmd(c, "SET keep v"), "OK");
    fixture_expect_error(fixture_cmd(c, "FLUSHDB"), "ERR 'flushdb' is disabled");
    fixture_expect_error(fixture_cmd(c, "FLUSHALL"), "ERR 'flushall' is disabled");
    fixture_expect_str(fixture_cmd(c, "GET keep"), "v");
    fixture_close(f, c);
}

static void test_keyless_scripts_go_to_script_default_shard(void **state)
{
    fixture *f = *state;
    redisContext *c = authed_client(f);
    fixture_expect_status(fixture_cmd(c, "EVAL %s 0", "return redis.call('set', 'zero-keys', 'x')"),
                          "OK");
    assert_int_equal(fixture_holders(f, "zero-keys", 9), 1u << 2);
    fixture_close(f, c);
}

static void test_reset_asks_for_auth_again(void **state)
{
    fixture *f = *state;
    redisContext *c = authed_client(f);
    fixture_expect_status(fixture_cmd(c, "RESET"), "RESET");
    fixture_expect_error(fixture_cmd(c, "GET keep"), "NOAUTH");
    fixture_expect_status(fixture_cmd(c, "AUTH secret"), "OK");
    fixture_expect_str(fixture_cmd(c, "GET keep"), "v");
    fixture_close(f, c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scan_returns_every_key_exactly_once),
        cmocka_unit_test(test_scan_match_count_and_type),
        cmocka_unit_test(test_redis_cli_scan_and_transaction),
        cmocka_unit_test(test_keys_merges_every_shard),
        cmocka_unit_test(test_randomkey_tries_every_shard),
        cmocka_unit_test(test_flushdb_and_flushall_fan_out),
        cmocka_unit_test(test_scripts_load_exists_flush_everywhere),
        cmocka_unit_test(test_eval_routes_by_keys),
        cmocka_unit_test(test_functions_load_everywhere),
        cmocka_unit_test(test_publish_goes_to_the_channels_owner),
        cmocka_unit_test(test_xread_without_block_is_forwarded),
        cmocka_unit_test(test_client_info_list_and_reset),
    };
    const struct CMUnitTest configured[] = {
        cmocka_unit_test(test_flush_refused_when_not_allowed),
        cmocka_unit_test(test_keyless_scripts_go_to_script_default_shard),
        cmocka_unit_test(test_reset_asks_for_auth_again),
    };
    int failed = cmocka_run_group_tests_name("keyspace", tests, group_setup, group_teardown);
    failed +=
        cmocka_run_group_tests_name("configured", configured, config_group_setup, group_teardown);
    return failed;
}
