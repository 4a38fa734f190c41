/* Several proxies, one ring: three ringproxy processes in front of the same
 * four redis-server shards, their proxy.ini files updated one after another
 * while writers go through every proxy (SET, INCR, RPUSH, SET NX PX). After
 * each change: every acknowledged write readable through every proxy, every
 * key on exactly its owner shard, no lock granted twice, no key left on a
 * removed shard. What each test shows is listed in docs/semantics.md
 * ("Several proxies"); the protocol is docs/rebalancing.md. */
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
#include <unistd.h>

#include <cmocka.h>

#include "fixture.h"
#include "harness.h"

#define NSHARDS  4
#define NPROXIES 3
/* Keys written before a change, so that the move has work to do. */
#define PRELOAD_KEYS 3000
/* Lock names the writers compete for (SET NX PX). */
#define LOCK_NAMES 64
/* A fleet's migration taking longer than this counts as stuck. */
#define FLEET_TIMEOUT_MS 20000
#define POLL_MS          20

static harness_proc shards[NSHARDS];
static harness_proc proxies[NPROXIES];
static redisContext *direct[NSHARDS];
static int test_passed;

/* ---- proxy.ini of each proxy ---- */

/* Which shards are on the ring, and their weights (0 = not on it). */
typedef struct ring_spec {
    int weight[NSHARDS];
} ring_spec;

/* proxy.ini for p (its port once it runs; %PORT% for the harness before). */
static char *ini_for(const harness_proc *p, const ring_spec *spec, const char *extra)
{
    char port[16] = "%PORT%";
    if (p->port)
        snprintf(port, sizeof(port), "%d", p->port);
    char *text = malloc(4096);
    assert_non_null(text);
    int o = snprintf(text, 4096,
                     "[proxy]\nlisten = 127.0.0.1:%s\nwatch_config = no\nreconnect_min = 10\n"
                     "reconnect_max = 100\nrequest_timeout = 3000\n%s\n[shards]\n",
                     port, extra ? extra : "");
    for (int i = 0; i < NSHARDS; i++)
        if (spec->weight[i])
            o += snprintf(text + o, 4096 - (size_t)o, "s%d = 127.0.0.1:%d weight=%d\n", i + 1,
                          shards[i].port, spec->weight[i]);
    return text;
}

/* Replaces a proxy's proxy.ini as an editor saves (a new file renamed). */
static void ini_install(const harness_proc *p, const ring_spec *spec, const char *extra)
{
    char *text = ini_for(p, spec, extra);
    char path[400], tmp[410];
    snprintf(path, sizeof(path), "%s/proxy.ini", p->dir);
    snprintf(tmp, sizeof(tmp), "%s.new", path);
    FILE *out = fopen(tmp, "w");
    assert_non_null(out);
    assert_true(fputs(text, out) >= 0);
    assert_int_equal(fclose(out), 0);
    assert_int_equal(rename(tmp, path), 0);
    free(text);
}

static void reload(redisContext *c)
{
    redisReply *r = fixture_cmd(c, "PROXY RELOAD");
    if (r->type != REDIS_REPLY_STATUS)
        fail_msg("PROXY RELOAD: %s", r->type == REDIS_REPLY_ERROR ? r->str : "?");
    freeReplyObject(r);
}

/* Installs spec on proxy i and reloads it. */
static void update_proxy(redisContext **pc, int i, const ring_spec *spec, const char *extra)
{
    ini_install(&proxies[i], spec, extra);
    reload(pc[i]);
}

/* ---- INFO ---- */

static void info_field(redisContext *c, const char *section, const char *field, char *out,
                       size_t cap)
{
    redisReply *r = fixture_cmd(c, "INFO %s", section);
    out[0] = '\0';
    if (r->type == REDIS_REPLY_STRING) {
        char pattern[96];
        int n = snprintf(pattern, sizeof(pattern), "\n%s:", field);
        const char *p = strstr(r->str, pattern);
        if (p) {
            p += n;
            snprintf(out, cap, "%.*s", (int)strcspn(p, "\r\n"), p);
        }
    }
    freeReplyObject(r);
}

