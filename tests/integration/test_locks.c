/* Quorum locks end to end (docs/locks.md): LOCK.ACQUIRE, RELEASE, EXTEND and
 * INFO through one or two ringproxies over real redis-server lock shards,
 * with shards killed, restarted empty and paused; where plain SET NX PX
 * locks are and are not safe; and a checker run of 16 contending clients
 * whose invariants (one holder at a time, growing tokens, fenced writes in
 * order, no grant without a majority) must hold through every fault.
 *
 * LOCK_CHECK_CYCLES=<n> repeats the checker's fault cycle n times (default
 * 1, about 15 s); LOCK_CHECK_SEED=<n> replays a seed it printed. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "fixture.h"

#define MAX_SHARDS  5
#define MAX_PROXIES 2
/* How long the lock service may take to find its shards ready (times the
 * harness timeout scale). */
#define READY_TIMEOUT_MS 10000
/* How long a restore may take. */
#define RESTORE_TIMEOUT_MS 10000

/* Shards behind one or two proxies, plus a plain Redis for the checker's
 * fenced resource (outside the faults). */
typedef struct cluster {
    harness_proc shards[MAX_SHARDS];
    size_t nshards;
    harness_proc proxies[MAX_PROXIES];
    size_t nproxies;
    harness_proc resource;
} cluster;

static int test_passed;

static long long scaled(long long ms)
{
    return ms * harness_timeout_scale();
}

static cluster *cluster_start(void **state, size_t nshards, size_t nproxies, const char *extra)
{
    test_passed = 0;
    cluster *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    *state = c;
    c->nshards = nshards;
    for (size_t i = 0; i < nshards; i++)
        assert_int_equal(harness_redis_start(&c->shards[i]), 0);
    char *ini = harness_ini(c->shards, nshards, extra ? extra : "watch_config = no");
    for (size_t i = 0; i < nproxies; i++) {
        assert_int_equal(harness_ringproxy_start(&c->proxies[i], ini), 0);
        c->nproxies++;
    }
    free(ini);
    return c;
}

static int cluster_stop(void **state)
{
    cluster *c = *state;
    *state = NULL;
    if (!c)
        return 0;
    for (size_t i = 0; i < c->nproxies; i++) {
        if (!test_passed && c->proxies[i].pid)
            harness_dump_log(&c->proxies[i], 6000);
        if (c->proxies[i].pid)
            harness_proc_stop(&c->proxies[i], SIGTERM);
    }
    for (size_t i = 0; i < c->nshards; i++) {
        if (c->shards[i].pid) {
            kill(c->shards[i].pid, SIGCONT);
            harness_proc_stop(&c->shards[i], SIGTERM);
        }
    }
    if (c->resource.pid)
        harness_proc_stop(&c->resource, SIGTERM);
    free(c);
    return 0;
}

static redisContext *connect_to(const harness_proc *p)
{
    redisContext *r = harness_connect(p->port);
    assert_non_null(r);
    return r;
}

/* LOCK.ACQUIRE: the token, 0 for nil; fails the test on an error. */
static long long acquire(redisContext *c, const char *name, int ttl_ms, int wait_ms)
{
    redisReply *r = fixture_cmd(c, "LOCK.ACQUIRE %s %d WAIT %d", name, ttl_ms, wait_ms);
    long long token = 0;
    if (r->type == REDIS_REPLY_INTEGER)
        token = r->integer;
    else if (r->type != REDIS_REPLY_NIL)
        fail_msg("LOCK.ACQUIRE %s: unexpected reply type %d (%s)", name, r->type,
                 r->type == REDIS_REPLY_ERROR ? r->str : "");
    freeReplyObject(r);
    return token;
}

static long long lock_int(redisContext *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    assert_non_null(r);
    if (r->type != REDIS_REPLY_INTEGER)
        fail_msg("expected an integer, got type %d (%s)", r->type,
                 r->type == REDIS_REPLY_ERROR ? r->str : "");
    long long v = r->integer;
    freeReplyObject(r);
    return v;
}

/* LOCK.INFO: the holder's token (0: nil), its ttl in *ttl. */
static long long info(redisContext *c, const char *name, long long *ttl)
{
    redisReply *r = fixture_cmd(c, "LOCK.INFO %s", name);
    long long token = 0;
    if (r->type == REDIS_REPLY_ARRAY) {
        assert_int_equal(r->elements, 2);
        token = r->element[0]->integer;
        if (ttl)
            *ttl = r->element[1]->integer;
    } else if (r->type != REDIS_REPLY_NIL) {
        fail_msg("LOCK.INFO %s: reply type %d (%s)", name, r->type,
                 r->type == REDIS_REPLY_ERROR ? r->str : "");
    }
    freeReplyObject(r);
    return token;
}

/* Waits until the proxy's lock shards are ready (LOCK.INFO answers). */
static void wait_lock_service(redisContext *c)
{
    long long deadline = fixture_now_ms() + scaled(READY_TIMEOUT_MS);
    for (;;) {
        redisReply *r = fixture_cmd(c, "LOCK.INFO readiness-probe");
        int ready = r->type != REDIS_REPLY_ERROR;
        freeReplyObject(r);
        if (ready)
            return;
        if (fixture_now_ms() > deadline)
            fail_msg("the lock service did not become ready");
        fixture_sleep_ms(20);
    }
}

