/* Cross-shard transactions (proxy/twopc.c, docs/transactions.md) against
 * real redis-server shards and a real ringproxy: cross_shard's three
 * modes; MSET, MSETNX, DEL, UNLINK all-or-nothing across shards; the
 * coordinator stopped dead at each step (RINGPROXY_TXN_CRASH_AT) and
 * restarted, a participant paused or killed: after recovery every write of
 * a transaction is visible or none is, and no lock or staging record is
 * left; what a client of another proxy sees of a transaction prepared but
 * not decided. */
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

/* txn_recovery_after in these tests: short, so recovery is quick. */
#define RECOVERY_MS 1000
#define ATOMIC                                                                                     \
    "cross_shard = atomic\ntxn_recovery_after = 1000\nrequest_timeout = 1000\n"                    \
    "reconnect_min = 20\nreconnect_max = 200\n"

static int stop(void **state)
{
    unsetenv("RINGPROXY_TXN_CRASH_AT");
    return fixture_stop(*state);
}

/* Waits (bounded) until no transaction record is left on any shard. */
static void wait_no_records(fixture *f)
{
    long long deadline = fixture_now_ms() + fixture_bound_ms(10 * RECOVERY_MS + 5000);
    while (fixture_txn_records(f) != 0) {
        if (fixture_now_ms() > deadline)
            fail_msg("transaction records still on the shards: %lld", fixture_txn_records(f));
        fixture_sleep_ms(50);
    }
}

/* Keys k0..k3 on shards s1..s4, one each, named after prefix. */
static void keys_on_every_shard(fixture *f, const char *prefix, char keys[FIXTURE_SHARDS][64])
{
    redisContext *c = fixture_client(f);
    for (int s = 0; s < FIXTURE_SHARDS; s++)
        fixture_key_on_shard(c, prefix, s, keys[s], sizeof(keys[s]));
    fixture_close(f, c);
}

/* How many of keys exist, read on their shards directly. */
static int present(fixture *f, char keys[FIXTURE_SHARDS][64], int n)
{
    int found = 0;
    for (int s = 0; s < n; s++) {
        redisReply *r = fixture_cmd(f->direct[s], "EXISTS %s", keys[s]);
        found += (int)r->integer;
        freeReplyObject(r);
    }
    return found;
}

/* Starts the fixture in atomic mode and waits (bounded) until every
 * shard's store is ready: a first cross-shard MSET goes through. */
static fixture *start_atomic(void **state)
{
    fixture *f = fixture_start(ATOMIC);
    *state = f;
    assert_non_null(f);
    char k[FIXTURE_SHARDS][64];
    keys_on_every_shard(f, "ready", k);
    redisContext *c = fixture_client(f);
    long long deadline = fixture_now_ms() + fixture_bound_ms(5000);
    for (;;) {
        redisReply *r = fixture_cmd(c, "MSET %s 1 %s 2 %s 3 %s 4", k[0], k[1], k[2], k[3]);
        int ok = r->type == REDIS_REPLY_STATUS;
        freeReplyObject(r);
        if (ok)
            break;
        assert_true(fixture_now_ms() < deadline);
        fixture_sleep_ms(50);
    }
    fixture_expect_int(fixture_cmd(c, "DEL %s %s %s %s", k[0], k[1], k[2], k[3]), 4);
    fixture_close(f, c);
    return f;
}

/* Writes proxy.ini again with extra lines and reloads it. */
static void reload_with(fixture *f, const char *extra)
{
    char *ini = harness_ini(f->shards, FIXTURE_SHARDS, extra);
    char path[400], port[16];
    snprintf(port, sizeof(port), "%d", f->proxy.port);
    snprintf(path, sizeof(path), "%s/proxy.ini", f->proxy.dir);
    FILE *out = fopen(path, "w");
    assert_non_null(out);
    for (const char *p = ini; *p; p++) {
        if (strncmp(p, "%PORT%", 6) == 0) {
            fputs(port, out);
            p += 5;
        } else {
            fputc(*p, out);
        }
    }
    fclose(out);
    free(ini);
    redisContext *c = fixture_client(f);
    fixture_expect_status(fixture_cmd(c, "PROXY RELOAD"), "OK");
    fixture_close(f, c);
}

