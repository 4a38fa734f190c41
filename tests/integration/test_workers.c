/* workers = 2, end to end: real redis-server shards behind a ringproxy whose
 * supervisor runs two worker processes on one port. What each test holds
 * the proxy to is listed in docs/semantics.md ("Workers"): clients served
 * by both workers, INFO totals over them, a reload (PROXY RELOAD, SIGHUP)
 * reaching both, a killed worker restarted, SIGTERM stopping every process,
 * a ring change under writers on both workers losing nothing, locks
 * exclusive across workers. */
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
#include <unistd.h>

#include <cmocka.h>

#include "fixture.h"

/* Connections tried to find one on a given worker: the kernel spreads
 * them by a hash of the client's port, so each try is a coin toss. */
#define CONNECT_TRIES 64
/* Clients of the INFO totals test. */
#define NCLIENTS 16
/* Writers of the ring change test, half on each worker. */
#define NWRITERS 8
/* Keys each writer overwrites in turn (pre:<writer>:<j>). */
#define WRITER_KEYS 300
/* Most operations a writer records. */
#define WRITER_MAX_OPS 200000
/* How often INFO is polled while waiting. */
#define POLL_MS 20

static int test_passed;

static void writers_stop(void);

static int stop(void **state)
{
    writers_stop();
    fixture *f = *state;
    *state = NULL;
    if (f == NULL)
        return 0;
    if (!test_passed && f->proxy.pid != 0)
        harness_dump_log(&f->proxy, 8000);
    return fixture_stop(f);
}

/* Two workers; the file is watched when watch says so. */
static fixture *start_watching(void **state, size_t nshards_in_ini, int watch)
{
    test_passed = 0;
    fixture *f = fixture_start_some(watch ? "workers = 2\nwatch_config = yes\n"
                                          : "workers = 2\nwatch_config = no\n",
                                    nshards_in_ini);
    assert_non_null(f);
    *state = f;
    return f;
}

static fixture *start(void **state, size_t nshards_in_ini)
{
    return start_watching(state, nshards_in_ini, 0);
}

/* ---- INFO ---- */

/* The value of one field of INFO <section>; fails the test when absent. */
static long long info_int(redisContext *c, const char *section, const char *field)
{
    redisReply *r = fixture_cmd(c, "INFO %s", section);
    if (r->type != REDIS_REPLY_STRING)
        fail_msg("INFO %s: not a bulk string (type %d)", section, r->type);
    char pattern[128];
    snprintf(pattern, sizeof(pattern), "%s:", field);
    const char *p = strstr(r->str, pattern);
    if (p == NULL)
        fail_msg("INFO %s has no field %s", section, field);
    long long v = atoll(p + strlen(pattern));
    freeReplyObject(r);
    return v;
}

/* calls= of cmdstat_set in INFO commandstats (0 when absent). */
static long long set_calls(redisContext *c)
{
    redisReply *r = fixture_cmd(c, "INFO commandstats");
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    const char *p = strstr(r->str, "cmdstat_set:calls=");
    long long v = p != NULL ? atoll(p + strlen("cmdstat_set:calls=")) : 0;
    freeReplyObject(r);
    return v;
}

static int worker_of(redisContext *c)
{
    return (int)info_int(c, "server", "worker_index");
}

static pid_t pid_of(redisContext *c)
{
    return (pid_t)info_int(c, "server", "process_id");
}

/* A client of worker index (0 or 1); fails the test when none of
 * CONNECT_TRIES connections lands there. */
static redisContext *client_on_worker(fixture *f, int index)
{
    for (int i = 0; i < CONNECT_TRIES; i++) {
        redisContext *c = fixture_client(f);
        if (worker_of(c) == index)
            return c;
        fixture_close(f, c);
    }
    fail_msg("none of %d connections reached worker %d", CONNECT_TRIES, index);
    return NULL;
}

/* Whether a process exists and has not exited (a zombie has). For the
 * workers, which are not the test's children. */
static int process_running(pid_t pid)
{
    char path[64], stat[256];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *in = fopen(path, "r");
    if (in == NULL)
        return 0;
    size_t n = fread(stat, 1, sizeof(stat) - 1, in);
    fclose(in);
    stat[n] = '\0';
    const char *close_paren = strrchr(stat, ')');
    return close_paren != NULL && close_paren[1] == ' ' && close_paren[2] != 'Z';
}

