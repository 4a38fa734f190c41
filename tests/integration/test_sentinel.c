/* Shards that fail over: real redis-sentinel processes watch two shards,
 * each a master with one replica, and the proxy names the shards by their
 * masters' Sentinel names (s1 = sentinel:m1). A master is killed or stopped
 * under writes through the proxy; the Sentinels promote its replica and
 * the proxy must follow within a second of the switch, failing the
 * requests in the gap fast, moving no key, and never sending to the
 * demoted master. Also: every Sentinel down (the last known addresses stay
 * in use, and INFO says so), and a Sentinel that names a replica (refused
 * after ROLE).
 *
 * Sentinel timings are short (down-after 1000 ms, failover-timeout 3000
 * ms) so that a failover takes a few seconds. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "fixture.h"

#define NSHARDS    2
#define NSENTINELS 3

#define DOWN_AFTER_MS       1000
#define FAILOVER_TIMEOUT_MS 3000
/* The proxy re-addresses a shard within this of the Sentinels' switch. */
#define FOLLOW_MS 1000
/* The proxy's request timeout here: a stopped master's requests fail after it. */
#define REQUEST_TIMEOUT_MS 500
#define SENTINEL_POLL_MS   500
/* WAIT's timeout for the proxy with min_replicas_to_ack = 1: short, since
 * the promoted master has no replica left and every write to it waits this
 * long for -NOREPLICAS. */
#define MIN_REPLICAS_TIMEOUT_MS 200
/* Sentinels find their replicas and each other within a few hello periods
 * (2 s) and INFO periods (10 s, the first at start). */
#define SENTINELS_READY_MS 30000

typedef struct cluster {
    harness_proc master[NSHARDS]; /* the masters at start; m1, m2 */
    harness_proc replica[NSHARDS];
    harness_proc sentinel[NSENTINELS];
    harness_proc proxy;
    harness_proc proxy_acked; /* a second proxy, with min_replicas_to_ack = 1 */
} cluster;

/* The reply of a command on a fresh connection to port, or NULL. */
static redisReply *command_on(int port, const char *fmt, ...)
{
    redisContext *c = harness_connect(port);
    if (!c)
        return NULL;
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    redisFree(c);
    return r;
}

/* "master", "slave", or "" when port does not answer ROLE. */
static void role_of(int port, char *out, size_t cap)
{
    out[0] = '\0';
    redisReply *r = command_on(port, "ROLE");
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
        r->element[0]->type == REDIS_REPLY_STRING)
        snprintf(out, cap, "%s", r->element[0]->str);
    if (r)
        freeReplyObject(r);
}

static int replica_synced(int port)
{
    redisReply *r = command_on(port, "INFO replication");
    int up = r && r->type == REDIS_REPLY_STRING && strstr(r->str, "master_link_status:up");
    if (r)
        freeReplyObject(r);
    return up;
}

/* Whether the Sentinel on port knows master's replica (healthy) and the
 * other Sentinels, so that it can vote and promote. */
static int sentinel_ready(int port, const char *master, int others)
{
    redisReply *r = command_on(port, "SENTINEL REPLICAS %s", master);
    int ok = fixture_sentinel_one_good_replica(r);
    if (r)
        freeReplyObject(r);
    if (!ok)
        return 0;
    r = command_on(port, "SENTINEL SENTINELS %s", master);
    ok = r && r->type == REDIS_REPLY_ARRAY && (int)r->elements == others;
    if (r)
        freeReplyObject(r);
    return ok;
}

/* The Sentinels' answer for master's port, or 0. */
static int sentinel_master_port(int port, const char *master)
{
    redisReply *r = command_on(port, "SENTINEL get-master-addr-by-name %s", master);
    int p = 0;
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2)
        p = atoi(r->element[1]->str);
    if (r)
        freeReplyObject(r);
    return p;
}

/* The value of field in the proxy's INFO shards line of shard ("s1"). */
static void shard_field(int proxy_port, const char *shard, const char *field, char *out, size_t cap)
{
    out[0] = '\0';
    redisReply *r = command_on(proxy_port, "INFO shards");
    if (!r)
        return;
    char prefix[64], key[64];
    snprintf(prefix, sizeof(prefix), "shard_%s:", shard);
    snprintf(key, sizeof(key), ",%s=", field);
    const char *line = r->type == REDIS_REPLY_STRING ? strstr(r->str, prefix) : NULL;
    const char *end = line ? strstr(line, "\r\n") : NULL;
    const char *at = line ? strstr(line, key) : NULL;
    if (at && (!end || at < end)) {
        at += strlen(key);
        snprintf(out, cap, "%.*s", (int)strcspn(at, ",\r"), at);
    }
    freeReplyObject(r);
}

static int shard_master_port(int proxy_port, const char *shard)
{
    char master[128];
    shard_field(proxy_port, shard, "master", master, sizeof(master));
    const char *colon = strrchr(master, ':');
    return colon ? atoi(colon + 1) : 0;
}

/* Waits until field of shard reads want; fails the test with what it read. */
static void wait_shard_field(const cluster *c, const char *shard, const char *field,
                             const char *want, long long timeout_ms)
{
    long long deadline = fixture_now_ms() + fixture_bound_ms(timeout_ms);
    char got[256];
    for (;;) {
        shard_field(c->proxy.port, shard, field, got, sizeof(got));
        if (strcmp(got, want) == 0)
            return;
        if (fixture_now_ms() > deadline) {
            harness_dump_log(&c->proxy, 4096);
            fail_msg("shard %s: %s is '%s', expected '%s'", shard, field, got, want);
        }
        fixture_sleep_ms(20);
    }
}

static char *sentinel_conf(const cluster *c)
{
    static char text[2048];
    size_t n = 0;
    for (int i = 0; i < NSHARDS; i++)
        n += (size_t)snprintf(text + n, sizeof(text) - n,
                              "sentinel monitor m%d 127.0.0.1 %d 2\n"
                              "sentinel down-after-milliseconds m%d %d\n"
                              "sentinel failover-timeout m%d %d\n",
                              i + 1, c->master[i].port, i + 1, DOWN_AFTER_MS, i + 1,
                              FAILOVER_TIMEOUT_MS);
    return text;
}

static char *proxy_ini(const harness_proc *sentinels, int nsentinels, const char *shard_lines)
{
    static char ini[2048];
    size_t n = (size_t)snprintf(ini, sizeof(ini),
                                "[proxy]\nlisten = 127.0.0.1:%%PORT%%\nwatch_config = no\n"
                                "request_timeout = %d\nconnect_timeout = 500\n"
                                "reconnect_min = 20\nreconnect_max = 200\n"
                                "sentinel_poll = %d\nsentinels = ",
                                REQUEST_TIMEOUT_MS, SENTINEL_POLL_MS);
    for (int i = 0; i < nsentinels; i++)
        n += (size_t)snprintf(ini + n, sizeof(ini) - n, "%s127.0.0.1:%d", i ? ", " : "",
                              sentinels[i].port);
    snprintf(ini + n, sizeof(ini) - n, "\n[shards]\n%s", shard_lines);
    return ini;
}