/* cross_shard = refuse answers CROSSSLOT; best_effort splits MSET and DEL
 * (as before) and refuses MSETNX, which cannot be split; atomic runs all
 * of them. One shard's keys never go through a transaction. */
static void test_modes(void **state)
{
    fixture *f = fixture_start("cross_shard = refuse\n");
    *state = f;
    assert_non_null(f);
    char k[FIXTURE_SHARDS][64];
    keys_on_every_shard(f, "mode", k);
    redisContext *c = fixture_client(f);
    fixture_expect_error(fixture_cmd(c, "MSET %s 1 %s 2", k[0], k[1]), "CROSSSLOT");
    fixture_expect_error(fixture_cmd(c, "DEL %s %s", k[0], k[1]), "CROSSSLOT");
    fixture_expect_status(fixture_cmd(c, "MSET %s 1 {%s}x 2", k[0], k[0]), "OK");
    fixture_expect_int(fixture_cmd(c, "MSETNX {%s}y 1 {%s}z 2", k[0], k[0]), 1);
    fixture_close(f, c);

    reload_with(f, "cross_shard = best_effort\n");
    c = fixture_client(f);
    fixture_expect_status(fixture_cmd(c, "MSET %s 1 %s 2", k[0], k[1]), "OK");
    fixture_expect_error(fixture_cmd(c, "MSETNX %s 1 %s 2", k[2], k[3]), "CROSSSLOT");
    fixture_expect_int(fixture_cmd(c, "DEL %s %s", k[0], k[1]), 2);
    fixture_close(f, c);

    reload_with(f, ATOMIC);
    c = fixture_client(f);
    long long deadline = fixture_now_ms() + fixture_bound_ms(5000);
    redisReply *r;
    while ((r = fixture_cmd(c, "MSET %s 1 %s 2", k[0], k[1]))->type == REDIS_REPLY_ERROR &&
           strncmp(r->str, "TRYAGAIN", 8) == 0) {
        freeReplyObject(r);
        assert_true(fixture_now_ms() < deadline); /* the stores are getting ready */
        fixture_sleep_ms(50);
    }
    fixture_expect_status(r, "OK");
    fixture_expect_int(fixture_cmd(c, "MSETNX %s 1 %s 2", k[2], k[3]), 1);
    fixture_close(f, c);
    assert_int_equal(present(f, k, 4), 4);
    wait_no_records(f); /* the commit decisions are deleted just after the replies */
}

/* MSET, MSETNX, DEL and UNLINK over four shards: the replies Redis gives,
 * every key or none, and nothing of the transaction left in the store or
 * visible in KEYS, SCAN or DBSIZE. */