static void wait_gone(pid_t pid)
{
    long long deadline = fixture_now_ms() + fixture_bound_ms(5000);
    while (process_running(pid)) {
        if (fixture_now_ms() > deadline)
            fail_msg("process %d still runs", (int)pid);
        fixture_sleep_ms(POLL_MS);
    }
}

/* Shards in PROXY SHARDS through c. */
static size_t shard_count(redisContext *c)
{
    redisReply *r = fixture_cmd(c, "PROXY SHARDS");
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    size_t n = r->elements;
    freeReplyObject(r);
    return n;
}

static void wait_shard_count(redisContext *c, size_t want)
{
    long long deadline = fixture_now_ms() + fixture_bound_ms(5000);
    size_t n;
    while ((n = shard_count(c)) != want) {
        if (fixture_now_ms() > deadline)
            fail_msg("worker %d runs %zu shards, not %zu", worker_of(c), n, want);
        fixture_sleep_ms(POLL_MS);
    }
}

/* Waits until the worker behind c has finished min_completed migrations. */
static void wait_idle(redisContext *c, long long min_completed)
{
    long long deadline = fixture_now_ms() + fixture_bound_ms(30000);
    while (info_int(c, "rebalance", "rebalance_completed") < min_completed) {
        if (fixture_now_ms() > deadline)
            fail_msg("worker %d finished no migration", worker_of(c));
        fixture_sleep_ms(POLL_MS);
    }
}

static void ini_append_shard(const fixture *f, int s)
{
    char path[300];
    snprintf(path, sizeof(path), "%s/proxy.ini", f->proxy.dir);
    FILE *out = fopen(path, "a");
    assert_non_null(out);
    fprintf(out, "s%d = 127.0.0.1:%d\n", s + 1, f->shards[s].port);
    assert_int_equal(fclose(out), 0);
}

/* ---- tests ---- */

static void test_clients_land_on_both_workers_and_info_counts_them_all(void **state)
{
    fixture *f = start(state, FIXTURE_SHARDS);
    redisContext *c[NCLIENTS];
    int on[2] = {0, 0};
    for (int i = 0; i < NCLIENTS; i++) {
        c[i] = fixture_client(f);
        int w = worker_of(c[i]);
        assert_true(w == 0 || w == 1);
        on[w]++;
    }
    assert_true(on[0] > 0 && on[1] > 0);
    assert_int_equal(info_int(c[0], "server", "workers"), 2);

    long long base = info_int(c[0], "stats", "total_commands_processed");
    long long sets = 0;
    for (int i = 0; i < NCLIENTS; i++)
        for (int k = 0; k < (i + 1) * 5; k++, sets++)
            fixture_expect_status(fixture_cmd(c[i], "SET tot:%d:%d x", i, k), "OK");
    /* Each INFO after the first counts itself: the k-th reads base + sets
     * + k once both workers' counters are in. */
    long long deadline = fixture_now_ms() + fixture_bound_ms(2000);
    for (long long k = 1;; k++) {
        long long delta = info_int(c[0], "stats", "total_commands_processed") - base;
        assert_true(delta <= sets + k);
        if (delta == sets + k)
            break;
        if (fixture_now_ms() > deadline)
            fail_msg("total_commands_processed grew by %lld, want %lld", delta, sets + k);
        fixture_sleep_ms(POLL_MS);
    }
    /* Every worker alone did fewer than all the SETs: the total proves the
     * sum. The same for the clients and the command counts. */
    assert_int_equal(info_int(c[0], "clients", "connected_clients"), NCLIENTS);
    assert_int_equal(info_int(c[NCLIENTS - 1], "clients", "connected_clients"), NCLIENTS);
    deadline = fixture_now_ms() + fixture_bound_ms(2000);
    while (set_calls(c[1]) < sets) {
        if (fixture_now_ms() > deadline)
            fail_msg("cmdstat_set never reached %lld calls", sets);
        fixture_sleep_ms(POLL_MS);
    }
    assert_int_equal(set_calls(c[1]), sets);
    for (int i = 0; i < NCLIENTS; i++)
        fixture_close(f, c[i]);
    test_passed = 1;
}