/* Stops everything; the proxies with SIGTERM, which must end them with
 * status 0 (under ASan a leak does not). 0, or -1 when a proxy did not. */
static int stop_all(cluster *c)
{
    int rc = 0;
    harness_proc *proxies[] = {&c->proxy, &c->proxy_acked};
    for (size_t i = 0; i < sizeof(proxies) / sizeof(proxies[0]); i++) {
        if (proxies[i]->pid > 0) {
            int status = harness_proc_stop(proxies[i], SIGTERM);
            if (status != 0) {
                fprintf(stderr, "proxy exited with status %d\n", status);
                rc = -1;
            }
        }
    }
    harness_proc *all[] = {&c->sentinel[0], &c->sentinel[1], &c->sentinel[2], &c->replica[0],
                           &c->replica[1],  &c->master[0],   &c->master[1]};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        if (all[i]->pid > 0) {
            kill(all[i]->pid, SIGCONT);
            harness_proc_stop(all[i], SIGKILL);
        }
    }
    return rc;
}

static int stop(void **state)
{
    cluster *c = *state;
    int rc = 0;
    if (c) {
        rc = stop_all(c);
        free(c);
    }
    *state = NULL;
    return rc;
}

/* Two masters with a replica each, three Sentinels that know them all,
 * and a proxy over s1 = sentinel:m1, s2 = sentinel:m2 that has found both. */
static cluster *cluster_start(void **state)
{
    cluster *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    *state = c;
    for (int i = 0; i < NSHARDS; i++) {
        assert_int_equal(harness_redis_start(&c->master[i]), 0);
        assert_int_equal(harness_replica_start(&c->replica[i], c->master[i].port), 0);
    }
    long long deadline = fixture_now_ms() + fixture_bound_ms(10000);
    for (int i = 0; i < NSHARDS; i++)
        while (!replica_synced(c->replica[i].port)) {
            assert_true(fixture_now_ms() < deadline);
            fixture_sleep_ms(20);
        }
    for (int i = 0; i < NSENTINELS; i++)
        assert_int_equal(harness_sentinel_start(&c->sentinel[i], sentinel_conf(c)), 0);
    deadline = fixture_now_ms() + fixture_bound_ms(SENTINELS_READY_MS);
    for (int i = 0; i < NSENTINELS; i++)
        for (int m = 0; m < NSHARDS; m++) {
            char name[16];
            snprintf(name, sizeof(name), "m%d", m + 1);
            while (!sentinel_ready(c->sentinel[i].port, name, NSENTINELS - 1)) {
                if (fixture_now_ms() > deadline) {
                    harness_dump_log(&c->sentinel[i], 4096);
                    fail_msg("Sentinel %d does not know %s's replica and the other Sentinels",
                             i + 1, name);
                }
                fixture_sleep_ms(100);
            }
        }
    assert_int_equal(
        harness_ringproxy_start(
            &c->proxy, proxy_ini(c->sentinel, NSENTINELS, "s1 = sentinel:m1\ns2 = sentinel:m2\n")),
        0);
    wait_shard_field(c, "s1", "sentinel", "ok", 5000);
    wait_shard_field(c, "s2", "sentinel", "ok", 5000);
    return c;
}

static void expect_ok(redisReply *r)
{
    fixture_expect_status(r, "OK");
}

/* ---- tests ---- */

/* At start the proxy asks the Sentinels for each master, and uses it. */
static void test_masters_are_found_at_start(void **state)
{
    cluster *c = cluster_start(state);
    assert_int_equal(shard_master_port(c->proxy.port, "s1"), c->master[0].port);
    assert_int_equal(shard_master_port(c->proxy.port, "s2"), c->master[1].port);
    char source[64];
    shard_field(c->proxy.port, "s1", "source", source, sizeof(source));
    assert_string_equal(source, "sentinel:m1");
    shard_field(c->proxy.port, "s2", "failovers", source, sizeof(source));
    assert_string_equal(source, "0");

    redisContext *p = harness_connect(c->proxy.port);
    assert_non_null(p);
    char key[64];
    for (int shard = 0; shard < NSHARDS; shard++) {
        fixture_key_on_shard(p, "found", shard, key, sizeof(key));
        expect_ok(fixture_cmd(p, "SET %s v%d", key, shard));
        /* on the master the Sentinels named, not elsewhere */
        redisReply *r = command_on(c->master[shard].port, "GET %s", key);
        char want[16];
        snprintf(want, sizeof(want), "v%d", shard);
        fixture_expect_str(r, want);
    }
    redisFree(p);
}

/* The writes of the failover tests: one connection, one SET at a time, a
 * new key each, over both shards. */
typedef struct writer {
    redisContext *conn;       /* to the proxy */
    redisContext *acked_conn; /* to proxy_acked, or NULL: every other write goes there */
    int noreplicas;           /* -NOREPLICAS answers from proxy_acked */
    int next;                 /* next key number */
    int acked[2];             /* writes answered OK, per shard */
    int failed[2];            /* error replies, per shard */
    char **keys;              /* acknowledged keys */
    int nkeys, cap;
    char bad_error[256];         /* the first error that is not s1's fast one */
    long long first_ok_after_ms; /* first OK on the victim shard after since_ms */
} writer;

/* Writes for duration_ms (or until stop(c) says so, when given): victim's
 * errors must be "ERR shard sN ...". */
static void write_for(writer *w, const cluster *c, int victim, long long since_ms,
                      long long duration_ms)
{
    (void)c;
    long long end = fixture_now_ms() + duration_ms;
    char prefix[32];
    snprintf(prefix, sizeof(prefix), "ERR shard s%d ", victim + 1);
    while (fixture_now_ms() < end) {
        char key[48];
        int acked = w->acked_conn && (w->next & 1);
        snprintf(key, sizeof(key), "%s:%d", acked ? "a" : "w", w->next++);
        int shard = fixture_owner(w->conn, key, strlen(key));
        redisReply *r = fixture_cmd(acked ? w->acked_conn : w->conn, "SET %s %s", key, key);
        if (acked && r->type == REDIS_REPLY_ERROR && shard == victim &&
            strncmp(r->str, "NOREPLICAS ", 11) == 0) {
            /* the write was not confirmed by a replica: not counted as acknowledged */
            w->noreplicas++;
        } else if (r->type == REDIS_REPLY_STATUS && strcmp(r->str, "OK") == 0) {
            w->acked[shard]++;
            if (!acked && shard == victim && !w->first_ok_after_ms && since_ms &&
                fixture_now_ms() > since_ms)
                w->first_ok_after_ms = fixture_now_ms();
            if (w->nkeys == w->cap) {
                w->cap = w->cap ? w->cap * 2 : 1024;
                w->keys = realloc(w->keys, (size_t)w->cap * sizeof(*w->keys));
                assert_non_null(w->keys);
            }
            w->keys[w->nkeys++] = strdup(key);
        } else {
            w->failed[shard]++;
            if (!w->bad_error[0] && (r->type != REDIS_REPLY_ERROR || shard != victim ||
                                     strncmp(r->str, prefix, strlen(prefix)) != 0))
                snprintf(w->bad_error, sizeof(w->bad_error), "shard s%d: %s", shard + 1,
                         r->type == REDIS_REPLY_ERROR ? r->str : "(not an error)");
        }
        freeReplyObject(r);
    }
}