static void test_atomic_writes_across_shards(void **state)
{
    fixture *f = start_atomic(state);
    char k[FIXTURE_SHARDS][64];
    keys_on_every_shard(f, "acct", k);
    redisContext *c = fixture_client(f);
    fixture_expect_status(fixture_cmd(c, "MSET %s a %s b %s c %s d", k[0], k[1], k[2], k[3]), "OK");
    redisReply *r = fixture_cmd(c, "MGET %s %s %s %s", k[0], k[1], k[2], k[3]);
    fixture_expect_array(r, 4);
    assert_string_equal(r->element[0]->str, "a");
    assert_string_equal(r->element[3]->str, "d");
    freeReplyObject(r);

    /* MSETNX: one existing key anywhere refuses all. */
    fixture_expect_int(fixture_cmd(c, "MSETNX %s-new x %s y", k[0], k[3]), 0);
    fixture_expect_int(fixture_cmd(c, "EXISTS %s-new", k[0]), 0);
    char n[FIXTURE_SHARDS][64];
    keys_on_every_shard(f, "fresh", n);
    fixture_expect_int(fixture_cmd(c, "MSETNX %s 1 %s 2 %s 3", n[0], n[1], n[2]), 1);
    assert_int_equal(present(f, n, 3), 3);

    fixture_expect_int(fixture_cmd(c, "DEL %s %s %s missing-key", k[0], k[1], n[0]), 3);
    fixture_expect_int(fixture_cmd(c, "UNLINK %s %s %s %s", k[2], k[3], n[1], n[2]), 4);
    assert_int_equal(present(f, k, 4), 0);
    assert_int_equal(present(f, n, 3), 0);

    fixture_expect_status(fixture_cmd(c, "MSET %s 1 %s 2", k[0], k[1]), "OK");
    fixture_expect_int(fixture_cmd(c, "DBSIZE"), 2);
    r = fixture_cmd(c, "KEYS *");
    fixture_expect_array(r, 2);
    freeReplyObject(r);
    fixture_close(f, c);
    wait_no_records(f); /* the commit decisions are deleted just after the replies */
}

/* The proxy stops dead at step `at` of an MSET over four shards; restarted
 * without the crash point, its recovery finishes the transaction: all four
 * keys (a commit was decided) or none, and no record left. */
static void crash_at(fixture *f, const char *at, int committed)
{
    char k[FIXTURE_SHARDS][64];
    keys_on_every_shard(f, at, k);
    setenv("RINGPROXY_TXN_CRASH_AT", at, 1);
    assert_int_equal(harness_ringproxy_restart(&f->proxy, SIGTERM), 0);
    redisContext *c = harness_connect(f->proxy.port);
    assert_non_null(c);
    redisReply *r = redisCommand(c, "MSET %s 1 %s 2 %s 3 %s 4", k[0], k[1], k[2], k[3]);
    if (r) /* the proxy is gone before it answers */
        fail_msg("crash at %s: the proxy answered %s", at, r->str ? r->str : "?");
    redisFree(c);
    int status = harness_proc_stop(&f->proxy, 0);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 77);
    unsetenv("RINGPROXY_TXN_CRASH_AT");
    /* Before recovery: a commit decided is all-or-nothing only once done. */
    int before = present(f, k, 4);
    assert_true(committed || before == 0);
    char *ini = harness_ini(f->shards, FIXTURE_SHARDS, ATOMIC);
    assert_int_equal(harness_ringproxy_start(&f->proxy, ini), 0);
    free(ini);
    wait_no_records(f);
    assert_int_equal(present(f, k, 4), committed ? 4 : 0);
    /* The keys are free again: a new transaction over them goes through. */
    c = fixture_client(f);
    fixture_expect_status(fixture_cmd(c, "MSET %s 5 %s 6 %s 7 %s 8", k[0], k[1], k[2], k[3]), "OK");
    fixture_expect_int(fixture_cmd(c, "DEL %s %s %s %s", k[0], k[1], k[2], k[3]), 4);
    fixture_close(f, c);
    wait_no_records(f); /* the commit decisions are deleted just after the replies */
}

static void test_coordinator_crash_at_every_step(void **state)
{
    fixture *f = start_atomic(state);
    crash_at(f, "prepared_one", 0);
    crash_at(f, "prepared", 0);
    crash_at(f, "decided", 1);
    crash_at(f, "committed_one", 1);
}

/* A participant paused (SIGSTOP) during an MSET: the prepare times out, the
 * client gets an error, and once the shard runs again the transaction is
 * aborted everywhere; a participant killed: the same. */