static void test_proxy_reload_and_sighup_reach_both_workers(void **state)
{
    fixture *f = start(state, 2);
    redisContext *w0 = client_on_worker(f, 0);
    redisContext *w1 = client_on_worker(f, 1);
    for (int i = 0; i < 200; i++)
        fixture_expect_status(fixture_cmd(w0, "SET r:%d %d", i, i), "OK");

    /* PROXY RELOAD on worker 1: worker 0 follows. */
    ini_append_shard(f, 2);
    fixture_expect_status(fixture_cmd(w1, "PROXY RELOAD"), "OK");
    wait_shard_count(w0, 3);
    wait_idle(w0, 1);
    wait_idle(w1, 1);

    /* SIGHUP to the supervisor: both workers reload. */
    ini_append_shard(f, 3);
    assert_int_equal(kill(f->proxy.pid, SIGHUP), 0);
    wait_shard_count(w0, 4);
    wait_shard_count(w1, 4);
    wait_idle(w0, 2);
    wait_idle(w1, 2);

    /* Both place keys alike, and every key is on its new owner only. */
    for (int i = 0; i < 200; i++) {
        char key[32];
        snprintf(key, sizeof(key), "r:%d", i);
        int owner = fixture_owner(w0, key, strlen(key));
        assert_int_equal(fixture_owner(w1, key, strlen(key)), owner);
        assert_int_equal(fixture_holders(f, key, strlen(key)), 1u << owner);
        redisReply *r = fixture_cmd(w1, "GET %s", key);
        assert_int_equal(r->type, REDIS_REPLY_STRING);
        assert_int_equal(atoi(r->str), i);
        freeReplyObject(r);
    }
    fixture_close(f, w0);
    fixture_close(f, w1);
    test_passed = 1;
}

/* Waits (bounded) until the worker c is on says ring_status:current: the
 * shards' ring record holds its ring. */
static void wait_ring_current(redisContext *c)
{
    long long deadline = fixture_now_ms() + fixture_bound_ms(10000);
    for (;;) {
        redisReply *r = fixture_cmd(c, "INFO server");
        int current = r->type == REDIS_REPLY_STRING && strstr(r->str, "ring_status:current");
        freeReplyObject(r);
        if (current)
            return;
        if (fixture_now_ms() > deadline)
            fail_msg("the worker's ring never became the shards' (ring_status:current)");
        fixture_sleep_ms(20);
    }
}

static void test_saved_file_reaches_both_workers(void **state)
{
    fixture *f = start_watching(state, 3, 1);
    redisContext *w0 = client_on_worker(f, 0);
    redisContext *w1 = client_on_worker(f, 1);
    wait_ring_current(w0);
    wait_ring_current(w1);
    /* Worker 0 alone watches the file; worker 1 follows it. */
    ini_append_shard(f, 3);
    wait_shard_count(w1, 4);
    wait_shard_count(w0, 4);
    wait_idle(w0, 1);
    wait_idle(w1, 1);
    fixture_close(f, w0);
    fixture_close(f, w1);
    test_passed = 1;
}

static void test_killed_worker_is_restarted_and_serves_new_clients(void **state)
{
    fixture *f = start(state, FIXTURE_SHARDS);
    redisContext *w1 = client_on_worker(f, 1);
    pid_t killed = pid_of(w1);
    assert_int_not_equal(killed, f->proxy.pid);
    fixture_expect_status(fixture_cmd(w1, "SET survivor yes"), "OK");
    /* More work on the worker about to die than the rest of the test
     * does, so that totals forgetting it would go back. */
    for (int i = 0; i < 1000; i++)
        redisAppendCommand(w1, "PING");
    for (int i = 0; i < 1000; i++)
        fixture_expect_status(fixture_next_reply(w1), "PONG");
    long long total_before = info_int(w1, "stats", "total_commands_processed");
    assert_int_equal(kill(killed, SIGKILL), 0);
    wait_gone(killed);
    fixture_close(f, w1);

    /* Clients reconnecting reach the new worker 1 (it starts within the
     * first restart delay) and the one that stayed up. */
    long long deadline = fixture_now_ms() + fixture_bound_ms(5000);
    redisContext *again = NULL;
    while (again == NULL) {
        if (fixture_now_ms() > deadline)
            fail_msg("no client reached a restarted worker 1");
        redisContext *c = fixture_client(f);
        if (worker_of(c) == 1) {
            again = c;
            break;
        }
        fixture_close(f, c);
        fixture_sleep_ms(POLL_MS);
    }
    assert_int_not_equal(pid_of(again), killed);
    /* The dead worker's counters stay in the totals. */
    assert_true(info_int(again, "stats", "total_commands_processed") > total_before);
    fixture_expect_str(fixture_cmd(again, "GET survivor"), "yes");
    fixture_expect_status(fixture_cmd(again, "SET after restart"), "OK");
    assert_true(fixture_alive(f->proxy.pid));
    redisContext *w0 = client_on_worker(f, 0);
    fixture_expect_str(fixture_cmd(w0, "GET after"), "restart");
    fixture_close(f, again);
    fixture_close(f, w0);
    test_passed = 1;
}