static long long info_ll(redisContext *c, const char *section, const char *field)
{
    char text[64];
    info_field(c, section, field, text, sizeof(text));
    if (!text[0])
        fail_msg("INFO %s has no %s", section, field);
    return atoll(text);
}

/* Waits until proxy c says the fleet's move to an epoch >= epoch is done
 * and its own migration idle. */
static void wait_fleet_idle(redisContext *c, long long epoch)
{
    long long deadline = fixture_now_ms() + fixture_bound_ms(FLEET_TIMEOUT_MS);
    for (;;) {
        char state[32], local[32];
        info_field(c, "rebalance", "rebalance_fleet_state", state, sizeof(state));
        info_field(c, "rebalance", "rebalance_state", local, sizeof(local));
        if (strcmp(state, "idle") == 0 && strcmp(local, "idle") == 0 &&
            info_ll(c, "rebalance", "rebalance_fleet_epoch") >= epoch &&
            info_ll(c, "server", "ring_epoch") >= epoch)
            return;
        if (fixture_now_ms() > deadline) {
            redisReply *r = fixture_cmd(c, "INFO rebalance");
            fprintf(stderr, "%s\n", r->type == REDIS_REPLY_STRING ? r->str : "?");
            freeReplyObject(r);
            fail_msg("the fleet's move to epoch %lld did not end", epoch);
        }
        fixture_sleep_ms(POLL_MS);
    }
}

/* Waits until proxy c's ring_status is want. */
static void wait_status(redisContext *c, const char *want)
{
    long long deadline = fixture_now_ms() + fixture_bound_ms(FLEET_TIMEOUT_MS);
    char status[32];
    for (;;) {
        info_field(c, "server", "ring_status", status, sizeof(status));
        if (strcmp(status, want) == 0)
            return;
        if (fixture_now_ms() > deadline)
            fail_msg("ring_status stays '%s', not '%s'", status, want);
        fixture_sleep_ms(POLL_MS);
    }
}

/* ---- writers: one thread per proxy ---- */

typedef struct writer {
    int id;
    int port;
    pthread_t thread;
    atomic_int stop;
    long long sets_acked; /* w<id>:k<i> = i for every i < sets_acked */
    long long incr_acked, incr_unknown;
    long long push_acked, push_unknown;
    atomic_llong refused;            /* -TRYAGAIN ring changed answers */
    char lock_value[LOCK_NAMES][32]; /* the locks this writer was granted */
    char problem[300];
} writer;

static writer writers[NPROXIES];

/* Runs one command until it gets an answer that is not a refusal; returns
 * the reply, or NULL when stopped. unknown is set when a reply was an
 * error of uncertain outcome (the shard connection went meanwhile). */
static redisReply *writer_cmd(writer *w, redisContext **c, int *unknown, const char *fmt, ...)
{
    for (;;) {
        if (atomic_load(&w->stop))
            return NULL;
        if (!*c) {
            *c = harness_connect(w->port);
            if (!*c) {
                fixture_sleep_ms(20);
                continue;
            }
        }
        va_list ap;
        va_start(ap, fmt);
        redisReply *r = redisvCommand(*c, fmt, ap);
        va_end(ap);
        if (!r) {
            redisFree(*c);
            *c = NULL;
            *unknown = 1;
            continue;
        }
        if (r->type == REDIS_REPLY_ERROR) {
            if (strstr(r->str, "TRYAGAIN"))
                atomic_fetch_add(&w->refused, 1);
            else
                *unknown = 1; /* e.g. the connection to the shard was closed */
            freeReplyObject(r);
            fixture_sleep_ms(5);
            continue;
        }
        return r;
    }
}