static void test_participant_paused_or_killed(void **state)
{
    fixture *f = start_atomic(state);
    char k[FIXTURE_SHARDS][64];
    keys_on_every_shard(f, "pause", k);
    redisContext *c = fixture_client(f);
    kill(f->shards[2].pid, SIGSTOP);
    redisReply *r = fixture_cmd(c, "MSET %s 1 %s 2 %s 3 %s 4", k[0], k[1], k[2], k[3]);
    fixture_expect_error(r, "ERR cross-shard transaction aborted");
    kill(f->shards[2].pid, SIGCONT);
    wait_no_records(f);
    assert_int_equal(present(f, k, 4), 0);
    fixture_expect_status(fixture_cmd(c, "MSET %s 1 %s 2 %s 3 %s 4", k[0], k[1], k[2], k[3]), "OK");
    assert_int_equal(present(f, k, 4), 4);

    redisFree(f->direct[3]);
    f->direct[3] = NULL;
    harness_proc_stop(&f->shards[3], SIGKILL);
    r = fixture_cmd(c, "DEL %s %s %s %s", k[0], k[1], k[2], k[3]);
    assert_int_equal(r->type, REDIS_REPLY_ERROR);
    freeReplyObject(r);
    assert_int_equal(present(f, k, 3), 3); /* nothing deleted on the live shards */
    assert_int_equal(harness_redis_restart(&f->shards[3]), 0);
    f->direct[3] = harness_connect(f->shards[3].port);
    assert_non_null(f->direct[3]);
    wait_no_records(f);
    assert_int_equal(present(f, k, 3), 3);
    fixture_close(f, c);
}

/* A client of another proxy never sees a transaction's writes before its
 * commit: the staged writes live in the store, not in db 0. Here the
 * coordinator died prepared; the other proxy reads the old values, then
 * its own recovery aborts it. */
static void test_other_proxy_sees_nothing_staged(void **state)
{
    fixture *f = start_atomic(state);
    char k[FIXTURE_SHARDS][64];
    keys_on_every_shard(f, "other", k);
    redisContext *c = fixture_client(f);
    fixture_expect_status(fixture_cmd(c, "MSET %s old %s old", k[0], k[1]), "OK");
    fixture_close(f, c);

    harness_proc other = {0};
    char *ini = harness_ini(f->shards, FIXTURE_SHARDS, ATOMIC);
    assert_int_equal(harness_ringproxy_start(&other, ini), 0);
    free(ini);
    setenv("RINGPROXY_TXN_CRASH_AT", "prepared", 1);
    assert_int_equal(harness_ringproxy_restart(&f->proxy, SIGTERM), 0);
    c = harness_connect(f->proxy.port);
    assert_non_null(c);
    assert_null(redisCommand(c, "MSET %s new %s new", k[0], k[1]));
    redisFree(c);
    (void)harness_proc_stop(&f->proxy, 0);
    unsetenv("RINGPROXY_TXN_CRASH_AT");

    redisContext *o = harness_connect(other.port);
    assert_non_null(o);
    redisReply *r = fixture_cmd(o, "MGET %s %s", k[0], k[1]);
    fixture_expect_array(r, 2);
    assert_string_equal(r->element[0]->str, "old");
    assert_string_equal(r->element[1]->str, "old");
    freeReplyObject(r);
    /* Its keys are locked in the store until recovery: a transaction of
     * the other proxy over them is refused or waits, never interleaved. */
    wait_no_records(f);
    fixture_expect_status(fixture_cmd(o, "MSET %s x %s y", k[0], k[1]), "OK");
    redisFree(o);
    harness_proc_stop(&other, SIGTERM);
}

/* MULTI ... EXEC over three shards: +QUEUED for each command, EXEC's
 * array in the client's order with a command's own error in its place (as
 * Redis), and nothing left in the store. A script in such a transaction
 * is refused. */
