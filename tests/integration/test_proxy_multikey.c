/* ringproxy splits multi-key commands per shard and merges the replies in
 * the client's key order, keeps a long pipeline's replies in request order,
 * puts every key on exactly one shard (its PROXY RING owner) and hash-tagged
 * keys together. Placement is checked on the shards directly. */
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

#define NKEYS             100
#define PIPELINE_COMMANDS 10000
#define PLACEMENT_KEYS    2000

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

/* Runs NAME followed by the given keys (and, for MSET, values after each). */
static redisReply *multi_key(redisContext *c, const char *name, char **keys, char **values,
                             size_t nkeys)
{
    size_t argc = 1 + nkeys * (values != NULL ? 2 : 1);
    const char **argv = calloc(argc, sizeof(*argv));
    size_t *lens = calloc(argc, sizeof(*lens));
    assert_non_null(argv);
    assert_non_null(lens);
    size_t n = 0;
    argv[n] = name;
    lens[n++] = strlen(name);
    for (size_t i = 0; i < nkeys; i++) {
        argv[n] = keys[i];
        lens[n++] = strlen(keys[i]);
        if (values != NULL) {
            argv[n] = values[i];
            lens[n++] = strlen(values[i]);
        }
    }
    redisReply *r = fixture_cmd_argv(c, (int)argc, argv, lens);
    free(argv);
    free(lens);
    return r;
}

static void test_mset_mget_exists_del_100_keys_in_order(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);
    char *keys[NKEYS], *values[NKEYS];
    for (int i = 0; i < NKEYS; i++) {
        assert_true(asprintf(&keys[i], "multi:%d", i) > 0);
        assert_true(asprintf(&values[i], "value %d\r\nof key multi:%d", i, i) > 0);
    }

    fixture_expect_status(multi_key(c, "MSET", keys, values, NKEYS), "OK");

    /* Each key sits on its owner shard only, with its value; all four shards
     * got some. */
    unsigned used = 0;
    for (int i = 0; i < NKEYS; i++) {
        int owner = fixture_owner(c, keys[i], strlen(keys[i]));
        assert_int_equal(fixture_holders(f, keys[i], strlen(keys[i])), 1u << owner);
        fixture_expect_str(fixture_cmd(fixture_shard(f, owner), "GET %s", keys[i]), values[i]);
        used |= 1u << owner;
    }
    assert_int_equal(used, (1u << FIXTURE_SHARDS) - 1);

    /* MGET with missing keys spread in: one element per key, in order. */
    char *mixed[NKEYS + NKEYS / 10];
    size_t nmixed = 0;
    for (int i = 0; i < NKEYS; i++) {
        if (i % 10 == 5) {
            assert_true(asprintf(&mixed[nmixed++], "multi:missing:%d", i) > 0);
        }
        mixed[nmixed++] = strdup(keys[i]);
    }
    redisReply *r = multi_key(c, "MGET", mixed, NULL, nmixed);
    fixture_expect_array(r, nmixed);
    for (size_t i = 0, k = 0; i < nmixed; i++) {
        const redisReply *e = r->element[i];
        if (strncmp(mixed[i], "multi:missing:", 14) == 0) {
            assert_int_equal(e->type, REDIS_REPLY_NIL);
            continue;
        }
        assert_int_equal(e->type, REDIS_REPLY_STRING);
        assert_string_equal(e->str, values[k++]);
    }
    freeReplyObject(r);

    /* EXISTS counts every occurrence, missing keys count 0. */
    fixture_expect_int(multi_key(c, "EXISTS", mixed, NULL, nmixed), NKEYS);
    char *twice[] = {keys[1], keys[2], keys[1], "multi:missing:x", keys[1]};
    fixture_expect_int(multi_key(c, "EXISTS", twice, NULL, 5), 4);
    fixture_expect_int(multi_key(c, "TOUCH", keys, NULL, NKEYS), NKEYS);

    /* DEL half of them (plus missing ones): 50 deleted, gone from the
     * shards, the other half intact. */
    char *half[NKEYS / 2 + 3];
    for (int i = 0; i < NKEYS / 2; i++) {
        half[i] = keys[i * 2];
    }
    half[NKEYS / 2] = "multi:missing:a";
    half[NKEYS / 2 + 1] = keys[0];
    half[NKEYS / 2 + 2] = "multi:missing:b";
    fixture_expect_int(multi_key(c, "DEL", half, NULL, NKEYS / 2 + 3), NKEYS / 2);
    r = multi_key(c, "MGET", keys, NULL, NKEYS);
    fixture_expect_array(r, NKEYS);
    for (int i = 0; i < NKEYS; i++) {
        if (i % 2 == 0) {
            assert_int_equal(r->element[i]->type, REDIS_REPLY_NIL);
            assert_int_equal(fixture_holders(f, keys[i], strlen(keys[i])), 0);
        } else {
            assert_int_equal(r->element[i]->type, REDIS_REPLY_STRING);
            assert_string_equal(r->element[i]->str, values[i]);
        }
    }
    freeReplyObject(r);
    fixture_expect_int(multi_key(c, "UNLINK", keys, NULL, NKEYS), NKEYS / 2);
    fixture_expect_int(multi_key(c, "EXISTS", keys, NULL, NKEYS), 0);

    for (size_t i = 0; i < nmixed; i++) {
        free(mixed[i]);
    }
    for (int i = 0; i < NKEYS; i++) {
        free(keys[i]);
        free(values[i]);
    }
    fixture_close(f, c);
}