static void test_sigterm_stops_the_supervisor_and_every_worker(void **state)
{
    fixture *f = start(state, FIXTURE_SHARDS);
    redisContext *w0 = client_on_worker(f, 0);
    redisContext *w1 = client_on_worker(f, 1);
    pid_t workers[2] = {pid_of(w0), pid_of(w1)};
    assert_true(process_running(workers[0]) && process_running(workers[1]));
    fixture_close(f, w0);
    fixture_close(f, w1);
    assert_int_equal(kill(f->proxy.pid, SIGTERM), 0);
    long long deadline = fixture_now_ms() + fixture_bound_ms(5000);
    while (fixture_alive(f->proxy.pid)) {
        if (fixture_now_ms() > deadline)
            fail_msg("the supervisor still runs after SIGTERM");
        fixture_sleep_ms(POLL_MS);
    }
    /* The supervisor has exited, not yet reaped by the test: it must have
     * reaped both workers before, leaving no orphan. */
    assert_false(process_running(workers[0]));
    assert_false(process_running(workers[1]));
    *state = NULL;
    assert_int_equal(fixture_stop(f), 0); /* exit status 0, as with one process */
    test_passed = 1;
}

/* One writer on one connection: SET of a fresh key, INCR of its counter,
 * overwrite of one of its WRITER_KEYS keys, round after round. */
typedef struct writer {
    int id;
    redisContext *c;
    pthread_t thread;
    atomic_int stop;
    atomic_long rounds;   /* rounds finished */
    long incr_acked;      /* INCRs answered with an integer */
    long errors;          /* error replies (TRYAGAIN while the ring changes) */
    unsigned char *acked; /* per round: bit 0 SET, bit 1 overwrite answered OK */
    char failure[200];    /* the connection broke */
} writer;

static void *writer_run(void *arg)
{
    writer *w = arg;
    for (long n = 0; n < WRITER_MAX_OPS && !atomic_load(&w->stop); n++) {
        redisAppendCommand(w->c, "SET fresh:%d:%ld %ld", w->id, n, n);
        redisAppendCommand(w->c, "INCR ctr:%d", w->id);
        redisAppendCommand(w->c, "SET pre:%d:%ld %ld", w->id, n % WRITER_KEYS, n);
        for (int k = 0; k < 3; k++) {
            redisReply *r = NULL;
            if (redisGetReply(w->c, (void **)&r) != REDIS_OK || r == NULL) {
                snprintf(w->failure, sizeof(w->failure), "round %ld: %s", n, w->c->errstr);
                return NULL;
            }
            if (r->type == REDIS_REPLY_ERROR)
                w->errors++;
            else if (k == 1 && r->type == REDIS_REPLY_INTEGER)
                w->incr_acked++;
            else if (k != 1 && r->type == REDIS_REPLY_STATUS)
                w->acked[n] |= (unsigned char)(k == 0 ? 1 : 2);
            freeReplyObject(r);
        }
        atomic_store(&w->rounds, n + 1);
    }
    return NULL;
}

static void wait_rounds(writer *w, long more)
{
    long want[NWRITERS];
    for (int i = 0; i < NWRITERS; i++)
        want[i] = atomic_load(&w[i].rounds) + more;
    long long deadline = fixture_now_ms() + fixture_bound_ms(20000);
    for (int i = 0; i < NWRITERS; i++)
        while (atomic_load(&w[i].rounds) < want[i] && w[i].failure[0] == '\0') {
            if (fixture_now_ms() > deadline)
                fail_msg("writer %d made no progress", i);
            fixture_sleep_ms(POLL_MS);
        }
}