static void test_multi_exec_across_shards(void **state)
{
    fixture *f = start_atomic(state);
    char k[FIXTURE_SHARDS][64];
    keys_on_every_shard(f, "multi", k);
    redisContext *c = fixture_client(f);
    fixture_expect_status(fixture_cmd(c, "MULTI"), "OK");
    fixture_expect_status(fixture_cmd(c, "SET %s a", k[0]), "QUEUED");
    fixture_expect_status(fixture_cmd(c, "INCRBY %s 5", k[1]), "QUEUED");
    fixture_expect_status(fixture_cmd(c, "GET %s", k[0]), "QUEUED");
    fixture_expect_status(fixture_cmd(c, "LPUSH %s x", k[0]), "QUEUED");
    fixture_expect_status(fixture_cmd(c, "PING"), "QUEUED");
    fixture_expect_status(fixture_cmd(c, "RPUSH %s y", k[2]), "QUEUED");
    redisReply *r = fixture_cmd(c, "EXEC");
    fixture_expect_array(r, 6);
    assert_string_equal(r->element[0]->str, "OK");
    assert_int_equal(r->element[1]->integer, 5);
    assert_string_equal(r->element[2]->str, "a");
    assert_int_equal(r->element[3]->type, REDIS_REPLY_ERROR);
    assert_true(strncmp(r->element[3]->str, "WRONGTYPE", 9) == 0);
    assert_string_equal(r->element[4]->str, "PONG");
    assert_int_equal(r->element[5]->integer, 1);
    freeReplyObject(r);

    fixture_expect_status(fixture_cmd(c, "MULTI"), "OK");
    fixture_expect_status(fixture_cmd(c, "SET %s b", k[0]), "QUEUED");
    fixture_expect_status(fixture_cmd(c, "EVAL %s 1 %s", "return 1", k[1]), "QUEUED");
    fixture_expect_error(fixture_cmd(c, "EXEC"), "EXECABORT");
    fixture_expect_str(fixture_cmd(c, "GET %s", k[0]), "a");
    fixture_close(f, c);
    wait_no_records(f);
}

/* WATCH k0 k1 (two shards), MULTI, SET on three shards: EXEC. */
static redisReply *watched_exec(redisContext *c, char k[FIXTURE_SHARDS][64], const char *v)
{
    fixture_expect_status(fixture_cmd(c, "WATCH %s %s", k[0], k[1]), "OK");
    fixture_expect_status(fixture_cmd(c, "MULTI"), "OK");
    for (int s = 0; s < 3; s++)
        fixture_expect_status(fixture_cmd(c, "SET %s %s", k[s], v), "QUEUED");
    return fixture_cmd(c, "EXEC");
}

/* Nothing of a transaction answered nil was written: k0 and k1 hold
 * what they held, k2 was never set. */
static void nothing_set(fixture *f, char k[FIXTURE_SHARDS][64], const char *k0, const char *k1)
{
    fixture_expect_str(fixture_cmd(f->direct[0], "GET %s", k[0]), k0);
    fixture_expect_str(fixture_cmd(f->direct[1], "GET %s", k[1]), k1);
    fixture_expect_int(fixture_cmd(f->direct[2], "EXISTS %s", k[2]), 0);
}

/* WATCH on keys of two shards with cross_shard = atomic: EXEC answers nil
 * and writes nothing when a watched key changed after the WATCH (through
 * another connection of the proxy, before or after MULTI, or on the shard
 * itself; in RESP2 and RESP3), else runs the transaction on every shard
 * with the replies in the client's order. EXEC, DISCARD and UNWATCH end
 * the WATCH. */