/* Waits until INFO locks says all n lock shards are ready: the service
 * answers with a majority, and a shard whose restore was tried before the
 * others had markers is ready one retry (STORE_RESTORE_RETRY_US) later. */
static void wait_every_lock_shard(redisContext *c, int n)
{
    char want[64];
    snprintf(want, sizeof(want), "lock_shards_ready:%d\r\n", n);
    long long deadline = fixture_now_ms() + scaled(READY_TIMEOUT_MS);
    for (;;) {
        redisReply *r = fixture_cmd(c, "INFO locks");
        int ready = r->type == REDIS_REPLY_STRING && strstr(r->str, want) != NULL;
        freeReplyObject(r);
        if (ready)
            return;
        if (fixture_now_ms() > deadline)
            fail_msg("not every lock shard became ready");
        fixture_sleep_ms(20);
    }
}

static void expect_error(redisContext *c, const char *prefix, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    assert_non_null(r);
    fixture_expect_error(r, prefix);
}

/* The proxy log line a finished restore writes. */
static void wait_log(const harness_proc *p, const char *needle)
{
    long long deadline = fixture_now_ms() + scaled(RESTORE_TIMEOUT_MS);
    while (!fixture_log_contains(p, needle)) {
        if (fixture_now_ms() > deadline)
            fail_msg("no '%s' in the proxy log", needle);
        fixture_sleep_ms(20);
    }
}

/* A value read directly from a shard's store database. */
static long long store_get(const harness_proc *shard, const char *key)
{
    redisContext *d = connect_to(shard);
    fixture_expect_status(fixture_cmd(d, "SELECT 15"), "OK");
    redisReply *r = fixture_cmd(d, "GET %s", key);
    long long v = r->type == REDIS_REPLY_STRING ? atoll(r->str) : -1;
    freeReplyObject(r);
    redisFree(d);
    return v;
}

/* ---- the commands ---- */

static void test_grant_deny_release_extend_info(void **state)
{
    cluster *c = cluster_start(state, 3, 1, NULL);
    redisContext *p = connect_to(&c->proxies[0]);
    wait_lock_service(p);
    wait_every_lock_shard(p, 3);

    redisReply *r = fixture_cmd(p, "INFO locks");
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    assert_non_null(strstr(r->str, "lock_shards:3\r\n"));
    assert_non_null(strstr(r->str, "lock_majority:2\r\n"));
    assert_non_null(strstr(r->str, "lock_shards_ready:3\r\n"));
    assert_non_null(strstr(r->str, "lock_shard_states:s1=ready,s2=ready,s3=ready\r\n"));
    freeReplyObject(r);

    long long t1 = acquire(p, "orders", 5000, 0);
    assert_true(t1 > 0);
    assert_int_equal(acquire(p, "orders", 5000, 0), 0); /* held: nil */
    long long ttl = 0;
    assert_int_equal(info(p, "orders", &ttl), t1);
    assert_in_range(ttl, 1, 5000);

    assert_int_equal(lock_int(p, "LOCK.EXTEND orders %lld 20000", t1 + 1), 0);
    assert_int_equal(lock_int(p, "LOCK.EXTEND orders %lld 20000", t1), 1);
    assert_int_equal(info(p, "orders", &ttl), t1);
    assert_in_range(ttl, 5001, 20000);

    assert_int_equal(lock_int(p, "LOCK.RELEASE orders %lld", t1 + 1), 0);
    assert_int_equal(lock_int(p, "LOCK.RELEASE orders %lld", t1), 1);
    assert_int_equal(lock_int(p, "LOCK.RELEASE orders %lld", t1), 0); /* once */
    assert_int_equal(info(p, "orders", NULL), 0);
    assert_int_equal(lock_int(p, "LOCK.EXTEND orders %lld 1000", t1), 0);

    long long t2 = acquire(p, "orders", 300, 0);
    assert_true(t2 > t1);
    /* Another name has its own counter, and its own holder. */
    assert_true(acquire(p, "invoices", 1000, 0) > 0);

    /* WAIT: granted once the 300 ms lease runs out, within the wait. */
    long long start = fixture_now_ms();
    long long t3 = acquire(p, "orders", 1000, (int)scaled(3000));
    assert_true(t3 > t2);
    assert_true(fixture_now_ms() - start >= 150);
    /* WAIT that runs out: nil, after about the wait. */
    start = fixture_now_ms();
    assert_int_equal(acquire(p, "orders", 1000, 100), 0);
    assert_true(fixture_now_ms() - start >= 70);

    /* A waiting client does not hold up another one. */
    redisContext *waiter = connect_to(&c->proxies[0]);
    redisAppendCommand(waiter, "LOCK.ACQUIRE orders 1000 WAIT %d", (int)scaled(2000));
    int done = 0;
    assert_int_equal(redisBufferWrite(waiter, &done), REDIS_OK);
    fixture_expect_status(fixture_cmd(p, "PING"), "PONG");
    assert_int_equal(lock_int(p, "LOCK.RELEASE orders %lld", t3), 1);
    r = fixture_next_reply(waiter);
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    assert_true(r->integer > t3);
    freeReplyObject(r);
    redisFree(waiter);

    /* Arguments. */
    expect_error(p, "ERR", "LOCK.ACQUIRE x 0");
    expect_error(p, "ERR", "LOCK.ACQUIRE x abc");
    expect_error(p, "ERR", "LOCK.ACQUIRE x 100 WAIT -1");
    expect_error(p, "ERR", "LOCK.ACQUIRE x 100 LATER 5");
    expect_error(p, "ERR", "LOCK.ACQUIRE x 100 WAIT");
    expect_error(p, "ERR", "LOCK.RELEASE x 0");
    expect_error(p, "ERR", "LOCK.EXTEND x 1 0");
    expect_error(p, "ERR wrong number", "LOCK.INFO");
    /* Not inside a transaction: a lock lives on several shards. */
    fixture_expect_status(fixture_cmd(p, "MULTI"), "OK");
    expect_error(p, "ERR", "LOCK.INFO x");
    freeReplyObject(fixture_cmd(p, "DISCARD"));
    redisFree(p);
    test_passed = 1;
}