/* Acknowledged keys that do not read back through the proxy; those written
 * through proxy_acked counted apart in *lost_acked (when not NULL). */
static int count_lost(writer *w, int *lost_acked)
{
    int lost = 0;
    if (lost_acked)
        *lost_acked = 0;
    for (int i = 0; i < w->nkeys; i++) {
        redisReply *r = fixture_cmd(w->conn, "GET %s", w->keys[i]);
        int missing = !(r->type == REDIS_REPLY_STRING && strcmp(r->str, w->keys[i]) == 0);
        if (w->keys[i][0] == 'a' && lost_acked)
            *lost_acked += missing;
        else
            lost += missing;
        freeReplyObject(r);
    }
    return lost;
}

static void writer_free(writer *w)
{
    for (int i = 0; i < w->nkeys; i++)
        free(w->keys[i]);
    free(w->keys);
    redisFree(w->conn);
    if (w->acked_conn)
        redisFree(w->acked_conn);
}

/* Waits until the Sentinels name a master other than old_port for name;
 * returns when (ms clock). */
static long long wait_switch(const cluster *c, const char *name, int old_port, writer *w,
                             int victim, long long since_ms)
{
    long long deadline =
        fixture_now_ms() + fixture_bound_ms(DOWN_AFTER_MS + FAILOVER_TIMEOUT_MS * 3);
    for (;;) {
        int port = sentinel_master_port(c->sentinel[0].port, name);
        if (port && port != old_port)
            return fixture_now_ms();
        if (fixture_now_ms() > deadline) {
            harness_dump_log(&c->sentinel[0], 4096);
            fail_msg("the Sentinels did not fail %s over", name);
        }
        write_for(w, c, victim, since_ms, 20);
    }
}

/* Writes until the first OK on the victim shard, or for FOLLOW_MS. */
static void write_until_followed(writer *w, const cluster *c, int victim, long long since_ms)
{
    long long end = fixture_now_ms() + fixture_bound_ms(FOLLOW_MS);
    while (!w->first_ok_after_ms && fixture_now_ms() < end)
        write_for(w, c, victim, since_ms, 10);
}

/* A master killed under writes: the replica is promoted, the proxy follows
 * within FOLLOW_MS of the switch, the requests in the gap get the fast
 * "ERR shard s1 ... unavailable", the other shard is untouched, and no key
 * moves. How many acknowledged writes the failover lost is printed: Redis
 * replicates asynchronously. */
static void test_killed_master_is_followed_to_the_promoted_replica(void **state)
{
    cluster *c = cluster_start(state);
    char lines[256];
    snprintf(lines, sizeof(lines), "s1 = sentinel:m1\ns2 = sentinel:m2\n");
    char *ini = proxy_ini(c->sentinel, NSENTINELS, lines);
    char *at = strstr(ini, "[shards]");
    char acked_ini[2300];
    snprintf(acked_ini, sizeof(acked_ini),
             "%.*smin_replicas_to_ack = 1\nmin_replicas_timeout = %d\n%s", (int)(at - ini), ini,
             MIN_REPLICAS_TIMEOUT_MS, at);
    assert_int_equal(harness_ringproxy_start(&c->proxy_acked, acked_ini), 0);
    writer w = {.conn = harness_connect(c->proxy.port),
                .acked_conn = harness_connect(c->proxy_acked.port)};
    assert_non_null(w.conn);
    assert_non_null(w.acked_conn);
    write_for(&w, c, 0, 0, 300);
    assert_true(w.acked[0] > 0 && w.acked[1] > 0);
    assert_int_equal(w.failed[0] + w.failed[1], 0);

    int old_port = c->master[0].port;
    long long killed = fixture_now_ms();
    assert_true(harness_proc_stop(&c->master[0], SIGKILL) != -1);
    long long switched = wait_switch(c, "m1", old_port, &w, 0, killed);
    write_until_followed(&w, c, 0, killed);
    write_for(&w, c, 0, killed, 300);
    if (!w.first_ok_after_ms) {
        harness_dump_log(&c->proxy, 4096);
        fail_msg("no write to s1 succeeded within %d ms of the switch", FOLLOW_MS);
    }
    printf("killed master: Sentinels switched after %lld ms, the proxy wrote to the new master "
           "%lld ms after the switch (%lld ms after the kill)\n",
           switched - killed, w.first_ok_after_ms - switched, w.first_ok_after_ms - killed);
    /* Within FOLLOW_MS of the switch when +switch-master arrives; a lost
     * message is found by the next poll, up to SENTINEL_POLL_MS later. */
    assert_true(w.first_ok_after_ms - switched <= fixture_bound_ms(FOLLOW_MS + SENTINEL_POLL_MS));
    if (w.bad_error[0])
        fail_msg("an error other than s1's fast one: %s", w.bad_error);
    assert_int_equal(w.failed[1], 0);
    assert_true(w.failed[0] > 0);

    assert_int_equal(shard_master_port(c->proxy.port, "s1"), c->replica[0].port);
    assert_int_equal(shard_master_port(c->proxy.port, "s2"), c->master[1].port);
    char text[64];
    shard_field(c->proxy.port, "s1", "failovers", text, sizeof(text));
    assert_string_equal(text, "1");
    shard_field(c->proxy.port, "s1", "last_switch", text, sizeof(text));
    assert_true(atoll(text) > 0);
    shard_field(c->proxy.port, "s2", "failovers", text, sizeof(text));
    assert_string_equal(text, "0");

    int lost_acked;
    int lost = count_lost(&w, &lost_acked);
    printf("killed master: %d writes acknowledged (%d on s1), half of them with "
           "min_replicas_to_ack = 1; lost in the failover: %d without it, %d with it; %d writes "
           "answered -NOREPLICAS\n",
           w.nkeys, w.acked[0], lost, lost_acked, w.noreplicas);
    /* Only writes acknowledged by the killed master can be lost, and none
     * that a replica had confirmed. */
    assert_true(lost <= w.acked[0]);
    assert_int_equal(lost_acked, 0);
    writer_free(&w);
}