static void test_watch_across_shards(void **state)
{
    fixture *f = start_atomic(state);
    char k[FIXTURE_SHARDS][64];
    keys_on_every_shard(f, "watch", k);
    redisContext *c = fixture_client(f), *other = fixture_client(f);
    fixture_expect_status(fixture_cmd(c, "MSET %s old %s old", k[0], k[1]), "OK");

    /* Changed by another client of the proxy between WATCH and MULTI. */
    fixture_expect_status(fixture_cmd(c, "WATCH %s %s", k[0], k[1]), "OK");
    fixture_expect_status(fixture_cmd(other, "SET %s other", k[1]), "OK");
    fixture_expect_status(fixture_cmd(c, "MULTI"), "OK");
    for (int s = 0; s < 3; s++)
        fixture_expect_status(fixture_cmd(c, "SET %s new", k[s]), "QUEUED");
    fixture_expect_nil(fixture_cmd(c, "EXEC"));
    nothing_set(f, k, "old", "other");

    /* Changed by another client of the proxy while the commands queue. */
    fixture_expect_status(fixture_cmd(c, "WATCH %s %s", k[0], k[1]), "OK");
    fixture_expect_status(fixture_cmd(c, "MULTI"), "OK");
    fixture_expect_status(fixture_cmd(c, "SET %s new", k[0]), "QUEUED");
    fixture_expect_status(fixture_cmd(c, "SET %s new", k[2]), "QUEUED");
    fixture_expect_status(fixture_cmd(other, "SET %s other2", k[0]), "OK");
    fixture_expect_nil(fixture_cmd(c, "EXEC"));
    nothing_set(f, k, "other2", "other");

    /* Changed on the shard itself, not through the proxy. */
    fixture_expect_status(fixture_cmd(c, "WATCH %s %s", k[0], k[1]), "OK");
    fixture_expect_status(fixture_cmd(f->direct[1], "SET %s direct", k[1]), "OK");
    fixture_expect_nil(watched_exec(c, k, "new"));
    nothing_set(f, k, "other2", "direct");

    /* Only the other shard's key changed, the commands touch one shard. */
    fixture_expect_status(fixture_cmd(c, "WATCH %s %s", k[0], k[1]), "OK");
    fixture_expect_status(fixture_cmd(other, "SET %s direct", k[1]), "OK");
    fixture_expect_status(fixture_cmd(c, "MULTI"), "OK");
    fixture_expect_status(fixture_cmd(c, "SET %s new", k[0]), "QUEUED");
    fixture_expect_nil(fixture_cmd(c, "EXEC"));
    nothing_set(f, k, "other2", "direct");

    /* Unchanged: it runs on every shard, EXEC's replies in order. */
    fixture_expect_status(fixture_cmd(c, "WATCH %s %s", k[0], k[1]), "OK");
    fixture_expect_status(fixture_cmd(c, "MULTI"), "OK");
    fixture_expect_status(fixture_cmd(c, "SET %s a", k[0]), "QUEUED");
    fixture_expect_status(fixture_cmd(c, "GET %s", k[1]), "QUEUED");
    fixture_expect_status(fixture_cmd(c, "INCR %s", k[2]), "QUEUED");
    fixture_expect_status(fixture_cmd(c, "SET %s b", k[1]), "QUEUED");
    redisReply *r = fixture_cmd(c, "EXEC");
    fixture_expect_array(r, 4);
    assert_string_equal(r->element[0]->str, "OK");
    assert_string_equal(r->element[1]->str, "direct");
    assert_int_equal(r->element[2]->integer, 1);
    assert_string_equal(r->element[3]->str, "OK");
    freeReplyObject(r);
    fixture_expect_str(fixture_cmd(f->direct[0], "GET %s", k[0]), "a");
    fixture_expect_str(fixture_cmd(f->direct[1], "GET %s", k[1]), "b");
    fixture_expect_str(fixture_cmd(f->direct[2], "GET %s", k[2]), "1");
    fixture_expect_int(fixture_cmd(c, "DEL %s", k[2]), 1);

    /* EXEC ended the WATCH: a change now does not abort the next one. */
    fixture_expect_status(fixture_cmd(other, "SET %s c", k[0]), "OK");
    fixture_expect_status(fixture_cmd(c, "MULTI"), "OK");
    fixture_expect_status(fixture_cmd(c, "SET %s d", k[0]), "QUEUED");
    fixture_expect_status(fixture_cmd(c, "SET %s d", k[1]), "QUEUED");
    r = fixture_cmd(c, "EXEC");
    fixture_expect_array(r, 2);
    freeReplyObject(r);

    /* UNWATCH and DISCARD end it too. */
    fixture_expect_status(fixture_cmd(c, "WATCH %s %s", k[0], k[1]), "OK");
    fixture_expect_status(fixture_cmd(other, "SET %s e", k[1]), "OK");
    fixture_expect_status(fixture_cmd(c, "UNWATCH"), "OK");
    fixture_expect_status(fixture_cmd(c, "MULTI"), "OK");
    fixture_expect_status(fixture_cmd(c, "SET %s f", k[0]), "QUEUED");
    fixture_expect_status(fixture_cmd(c, "SET %s f", k[1]), "QUEUED");
    r = fixture_cmd(c, "EXEC");
    fixture_expect_array(r, 2);
    freeReplyObject(r);
    fixture_expect_status(fixture_cmd(c, "WATCH %s %s", k[0], k[1]), "OK");
    fixture_expect_status(fixture_cmd(c, "MULTI"), "OK");
    fixture_expect_status(fixture_cmd(c, "DISCARD"), "OK");
    fixture_expect_status(fixture_cmd(other, "SET %s g", k[0]), "OK");
    fixture_expect_status(fixture_cmd(other, "SET %s g", k[1]), "OK");
    r = watched_exec(c, k, "h");
    fixture_expect_array(r, 3);
    freeReplyObject(r);
    fixture_expect_int(fixture_cmd(c, "DEL %s", k[2]), 1);

    /* One watched shard: its commands alone run where the WATCH is (as
     * Redis), with another shard's they take the two-phase commit. */
    fixture_expect_status(fixture_cmd(c, "WATCH %s", k[0]), "OK");
    fixture_expect_status(fixture_cmd(other, "SET %s one", k[0]), "OK");
    fixture_expect_status(fixture_cmd(c, "MULTI"), "OK");
    fixture_expect_status(fixture_cmd(c, "SET %s two", k[0]), "QUEUED");
    fixture_expect_nil(fixture_cmd(c, "EXEC"));
    fixture_expect_status(fixture_cmd(c, "WATCH %s", k[0]), "OK");
    fixture_expect_status(fixture_cmd(c, "MULTI"), "OK");
    fixture_expect_status(fixture_cmd(c, "SET %s h", k[0]), "QUEUED");
    fixture_expect_status(fixture_cmd(c, "SET %s h", k[1]), "QUEUED");
    r = fixture_cmd(c, "EXEC");
    fixture_expect_array(r, 2);
    freeReplyObject(r);
    nothing_set(f, k, "h", "h");

    /* RESP3: nil is _ there. */
    int fd = fixture_raw_connect(f->proxy.port);
    assert_true(fd >= 0);
    static const char hello[] = "*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n";
    assert_int_equal(fixture_raw_send(fd, hello, sizeof(hello) - 1), 0);
    char got[4096];
    int closed = 0;
    size_t n = fixture_raw_read(fd, got, sizeof(got), sizeof(got), fixture_bound_ms(300), &closed);
    assert_true(n > 0 && got[0] == '%'); /* the HELLO map */
    char req[512];
    int len = snprintf(req, sizeof(req), "*3\r\n$5\r\nWATCH\r\n$%zu\r\n%s\r\n$%zu\r\n%s\r\n",
                       strlen(k[0]), k[0], strlen(k[1]), k[1]);
    assert_int_equal(fixture_raw_send(fd, req, (size_t)len), 0);
    n = fixture_raw_read(fd, got, sizeof(got), 5, fixture_bound_ms(5000), &closed);
    assert_true(n == 5 && memcmp(got, "+OK\r\n", 5) == 0);
    fixture_expect_status(fixture_cmd(other, "SET %s i", k[0]), "OK");
    len = snprintf(req, sizeof(req),
                   "*1\r\n$5\r\nMULTI\r\n*3\r\n$3\r\nSET\r\n$%zu\r\n%s\r\n$1\r\nj\r\n"
                   "*3\r\n$3\r\nSET\r\n$%zu\r\n%s\r\n$1\r\nj\r\n*1\r\n$4\r\nEXEC\r\n",
                   strlen(k[0]), k[0], strlen(k[2]), k[2]);
    assert_int_equal(fixture_raw_send(fd, req, (size_t)len), 0);
    static const char want[] = "+OK\r\n+QUEUED\r\n+QUEUED\r\n_\r\n";
    n = fixture_raw_read(fd, got, sizeof(got), sizeof(want) - 1, fixture_bound_ms(5000), &closed);
    assert_int_equal(n, sizeof(want) - 1);
    assert_memory_equal(got, want, n);
    close(fd);
    nothing_set(f, k, "i", "h");
    fixture_close(f, other);
    fixture_close(f, c);
    wait_no_records(f);
}