/* Tokens come from counters on a majority, so two proxies in front of the
 * same shards hand out one increasing sequence, and one holder at a time. */
static void test_tokens_increase_across_two_proxies(void **state)
{
    cluster *c = cluster_start(state, 3, 2, NULL);
    redisContext *p[2] = {connect_to(&c->proxies[0]), connect_to(&c->proxies[1])};
    wait_lock_service(p[0]);
    wait_lock_service(p[1]);
    long long last = 0;
    for (int round = 0; round < 40; round++) {
        redisContext *mine = p[round % 2], *other = p[1 - round % 2];
        long long t = acquire(mine, "shared", 5000, 0);
        assert_true(t > last);
        assert_int_equal(acquire(other, "shared", 5000, 0), 0);
        assert_int_equal(info(other, "shared", NULL), t);
        /* released through the other proxy: the token is all it takes */
        assert_int_equal(lock_int(other, "LOCK.RELEASE shared %lld", t), 1);
        last = t;
    }
    /* Both at once, many times: exactly one wins each round. */
    last = 0;
    for (int round = 0; round < 30; round++) {
        redisAppendCommand(p[0], "LOCK.ACQUIRE race 5000");
        redisAppendCommand(p[1], "LOCK.ACQUIRE race 5000");
        redisReply *a = fixture_next_reply(p[0]);
        redisReply *b = fixture_next_reply(p[1]);
        int wins = (a->type == REDIS_REPLY_INTEGER) + (b->type == REDIS_REPLY_INTEGER);
        assert_int_equal(wins, 1);
        long long t = a->type == REDIS_REPLY_INTEGER ? a->integer : b->integer;
        assert_true(t > last);
        last = t;
        freeReplyObject(a);
        freeReplyObject(b);
        assert_int_equal(lock_int(p[0], "LOCK.RELEASE race %lld", t), 1);
    }
    redisFree(p[0]);
    redisFree(p[1]);
    test_passed = 1;
}

/* ---- shards down ---- */

static void test_minority_down_granted_majority_down_refused(void **state)
{
    cluster *c = cluster_start(state, 3, 1, NULL);
    redisContext *p = connect_to(&c->proxies[0]);
    wait_every_lock_shard(p, 3); /* s3 is killed next: the other two must be ready */
    long long t0 = acquire(p, "job", 5000, 0);
    assert_true(t0 > 0);
    assert_int_equal(lock_int(p, "LOCK.RELEASE job %lld", t0), 1);

    /* One of three down: granted on the two left, so both confirm the
     * release. (A lock taken before the kill may sit on the killed shard
     * and one other: the first two grants decide, later ones are given
     * back; its release then finds one holder, short of a majority.) */
    harness_proc_stop(&c->shards[2], SIGKILL);
    long long t1 = acquire(p, "job", 5000, 0);
    assert_true(t1 > t0);
    assert_int_equal(lock_int(p, "LOCK.RELEASE job %lld", t1), 1);
    long long t2 = acquire(p, "job", 5000, 0);
    assert_true(t2 > t1);
    assert_int_equal(info(p, "job", NULL), t2);

    harness_proc_stop(&c->shards[1], SIGKILL);
    /* One of three: nothing is granted, with an error that says why. */
    expect_error(p, "LOCKUNAVAILABLE", "LOCK.ACQUIRE other 5000");
    long long start = fixture_now_ms();
    expect_error(p, "LOCKUNAVAILABLE", "LOCK.ACQUIRE other 5000 WAIT 200");
    assert_true(fixture_now_ms() - start >= 150);
    expect_error(p, "LOCKUNAVAILABLE", "LOCK.INFO job");
    expect_error(p, "LOCKUNAVAILABLE", "LOCK.RELEASE job %lld", t2);
    redisFree(p);
    test_passed = 1;
}

/* Takes and releases "vault" a few times (its counter above 1), then takes
 * it for a minute with s3 down, so that s1 and s2 alone hold it. */