/* INFO locks' lock_shards_ready through the proxy, or -1. */
static int lock_shards_ready(int proxy_port)
{
    static const char field[] = "lock_shards_ready:";
    redisReply *r = command_on(proxy_port, "INFO locks");
    const char *at = r && r->type == REDIS_REPLY_STRING ? strstr(r->str, field) : NULL;
    int n = at ? atoi(at + sizeof(field) - 1) : -1;
    if (r)
        freeReplyObject(r);
    return n;
}

/* LOCK.ACQUIRE name through p: the fencing token; fails the test otherwise. */
static long long lock_acquire(redisContext *p, const char *name)
{
    redisReply *r = fixture_cmd(p, "LOCK.ACQUIRE %s 10000", name);
    if (r->type != REDIS_REPLY_INTEGER)
        fail_msg("LOCK.ACQUIRE %s: %s", name,
                 r->type == REDIS_REPLY_ERROR ? r->str : "not a token");
    long long token = r->integer;
    freeReplyObject(r);
    return token;
}

/* The proxy's hidden records (the LOCK.* store, one connection per shard)
 * follow a sentinel shard's master: after a failover the store checks the
 * promoted replica and counts again, so LOCK.ACQUIRE, which here needs both
 * lock shards, grants the name again with a larger token. */
static void test_lock_store_follows_the_failover(void **state)
{
    cluster *c = cluster_start(state);
    long long deadline = fixture_now_ms() + fixture_bound_ms(5000);
    while (lock_shards_ready(c->proxy.port) != NSHARDS) {
        assert_true(fixture_now_ms() < deadline);
        fixture_sleep_ms(20);
    }
    redisContext *p = harness_connect(c->proxy.port);
    assert_non_null(p);
    long long before = lock_acquire(p, "orders");
    assert_true(before > 0);
    redisReply *r = fixture_cmd(p, "LOCK.RELEASE orders %lld", before);
    fixture_expect_int(r, 1);

    writer w = {.conn = harness_connect(c->proxy.port)};
    assert_non_null(w.conn);
    int old_port = c->master[0].port;
    long long killed = fixture_now_ms();
    assert_true(harness_proc_stop(&c->master[0], SIGKILL) != -1);
    wait_switch(c, "m1", old_port, &w, 0, killed);
    write_until_followed(&w, c, 0, killed);
    assert_int_equal(shard_master_port(c->proxy.port, "s1"), c->replica[0].port);
    deadline = fixture_now_ms() + fixture_bound_ms(FOLLOW_MS + 2000);
    while (lock_shards_ready(c->proxy.port) != NSHARDS) {
        if (fixture_now_ms() > deadline) {
            harness_dump_log(&c->proxy, 4096);
            fail_msg("the store of s1 did not follow its master (%d lock shards ready)",
                     lock_shards_ready(c->proxy.port));
        }
        fixture_sleep_ms(20);
    }
    assert_true(lock_acquire(p, "orders") > before);
    redisFree(p);
    writer_free(&w);
}

/* A stopped master: its requests time out, the Sentinels promote the
 * replica, the proxy follows; once the old master runs again the Sentinels
 * make it a replica, and the proxy keeps writing to the new master only. */
static void test_stopped_master_is_replaced_and_not_written_after_it_resumes(void **state)
{
    cluster *c = cluster_start(state);
    writer w = {.conn = harness_connect(c->proxy.port)};
    assert_non_null(w.conn);
    write_for(&w, c, 1, 0, 300);
    assert_int_equal(w.failed[0] + w.failed[1], 0);

    int old_port = c->master[1].port;
    long long stopped = fixture_now_ms();
    assert_int_equal(kill(c->master[1].pid, SIGSTOP), 0);
    long long switched = wait_switch(c, "m2", old_port, &w, 1, stopped);
    write_until_followed(&w, c, 1, stopped);
    if (!w.first_ok_after_ms) {
        harness_dump_log(&c->proxy, 4096);
        fail_msg("no write to s2 succeeded within %d ms of the switch", FOLLOW_MS);
    }
    printf("stopped master: Sentinels switched after %lld ms, the proxy followed %lld ms later\n",
           switched - stopped, w.first_ok_after_ms - switched);
    assert_true(w.first_ok_after_ms - switched <= fixture_bound_ms(FOLLOW_MS));
    assert_int_equal(shard_master_port(c->proxy.port, "s2"), c->replica[1].port);

    assert_int_equal(kill(c->master[1].pid, SIGCONT), 0);
    long long deadline = fixture_now_ms() + fixture_bound_ms(15000);
    char role[16];
    for (role_of(old_port, role, sizeof(role)); strcmp(role, "slave") != 0;
         role_of(old_port, role, sizeof(role))) {
        if (fixture_now_ms() > deadline)
            fail_msg("the Sentinels did not make the old master a replica (ROLE %s)", role);
        write_for(&w, c, 1, stopped, 50);
    }
    int failed_before = w.failed[1];
    write_for(&w, c, 1, stopped, 500);
    assert_int_equal(w.failed[1], failed_before);
    assert_int_equal(w.failed[0], 0);
    if (w.bad_error[0])
        fail_msg("an error other than s2's own: %s", w.bad_error);
    assert_int_equal(shard_master_port(c->proxy.port, "s2"), c->replica[1].port);
    writer_free(&w);
}

/* Every Sentinel down: the proxy keeps the addresses it has, keeps serving,
 * and INFO says the Sentinels are unreachable. */
static void test_all_sentinels_down_keeps_the_last_known_masters(void **state)
{
    cluster *c = cluster_start(state);
    for (int i = 0; i < NSENTINELS; i++)
        assert_true(harness_proc_stop(&c->sentinel[i], SIGKILL) != -1);
    wait_shard_field(c, "s1", "sentinel", "unreachable", SENTINEL_POLL_MS * 4 + 2000);
    wait_shard_field(c, "s2", "sentinel", "unreachable", SENTINEL_POLL_MS * 4 + 2000);
    assert_int_equal(shard_master_port(c->proxy.port, "s1"), c->master[0].port);
    assert_int_equal(shard_master_port(c->proxy.port, "s2"), c->master[1].port);
    redisReply *r = command_on(c->proxy.port, "INFO shards");
    assert_non_null(r);
    assert_non_null(strstr(r->str, "sentinel_subscribed:0"));
    freeReplyObject(r);

    writer w = {.conn = harness_connect(c->proxy.port)};
    assert_non_null(w.conn);
    write_for(&w, c, 0, 0, 300);
    assert_int_equal(w.failed[0] + w.failed[1], 0);
    assert_true(w.acked[0] > 0 && w.acked[1] > 0);
    assert_int_equal(count_lost(&w, NULL), 0);
    writer_free(&w);
}

static int log_contains(const harness_proc *p, const char *text)
{
    FILE *f = fopen(p->log, "r");
    if (!f)
        return 0;
    char line[1024];
    int found = 0;
    while (!found && fgets(line, sizeof(line), f))
        found = strstr(line, text) != NULL;
    fclose(f);
    return found;
}