/* Every acknowledged write of w is readable through c. */
static void check_writer(fixture *f, redisContext *c, const writer *w)
{
    long rounds = atomic_load(&w->rounds);
    long last_overwrite[WRITER_KEYS];
    for (int j = 0; j < WRITER_KEYS; j++)
        last_overwrite[j] = -1;
    for (long n = 0; n < rounds; n++) {
        if (w->acked[n] & 1) {
            redisReply *r = fixture_cmd(c, "GET fresh:%d:%ld", w->id, n);
            if (r->type != REDIS_REPLY_STRING || atol(r->str) != n)
                fail_msg("writer %d: acknowledged SET fresh:%d:%ld lost", w->id, w->id, n);
            freeReplyObject(r);
            if (n % 10 == 0) {
                char key[64];
                snprintf(key, sizeof(key), "fresh:%d:%ld", w->id, n);
                int owner = fixture_owner(c, key, strlen(key));
                assert_int_equal(fixture_holders(f, key, strlen(key)), 1u << owner);
            }
        }
        if (w->acked[n] & 2)
            last_overwrite[n % WRITER_KEYS] = n;
    }
    /* Each pre key was written with growing values: what it holds now is at
     * least its last acknowledged one (an unanswered later write may have
     * landed too). */
    for (int j = 0; j < WRITER_KEYS; j++) {
        if (last_overwrite[j] < 0)
            continue;
        char key[64];
        snprintf(key, sizeof(key), "pre:%d:%d", w->id, j);
        redisReply *r = fixture_cmd(c, "GET %s", key);
        if (r->type != REDIS_REPLY_STRING || atol(r->str) < last_overwrite[j])
            fail_msg("writer %d: %s holds %s, acknowledged %ld", w->id, key,
                     r->type == REDIS_REPLY_STRING ? r->str : "nothing", last_overwrite[j]);
        freeReplyObject(r);
        int owner = fixture_owner(c, key, strlen(key));
        assert_int_equal(fixture_holders(f, key, strlen(key)), 1u << owner);
    }
    redisReply *r = fixture_cmd(c, "GET ctr:%d", w->id);
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    long ctr = atol(r->str);
    freeReplyObject(r);
    if (ctr < w->incr_acked || ctr > rounds)
        fail_msg("writer %d: counter %ld, %ld INCRs acknowledged of %ld sent", w->id, ctr,
                 w->incr_acked, rounds);
}

static writer writers[NWRITERS];
static int writers_running;

/* Ends the writers of a test, also when it failed half way. */
static void writers_stop(void)
{
    if (!writers_running)
        return;
    for (int i = 0; i < NWRITERS; i++)
        atomic_store(&writers[i].stop, 1);
    for (int i = 0; i < writers_running; i++)
        pthread_join(writers[i].thread, NULL);
    writers_running = 0;
}