static void test_multi_key_edge_cases(void **state)
{
    redisContext *c = fixture_client(*state);
    /* One key: same replies as the plain commands. */
    fixture_expect_status(fixture_cmd(c, "MSET edge:one 1"), "OK");
    redisReply *r = fixture_cmd(c, "MGET edge:one");
    fixture_expect_array(r, 1);
    assert_string_equal(r->element[0]->str, "1");
    freeReplyObject(r);
    /* A key repeated in one MSET: the last value wins, as in Redis. */
    fixture_expect_status(fixture_cmd(c, "MSET edge:dup a edge:other x edge:dup b"), "OK");
    fixture_expect_str(fixture_cmd(c, "GET edge:dup"), "b");
    /* Repeated keys in MGET are each answered. */
    r = fixture_cmd(c, "MGET edge:dup edge:one edge:dup edge:none");
    fixture_expect_array(r, 4);
    assert_string_equal(r->element[0]->str, "b");
    assert_string_equal(r->element[1]->str, "1");
    assert_string_equal(r->element[2]->str, "b");
    assert_int_equal(r->element[3]->type, REDIS_REPLY_NIL);
    freeReplyObject(r);
    /* MGET on a key of the wrong type gives nil for it, like Redis. */
    fixture_expect_int(fixture_cmd(c, "RPUSH edge:list x"), 1);
    r = fixture_cmd(c, "MGET edge:one edge:list");
    fixture_expect_array(r, 2);
    assert_int_equal(r->element[1]->type, REDIS_REPLY_NIL);
    freeReplyObject(r);
    /* Odd MSET argument count is an error, not a half-applied write. */
    fixture_expect_error(fixture_cmd(c, "MSET edge:odd1 a edge:odd2"), "ERR");
    fixture_expect_int(fixture_cmd(c, "EXISTS edge:odd1 edge:odd2"), 0);
    fixture_expect_int(fixture_cmd(c, "DEL edge:one edge:dup edge:other edge:list"), 4);
    fixture_close(*state, c);
}

static void test_hash_tagged_keys_share_a_shard(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);
    int owner = fixture_owner(c, "order:42", strlen("order:42"));
    for (int i = 0; i < 50; i++) {
        char key[64];
        snprintf(key, sizeof(key), "{order:42}:line:%d", i);
        fixture_expect_status(fixture_cmd(c, "SET %s %d", key, i), "OK");
        /* Only the tag is hashed: the owner is that of the tag's content. */
        assert_int_equal(fixture_owner(c, key, strlen(key)), owner);
        assert_int_equal(fixture_holders(f, key, strlen(key)), 1u << owner);
    }
    /* On the owner shard directly, all 50 are there. */
    redisContext *shard = fixture_shard(f, owner);
    for (int i = 0; i < 50; i++) {
        redisAppendCommand(shard, "GET {order:42}:line:%d", i);
    }
    for (int i = 0; i < 50; i++) {
        char want[16];
        snprintf(want, sizeof(want), "%d", i);
        fixture_expect_str(fixture_next_reply(shard), want);
    }

    /* Different tags spread over the shards. */
    unsigned used = 0;
    for (int i = 0; i < 64; i++) {
        char key[64];
        snprintf(key, sizeof(key), "prefix{tag%d}suffix", i);
        used |= 1u << fixture_owner(c, key, strlen(key));
    }
    assert_int_equal(used, (1u << FIXTURE_SHARDS) - 1);
    fixture_close(f, c);
}