/* A Sentinel that names a replica as the master (here one that monitors a
 * replica of the replica under the master's name) is asked first; the
 * proxy refuses its answer after ROLE and takes the real master from the
 * next Sentinel. */
static void test_sentinel_naming_a_replica_is_refused(void **state)
{
    cluster *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    *state = c;
    assert_int_equal(harness_redis_start(&c->master[0]), 0);
    assert_int_equal(harness_replica_start(&c->replica[0], c->master[0].port), 0);
    /* chained: the honest Sentinel never learns of it */
    assert_int_equal(harness_replica_start(&c->replica[1], c->replica[0].port), 0);
    char conf[256];
    snprintf(conf, sizeof(conf), "sentinel monitor m1 127.0.0.1 %d 1\n", c->replica[1].port);
    assert_int_equal(harness_sentinel_start(&c->sentinel[0], conf), 0);
    snprintf(conf, sizeof(conf), "sentinel monitor m1 127.0.0.1 %d 1\n", c->master[0].port);
    assert_int_equal(harness_sentinel_start(&c->sentinel[1], conf), 0);
    assert_int_equal(sentinel_master_port(c->sentinel[0].port, "m1"), c->replica[1].port);

    assert_int_equal(
        harness_ringproxy_start(&c->proxy, proxy_ini(c->sentinel, 2, "s1 = sentinel:m1\n")), 0);
    wait_shard_field(c, "s1", "sentinel", "ok", 5000);
    assert_int_equal(shard_master_port(c->proxy.port, "s1"), c->master[0].port);
    if (!log_contains(&c->proxy, "its ROLE is slave: not used")) {
        harness_dump_log(&c->proxy, 4096);
        fail_msg("the proxy did not say it refused the replica");
    }
    redisContext *p = harness_connect(c->proxy.port);
    assert_non_null(p);
    expect_ok(fixture_cmd(p, "SET refused v"));
    redisFree(p);
    fixture_expect_str(command_on(c->master[0].port, "GET refused"), "v");
}

/* The master is demoted behind the Sentinels' back (they are stopped) and
 * the proxy's connection to it is closed: the proxy reconnects, asks ROLE
 * first, and fails the requests fast instead of sending them to a replica. */
static void test_demoted_master_gets_no_request_after_reconnect(void **state)
{
    cluster *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    *state = c;
    assert_int_equal(harness_redis_start(&c->master[0]), 0);
    assert_int_equal(harness_replica_start(&c->replica[0], c->master[0].port), 0);
    char conf[256];
    snprintf(conf, sizeof(conf), "sentinel monitor m1 127.0.0.1 %d 1\n", c->master[0].port);
    assert_int_equal(harness_sentinel_start(&c->sentinel[0], conf), 0);
    assert_int_equal(
        harness_ringproxy_start(&c->proxy, proxy_ini(c->sentinel, 1, "s1 = sentinel:m1\n")), 0);
    wait_shard_field(c, "s1", "sentinel", "ok", 5000);
    redisContext *p = harness_connect(c->proxy.port);
    assert_non_null(p);
    expect_ok(fixture_cmd(p, "SET before v"));

    assert_int_equal(kill(c->sentinel[0].pid, SIGSTOP), 0);
    expect_ok(command_on(c->replica[0].port, "REPLICAOF NO ONE"));
    expect_ok(command_on(c->master[0].port, "REPLICAOF 127.0.0.1 %d", c->replica[0].port));
    redisReply *r = command_on(c->master[0].port, "CLIENT KILL TYPE normal");
    assert_non_null(r);
    freeReplyObject(r);

    /* Until the Sentinels say otherwise, s1 is unavailable, quickly. */
    long long deadline = fixture_now_ms() + fixture_bound_ms(2000);
    int refused = 0;
    while (!refused && fixture_now_ms() < deadline) {
        long long sent = fixture_now_ms();
        r = fixture_cmd(p, "SET after v");
        assert_int_equal(r->type, REDIS_REPLY_ERROR);
        assert_true(strncmp(r->str, "ERR shard s1 ", 13) == 0);
        assert_true(fixture_now_ms() - sent < fixture_bound_ms(REQUEST_TIMEOUT_MS));
        refused = strstr(r->str, "not a master (ROLE)") != NULL;
        freeReplyObject(r);
        fixture_sleep_ms(20);
    }
    assert_true(refused);
    fixture_expect_nil(command_on(c->master[0].port, "GET after"));
    fixture_expect_nil(command_on(c->replica[0].port, "GET after"));
    redisFree(p);
}

/* A master and one replica that has finished its first sync, as the
 * test's state (stopped by the teardown). */
static cluster *master_with_synced_replica(void **state)
{
    cluster *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    *state = c;
    assert_int_equal(harness_redis_start(&c->master[0]), 0);
    assert_int_equal(harness_replica_start(&c->replica[0], c->master[0].port), 0);
    long long deadline = fixture_now_ms() + fixture_bound_ms(10000);
    while (!replica_synced(c->replica[0].port)) {
        assert_true(fixture_now_ms() < deadline);
        fixture_sleep_ms(20);
    }
    return c;
}

/* min_replicas_to_ack = 1 over a plain host:port shard: a write is
 * answered once the replica has it (it reads back from the replica at
 * once), a read needs no WAIT, and with the replica stopped a write gets
 * -NOREPLICAS after min_replicas_timeout while reads still work. */
static void test_min_replicas_to_ack_answers_writes_once_a_replica_has_them(void **state)
{
    cluster *c = master_with_synced_replica(state);
    char ini[512];
    snprintf(ini, sizeof(ini),
             "[proxy]\nlisten = 127.0.0.1:%%PORT%%\nwatch_config = no\n"
             "min_replicas_to_ack = 1\nmin_replicas_timeout = %d\n[shards]\ns1 = 127.0.0.1:%d\n",
             MIN_REPLICAS_TIMEOUT_MS, c->master[0].port);
    assert_int_equal(harness_ringproxy_start(&c->proxy, ini), 0);
    redisContext *p = harness_connect(c->proxy.port);
    assert_non_null(p);
    redisContext *replica = harness_connect(c->replica[0].port);
    assert_non_null(replica);
    for (int i = 0; i < 200; i++) {
        expect_ok(fixture_cmd(p, "SET acked:%d v%d", i, i));
        char want[16];
        snprintf(want, sizeof(want), "v%d", i);
        fixture_expect_str(fixture_cmd(replica, "GET acked:%d", i), want);
    }
    fixture_expect_int(fixture_cmd(p, "INCR counter"), 1);
    fixture_expect_str(fixture_cmd(replica, "GET counter"), "1");

    assert_int_equal(kill(c->replica[0].pid, SIGSTOP), 0);
    long long sent = fixture_now_ms();
    redisReply *r = fixture_cmd(p, "SET unconfirmed v");
    long long took = fixture_now_ms() - sent;
    fixture_expect_error(r, "NOREPLICAS write done on shard s1");
    assert_true(took >= MIN_REPLICAS_TIMEOUT_MS - 20);
    sent = fixture_now_ms();
    fixture_expect_str(fixture_cmd(p, "GET acked:7"), "v7");
    assert_true(fixture_now_ms() - sent < fixture_bound_ms(MIN_REPLICAS_TIMEOUT_MS));
    /* the write itself was done on the master */
    fixture_expect_str(command_on(c->master[0].port, "GET unconfirmed"), "v");
    assert_int_equal(kill(c->replica[0].pid, SIGCONT), 0);
    redisFree(replica);
    redisFree(p);
}