static void *writer_run(void *arg)
{
    writer *w = arg;
    redisContext *c = NULL;
    for (long long i = 0; !atomic_load(&w->stop); i++) {
        int unknown = 0;
        redisReply *r = writer_cmd(w, &c, &unknown, "SET w%d:k%lld %lld", w->id, i, i);
        if (!r)
            break;
        freeReplyObject(r);
        w->sets_acked = i + 1;
        unknown = 0;
        r = writer_cmd(w, &c, &unknown, "INCR w%d:ctr", w->id);
        if (!r)
            break;
        freeReplyObject(r);
        w->incr_acked++;
        w->incr_unknown += unknown;
        unknown = 0;
        r = writer_cmd(w, &c, &unknown, "RPUSH w%d:list %lld", w->id, i);
        if (!r)
            break;
        freeReplyObject(r);
        w->push_acked++;
        w->push_unknown += unknown;
        unknown = 0;
        char value[32];
        snprintf(value, sizeof(value), "w%d-%lld", w->id, i);
        int lock = (int)(i % LOCK_NAMES);
        r = writer_cmd(w, &c, &unknown, "SET lock:%d %s NX PX 600000", lock, value);
        if (!r)
            break;
        if (r->type == REDIS_REPLY_STATUS)
            snprintf(w->lock_value[lock], sizeof(w->lock_value[lock]), "%s", value);
        freeReplyObject(r);
        fixture_sleep_ms(1);
    }
    if (c)
        redisFree(c);
    return NULL;
}

static void writers_start(void)
{
    for (int i = 0; i < NPROXIES; i++) {
        memset(&writers[i], 0, sizeof(writers[i]));
        writers[i].id = i;
        writers[i].port = proxies[i].port;
        assert_int_equal(pthread_create(&writers[i].thread, NULL, writer_run, &writers[i]), 0);
    }
}

static int writers_running;

static void writers_stop(void)
{
    if (!writers_running)
        return;
    for (int i = 0; i < NPROXIES; i++)
        atomic_store(&writers[i].stop, 1);
    for (int i = 0; i < NPROXIES; i++)
        pthread_join(writers[i].thread, NULL);
    writers_running = 0;
}

/* Lets the writers write for ms. */
static void writers_for(int ms)
{
    if (!writers_running) {
        writers_start();
        writers_running = 1;
    }
    fixture_sleep_ms(ms);
}

/* ---- checks ---- */

/* Shard index (0-based) that proxy c places key on. */
static int owner_of(redisContext *c, const char *key)
{
    return fixture_owner(c, key, strlen(key));
}

/* Bit i set when shard i holds key. */
static unsigned holders(const char *key)
{
    unsigned mask = 0;
    for (int i = 0; i < NSHARDS; i++) {
        redisReply *r = fixture_cmd(direct[i], "EXISTS %s", key);
        if (r->type == REDIS_REPLY_INTEGER && r->integer == 1)
            mask |= 1u << i;
        freeReplyObject(r);
    }
    return mask;
}

/* key is on exactly its owner (as proxy c places it). */
static void expect_on_owner_only(redisContext *c, const char *key)
{
    int owner = owner_of(c, key);
    unsigned mask = holders(key);
    if (mask != 1u << owner)
        fail_msg("%s: owner s%d, held by shards mask %#x (bit 0 = s1)", key, owner + 1, mask);
}

/* Every acknowledged write of every writer, through proxy c, and each of
 * their keys on its owner only (sampled for the SET keys: every 7th). */
static void expect_writes(redisContext *c)
{
    for (int w = 0; w < NPROXIES; w++) {
        const writer *wr = &writers[w];
        char key[64];
        for (long long i = 0; i < wr->sets_acked; i++) {
            snprintf(key, sizeof(key), "w%d:k%lld", w, i);
            redisReply *r = fixture_cmd(c, "GET %s", key);
            char want[32];
            snprintf(want, sizeof(want), "%lld", i);
            if (r->type != REDIS_REPLY_STRING || strcmp(r->str, want) != 0)
                fail_msg("%s: acknowledged %s, read %s", key, want,
                         r->type == REDIS_REPLY_STRING  ? r->str
                         : r->type == REDIS_REPLY_ERROR ? r->str
                                                        : "(nil)");
            freeReplyObject(r);
            if (i % 7 == 0)
                expect_on_owner_only(c, key);
        }
        snprintf(key, sizeof(key), "w%d:ctr", w);
        redisReply *r = fixture_cmd(c, "GET %s", key);
        long long ctr = r->type == REDIS_REPLY_STRING ? atoll(r->str) : 0;
        freeReplyObject(r);
        if (ctr < wr->incr_acked || ctr > wr->incr_acked + wr->incr_unknown)
            fail_msg("%s = %lld, acknowledged %lld (+%lld unknown)", key, ctr, wr->incr_acked,
                     wr->incr_unknown);
        if (wr->incr_acked)
            expect_on_owner_only(c, key);
        snprintf(key, sizeof(key), "w%d:list", w);
        r = fixture_cmd(c, "LLEN %s", key);
        long long len = r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
        freeReplyObject(r);
        if (len < wr->push_acked || len > wr->push_acked + wr->push_unknown)
            fail_msg("%s has %lld elements, acknowledged %lld (+%lld unknown)", key, len,
                     wr->push_acked, wr->push_unknown);
        if (wr->push_acked)
            expect_on_owner_only(c, key);
    }
    /* No lock granted twice: each granted lock holds its one holder's value. */
    for (int l = 0; l < LOCK_NAMES; l++) {
        const char *granted = NULL;
        for (int w = 0; w < NPROXIES; w++) {
            if (!writers[w].lock_value[l][0])
                continue;
            if (granted)
                fail_msg("lock:%d granted twice: %s and %s", l, granted, writers[w].lock_value[l]);
            granted = writers[w].lock_value[l];
        }
        if (!granted)
            continue;
        char key[32];
        snprintf(key, sizeof(key), "lock:%d", l);
        fixture_expect_str(fixture_cmd(c, "GET %s", key), granted);
    }
}