static long long vault_held_without_s3(cluster *c, redisContext *p)
{
    /* s3 is killed next: s1 and s2 must be a majority then (the service
     * answers as soon as any two are ready). */
    wait_every_lock_shard(p, 3);
    for (int i = 0; i < 5; i++)
        assert_int_equal(lock_int(p, "LOCK.RELEASE vault %lld", acquire(p, "vault", 5000, 0)), 1);
    harness_proc_stop(&c->shards[2], SIGKILL);
    long long t = acquire(p, "vault", 60000, 0);
    assert_true(t > 5);
    return t;
}

/* An empty shard with too few restored others to copy the lock state from
 * does not count: s3 restarts empty while only s2 is up, then s1 restarts
 * empty too. Counting either would let s1 and s3 grant "vault" again, with
 * token 1. */
static void test_shard_restarted_empty_is_restored_before_it_counts(void **state)
{
    cluster *c = cluster_start(state, 3, 1, NULL);
    redisContext *p = connect_to(&c->proxies[0]);
    vault_held_without_s3(c, p);

    /* s3 restarts empty while s2 alone is up: not enough to restore from. */
    harness_proc_stop(&c->shards[0], SIGKILL);
    assert_int_equal(harness_redis_restart(&c->shards[2]), 0);
    fixture_sleep_ms(500);
    expect_error(p, "LOCKUNAVAILABLE", "LOCK.ACQUIRE vault 1000");
    assert_false(fixture_log_contains(&c->proxies[0], "restore of shard s3 done"));

    /* s1 back empty too: still only s2 to restore from. */
    assert_int_equal(harness_redis_restart(&c->shards[0]), 0);
    fixture_sleep_ms(500);
    expect_error(p, "LOCKUNAVAILABLE", "LOCK.ACQUIRE vault 1000");
    redisFree(p);
    test_passed = 1;
}

/* A lock granted while s3 was down lives on s1 and s2 only. s3 comes back
 * empty and is restored from s1 and s2; s1 restarts empty and is restored
 * from s2 and s3; then s2 dies. s1 and s3 alone still know the holder and
 * the counter. */
static void test_restore_copies_holds_and_counters(void **state)
{
    cluster *c = cluster_start(state, 3, 1, NULL);
    redisContext *p = connect_to(&c->proxies[0]);
    long long t = vault_held_without_s3(c, p);

    assert_int_equal(harness_redis_restart(&c->shards[2]), 0);
    wait_log(&c->proxies[0], "restore of shard s3 done");
    assert_int_equal(store_get(&c->shards[2], "ringproxy:lock:count:vault"), t);
    assert_int_equal(store_get(&c->shards[2], "ringproxy:lock:hold:vault"), t);

    harness_proc_stop(&c->shards[0], SIGKILL);
    assert_int_equal(harness_redis_restart(&c->shards[0]), 0);
    wait_log(&c->proxies[0], "restore of shard s1 done");
    assert_int_equal(store_get(&c->shards[0], "ringproxy:lock:count:vault"), t);

    harness_proc_stop(&c->shards[1], SIGKILL);
    /* s1 and s3, both restored: still held by t, and the next token is
     * above it. */
    assert_int_equal(acquire(p, "vault", 5000, 0), 0);
    assert_int_equal(info(p, "vault", NULL), t);
    assert_int_equal(lock_int(p, "LOCK.RELEASE vault %lld", t), 1);
    assert_true(acquire(p, "vault", 5000, 0) > t);
    redisFree(p);
    test_passed = 1;
}

/* ---- hidden from clients ---- */

static long long rebalances_completed(redisContext *p)
{
    redisReply *r = fixture_cmd(p, "INFO rebalance");
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    const char *at = strstr(r->str, "rebalance_completed:");
    long long n = at ? atoll(at + strlen("rebalance_completed:")) : -1;
    freeReplyObject(r);
    return n;
}