/* A reload turns s1's address line into "sentinel:m1": the proxy asks the
 * Sentinel, lands on the same master, and no key moves (the ring is made
 * of names and weights). */
static void test_reload_names_a_shard_by_its_sentinel_master_without_moving_keys(void **state)
{
    cluster *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    *state = c;
    assert_int_equal(harness_redis_start(&c->master[0]), 0);
    assert_int_equal(harness_redis_start(&c->master[1]), 0);
    assert_int_equal(harness_replica_start(&c->replica[0], c->master[0].port), 0);
    char conf[256];
    snprintf(conf, sizeof(conf), "sentinel monitor m1 127.0.0.1 %d 1\n", c->master[0].port);
    assert_int_equal(harness_sentinel_start(&c->sentinel[0], conf), 0);
    char ini[1024];
    snprintf(ini, sizeof(ini),
             "[proxy]\nlisten = 127.0.0.1:%%PORT%%\nwatch_config = no\n"
             "[shards]\ns1 = 127.0.0.1:%d\ns2 = 127.0.0.1:%d\n",
             c->master[0].port, c->master[1].port);
    assert_int_equal(harness_ringproxy_start(&c->proxy, ini), 0);
    char source[64];
    shard_field(c->proxy.port, "s1", "source", source, sizeof(source));
    char want[64];
    snprintf(want, sizeof(want), "127.0.0.1:%d", c->master[0].port);
    assert_string_equal(source, want);

    redisContext *p = harness_connect(c->proxy.port);
    assert_non_null(p);
    enum { KEYS = 200 };
    int owner[KEYS];
    for (int i = 0; i < KEYS; i++) {
        char key[32];
        snprintf(key, sizeof(key), "r:%d", i);
        expect_ok(fixture_cmd(p, "SET %s %s", key, key));
        owner[i] = fixture_owner(p, key, strlen(key));
    }

    snprintf(ini, sizeof(ini),
             "[proxy]\nlisten = 127.0.0.1:%d\nwatch_config = no\nsentinels = 127.0.0.1:%d\n"
             "[shards]\ns1 = sentinel:m1\ns2 = 127.0.0.1:%d\n",
             c->proxy.port, c->sentinel[0].port, c->master[1].port);
    char path[300];
    snprintf(path, sizeof(path), "%s/proxy.ini", c->proxy.dir);
    FILE *out = fopen(path, "w");
    assert_non_null(out);
    assert_true(fputs(ini, out) >= 0);
    assert_int_equal(fclose(out), 0);
    expect_ok(fixture_cmd(p, "PROXY RELOAD"));
    wait_shard_field(c, "s1", "sentinel", "ok", 5000);
    shard_field(c->proxy.port, "s1", "source", source, sizeof(source));
    assert_string_equal(source, "sentinel:m1");
    assert_int_equal(shard_master_port(c->proxy.port, "s1"), c->master[0].port);
    wait_shard_field(c, "s1", "state", "up", 2000);
    for (int i = 0; i < KEYS; i++) {
        char key[32];
        snprintf(key, sizeof(key), "r:%d", i);
        assert_int_equal(fixture_owner(p, key, strlen(key)), owner[i]);
        fixture_expect_str(fixture_cmd(p, "GET %s", key), key);
    }
    redisReply *r = fixture_cmd(p, "INFO rebalance");
    assert_non_null(strstr(r->str, "rebalance_completed:0"));
    freeReplyObject(r);
    redisFree(p);
}

/* Through proxy p: a read finds "only-on-replica" (set on the replica
 * alone) once the replica's connection is up, and a write lands on the
 * master. */
static void expect_replica_reads_master_writes(cluster *c, redisContext *p)
{
    long long deadline = fixture_now_ms() + fixture_bound_ms(2000);
    redisReply *r;
    while ((r = fixture_cmd(p, "GET only-on-replica"))->type != REDIS_REPLY_STRING) {
        freeReplyObject(r);
        assert_true(fixture_now_ms() < deadline);
        fixture_sleep_ms(20);
    }
    fixture_expect_str(r, "r");
    expect_ok(fixture_cmd(p, "SET written v"));
    fixture_expect_str(command_on(c->master[0].port, "GET written"), "v");
}

/* read_from=prefer_replica on s1's line (the proxy's default is master):
 * a read-only command goes to the replica the Sentinel names (a key that
 * only the replica holds is found), a write to the master; with the
 * replica dead, reads go to the master again. */
static void test_reads_go_to_the_replica_with_read_from(void **state)
{
    cluster *c = master_with_synced_replica(state);
    char conf[256];
    snprintf(conf, sizeof(conf), "sentinel monitor m1 127.0.0.1 %d 1\n", c->master[0].port);
    assert_int_equal(harness_sentinel_start(&c->sentinel[0], conf), 0);
    long long deadline = fixture_now_ms() + fixture_bound_ms(SENTINELS_READY_MS);
    while (!sentinel_ready(c->sentinel[0].port, "m1", 0)) {
        assert_true(fixture_now_ms() < deadline);
        fixture_sleep_ms(100);
    }
    expect_ok(command_on(c->replica[0].port, "CONFIG SET replica-read-only no"));
    expect_ok(command_on(c->replica[0].port, "SET only-on-replica r"));

    assert_int_equal(
        harness_ringproxy_start(
            &c->proxy, proxy_ini(c->sentinel, 1, "s1 = sentinel:m1 read_from=prefer_replica\n")),
        0);
    char want[64];
    snprintf(want, sizeof(want), "127.0.0.1:%d", c->replica[0].port);
    wait_shard_field(c, "s1", "read_replica", want, SENTINEL_POLL_MS * 2 + 3000);
    wait_shard_field(c, "s1", "state", "up", 2000);
    redisContext *p = harness_connect(c->proxy.port);
    assert_non_null(p);
    expect_replica_reads_master_writes(c, p);
    redisReply *r;

    assert_true(harness_proc_stop(&c->replica[0], SIGKILL) != -1);
    deadline = fixture_now_ms() + fixture_bound_ms(3000);
    for (;;) {
        r = fixture_cmd(p, "GET only-on-replica");
        if (r->type == REDIS_REPLY_NIL)
            break;
        /* until the proxy sees the replica gone: its error, never a wrong value */
        assert_int_equal(r->type, REDIS_REPLY_ERROR);
        freeReplyObject(r);
        assert_true(fixture_now_ms() < deadline);
        fixture_sleep_ms(20);
    }
    freeReplyObject(r);
    fixture_expect_str(fixture_cmd(p, "GET written"), "v");
    redisFree(p);
}