/* Serialized with rebalancing: while keys move (a shard added, moves
 * slowed by migrate_rate), a cross-shard MSET gets -TRYAGAIN and changes
 * nothing; once the move is over it goes through. */
static void test_serialized_with_rebalancing(void **state)
{
    fixture *f =
        fixture_start_some(ATOMIC "migrate_rate = 200\nmigrate_batch = 10\n", FIXTURE_SHARDS - 1);
    *state = f;
    assert_non_null(f);
    redisContext *c = fixture_client(f);
    char a[64], b[64];
    fixture_key_on_shard(c, "move", 0, a, sizeof(a));
    fixture_key_on_shard(c, "move", 1, b, sizeof(b));
    for (int i = 0; i < 2000; i++)
        fixture_expect_status(fixture_cmd(c, "SET fill:%d x", i), "OK");
    char path[400];
    snprintf(path, sizeof(path), "%s/proxy.ini", f->proxy.dir);
    FILE *ini = fopen(path, "a");
    assert_non_null(ini);
    fprintf(ini, "s%d = 127.0.0.1:%d\n", FIXTURE_SHARDS, f->shards[FIXTURE_SHARDS - 1].port);
    fclose(ini);
    fixture_expect_status(fixture_cmd(c, "PROXY RELOAD"), "OK");
    redisReply *r = fixture_cmd(c, "INFO rebalance");
    int moving = strstr(r->str, "rebalance_state:idle") == NULL;
    freeReplyObject(r);
    assert_true(moving); /* 500 keys at 200 a second: the move takes a while */
    fixture_expect_error(fixture_cmd(c, "MSET %s 1 %s 2", a, b), "TRYAGAIN");
    fixture_expect_int(fixture_cmd(c, "EXISTS %s %s", a, b), 0);
    long long deadline = fixture_now_ms() + fixture_bound_ms(20000);
    for (;;) {
        r = fixture_cmd(c, "INFO rebalance");
        int idle = strstr(r->str, "rebalance_state:idle") != NULL;
        freeReplyObject(r);
        if (idle)
            break;
        assert_true(fixture_now_ms() < deadline);
        fixture_sleep_ms(50);
    }
    /* s1 and s2 are in the store since start; a key of s4 (added since)
     * would need a restart. */
    fixture_key_on_shard(c, "after", 0, a, sizeof(a));
    fixture_key_on_shard(c, "after", 1, b, sizeof(b));
    fixture_expect_status(fixture_cmd(c, "MSET %s 1 %s 2", a, b), "OK");
    fixture_close(f, c);
    wait_no_records(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_modes, stop),
        cmocka_unit_test_teardown(test_multi_exec_across_shards, stop),
        cmocka_unit_test_teardown(test_watch_across_shards, stop),
        cmocka_unit_test_teardown(test_atomic_writes_across_shards, stop),
        cmocka_unit_test_teardown(test_coordinator_crash_at_every_step, stop),
        cmocka_unit_test_teardown(test_participant_paused_or_killed, stop),
        cmocka_unit_test_teardown(test_other_proxy_sees_nothing_staged, stop),
        cmocka_unit_test_teardown(test_serialized_with_rebalancing, stop),
    };
    const char *only = getenv("TXN_TEST");
    if (only != NULL && only[0] != '\0')
        cmocka_set_test_filter(only);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