static void test_lock_state_is_invisible_and_survives_flushall_and_a_rebalance(void **state)
{
    cluster *c = cluster_start(state, 4, 0, NULL);
    /* The proxy starts over s1..s3; s4 is added by a reload later. */
    char *ini = harness_ini(c->shards, 3, "watch_config = no");
    assert_int_equal(harness_ringproxy_start(&c->proxies[0], ini), 0);
    c->nproxies = 1;
    free(ini);
    redisContext *p = connect_to(&c->proxies[0]);
    wait_lock_service(p);
    wait_every_lock_shard(p, 3); /* the test reads the hold on all three */

    long long t = acquire(p, "hidden", 60000, 0);
    assert_true(t > 0);
    for (int i = 0; i < 200; i++)
        fixture_expect_status(fixture_cmd(p, "SET data:%d %d", i, i), "OK");
    fixture_expect_int(fixture_cmd(p, "DBSIZE"), 200);
    redisReply *r = fixture_cmd(p, "KEYS *");
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    assert_int_equal(r->elements, 200);
    for (size_t i = 0; i < r->elements; i++)
        assert_true(strncmp(r->element[i]->str, "data:", 5) == 0);
    freeReplyObject(r);
    size_t scanned = 0;
    char cursor[64] = "0";
    do {
        r = fixture_cmd(p, "SCAN %s COUNT 100", cursor);
        snprintf(cursor, sizeof(cursor), "%s", r->element[0]->str);
        for (size_t i = 0; i < r->element[1]->elements; i++)
            assert_true(strncmp(r->element[1]->element[i]->str, "data:", 5) == 0);
        scanned += r->element[1]->elements;
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
    assert_int_equal(scanned, 200);

    /* No way into the store database through the proxy. */
    expect_error(p, "ERR", "SELECT 15");
    expect_error(p, "ERR", "COPY data:1 data:copy DB 15");
    expect_error(p, "ERR", "MOVE data:1 15");
    expect_error(p, "ERR", "SWAPDB 0 15");
    /* Nor inside a transaction: the COPY is refused and EXEC aborts. */
    fixture_expect_status(fixture_cmd(p, "MULTI"), "OK");
    expect_error(p, "ERR", "COPY data:1 data:copy DB 15");
    expect_error(p, "EXECABORT", "EXEC");

    /* FLUSHALL empties database 0 only. */
    fixture_expect_status(fixture_cmd(p, "FLUSHALL"), "OK");
    fixture_expect_int(fixture_cmd(p, "DBSIZE"), 0);
    assert_int_equal(info(p, "hidden", NULL), t);
    fixture_expect_status(fixture_cmd(p, "FLUSHALL ASYNC"), "OK");
    assert_int_equal(info(p, "hidden", NULL), t);

    /* A rebalance moves database 0 only: the lock records stay put. */
    for (int i = 0; i < 2000; i++)
        fixture_expect_status(fixture_cmd(p, "SET data:%d %d", i, i), "OK");
    ini = harness_ini(c->shards, 4, "watch_config = no");
    char *port = strstr(ini, "%PORT%");
    assert_non_null(port);
    char path[400], text[4096];
    snprintf(text, sizeof(text), "%.*s%d%s", (int)(port - ini), ini, c->proxies[0].port, port + 6);
    free(ini);
    snprintf(path, sizeof(path), "%s/proxy.ini", c->proxies[0].dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    fixture_expect_status(fixture_cmd(p, "PROXY RELOAD"), "OK");
    long long deadline = fixture_now_ms() + scaled(30000);
    while (rebalances_completed(p) < 1) {
        assert_true(fixture_now_ms() < deadline);
        fixture_sleep_ms(20);
    }
    fixture_expect_int(fixture_cmd(p, "DBSIZE"), 2000);
    assert_int_equal(info(p, "hidden", NULL), t);
    /* s4 joined the store (its marker and the ring record live there)
     * but holds no lock record: those stay on the lock shards. */
    redisContext *s4 = connect_to(&c->shards[3]);
    fixture_expect_status(fixture_cmd(s4, "SELECT 15"), "OK");
    r = fixture_cmd(s4, "KEYS ringproxy:lock:*");
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    assert_int_equal(r->elements, 0);
    freeReplyObject(r);
    redisFree(s4);
    for (int i = 0; i < 3; i++)
        assert_int_equal(store_get(&c->shards[i], "ringproxy:lock:hold:hidden"), t);
    assert_int_equal(lock_int(p, "LOCK.RELEASE hidden %lld", t), 1);
    redisFree(p);
    test_passed = 1;
}

/* ---- plain SET NX PX locks through the proxy ---- */

static int owner_index(redisContext *p, const char *key)
{
    redisReply *r = fixture_cmd(p, "PROXY RING %s", key);
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    int idx = atoi(r->element[0]->str + 1) - 1; /* "s<n>" */
    freeReplyObject(r);
    return idx;
}

/* Several proxies over the same ring agree on a key's one owner, so SET NX
 * PX grants one holder at a time. A failover that loses the write (a
 * replica that had not received it; here the owner restarted empty)
 * grants it again while the first lease still runs: that is where plain
 * locks stop being safe, and LOCK.ACQUIRE is not fooled the same way. */
static void test_set_nx_px_is_safe_across_proxies_not_across_a_failover(void **state)
{
    cluster *c = cluster_start(state, 3, 2, NULL);
    redisContext *p[2] = {connect_to(&c->proxies[0]), connect_to(&c->proxies[1])};
    wait_lock_service(p[0]);
    for (int i = 0; i < 20; i++) {
        char key[32];
        snprintf(key, sizeof(key), "plain:%d", i);
        fixture_expect_status(fixture_cmd(p[i % 2], "SET %s a NX PX 30000", key), "OK");
        fixture_expect_nil(fixture_cmd(p[1 - i % 2], "SET %s b NX PX 30000", key));
    }
    long long t = acquire(p[0], "quorum", 30000, 0);
    assert_true(t > 0);

    int owner = owner_index(p[0], "plain:0");
    harness_proc_stop(&c->shards[owner], SIGKILL);
    assert_int_equal(harness_redis_restart(&c->shards[owner]), 0);
    long long deadline = fixture_now_ms() + scaled(5000);
    for (;;) { /* the proxy reconnects with backoff */
        redisReply *r = fixture_cmd(p[1], "SET plain:0 b NX PX 30000");
        int ok = r->type == REDIS_REPLY_STATUS;
        int nil = r->type == REDIS_REPLY_NIL;
        freeReplyObject(r);
        assert_false(nil); /* the first lease is gone with the shard */
        if (ok)
            break;
        assert_true(fixture_now_ms() < deadline);
        fixture_sleep_ms(50);
    }
    /* the second grant of plain:0 came while the first lease ran: unsafe.
     * The quorum lock is never granted again meanwhile, and once the
     * restarted shard is restored, a majority shows its holder again. */
    deadline = fixture_now_ms() + scaled(RESTORE_TIMEOUT_MS);
    for (;;) {
        redisReply *r = fixture_cmd(p[1], "LOCK.ACQUIRE quorum 30000");
        assert_int_not_equal(r->type, REDIS_REPLY_INTEGER);
        freeReplyObject(r);
        r = fixture_cmd(p[1], "LOCK.INFO quorum");
        int shown = r->type == REDIS_REPLY_ARRAY && r->element[0]->integer == t;
        freeReplyObject(r);
        if (shown)
            break;
        assert_true(fixture_now_ms() < deadline);
        fixture_sleep_ms(50);
    }
    redisFree(p[0]);
    redisFree(p[1]);
    test_passed = 1;
}

/* ---- the checker ---- */

#define CHECK_CLIENTS     16
#define CHECK_NAMES       4
#define CHECK_SHARDS      5
#define CHECK_TTL_MS      500
#define CHECK_WAIT_MS     300
#define CHECK_HOLD_MAX_MS 15
/* Clock noise allowed between one holder's end and the next one's start. */
#define CHECK_MARGIN_US 1000
/* Grants looked for in the minority window start this long after it. */
#define CHECK_WINDOW_SETTLE_US 50000
#define CHECK_MAX_GRANTS       200000

typedef struct grant {
    int name;
    long long token;
    long long acq_send_us, acq_reply_us, release_send_us; /* monotonic */
} grant;

static struct {
    cluster *c;
    atomic_int stop;
    atomic_int proxy_alive[MAX_PROXIES];
    unsigned long long seed;
    pthread_mutex_t mu;
    grant *grants;
    size_t ngrants;
    atomic_long fenced_ok, fenced_rejected, errors, late;
    long long window_start_us[16], window_end_us[16];
    int nwindows;
} chk;

static long long mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static unsigned long long next_rand(unsigned long long *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* The fenced resource: accepts a token not below the last it saw, and
 * appends it to the name's list. */
static const char FENCE_SCRIPT[] = "local last = tonumber(redis.call('GET', KEYS[1]) or '0')\n"
                                   "if tonumber(ARGV[1]) <= last then return 0 end\n"
                                   "redis.call('SET', KEYS[1], ARGV[1])\n"
                                   "redis.call('RPUSH', KEYS[2], ARGV[1])\n"
                                   "return 1\n";

static redisContext *client_connect(int proxy)
{
    struct timeval tv = {2L * harness_timeout_scale(), 0};
    redisContext *r = redisConnectWithTimeout("127.0.0.1", chk.c->proxies[proxy].port, tv);
    if (!r || r->err) {
        if (r)
            redisFree(r);
        return NULL;
    }
    redisSetTimeout(r, tv);
    return r;
}

static void *client_main(void *arg)
{
    int id = (int)(intptr_t)arg;
    unsigned long long rng = chk.seed ^ ((unsigned long long)(id + 1) * 0x9E3779B97F4A7C15ull);
    int proxy = id % 2;
    redisContext *p = NULL;
    struct timeval tv = {2L * harness_timeout_scale(), 0};
    redisContext *res = redisConnectWithTimeout("127.0.0.1", chk.c->resource.port, tv);
    while (!atomic_load(&chk.stop)) {
        if (!p) {
            if (!atomic_load(&chk.proxy_alive[proxy]))
                proxy = 1 - proxy;
            p = client_connect(proxy);
            if (!p) {
                proxy = 1 - proxy;
                usleep(20000);
                continue;
            }
        }
        int name = (int)(next_rand(&rng) % CHECK_NAMES);
        long long sent = mono_us();
        redisReply *r =
            redisCommand(p, "LOCK.ACQUIRE check:%d %d WAIT %d", name, CHECK_TTL_MS, CHECK_WAIT_MS);
        long long replied = mono_us();
        if (!r) {
            redisFree(p);
            p = NULL;
            continue;
        }
        if (r->type == REDIS_REPLY_ERROR)
            atomic_fetch_add(&chk.errors, 1);
        if (r->type != REDIS_REPLY_INTEGER) {
            freeReplyObject(r);
            continue;
        }
        long long token = r->integer;
        freeReplyObject(r);
        if ((replied - sent) * 100 >= (long long)CHECK_TTL_MS * 1000 * 99 - 2000 * 100) {
            /* The reply came after the lease, counted from the send, ran
             * out (less Redlock's drift): the lock is already expired, as
             * for a client paused past its lease; a client does not use
             * it (docs/locks.md). Not a grant for the invariants. */
            atomic_fetch_add(&chk.late, 1);
            r = redisCommand(p, "LOCK.RELEASE check:%d %lld", name, token);
            if (r)
                freeReplyObject(r);
            else {
                redisFree(p);
                p = NULL;
            }
            continue;
        }
        redisReply *w = res ? redisCommand(res, "EVAL %s 2 fence:%d list:%d %lld", FENCE_SCRIPT,
                                           name, name, token)
                            : NULL;
        if (w && w->type == REDIS_REPLY_INTEGER && w->integer == 1)
            atomic_fetch_add(&chk.fenced_ok, 1);
        else
            atomic_fetch_add(&chk.fenced_rejected, 1);
        if (w)
            freeReplyObject(w);
        usleep((useconds_t)(next_rand(&rng) % (CHECK_HOLD_MAX_MS * 1000)));
        long long release_sent = mono_us();
        r = redisCommand(p, "LOCK.RELEASE check:%d %lld", name, token);
        if (r)
            freeReplyObject(r);
        else {
            redisFree(p);
            p = NULL;
        }
        pthread_mutex_lock(&chk.mu);
        if (chk.ngrants < CHECK_MAX_GRANTS)
            chk.grants[chk.ngrants++] = (grant){name, token, sent, replied, release_sent};
        pthread_mutex_unlock(&chk.mu);
    }
    if (p)
        redisFree(p);
    if (res)
        redisFree(res);
    return NULL;
}

static int by_name_then_reply(const void *a, const void *b)
{
    const grant *x = a, *y = b;
    if (x->name != y->name)
        return x->name - y->name;
    return (x->acq_reply_us > y->acq_reply_us) - (x->acq_reply_us < y->acq_reply_us);
}

/* One fault cycle, about 15 s: a shard SIGKILLed and restarted empty, a
 * second paused past the TTL, a proxy SIGKILLed and restarted, then three
 * shards stopped at once (a minority up) for a while. */
static void fault_cycle(unsigned long long *rng)
{
    cluster *c = chk.c;
    int killed = (int)(next_rand(rng) % CHECK_SHARDS);
    int paused = (killed + 1 + (int)(next_rand(rng) % (CHECK_SHARDS - 1))) % CHECK_SHARDS;
    int proxy = (int)(next_rand(rng) % 2);
    printf("# cycle: kill s%d, pause s%d, kill proxy %d\n", killed + 1, paused + 1, proxy);

    fixture_sleep_ms(1500);
    harness_proc_stop(&c->shards[killed], SIGKILL);
    fixture_sleep_ms(1500);
    assert_int_equal(harness_redis_restart(&c->shards[killed]), 0);
    fixture_sleep_ms(2000);

    kill(c->shards[paused].pid, SIGSTOP);
    fixture_sleep_ms(3 * CHECK_TTL_MS);
    kill(c->shards[paused].pid, SIGCONT);
    fixture_sleep_ms(1500);

    atomic_store(&chk.proxy_alive[proxy], 0);
    assert_int_equal(harness_ringproxy_restart(&c->proxies[proxy], SIGKILL), 0);
    atomic_store(&chk.proxy_alive[proxy], 1);
    fixture_sleep_ms(1500);

    int stopped[3];
    for (int i = 0; i < 3; i++)
        stopped[i] = (killed + i) % CHECK_SHARDS;
    long long start = mono_us();
    for (int i = 0; i < 3; i++)
        kill(c->shards[stopped[i]].pid, SIGSTOP);
    fixture_sleep_ms(1500);
    long long end = mono_us();
    for (int i = 0; i < 3; i++)
        kill(c->shards[stopped[i]].pid, SIGCONT);
    if (chk.nwindows < 16) {
        chk.window_start_us[chk.nwindows] = start;
        chk.window_end_us[chk.nwindows] = end;
        chk.nwindows++;
    }
    fixture_sleep_ms(2500);
}

static void test_checker_16_clients_through_faults(void **state)
{
    const char *seed_env = getenv("LOCK_CHECK_SEED");
    const char *cycles_env = getenv("LOCK_CHECK_CYCLES");
    int cycles = cycles_env ? atoi(cycles_env) : 1;
    if (cycles < 1)
        cycles = 1;
    memset(&chk, 0, sizeof(chk));
    chk.seed = seed_env ? strtoull(seed_env, NULL, 10) : (unsigned long long)time(NULL) ^ getpid();
    if (!chk.seed)
        chk.seed = 1;
    printf("# lock checker: LOCK_CHECK_SEED=%llu LOCK_CHECK_CYCLES=%d\n", chk.seed, cycles);
    fflush(stdout);

    cluster *c = cluster_start(state, CHECK_SHARDS, 2, "watch_config = no\nrequest_timeout = 1000");
    assert_int_equal(harness_redis_start(&c->resource), 0);
    chk.c = c;
    redisContext *p0 = connect_to(&c->proxies[0]), *p1 = connect_to(&c->proxies[1]);
    wait_lock_service(p0);
    wait_lock_service(p1);
    redisFree(p0);
    redisFree(p1);
    chk.grants = calloc(CHECK_MAX_GRANTS, sizeof(grant));
    assert_non_null(chk.grants);
    pthread_mutex_init(&chk.mu, NULL);
    atomic_store(&chk.proxy_alive[0], 1);
    atomic_store(&chk.proxy_alive[1], 1);
    pthread_t threads[CHECK_CLIENTS];
    for (int i = 0; i < CHECK_CLIENTS; i++)
        assert_int_equal(pthread_create(&threads[i], NULL, client_main, (void *)(intptr_t)i), 0);

    unsigned long long rng = chk.seed;
    for (int i = 0; i < cycles; i++)
        fault_cycle(&rng);
    atomic_store(&chk.stop, 1);
    for (int i = 0; i < CHECK_CLIENTS; i++)
        pthread_join(threads[i], NULL);

    /* Invariants. */
    qsort(chk.grants, chk.ngrants, sizeof(grant), by_name_then_reply);
    size_t overlaps = 0, token_order = 0, in_window = 0;
    for (size_t i = 0; i < chk.ngrants; i++) {
        const grant *g = &chk.grants[i];
        for (int w = 0; w < chk.nwindows; w++)
            if (g->acq_send_us >= chk.window_start_us[w] + CHECK_WINDOW_SETTLE_US &&
                g->acq_reply_us <= chk.window_end_us[w]) {
                in_window++;
                printf("# granted with a minority up: check:%d token %lld\n", g->name, g->token);
            }
    }
    for (size_t i = 1; i < chk.ngrants; i++) {
        const grant *a = &chk.grants[i - 1], *b = &chk.grants[i];
        if (a->name != b->name)
            continue;
        if (b->token <= a->token) {
            token_order++;
            printf("# check:%d token %lld granted after %lld\n", b->name, b->token, a->token);
        }
    }
    for (size_t i = 0; i < chk.ngrants; i++) {
        /* the latest end of any earlier holder of the same name */
        const grant *b = &chk.grants[i];
        for (size_t j = i; j-- > 0 && chk.grants[j].name == b->name;) {
            const grant *a = &chk.grants[j];
            long long lease_end = a->acq_send_us + (long long)CHECK_TTL_MS * 1000;
            long long end = a->release_send_us < lease_end ? a->release_send_us : lease_end;
            if (b->acq_reply_us + CHECK_MARGIN_US < end) {
                overlaps++;
                printf("# check:%d: token %lld held until %lld us, token %lld granted at %lld\n",
                       b->name, a->token, end, b->token, b->acq_reply_us);
            }
            if (a->acq_send_us + (long long)CHECK_TTL_MS * 1000 * 4 < b->acq_reply_us)
                break; /* far enough back */
        }
    }
    /* The fenced resource's lists only grow. */
    size_t fence_order = 0, listed = 0;
    redisContext *res = connect_to(&c->resource);
    for (int n = 0; n < CHECK_NAMES; n++) {
        redisReply *r = fixture_cmd(res, "LRANGE list:%d 0 -1", n);
        for (size_t i = 0; i < r->elements; i++) {
            listed++;
            if (i && atoll(r->element[i]->str) <= atoll(r->element[i - 1]->str))
                fence_order++;
        }
        freeReplyObject(r);
    }
    redisFree(res);
    printf("# %zu grants, %ld arrived after their lease, %ld fenced writes accepted, %ld "
           "rejected, %ld error replies, %d minority windows; violations: %zu overlaps, %zu "
           "token order, %zu fence order, %zu grants with a minority up (LOCK_CHECK_SEED=%llu)\n",
           chk.ngrants, atomic_load(&chk.late), atomic_load(&chk.fenced_ok),
           atomic_load(&chk.fenced_rejected), atomic_load(&chk.errors), chk.nwindows, overlaps,
           token_order, fence_order, in_window, chk.seed);
    assert_true(chk.ngrants > 50);
    assert_int_equal(listed, (size_t)atomic_load(&chk.fenced_ok));
    assert_int_equal(overlaps, 0);
    assert_int_equal(token_order, 0);
    assert_int_equal(fence_order, 0);
    assert_int_equal(in_window, 0);
    free(chk.grants);
    pthread_mutex_destroy(&chk.mu);
    test_passed = 1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_grant_deny_release_extend_info, cluster_stop),
        cmocka_unit_test_teardown(test_tokens_increase_across_two_proxies, cluster_stop),
        cmocka_unit_test_teardown(test_minority_down_granted_majority_down_refused, cluster_stop),
        cmocka_unit_test_teardown(test_shard_restarted_empty_is_restored_before_it_counts,
                                  cluster_stop),
        cmocka_unit_test_teardown(test_restore_copies_holds_and_counters, cluster_stop),
        cmocka_unit_test_teardown(
            test_lock_state_is_invisible_and_survives_flushall_and_a_rebalance, cluster_stop),
        cmocka_unit_test_teardown(test_set_nx_px_is_safe_across_proxies_not_across_a_failover,
                                  cluster_stop),
        cmocka_unit_test_teardown(test_checker_16_clients_through_faults, cluster_stop),
    };
    /* LOCK_TEST=<glob> runs only the matching tests. */
    const char *only = getenv("LOCK_TEST");
    if (only != NULL && only[0] != '\0')
        cmocka_set_test_filter(only);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