static void preload(redisContext *c)
{
    for (int i = 0; i < PRELOAD_KEYS; i++)
        redisAppendCommand(c, "SET pre:%d %d", i, i);
    for (int i = 0; i < PRELOAD_KEYS; i++)
        fixture_expect_status(fixture_next_reply(c), "OK");
}

static void expect_preload(redisContext *c)
{
    for (int i = 0; i < PRELOAD_KEYS; i++)
        redisAppendCommand(c, "GET pre:%d", i);
    for (int i = 0; i < PRELOAD_KEYS; i++) {
        redisReply *r = fixture_next_reply(c);
        if (r->type != REDIS_REPLY_STRING || atoi(r->str) != i)
            fail_msg("pre:%d: wrong value after the move (type %d)", i, r->type);
        freeReplyObject(r);
    }
    for (int i = 0; i < PRELOAD_KEYS; i += 11) {
        char key[32];
        snprintf(key, sizeof(key), "pre:%d", i);
        expect_on_owner_only(c, key);
    }
}

/* Everything written is there, through every proxy. */
static void expect_all(redisContext **pc)
{
    writers_stop();
    for (int i = 0; i < NPROXIES; i++) {
        if (!proxies[i].pid)
            continue;
        expect_writes(pc[i]);
        expect_preload(pc[i]);
    }
}

/* ---- fixture ---- */

static redisContext *pcs[NPROXIES];

static int setup_with(void **state, const ring_spec *spec)
{
    (void)state;
    test_passed = 0;
    memset(writers, 0, sizeof(writers));
    for (int i = 0; i < NSHARDS; i++) {
        assert_int_equal(harness_redis_start(&shards[i]), 0);
        direct[i] = harness_connect(shards[i].port);
        assert_non_null(direct[i]);
    }
    for (int i = 0; i < NPROXIES; i++) {
        memset(&proxies[i], 0, sizeof(proxies[i]));
        char *text = ini_for(&proxies[i], spec, NULL);
        assert_int_equal(harness_ringproxy_start(&proxies[i], text), 0);
        free(text);
        pcs[i] = harness_connect(proxies[i].port);
        assert_non_null(pcs[i]);
    }
    /* The fleet's first epoch is written by whichever proxy comes first. */
    for (int i = 0; i < NPROXIES; i++)
        wait_fleet_idle(pcs[i], 1);
    return 0;
}

static int setup_three(void **state)
{
    ring_spec spec = {{1, 1, 1, 0}};
    return setup_with(state, &spec);
}

static int setup_four(void **state)
{
    ring_spec spec = {{1, 1, 1, 1}};
    return setup_with(state, &spec);
}

static int teardown(void **state)
{
    (void)state;
    writers_stop();
    for (int i = 0; i < NPROXIES; i++) {
        if (!test_passed && proxies[i].pid)
            harness_dump_log(&proxies[i], 5000);
        if (pcs[i])
            redisFree(pcs[i]);
        pcs[i] = NULL;
        if (proxies[i].pid)
            harness_proc_stop(&proxies[i], SIGTERM);
    }
    for (int i = 0; i < NSHARDS; i++) {
        if (direct[i])
            redisFree(direct[i]);
        direct[i] = NULL;
        harness_proc_stop(&shards[i], SIGTERM);
    }
    return 0;
}