static void test_every_key_on_exactly_one_shard(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);
    for (int i = 0; i < PLACEMENT_KEYS; i++) {
        redisAppendCommand(c, "SET place:%d %d", i, i);
    }
    for (int i = 0; i < PLACEMENT_KEYS; i++) {
        fixture_expect_status(fixture_next_reply(c), "OK");
    }
    int *owner = calloc(PLACEMENT_KEYS, sizeof(*owner));
    int *copies = calloc(PLACEMENT_KEYS, sizeof(*copies));
    assert_non_null(owner);
    assert_non_null(copies);
    for (int i = 0; i < PLACEMENT_KEYS; i++) {
        char key[32];
        snprintf(key, sizeof(key), "place:%d", i);
        owner[i] = fixture_owner(c, key, strlen(key));
    }
    int per_shard[FIXTURE_SHARDS] = {0};
    for (int s = 0; s < FIXTURE_SHARDS; s++) {
        redisContext *shard = fixture_shard(f, s);
        for (int i = 0; i < PLACEMENT_KEYS; i++) {
            redisAppendCommand(shard, "EXISTS place:%d", i);
        }
        for (int i = 0; i < PLACEMENT_KEYS; i++) {
            redisReply *r = fixture_next_reply(shard);
            assert_int_equal(r->type, REDIS_REPLY_INTEGER);
            if (r->integer == 1) {
                copies[i]++;
                per_shard[s]++;
                if (owner[i] != s) {
                    fail_msg("place:%d is on s%d, PROXY RING says s%d", i, s + 1, owner[i] + 1);
                }
            }
            freeReplyObject(r);
        }
    }
    for (int i = 0; i < PLACEMENT_KEYS; i++) {
        if (copies[i] != 1) {
            fail_msg("place:%d is on %d shards", i, copies[i]);
        }
    }
    /* A fair spread: each shard holds at least a tenth of the keys. */
    for (int s = 0; s < FIXTURE_SHARDS; s++) {
        if (per_shard[s] < PLACEMENT_KEYS / 10) {
            fail_msg("s%d holds only %d of %d keys", s + 1, per_shard[s], PLACEMENT_KEYS);
        }
    }
    free(owner);
    free(copies);
    fixture_close(f, c);
}

/* 10,000 commands written before any reply is read: to many shards, answered
 * by the proxy itself, split and merged; every reply comes back in order. */
static void test_10000_command_pipeline_in_order(void **state)
{
    redisContext *c = fixture_client(*state);
    struct timeval tv = fixture_bound_tv(10000);
    assert_int_equal(redisSetTimeout(c, tv), REDIS_OK);
    fixture_expect_int(fixture_cmd(c, "DEL pipe:counter"), 0);
    for (int i = 0; i < PIPELINE_COMMANDS; i++) {
        switch (i % 6) {
        case 0:
            redisAppendCommand(c, "SET pipe:%d v%d", i, i);
            break;
        case 1:
            redisAppendCommand(c, "GET pipe:%d", i - 1);
            break;
        case 2:
            redisAppendCommand(c, "INCR pipe:counter");
            break;
        case 3:
            redisAppendCommand(c, "PING");
            break;
        case 4:
            redisAppendCommand(c, "MGET pipe:%d pipe:missing pipe:%d", i - 4, i - 10);
            break;
        default:
            redisAppendCommand(c, "ECHO e%d", i);
            break;
        }
    }
    for (int i = 0; i < PIPELINE_COMMANDS; i++) {
        char want[32];
        redisReply *r = fixture_next_reply(c);
        switch (i % 6) {
        case 0:
            fixture_expect_status(r, "OK");
            break;
        case 1:
            snprintf(want, sizeof(want), "v%d", i - 1);
            fixture_expect_str(r, want);
            break;
        case 2:
            fixture_expect_int(r, i / 6 + 1);
            break;
        case 3:
            fixture_expect_status(r, "PONG");
            break;
        case 4:
            fixture_expect_array(r, 3);
            snprintf(want, sizeof(want), "v%d", i - 4);
            assert_string_equal(r->element[0]->str, want);
            assert_int_equal(r->element[1]->type, REDIS_REPLY_NIL);
            if (i >= 10) {
                snprintf(want, sizeof(want), "v%d", i - 10);
                assert_int_equal(r->element[2]->type, REDIS_REPLY_STRING);
                assert_string_equal(r->element[2]->str, want);
            } else {
                assert_int_equal(r->element[2]->type, REDIS_REPLY_NIL);
            }
            freeReplyObject(r);
            break;
        default:
            snprintf(want, sizeof(want), "e%d", i);
            fixture_expect_str(r, want);
            break;
        }
    }
    fixture_close(*state, c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mset_mget_exists_del_100_keys_in_order),
        cmocka_unit_test(test_multi_key_edge_cases),
        cmocka_unit_test(test_hash_tagged_keys_share_a_shard),
        cmocka_unit_test(test_every_key_on_exactly_one_shard),
        cmocka_unit_test(test_10000_command_pipeline_in_order),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