static void test_ring_change_under_writers_on_both_workers_loses_nothing(void **state)
{
    fixture *f = start(state, 3);
    redisContext *control = client_on_worker(f, 0);
    /* The ring this proxy started with is the shards' (its first fence
     * done) in both workers before the edit, as in a running deployment. */
    wait_ring_current(control);
    redisContext *probe = client_on_worker(f, 1);
    wait_ring_current(probe);
    /* Keys for the mover to move besides what the writers touch. */
    for (int i = 0; i < 3000; i++)
        redisAppendCommand(control, "SET bulk:%d %d", i, i);
    for (int i = 0; i < 3000; i++)
        fixture_expect_status(fixture_next_reply(control), "OK");
    memset(writers, 0, sizeof(writers));
    for (int i = 0; i < NWRITERS; i++) {
        writer *w = &writers[i];
        w->id = i;
        w->c = client_on_worker(f, i % 2);
        w->acked = fixture_alloc(f, WRITER_MAX_OPS);
        assert_int_equal(pthread_create(&w->thread, NULL, writer_run, w), 0);
        writers_running++;
    }
    wait_rounds(writers, 300);

    /* Worker 1 is stopped while worker 0 takes the new ring, and resumes
     * with its writers' requests and the SIGHUP waiting: it still routes by
     * the old ring when it serves those requests, so no key may have moved
     * meanwhile. */
    redisContext *w1 = client_on_worker(f, 1);
    pid_t behind = pid_of(w1);
    assert_int_equal(kill(behind, SIGSTOP), 0);
    ini_append_shard(f, 3);
    fixture_expect_status(fixture_cmd(control, "PROXY RELOAD"), "OK");
    /* Worker 0 fences the shards, then waits for worker 1 (bounded). */
    long long deadline = fixture_now_ms() + fixture_bound_ms(10000);
    while (info_int(control, "rebalance", "rebalance_waiting_for_workers") != 1 &&
           fixture_now_ms() < deadline)
        fixture_sleep_ms(20);
    assert_int_equal(info_int(control, "rebalance", "rebalance_waiting_for_workers"), 1);
    assert_int_equal(info_int(control, "rebalance", "rebalance_keys_moved"), 0);
    assert_int_equal(kill(behind, SIGCONT), 0);
    wait_idle(control, 1);
    wait_idle(w1, 1);
    wait_rounds(writers, 300);
    writers_stop();
    for (int i = 0; i < NWRITERS; i++) {
        if (writers[i].failure[0])
            fail_msg("writer %d: %s", i, writers[i].failure);
    }
    long long moved = info_int(control, "rebalance", "rebalance_keys_moved");
    assert_true(moved > 0);
    /* Worker 1 runs no mover: its INFO shows worker 0's, the proxy's. */
    assert_int_equal(info_int(w1, "rebalance", "rebalance_keys_moved"), moved);
    assert_int_equal(info_int(w1, "rebalance", "rebalance_sources_done"),
                     info_int(control, "rebalance", "rebalance_sources"));
    for (int i = 0; i < NWRITERS; i++)
        check_writer(f, i % 2 ? w1 : control, &writers[i]);
    for (int i = 0; i < 3000; i += 7) {
        char key[32];
        snprintf(key, sizeof(key), "bulk:%d", i);
        redisReply *r = fixture_cmd(w1, "GET %s", key);
        assert_int_equal(r->type, REDIS_REPLY_STRING);
        assert_int_equal(atoi(r->str), i);
        freeReplyObject(r);
        int owner = fixture_owner(w1, key, strlen(key));
        assert_int_equal(fixture_holders(f, key, strlen(key)), 1u << owner);
    }
    for (int i = 0; i < NWRITERS; i++)
        fixture_close(f, writers[i].c);
    fixture_close(f, control);
    fixture_close(f, probe);
    fixture_close(f, w1);
    test_passed = 1;
}

static void test_lock_held_through_one_worker_is_refused_through_the_other(void **state)
{
    fixture *f = start(state, FIXTURE_SHARDS);
    redisContext *w0 = client_on_worker(f, 0);
    redisContext *w1 = client_on_worker(f, 1);
    /* Both workers found the shards' stores empty at once and set them
     * up, each its own way (initialise, restore): both must end ready. */
    long long deadline = fixture_now_ms() + fixture_bound_ms(5000);
    while (info_int(w0, "locks", "lock_shards_ready") < FIXTURE_SHARDS ||
           info_int(w1, "locks", "lock_shards_ready") < FIXTURE_SHARDS) {
        if (fixture_now_ms() > deadline)
            fail_msg("the lock shards' stores are not ready on both workers");
        fixture_sleep_ms(POLL_MS);
    }
    redisReply *r = fixture_cmd(w0, "LOCK.ACQUIRE job 30000 WAIT %lld", fixture_bound_ms(2000));
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    long long token = r->integer;
    freeReplyObject(r);
    fixture_expect_nil(fixture_cmd(w1, "LOCK.ACQUIRE job 30000"));
    fixture_expect_int(fixture_cmd(w1, "LOCK.RELEASE job %lld", token), 1);
    r = fixture_cmd(w1, "LOCK.ACQUIRE job 30000");
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    assert_true(r->integer > token);
    freeReplyObject(r);
    fixture_close(f, w0);
    fixture_close(f, w1);
    test_passed = 1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_clients_land_on_both_workers_and_info_counts_them_all, stop),
        cmocka_unit_test_teardown(test_proxy_reload_and_sighup_reach_both_workers, stop),
        cmocka_unit_test_teardown(test_saved_file_reaches_both_workers, stop),
        cmocka_unit_test_teardown(test_killed_worker_is_restarted_and_serves_new_clients, stop),
        cmocka_unit_test_teardown(test_sigterm_stops_the_supervisor_and_every_worker, stop),
        cmocka_unit_test_teardown(test_ring_change_under_writers_on_both_workers_loses_nothing,
                                  stop),
        cmocka_unit_test_teardown(test_lock_held_through_one_worker_is_refused_through_the_other,
                                  stop),
    };
    /* WORKERS_TEST=<glob> runs only the matching tests. */
    const char *only = getenv("WORKERS_TEST");
    if (only != NULL && only[0] != '\0')
        cmocka_set_test_filter(only);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