/* A proxy whose ring is behind answers keyed requests with a retryable
 * error naming both epochs. */
static void expect_refusal(redisContext *c)
{
    redisReply *r = fixture_cmd(c, "GET pre:1");
    if (r->type != REDIS_REPLY_ERROR || strncmp(r->str, "TRYAGAIN ring changed", 21) != 0)
        fail_msg("a proxy behind answered GET with type %d %s", r->type,
                 r->type == REDIS_REPLY_ERROR ? r->str : "");
    freeReplyObject(r);
}

/* Rolls spec out to the three proxies, 0 s, gap_ms and 2 * gap_ms apart,
 * checking that the ones not yet updated refuse meanwhile. */
static void roll_out(const ring_spec *spec, int gap_ms, long long epoch)
{
    update_proxy(pcs, 0, spec, NULL);
    writers_for(gap_ms);
    wait_status(pcs[2], "behind");
    expect_refusal(pcs[2]);
    update_proxy(pcs, 1, spec, NULL);
    writers_for(gap_ms);
    expect_refusal(pcs[2]);
    update_proxy(pcs, 2, spec, NULL);
    writers_for(300);
    for (int i = 0; i < NPROXIES; i++)
        wait_fleet_idle(pcs[i], epoch);
    assert_true(atomic_load(&writers[2].refused) > 0);
}

/* ---- tests ---- */

static void test_added_shard_rolled_out_over_three_proxies(void **state)
{
    (void)state;
    preload(pcs[0]);
    writers_for(300);
    ring_spec spec = {{1, 1, 1, 1}};
    roll_out(&spec, 1500, 2);
    expect_all(pcs);
    assert_true(info_ll(pcs[2], "server", "shards_epoch") == 2);
    /* The added shard carries the record too (the next change fences it):
     * in the store's database, 15 by default. */
    fixture_expect_status(fixture_cmd(direct[3], "SELECT 15"), "OK");
    fixture_expect_str(fixture_cmd(direct[3], "HGET ringproxy:ring epoch"), "2");
    fixture_expect_status(fixture_cmd(direct[3], "SELECT 0"), "OK");
    test_passed = 1;
}

static void test_removed_shard_rolled_out_leaves_it_empty(void **state)
{
    (void)state;
    preload(pcs[1]);
    writers_for(300);
    ring_spec spec = {{1, 0, 1, 1}};
    roll_out(&spec, 1000, 2);
    expect_all(pcs);
    fixture_expect_int(fixture_cmd(direct[1], "DBSIZE"), 0);
    test_passed = 1;
}

static void test_reweighted_shard_rolled_out(void **state)
{
    (void)state;
    preload(pcs[2]);
    writers_for(300);
    ring_spec spec = {{3, 1, 1, 1}};
    roll_out(&spec, 1000, 2);
    expect_all(pcs);
    test_passed = 1;
}

/* The proxy moving the keys is killed half way: another at the same epoch
 * takes the lease over once it expires and finishes from the recorded
 * progress. */
static void test_killed_mover_is_taken_over(void **state)
{
    (void)state;
    preload(pcs[0]);
    writers_for(200);
    ring_spec spec = {{1, 1, 1, 1}};
    const char *slow = "migrate_rate = 300\nmigrate_batch = 50";
    ini_install(&proxies[0], &spec, slow);
    reload(pcs[0]);
    long long deadline = fixture_now_ms() + fixture_bound_ms(FLEET_TIMEOUT_MS);
    while (info_ll(pcs[0], "rebalance", "rebalance_keys_moved") < 100) {
        if (fixture_now_ms() > deadline)
            fail_msg("the first proxy moved nothing");
        fixture_sleep_ms(POLL_MS);
    }
    update_proxy(pcs, 1, &spec, NULL);
    update_proxy(pcs, 2, &spec, NULL);
    writers_for(300);
    assert_true(info_ll(pcs[0], "rebalance", "rebalance_fleet_mover") == 1);
    writers_stop();
    harness_proc_stop(&proxies[0], SIGKILL);
    redisFree(pcs[0]);
    pcs[0] = NULL;
    wait_fleet_idle(pcs[1], 2);
    wait_fleet_idle(pcs[2], 2);
    assert_true(info_ll(pcs[1], "rebalance", "rebalance_keys_moved") +
                    info_ll(pcs[2], "rebalance", "rebalance_keys_moved") >
                0);
    expect_all(pcs);
    test_passed = 1;
}