/* read_from for a shard named by address (no Sentinel): the proxy asks the
 * master ROLE for its replicas and reads from the one it lists (a key only
 * the replica holds is found), writes go to the master; once the replica
 * is promoted (REPLICAOF NO ONE) the master no longer lists it, and reads
 * go back to the master within a poll (1 s). */
static void test_plain_master_names_the_replica_reads_go_to(void **state)
{
    cluster *c = master_with_synced_replica(state);
    expect_ok(command_on(c->replica[0].port, "CONFIG SET replica-read-only no"));
    expect_ok(command_on(c->replica[0].port, "SET only-on-replica r"));
    char line[128];
    snprintf(line, sizeof(line), "s1 = 127.0.0.1:%d read_from=prefer_replica\n", c->master[0].port);
    assert_int_equal(harness_ringproxy_start(&c->proxy, proxy_ini(c->sentinel, 0, line)), 0);
    char want[64];
    snprintf(want, sizeof(want), "127.0.0.1:%d", c->replica[0].port);
    wait_shard_field(c, "s1", "read_replica", want, 3000);
    redisContext *p = harness_connect(c->proxy.port);
    assert_non_null(p);
    expect_replica_reads_master_writes(c, p);
    long long deadline;
    redisReply *r;

    expect_ok(command_on(c->replica[0].port, "REPLICAOF NO ONE"));
    long long t0 = fixture_now_ms();
    wait_shard_field(c, "s1", "read_replica", "none", 2000);
    deadline = fixture_now_ms() + fixture_bound_ms(1000);
    for (;;) {
        r = fixture_cmd(p, "GET only-on-replica");
        if (r->type == REDIS_REPLY_NIL)
            break;
        fixture_expect_str(r, "r"); /* the replica, until it is dropped */
        assert_true(fixture_now_ms() < deadline);
        fixture_sleep_ms(20);
    }
    freeReplyObject(r);
    print_message("reads back on the master %lld ms after the replica was promoted\n",
                  fixture_now_ms() - t0);
    fixture_expect_str(fixture_cmd(p, "GET written"), "v");
    redisFree(p);
}

/* Shards with a password (backend_password): AUTH goes before the ROLE
 * check, both on the proxy's connections and on the connection that checks
 * a Sentinel's answer. */
static void test_master_with_a_password_is_found_and_used(void **state)
{
    cluster *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    *state = c;
    assert_int_equal(harness_redis_start(&c->master[0]), 0);
    expect_ok(command_on(c->master[0].port, "CONFIG SET requirepass pw"));
    char conf[256];
    snprintf(conf, sizeof(conf), "sentinel monitor m1 127.0.0.1 %d 1\nsentinel auth-pass m1 pw\n",
             c->master[0].port);
    assert_int_equal(harness_sentinel_start(&c->sentinel[0], conf), 0);
    const char *ini = proxy_ini(c->sentinel, 1, "s1 = sentinel:m1\n");
    const char *at = strstr(ini, "[shards]");
    char with_password[2300];
    snprintf(with_password, sizeof(with_password), "%.*sbackend_password = pw\n%s", (int)(at - ini),
             ini, at);
    assert_int_equal(harness_ringproxy_start(&c->proxy, with_password), 0);
    wait_shard_field(c, "s1", "sentinel", "ok", 5000);
    wait_shard_field(c, "s1", "state", "up", 2000);
    redisContext *p = harness_connect(c->proxy.port);
    assert_non_null(p);
    expect_ok(fixture_cmd(p, "SET with-password v"));
    fixture_expect_str(fixture_cmd(p, "GET with-password"), "v");
    redisFree(p);
}

static void info_line(int proxy_port, const char *section, const char *name, char *out, size_t cap)
{
    out[0] = '\0';
    redisReply *r = command_on(proxy_port, "INFO %s", section);
    char key[64];
    snprintf(key, sizeof(key), "%s:", name);
    const char *at = r && r->type == REDIS_REPLY_STRING ? strstr(r->str, key) : NULL;
    if (at) {
        at += strlen(key);
        snprintf(out, cap, "%.*s", (int)strcspn(at, "\r\n"), at);
    }
    if (r)
        freeReplyObject(r);
}

/* Keys "m:0" .. "m:<MIGRATION_KEYS - 1>" written through the proxy and
 * replicated; then a reload re-weights s2 (weight=3) so that keys move
 * from s1 to s2, slowly enough (400 keys/s) that a failover happens half
 * way. Returns once the migration runs. */
enum { MIGRATION_KEYS = 3000 };

static void start_slow_migration(cluster *c, redisContext *p)
{
    for (int i = 0; i < MIGRATION_KEYS; i++) {
        redisAppendCommand(p, "SET m:%d m:%d", i, i);
    }
    for (int i = 0; i < MIGRATION_KEYS; i++)
        expect_ok(fixture_next_reply(p));
    /* replicated before the migration starts: WAIT on each master */
    for (int i = 0; i < NSHARDS; i++) {
        redisReply *r = command_on(c->master[i].port, "WAIT 1 5000");
        fixture_expect_int(r, 1);
    }

    char ini[2300];
    const char *base =
        proxy_ini(c->sentinel, NSENTINELS, "s1 = sentinel:m1\ns2 = sentinel:m2 weight=3\n");
    const char *at = strstr(base, "[shards]");
    snprintf(ini, sizeof(ini), "%.*smigrate_rate = 400\nmigrate_batch = 50\n%s", (int)(at - base),
             base, at);
    char *port_line = strstr(ini, "%PORT%");
    assert_non_null(port_line);
    char final[2400];
    snprintf(final, sizeof(final), "%.*s%d%s", (int)(port_line - ini), ini, c->proxy.port,
             port_line + strlen("%PORT%"));
    char path[300];
    snprintf(path, sizeof(path), "%s/proxy.ini", c->proxy.dir);
    FILE *out = fopen(path, "w");
    assert_non_null(out);
    assert_true(fputs(final, out) >= 0);
    assert_int_equal(fclose(out), 0);
    expect_ok(fixture_cmd(p, "PROXY RELOAD"));
    char state_text[64];
    info_line(c->proxy.port, "rebalance", "rebalance_state", state_text, sizeof(state_text));
    assert_string_not_equal(state_text, "idle");
    fixture_sleep_ms(300);
}

/* SIGKILLs shard i's master and waits until the Sentinels name its
 * replica. */