/* A proxy restarted with the old file mid-rollout refuses and never takes
 * the ring back; once its file is updated it serves again. */
/* The lines of p's log that contain needle. */
static long long log_lines_with(const harness_proc *p, const char *needle)
{
    FILE *in = fopen(p->log, "r");
    assert_non_null(in);
    char line[1024];
    long long n = 0;
    while (fgets(line, sizeof(line), in) != NULL) {
        n += strstr(line, needle) != NULL;
    }
    fclose(in);
    return n;
}

static void test_restart_with_the_old_file_never_rolls_back(void **state)
{
    (void)state;
    preload(pcs[0]);
    ring_spec spec = {{1, 1, 1, 1}};
    update_proxy(pcs, 0, &spec, NULL);
    wait_fleet_idle(pcs[0], 2);
    char ring[32];
    info_field(pcs[0], "rebalance", "rebalance_fleet_ring", ring, sizeof(ring));
    redisFree(pcs[2]);
    pcs[2] = NULL;
    assert_int_equal(harness_ringproxy_restart(&proxies[2], SIGTERM), 0);
    pcs[2] = harness_connect(proxies[2].port);
    assert_non_null(pcs[2]);
    wait_status(pcs[2], "behind");
    expect_refusal(pcs[2]);
    char why[600];
    info_field(pcs[2], "rebalance", "rebalance_fleet_refusal", why, sizeof(why));
    assert_non_null(strstr(why, "this proxy runs epoch 1"));
    assert_non_null(strstr(why, "the shards epoch 2"));
    fixture_sleep_ms(500);
    /* Its connections are refused again and again (every reconnect_min);
     * the log says so once per connection, not at every attempt. */
    long long refusals = info_ll(pcs[2], "server", "ring_check_refusals");
    long long logged = log_lines_with(&proxies[2], "unavailable: ring changed");
    assert_true(logged > 0);
    assert_true(refusals > logged);
    char after[32];
    info_field(pcs[0], "rebalance", "rebalance_fleet_ring", after, sizeof(after));
    assert_string_equal(after, ring);
    assert_int_equal(info_ll(pcs[0], "rebalance", "rebalance_fleet_epoch"), 2);
    update_proxy(pcs, 1, &spec, NULL);
    update_proxy(pcs, 2, &spec, NULL);
    writers_for(500);
    for (int i = 0; i < NPROXIES; i++)
        wait_fleet_idle(pcs[i], 2);
    expect_all(pcs);
    test_passed = 1;
}

/* Two proxies given different new rings at the same time: one ring wins,
 * the other proxy refuses naming both, and converges once given the
 * winner's file. */
static void test_conflicting_edits_one_wins(void **state)
{
    (void)state;
    preload(pcs[0]);
    ring_spec added = {{1, 1, 1, 1}}, reweighted = {{2, 1, 1, 0}};
    ini_install(&proxies[0], &added, NULL);
    ini_install(&proxies[1], &reweighted, NULL);
    redisAppendCommand(pcs[0], "PROXY RELOAD");
    redisAppendCommand(pcs[1], "PROXY RELOAD");
    freeReplyObject(fixture_next_reply(pcs[0]));
    freeReplyObject(fixture_next_reply(pcs[1]));
    long long deadline = fixture_now_ms() + fixture_bound_ms(FLEET_TIMEOUT_MS);
    int winner = -1;
    while (winner < 0) {
        char s0[32], s1[32];
        info_field(pcs[0], "server", "ring_status", s0, sizeof(s0));
        info_field(pcs[1], "server", "ring_status", s1, sizeof(s1));
        if (strcmp(s0, "behind") == 0 && strcmp(s1, "current") == 0)
            winner = 1;
        else if (strcmp(s1, "behind") == 0 && strcmp(s0, "current") == 0)
            winner = 0;
        if (fixture_now_ms() > deadline)
            fail_msg("no single winner: %s / %s", s0, s1);
        fixture_sleep_ms(POLL_MS);
    }
    int loser = 1 - winner;
    wait_fleet_idle(pcs[winner], 2);
    char win_fp[32], lose_fp[32], why[600];
    info_field(pcs[winner], "server", "ring_fingerprint", win_fp, sizeof(win_fp));
    info_field(pcs[loser], "server", "ring_fingerprint", lose_fp, sizeof(lose_fp));
    info_field(pcs[loser], "rebalance", "rebalance_fleet_refusal", why, sizeof(why));
    assert_non_null(strstr(why, win_fp));
    assert_non_null(strstr(why, lose_fp));
    expect_refusal(pcs[loser]);
    const ring_spec *won = winner == 0 ? &added : &reweighted;
    update_proxy(pcs, loser, won, NULL);
    update_proxy(pcs, 2, won, NULL);
    writers_for(500);
    for (int i = 0; i < NPROXIES; i++)
        wait_fleet_idle(pcs[i], 2);
    expect_all(pcs);
    test_passed = 1;
}

/* Writes pipelined into a paused source shard by a proxy still on the old
 * ring run, if ever, before the keys move: the fence cannot pass the
 * paused shard, and afterwards that proxy's connections are gone. A value
 * written after the move is never overwritten by one of them. */
static void test_writes_into_a_paused_source_never_land_after_the_move(void **state)
{
    (void)state;
    enum { N = 300 };
    char keys[N][32];
    int on_s1 = 0;
    for (int i = 0; on_s1 < N && i < 100000; i++) {
        char key[32];
        snprintf(key, sizeof(key), "p:%d", i);
        if (owner_of(pcs[0], key) == 0)
            snprintf(keys[on_s1++], sizeof(keys[0]), "%s", key);
    }
    assert_int_equal(on_s1, N);
    fixture_expect_status(fixture_cmd(direct[0], "CLIENT PAUSE 1500 WRITE"), "OK");
    for (int i = 0; i < N; i++)
        redisAppendCommand(pcs[1], "SET %s old", keys[i]);
    redisAppendCommand(pcs[1], "PING");
    fixture_sleep_ms(100);
    ring_spec spec = {{1, 1, 1, 1}};
    update_proxy(pcs, 0, &spec, NULL);
    /* The stale proxy's pipeline is answered once the shard resumes. */
    struct timeval tv = fixture_bound_tv(10000);
    redisSetTimeout(pcs[1], tv);
    for (int i = 0; i <= N; i++)
        freeReplyObject(fixture_next_reply(pcs[1]));
    wait_fleet_idle(pcs[0], 2);
    for (int i = 0; i < N; i++)
        fixture_expect_status(fixture_cmd(pcs[0], "SET %s new", keys[i]), "OK");
    fixture_sleep_ms(500);
    update_proxy(pcs, 1, &spec, NULL);
    update_proxy(pcs, 2, &spec, NULL);
    for (int p = 0; p < NPROXIES; p++) {
        wait_fleet_idle(pcs[p], 2);
        for (int i = 0; i < N; i++)
            fixture_expect_str(fixture_cmd(pcs[p], "GET %s", keys[i]), "new");
    }
    for (int i = 0; i < N; i++)
        expect_on_owner_only(pcs[0], keys[i]);
    test_passed = 1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_added_shard_rolled_out_over_three_proxies, setup_three,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_removed_shard_rolled_out_leaves_it_empty, setup_four,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_reweighted_shard_rolled_out, setup_four, teardown),
        cmocka_unit_test_setup_teardown(test_killed_mover_is_taken_over, setup_three, teardown),
        cmocka_unit_test_setup_teardown(test_restart_with_the_old_file_never_rolls_back,
                                        setup_three, teardown),
        cmocka_unit_test_setup_teardown(test_conflicting_edits_one_wins, setup_three, teardown),
        cmocka_unit_test_setup_teardown(test_writes_into_a_paused_source_never_land_after_the_move,
                                        setup_three, teardown),
    };
    const char *only = getenv("FLEET_TEST");
    if (only)
        cmocka_set_test_filter(only);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