static void kill_master_until_switched(cluster *c, int i)
{
    int old_port = c->master[i].port;
    char name[16];
    snprintf(name, sizeof(name), "m%d", i + 1);
    assert_true(harness_proc_stop(&c->master[i], SIGKILL) != -1);
    long long deadline =
        fixture_now_ms() + fixture_bound_ms(DOWN_AFTER_MS + FAILOVER_TIMEOUT_MS * 3);
    while (sentinel_master_port(c->sentinel[0].port, name) == old_port) {
        assert_true(fixture_now_ms() < deadline);
        fixture_sleep_ms(50);
    }
}

static void wait_migration_end(cluster *c)
{
    char state_text[64];
    long long deadline = fixture_now_ms() + fixture_bound_ms(60000);
    for (;;) {
        info_line(c->proxy.port, "rebalance", "rebalance_state", state_text, sizeof(state_text));
        if (strcmp(state_text, "idle") == 0)
            break;
        if (fixture_now_ms() > deadline) {
            harness_dump_log(&c->proxy, 4096);
            fail_msg("the migration did not end after the failover (state %s)", state_text);
        }
        fixture_sleep_ms(100);
    }
}

/* Reads every migration key through the proxy: bit i of missing[] set for
 * each that does not read back (missing may be NULL). How many. */
static int count_missing(redisContext *p, unsigned char *missing)
{
    int lost = 0;
    for (int i = 0; i < MIGRATION_KEYS; i++) {
        redisAppendCommand(p, "GET m:%d", i);
    }
    for (int i = 0; i < MIGRATION_KEYS; i++) {
        redisReply *r = fixture_next_reply(p);
        char want[32];
        snprintf(want, sizeof(want), "m:%d", i);
        int gone = !(r->type == REDIS_REPLY_STRING && strcmp(r->str, want) == 0);
        lost += gone;
        if (gone && missing)
            missing[i / 8] |= (unsigned char)(1u << (i % 8));
        freeReplyObject(r);
    }
    return lost;
}

/* A migration (s2 re-weighted, keys moving from s1) whose source master is
 * killed half way: the Sentinels promote s1's replica, the mover carries on
 * against it, and every key (written, and replicated, before the
 * migration) reads back once it is done. */
static void test_migration_continues_when_its_source_fails_over(void **state)
{
    cluster *c = cluster_start(state);
    redisContext *p = harness_connect(c->proxy.port);
    assert_non_null(p);
    start_slow_migration(c, p);
    kill_master_until_switched(c, 0);
    wait_migration_end(c);
    assert_int_equal(shard_master_port(c->proxy.port, "s1"), c->replica[0].port);
    assert_int_equal(count_missing(p, NULL), 0);
    /* The shards' ring record of sentinel: shards loads (it names the
     * Sentinels), as any proxy joining the move needs. */
    assert_false(fixture_log_contains(&c->proxy, "ring record does not load"));
    redisFree(p);
}

/* The same with the migration's TARGET (s2) failing over half way: the
 * mover's MIGRATEs to the dead master fail and are retried, then go to the
 * promoted replica (MIGRATE names the target's current address). Every key
 * the promoted replica held when it was promoted reads back at the end,
 * and so does every key not yet moved then (it was still on s1). A key
 * that the killed master took from s1 and had not yet passed to its
 * replica is lost, as any Redis failover loses unreplicated writes: the
 * test counts and prints those. */
static void test_migration_continues_when_its_target_fails_over(void **state)
{
    cluster *c = cluster_start(state);
    redisContext *p = harness_connect(c->proxy.port);
    assert_non_null(p);
    start_slow_migration(c, p);
    kill_master_until_switched(c, 1);
    /* What the new master of s2 and s1's master hold now. */
    static unsigned char held[(MIGRATION_KEYS + 7) / 8];
    memset(held, 0, sizeof(held));
    int ports[2] = {c->replica[1].port, c->master[0].port};
    for (int h = 0; h < 2; h++) {
        redisContext *direct = harness_connect(ports[h]);
        assert_non_null(direct);
        for (int i = 0; i < MIGRATION_KEYS; i++)
            redisAppendCommand(direct, "EXISTS m:%d", i);
        for (int i = 0; i < MIGRATION_KEYS; i++) {
            redisReply *r = fixture_next_reply(direct);
            if (r->type == REDIS_REPLY_INTEGER && r->integer == 1)
                held[i / 8] |= (unsigned char)(1u << (i % 8));
            freeReplyObject(r);
        }
        redisFree(direct);
    }
    wait_migration_end(c);
    char new_master[32];
    snprintf(new_master, sizeof(new_master), "127.0.0.1:%d", c->replica[1].port);
    wait_shard_field(c, "s2", "master", new_master, FOLLOW_MS);
    static unsigned char missing[(MIGRATION_KEYS + 7) / 8];
    memset(missing, 0, sizeof(missing));
    int lost = count_missing(p, missing), lost_held = 0, unheld = 0;
    for (int i = 0; i < MIGRATION_KEYS; i++) {
        int was_held = held[i / 8] & (1u << (i % 8));
        unheld += !was_held;
        lost_held += was_held && (missing[i / 8] & (1u << (i % 8)));
    }
    print_message("target failover mid-migration: %d of %d keys lost, all of them absent from "
                  "the promoted replica and from s1 at the switch (%d keys were absent then)\n",
                  lost, MIGRATION_KEYS, unheld);
    assert_int_equal(lost_held, 0);
    redisFree(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_masters_are_found_at_start, stop),
        cmocka_unit_test_teardown(test_killed_master_is_followed_to_the_promoted_replica, stop),
        cmocka_unit_test_teardown(test_stopped_master_is_replaced_and_not_written_after_it_resumes,
                                  stop),
        cmocka_unit_test_teardown(test_lock_store_follows_the_failover, stop),
        cmocka_unit_test_teardown(test_all_sentinels_down_keeps_the_last_known_masters, stop),
        cmocka_unit_test_teardown(test_sentinel_naming_a_replica_is_refused, stop),
        cmocka_unit_test_teardown(test_demoted_master_gets_no_request_after_reconnect, stop),
        cmocka_unit_test_teardown(test_min_replicas_to_ack_answers_writes_once_a_replica_has_them,
                                  stop),
        cmocka_unit_test_teardown(
            test_reload_names_a_shard_by_its_sentinel_master_without_moving_keys, stop),
        cmocka_unit_test_teardown(test_reads_go_to_the_replica_with_read_from, stop),
        cmocka_unit_test_teardown(test_plain_master_names_the_replica_reads_go_to, stop),
        cmocka_unit_test_teardown(test_master_with_a_password_is_found_and_used, stop),
        cmocka_unit_test_teardown(test_migration_continues_when_its_source_fails_over, stop),
        cmocka_unit_test_teardown(test_migration_continues_when_its_target_fails_over, stop),
    };
    /* SENTINEL_TEST=<glob> runs only the matching tests. */
    const char *only = getenv("SENTINEL_TEST");
    if (only != NULL && only[0] != '\0')
        cmocka_set_test_filter(only);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
