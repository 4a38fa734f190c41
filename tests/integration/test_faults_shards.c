/* Faults on the shard side, under load: a shard killed, stopped, restarted
 * empty, answering -OOM, -BUSY or -LOADING, closing a connection in the
 * middle of a reply, or dead under half of an MSET; and a storm of config
 * reloads. Each test checks that the proxy stays up with bounded memory,
 * that only the requests of the failing shard get an error (Redis's own
 * error, passed on unchanged, or the proxy's "ERR shard sN (addr) ..."),
 * that the connections stay usable, and that every write acknowledged on a
 * shard that kept its data reads back afterwards.
 *
 * The load: LOAD_CONNS connections, each pipelining LOAD_PIPELINE SETs over
 * every shard before reading the replies. Every key is written once (value =
 * key), so an acknowledged write has exactly one value to find; keys carry a
 * hash tag owned by the shard they are meant for. */
#include <errno.h>
#include <fcntl.h>
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

#include "fake_shard.h"
#include "fixture.h"

/* The proxy's timeouts here: short, so that the tests are quick. */
#define REQUEST_TIMEOUT_MS 500
#define CONNECT_TIMEOUT_MS 300
#define RECONNECT_MIN_MS   20
#define RECONNECT_MAX_MS   200
/* How late a shard's error may come: its timeout plus scheduling slack. */
#define ERROR_DEADLINE_MS (REQUEST_TIMEOUT_MS + 700)
/* How long a shard may stay failing once it is back. */
#define RECOVERY_DEADLINE_MS 3000
/* How long a request to a healthy shard may take while another one fails. */
#define LIVE_LATENCY_MS 250
/* The proxy's RSS after a test (plain build): far below what holding the
 * load's requests or replies without bound would take. */
#define RSS_BOUND_KIB (64 * 1024)

#define LOAD_CONNS    8
#define LOAD_PIPELINE 64
#define TAG_MAX       16

/* ---- time bounds, stretched under valgrind ---- */

/* The [proxy] lines of every proxy here, with request_timeout = ms. */
static const char *proxy_lines(int ms)
{
    static char text[256];
    snprintf(text, sizeof(text),
             "request_timeout = %d\nconnect_timeout = %d\nreconnect_min = %d\nreconnect_max = %d\n",
             ms, CONNECT_TIMEOUT_MS, RECONNECT_MIN_MS, RECONNECT_MAX_MS);
    return text;
}

/* ---- hash tags owned by each shard ---- */

typedef struct tags {
    char of[FIXTURE_SHARDS][TAG_MAX]; /* a tag whose keys shard i owns */
    int nshards;
} tags;

static void find_tags(redisContext *c, tags *t, int nshards)
{
    memset(t, 0, sizeof(*t));
    t->nshards = nshards;
    int found = 0;
    for (int n = 0; found < nshards; n++) {
        assert_true(n < 100000);
        char key[TAG_MAX + 2];
        snprintf(key, sizeof(key), "{t%d}", n);
        int s = fixture_owner(c, key, strlen(key));
        assert_true(s < nshards);
        if (t->of[s][0] == '\0') {
            snprintf(t->of[s], TAG_MAX, "t%d", n);
            found++;
        }
    }
}

/* ---- acknowledged writes ---- */

typedef struct write_log {
    char (*key)[64];
    int *shard;
    size_t n, cap;
} write_log;

static void log_add(write_log *w, const char *key, int shard)
{
    if (w->n == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 1024;
        w->key = realloc(w->key, w->cap * sizeof(*w->key));
        w->shard = realloc(w->shard, w->cap * sizeof(*w->shard));
        assert_non_null(w->key);
        assert_non_null(w->shard);
    }
    snprintf(w->key[w->n], sizeof(w->key[0]), "%s", key);
    w->shard[w->n++] = shard;
}

/* A shard restarted empty lost what it held (no persistence here). */
static void log_forget_shard(write_log *w, int shard)
{
    size_t kept = 0;
    for (size_t i = 0; i < w->n; i++) {
        if (w->shard[i] != shard) {
            memcpy(w->key[kept], w->key[i], sizeof(w->key[0]));
            w->shard[kept++] = w->shard[i];
        }
    }
    w->n = kept;
}

/* Every acknowledged write reads back through the proxy. */
static void log_verify(redisContext *c, const write_log *w)
{
    const size_t batch = 256;
    for (size_t from = 0; from < w->n; from += batch) {
        size_t to = from + batch < w->n ? from + batch : w->n;
        for (size_t i = from; i < to; i++) {
            redisAppendCommand(c, "GET %s", w->key[i]);
        }
        for (size_t i = from; i < to; i++) {
            fixture_expect_str(fixture_next_reply(c), w->key[i]);
        }
    }
}

static void log_free(write_log *w)
{
    free(w->key);
    free(w->shard);
    memset(w, 0, sizeof(*w));
}

/* ---- the load ---- */

typedef struct load {
    redisContext *conn[LOAD_CONNS];
    const tags *tags;
    int round; /* rounds sent so far: part of every key */
    char key[LOAD_CONNS][LOAD_PIPELINE][64];
} load;

static void load_open(const fixture *f, int port, load *l, const tags *t)
{
    (void)f;
    memset(l, 0, sizeof(*l));
    l->tags = t;
    for (int i = 0; i < LOAD_CONNS; i++) {
        l->conn[i] = harness_connect(port);
        assert_non_null(l->conn[i]);
    }
}

static void load_close(load *l)
{
    for (int i = 0; i < LOAD_CONNS; i++) {
        if (l->conn[i] != NULL) {
            redisFree(l->conn[i]);
        }
    }
    memset(l, 0, sizeof(*l));
}

static void flush_conn(redisContext *c)
{
    int done = 0;
    while (!done) {
        if (redisBufferWrite(c, &done) != REDIS_OK) {
            fail_msg("write to the proxy failed: %s", c->errstr);
        }
    }
}

/* Sends one round: every connection pipelines its SETs, key j to shard
 * j % nshards, all in flight before any reply is read. */
static void load_send(load *l)
{
    for (int i = 0; i < LOAD_CONNS; i++) {
        for (int j = 0; j < LOAD_PIPELINE; j++) {
            int s = j % l->tags->nshards;
            snprintf(l->key[i][j], sizeof(l->key[i][j]), "{%s}:%d:%d:%d", l->tags->of[s], l->round,
                     i, j);
            redisAppendCommand(l->conn[i], "SET %s %s", l->key[i][j], l->key[i][j]);
        }
        flush_conn(l->conn[i]);
    }
    l->round++;
}

/* The reply is the proxy's error for shard s: "ERR shard sN (addr) ...". */
static int is_shard_error(const redisReply *r, int s, int port)
{
    char prefix[64];
    snprintf(prefix, sizeof(prefix), "ERR shard s%d (127.0.0.1:%d) ", s + 1, port);
    return r->type == REDIS_REPLY_ERROR && strncmp(r->str, prefix, strlen(prefix)) == 0;
}

/* Reads the round's replies. An OK is logged as acknowledged; a shard in
 * the failing mask may answer its shard error instead; anything else fails
 * the test. Returns the number of errors. */
static int load_read(load *l, const int *ports, unsigned failing, write_log *w)
{
    int errors = 0;
    for (int i = 0; i < LOAD_CONNS; i++) {
        for (int j = 0; j < LOAD_PIPELINE; j++) {
            int s = j % l->tags->nshards;
            redisReply *r = fixture_next_reply(l->conn[i]);
            if (r->type == REDIS_REPLY_STATUS && strcmp(r->str, "OK") == 0) {
                log_add(w, l->key[i][j], s);
            } else if ((failing & (1u << s)) && is_shard_error(r, s, ports[s])) {
                errors++;
            } else {
                char text[256];
                fixture_reply_text(r, text, sizeof(text));
                freeReplyObject(r);
                fail_msg("SET %s (shard s%d%s): got \"%s\"", l->key[i][j], s + 1,
                         failing & (1u << s) ? ", failing" : ", healthy", text);
            }
            freeReplyObject(r);
        }
    }
    return errors;
}

static int load_round(load *l, const int *ports, unsigned failing, write_log *w)
{
    load_send(l);
    return load_read(l, ports, failing, w);
}

/* Rounds until one has no error, bounded by the recovery deadline. */
static void load_until_clean(load *l, const int *ports, unsigned failing, write_log *w)
{
    long long deadline = fixture_now_ms() + fixture_bound_ms(RECOVERY_DEADLINE_MS);
    while (load_round(l, ports, failing, w) > 0) {
        if (fixture_now_ms() > deadline) {
            fail_msg("shards still failing %lld ms after they came back",
                     fixture_bound_ms(RECOVERY_DEADLINE_MS));
        }
        fixture_sleep_ms(20);
    }
}

static void fixture_ports(const fixture *f, int *ports)
{
    for (int i = 0; i < FIXTURE_SHARDS; i++) {
        ports[i] = f->shards[i].port;
    }
}

/* No crash, answers PING on a new connection, memory bounded. */
static void expect_proxy_healthy(const harness_proc *proxy)
{
    assert_true(fixture_alive(proxy->pid));
    redisContext *c = harness_connect(proxy->port);
    assert_non_null(c);
    fixture_expect_status(fixture_cmd(c, "PING"), "PONG");
    redisFree(c);
    long rss = fixture_rss_kib(proxy->pid);
    if (!fixture_memory_instrumented(proxy->pid) && rss > RSS_BOUND_KIB) {
        fail_msg("proxy RSS %ld KiB, bound %d KiB", rss, RSS_BOUND_KIB);
    }
}

/* ---- the group: four redis shards behind the proxy ---- */

static int group_setup(void **state)
{
    fixture *f = fixture_start(proxy_lines(REQUEST_TIMEOUT_MS));
    *state = f;
    return f != NULL ? 0 : -1;
}

static int group_teardown(void **state)
{
    return fixture_stop(*state);
}

/* After each test: every shard running, resumed and with default limits,
 * whatever the test left (it may have failed half way). */
static int shards_back_to_normal(void **state)
{
    fixture *f = *state;
    for (int i = 0; i < FIXTURE_SHARDS; i++) {
        if (f->shards[i].pid != 0) {
            kill(f->shards[i].pid, SIGCONT);
        } else if (harness_redis_restart(&f->shards[i]) == -1) {
            return -1;
        }
    }
    for (int i = 0; i < FIXTURE_SHARDS; i++) {
        redisContext *c = harness_connect(f->shards[i].port);
        if (c == NULL) {
            return -1;
        }
        redisReply *r = redisCommand(c, "SCRIPT KILL");
        freeReplyObject(r);
        r = redisCommand(c, "CONFIG SET maxmemory 0");
        freeReplyObject(r);
        redisFree(c);
    }
    return 0;
}

static void test_shard_killed_under_load_then_restarted_empty(void **state)
{
    fixture *f = *state;
    const int victim = 1; /* s2 */
    int ports[FIXTURE_SHARDS];
    fixture_ports(f, ports);
    redisContext *admin = fixture_client(f);
    tags t;
    find_tags(admin, &t, FIXTURE_SHARDS);
    load l;
    load_open(f, f->proxy.port, &l, &t);
    write_log w = {0};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(load_round(&l, ports, 0, &w), 0);
    }
    char before_kill[64];
    snprintf(before_kill, sizeof(before_kill), "{%s}:0:0:%d", t.of[victim], victim);

    /* Killed with a round of every connection in flight. */
    load_send(&l);
    assert_true(harness_proc_stop(&f->shards[victim], SIGKILL) != -1);
    long long killed_at = fixture_now_ms();
    load_read(&l, ports, 1u << victim, &w);
    /* While it is down: exactly its requests fail, and fast. */
    const int per_round = LOAD_CONNS * LOAD_PIPELINE / FIXTURE_SHARDS;
    for (int i = 0; i < 3; i++) {
        long long start = fixture_now_ms();
        assert_int_equal(load_round(&l, ports, 1u << victim, &w), per_round);
        long long took = fixture_now_ms() - start;
        if (took > fixture_bound_ms(ERROR_DEADLINE_MS)) {
            fail_msg("a round with s%d dead took %lld ms", victim + 1, took);
        }
    }
    assert_true(fixture_now_ms() - killed_at < fixture_bound_ms(4 * ERROR_DEADLINE_MS));

    /* Back on its address, empty: what it held went with the process. */
    log_forget_shard(&w, victim);
    assert_int_equal(harness_redis_restart(&f->shards[victim]), 0);
    load_until_clean(&l, ports, 1u << victim, &w);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(load_round(&l, ports, 0, &w), 0);
    }
    /* A key it held before is a miss now, never an error or a stale value. */
    fixture_expect_nil(fixture_cmd(admin, "GET %s", before_kill));
    log_verify(admin, &w);
    expect_proxy_healthy(&f->proxy);
    log_free(&w);
    load_close(&l);
    fixture_close(f, admin);
}

static void test_shard_stopped_times_out_and_others_unaffected(void **state)
{
    fixture *f = *state;
    const int victim = 2; /* s3 */
    const int live = 0;
    int ports[FIXTURE_SHARDS];
    fixture_ports(f, ports);
    redisContext *admin = fixture_client(f);
    redisContext *bystander = fixture_client(f);
    tags t;
    find_tags(admin, &t, FIXTURE_SHARDS);
    load l;
    load_open(f, f->proxy.port, &l, &t);
    write_log w = {0};
    assert_int_equal(load_round(&l, ports, 0, &w), 0);
    char live_key[64], victim_key[64];
    snprintf(live_key, sizeof(live_key), "{%s}:0:0:%d", t.of[live], live);
    snprintf(victim_key, sizeof(victim_key), "{%s}:0:0:%d", t.of[victim], victim);

    /* A stopped process keeps its sockets open and never answers. Nothing
     * is asserted until it runs again; the teardown resumes it anyway. */
    kill(f->shards[victim].pid, SIGSTOP);
    long long start = fixture_now_ms();
    load_send(&l);
    /* Meanwhile another client's requests to healthy shards are served. */
    long long worst = 0;
    redisReply *live_replies[20];
    for (int i = 0; i < 20; i++) {
        long long t0 = fixture_now_ms();
        live_replies[i] = redisCommand(bystander, "GET %s", live_key);
        long long took = fixture_now_ms() - t0;
        worst = took > worst ? took : worst;
        fixture_sleep_ms(10);
    }
    int errors = load_read(&l, ports, 1u << victim, &w);
    long long round_ms = fixture_now_ms() - start;
    /* After the timeout, new requests for it fail within the timeout too. */
    long long t0 = fixture_now_ms();
    redisReply *again = redisCommand(bystander, "GET %s", victim_key);
    long long again_ms = fixture_now_ms() - t0;
    kill(f->shards[victim].pid, SIGCONT);

    for (int i = 0; i < 20; i++) {
        assert_non_null(live_replies[i]);
        fixture_expect_str(live_replies[i], live_key);
    }
    if (worst > fixture_bound_ms(LIVE_LATENCY_MS)) {
        fail_msg("a healthy shard's request took %lld ms while s%d was stopped", worst, victim + 1);
    }
    assert_int_equal(errors, LOAD_CONNS * LOAD_PIPELINE / FIXTURE_SHARDS);
    if (round_ms > fixture_bound_ms(ERROR_DEADLINE_MS)) {
        fail_msg("a round with s%d stopped took %lld ms (timeout %d ms)", victim + 1, round_ms,
                 REQUEST_TIMEOUT_MS);
    }
    assert_non_null(again);
    assert_true(is_shard_error(again, victim, ports[victim]));
    assert_non_null(strstr(again->str, "timeout"));
    freeReplyObject(again);
    assert_true(again_ms < fixture_bound_ms(ERROR_DEADLINE_MS));

    /* Resumed, it serves again, with its data. */
    load_until_clean(&l, ports, 1u << victim, &w);
    log_verify(admin, &w);
    expect_proxy_healthy(&f->proxy);
    log_free(&w);
    load_close(&l);
    fixture_close(f, bystander);
    fixture_close(f, admin);
}

static void test_shard_restarted_empty_gives_misses_not_errors(void **state)
{
    fixture *f = *state;
    const int victim = 0; /* s1 */
    int ports[FIXTURE_SHARDS];
    fixture_ports(f, ports);
    redisContext *admin = fixture_client(f);
    tags t;
    find_tags(admin, &t, FIXTURE_SHARDS);
    load l;
    load_open(f, f->proxy.port, &l, &t);
    write_log w = {0};
    assert_int_equal(load_round(&l, ports, 0, &w), 0);
    char old_key[64];
    snprintf(old_key, sizeof(old_key), "{%s}:0:0:%d", t.of[victim], victim);

    /* A clean restart between two requests: the proxy finds its connection
     * closed and reconnects; no request may be lost on the way. */
    assert_true(harness_proc_stop(&f->shards[victim], SIGTERM) != -1);
    assert_int_equal(harness_redis_restart(&f->shards[victim]), 0);
    log_forget_shard(&w, victim);
    load_until_clean(&l, ports, 1u << victim, &w);
    fixture_expect_nil(fixture_cmd(admin, "GET %s", old_key));
    fixture_expect_int(fixture_cmd(admin, "EXISTS %s", old_key), 0);
    log_verify(admin, &w);
    expect_proxy_healthy(&f->proxy);
    log_free(&w);
    load_close(&l);
    fixture_close(f, admin);
}

/* The error a command gets from the shard itself, asked directly. */
static char *direct_error(redisContext *shard, const char *fmt, const char *arg)
{
    redisReply *r = fixture_cmd(shard, fmt, arg);
    if (r->type != REDIS_REPLY_ERROR) {
        freeReplyObject(r);
        fail_msg("expected an error from the shard itself for \"%s\"", fmt);
    }
    char *text = strdup(r->str);
    freeReplyObject(r);
    assert_non_null(text);
    return text;
}

static void test_shard_oom_error_reaches_the_client_unchanged(void **state)
{
    fixture *f = *state;
    const int full = 0; /* s1 */
    const int other = 1;
    redisContext *c = fixture_client(f);
    tags t;
    find_tags(c, &t, FIXTURE_SHARDS);
    write_log w = {0};
    char key[64], other_key[64];
    snprintf(key, sizeof(key), "{%s}:oom:before", t.of[full]);
    snprintf(other_key, sizeof(other_key), "{%s}:oom:other", t.of[other]);
    fixture_expect_status(fixture_cmd(c, "SET %s %s", key, key), "OK");
    fixture_expect_status(fixture_cmd(c, "SET %s %s", other_key, other_key), "OK");
    log_add(&w, key, full);
    log_add(&w, other_key, other);

    redisContext *shard = fixture_shard(f, full);
    fixture_expect_status(fixture_cmd(shard, "CONFIG SET maxmemory-policy noeviction"), "OK");
    fixture_expect_status(fixture_cmd(shard, "CONFIG SET maxmemory 1"), "OK");
    char *oom = direct_error(shard, "SET oom:direct %s", "x");
    assert_true(strncmp(oom, "OOM ", 4) == 0);

    /* Through the proxy: the shard's own error, in order, and the
     * connection goes on. */
    redisAppendCommand(c, "SET {%s}:oom:new x", t.of[full]);
    redisAppendCommand(c, "GET %s", other_key);
    redisAppendCommand(c, "GET %s", key); /* reads are allowed when full */
    redisAppendCommand(c, "PING");
    redisReply *r = fixture_next_reply(c);
    assert_int_equal(r->type, REDIS_REPLY_ERROR);
    assert_string_equal(r->str, oom);
    freeReplyObject(r);
    fixture_expect_str(fixture_next_reply(c), other_key);
    fixture_expect_str(fixture_next_reply(c), key);
    fixture_expect_status(fixture_next_reply(c), "PONG");

    /* Half of an MSET refused: the reply names the shard and its error. */
    r = fixture_cmd(c, "MSET {%s}:oom:m1 v {%s}:oom:m2 v", t.of[other], t.of[full]);
    char want[512];
    snprintf(want, sizeof(want),
             "ERR partial write: 1 of 2 shards failed, keys on the other shards were written; "
             "first failure on shard s%d: %s",
             full + 1, oom);
    assert_int_equal(r->type, REDIS_REPLY_ERROR);
    assert_string_equal(r->str, want);
    freeReplyObject(r);
    fixture_expect_str(fixture_cmd(c, "GET {%s}:oom:m1", t.of[other]), "v");
    fixture_expect_nil(fixture_cmd(c, "GET {%s}:oom:m2", t.of[full]));

    fixture_expect_status(fixture_cmd(shard, "CONFIG SET maxmemory 0"), "OK");
    snprintf(key, sizeof(key), "{%s}:oom:after", t.of[full]);
    fixture_expect_status(fixture_cmd(c, "SET %s %s", key, key), "OK");
    log_add(&w, key, full);
    log_verify(c, &w);
    expect_proxy_healthy(&f->proxy);
    free(oom);
    log_free(&w);
    fixture_close(f, c);
}

static void test_shard_busy_script_error_reaches_the_client_unchanged(void **state)
{
    fixture *f = *state;
    const int busy = 3; /* s4 */
    const int other = 2;
    redisContext *c = fixture_client(f);
    tags t;
    find_tags(c, &t, FIXTURE_SHARDS);
    char key[64], other_key[64];
    snprintf(key, sizeof(key), "{%s}:busy", t.of[busy]);
    snprintf(other_key, sizeof(other_key), "{%s}:busy", t.of[other]);
    fixture_expect_status(fixture_cmd(c, "SET %s %s", key, key), "OK");
    fixture_expect_status(fixture_cmd(c, "SET %s %s", other_key, other_key), "OK");

    /* A script that never ends: after busy-reply-threshold the shard
     * answers every other command -BUSY. */
    redisContext *shard = fixture_shard(f, busy);
    fixture_expect_status(fixture_cmd(shard, "CONFIG SET busy-reply-threshold 100"), "OK");
    redisContext *script = harness_connect(f->shards[busy].port);
    assert_non_null(script);
    redisAppendCommand(script, "EVAL %s 0", "while true do end");
    flush_conn(script);
    /* Until the script runs past the threshold, the GET is answered (first
     * the script may not have arrived yet) or waits; then it is -BUSY. */
    char *busy_error = NULL;
    long long deadline = fixture_now_ms() + fixture_bound_ms(RECOVERY_DEADLINE_MS);
    while (busy_error == NULL) {
        redisReply *probe = fixture_cmd(shard, "GET %s", key);
        if (probe->type == REDIS_REPLY_ERROR) {
            busy_error = strdup(probe->str);
            assert_non_null(busy_error);
        }
        freeReplyObject(probe);
        if (busy_error == NULL) {
            assert_true(fixture_now_ms() < deadline);
            fixture_sleep_ms(20);
        }
    }
    assert_true(strncmp(busy_error, "BUSY ", 5) == 0);

    redisAppendCommand(c, "GET %s", key);
    redisAppendCommand(c, "GET %s", other_key);
    redisAppendCommand(c, "PING");
    long long start = fixture_now_ms();
    redisReply *r = fixture_next_reply(c);
    assert_int_equal(r->type, REDIS_REPLY_ERROR);
    assert_string_equal(r->str, busy_error);
    freeReplyObject(r);
    fixture_expect_str(fixture_next_reply(c), other_key);
    fixture_expect_status(fixture_next_reply(c), "PONG");
    /* Answered by the shard at once, not by the proxy's timeout. */
    assert_true(fixture_now_ms() - start < fixture_bound_ms(REQUEST_TIMEOUT_MS));

    fixture_expect_status(fixture_cmd(shard, "SCRIPT KILL"), "OK");
    r = fixture_next_reply(script);
    assert_int_equal(r->type, REDIS_REPLY_ERROR);
    freeReplyObject(r);
    redisFree(script);
    fixture_expect_status(fixture_cmd(shard, "CONFIG SET busy-reply-threshold 5000"), "OK");
    fixture_expect_str(fixture_cmd(c, "GET %s", key), key);
    expect_proxy_healthy(&f->proxy);
    free(busy_error);
    fixture_close(f, c);
}

/* ---- a runaway script sent through the proxy ---- */

/* The shard a keyless script runs on: script_default_shard is unset, so
 * the first one (s1). */
#define SCRIPT_SHARD 0

/* A runaway script's test: a client c, the script's caller (runner), a
 * direct connection to the script's shard, and one key on each shard. */
typedef struct runaway {
    redisContext *c;
    redisContext *runner;
    redisContext *shard;
    char key[FIXTURE_SHARDS][64]; /* "{tag of s}:runaway", value = name */
} runaway;

/* Writes the keys, then sends a script that never ends through the proxy
 * on runner (not read), and returns once the script's shard, asked
 * directly, answers -BUSY: it has run past busy-reply-threshold, set low
 * here because Redis takes SCRIPT KILL only from then on. */
static void runaway_start(fixture *f, runaway *ra)
{
    ra->c = fixture_client(f);
    tags t;
    find_tags(ra->c, &t, FIXTURE_SHARDS);
    for (int s = 0; s < FIXTURE_SHARDS; s++) {
        snprintf(ra->key[s], sizeof(ra->key[s]), "{%s}:runaway", t.of[s]);
        fixture_expect_status(fixture_cmd(ra->c, "SET %s %s", ra->key[s], ra->key[s]), "OK");
    }
    ra->shard = fixture_shard(f, SCRIPT_SHARD);
    fixture_expect_status(fixture_cmd(ra->shard, "CONFIG SET busy-reply-threshold 100"), "OK");
    ra->runner = fixture_client(f);
    redisAppendCommand(ra->runner, "EVAL %s 0", "while true do end");
    flush_conn(ra->runner);
    long long deadline = fixture_now_ms() + fixture_bound_ms(RECOVERY_DEADLINE_MS);
    for (;;) {
        redisReply *probe = fixture_cmd(ra->shard, "GET %s", ra->key[SCRIPT_SHARD]);
        int is_busy = probe->type == REDIS_REPLY_ERROR && strncmp(probe->str, "BUSY ", 5) == 0;
        freeReplyObject(probe);
        if (is_busy) {
            return;
        }
        assert_true(fixture_now_ms() < deadline);
        fixture_sleep_ms(10);
    }
}

/* The keys of the shards other than the script's read back through c,
 * each within the latency bound of a healthy shard. */
static void runaway_others_served(redisContext *c, char key[FIXTURE_SHARDS][64])
{
    for (int s = 0; s < FIXTURE_SHARDS; s++) {
        if (s == SCRIPT_SHARD) {
            continue;
        }
        long long start = fixture_now_ms();
        fixture_expect_str(fixture_cmd(c, "GET %s", key[s]), key[s]);
        assert_true(fixture_now_ms() - start < fixture_bound_ms(LIVE_LATENCY_MS));
    }
}

/* SCRIPT KILL through killer answers OK within a second (scaled). */
static void runaway_kill(redisContext *killer)
{
    long long start = fixture_now_ms();
    fixture_expect_status(fixture_cmd(killer, "SCRIPT KILL"), "OK");
    long long took = fixture_now_ms() - start;
    if (took > fixture_bound_ms(1000)) {
        fail_msg("SCRIPT KILL took %lld ms", took);
    }
}

/* After the kill: c reads the script shard's key again (once its shared
 * connection is back, if a timeout replaced it), no kill connection stays
 * open, and no script runs any more (SCRIPT KILL and FUNCTION KILL answer
 * NOTBUSY, every shard's answer). */
static void runaway_over(fixture *f, const runaway *ra)
{
    redisContext *c = ra->c;
    const char *key = ra->key[SCRIPT_SHARD];
    long long deadline = fixture_now_ms() + fixture_bound_ms(RECOVERY_DEADLINE_MS);
    for (;;) {
        redisReply *r = fixture_cmd(c, "GET %s", key);
        int served = r->type == REDIS_REPLY_STRING && strcmp(r->str, key) == 0;
        freeReplyObject(r);
        if (served) {
            break;
        }
        assert_true(fixture_now_ms() < deadline);
        fixture_sleep_ms(20);
    }
    for (int s = 0; s < FIXTURE_SHARDS; s++) {
        fixture_expect_str(fixture_cmd(ra->runner, "GET %s", ra->key[s]), ra->key[s]);
    }
    fixture_expect_error(fixture_cmd(c, "SCRIPT KILL"), "NOTBUSY");
    fixture_expect_error(fixture_cmd(c, "FUNCTION KILL"), "NOTBUSY");
    fixture_wait_reserved(c, 0);
    fixture_expect_status(fixture_cmd(ra->shard, "CONFIG SET busy-reply-threshold 5000"), "OK");
    expect_proxy_healthy(&f->proxy);
    fixture_close(f, ra->runner);
    fixture_close(f, c);
}

/* A script that never ends, sent through the proxy, runs on the shared
 * connection that carries every client's requests to its shard. SCRIPT
 * KILL through the proxy still reaches that shard at once (over a
 * connection of its own, not behind the script) and ends it; the other
 * shards serve throughout, and the script's shard serves everyone again. */
static void test_runaway_script_is_killed_through_the_proxy(void **state)
{
    fixture *f = *state;
    runaway ra;
    runaway_start(f, &ra);
    runaway_others_served(ra.c, ra.key);

    redisContext *killer = fixture_client(f);
    runaway_kill(killer);
    /* The caller learns its script was killed (or, on a machine slow enough
     * to reach request_timeout first, that its shard timed out). */
    redisReply *r = fixture_next_reply(ra.runner);
    assert_int_equal(r->type, REDIS_REPLY_ERROR);
    if (strstr(r->str, "Script killed") == NULL &&
        !is_shard_error(r, SCRIPT_SHARD, f->shards[SCRIPT_SHARD].port)) {
        fail_msg("the script's caller got \"%s\"", r->str);
    }
    freeReplyObject(r);

    runaway_over(f, &ra);
    fixture_close(f, killer);
}

/* While a script runs on a shard, what shares its shared connection waits
 * behind it; request_timeout fails all of it, the script's caller
 * included, and replaces the connection. The script runs on regardless:
 * requests over the new connection get the shard's -BUSY at once, until
 * SCRIPT KILL ends it. Other shards serve throughout. */
static void test_runaway_script_times_out_its_connection_then_busy_until_killed(void **state)
{
    fixture *f = *state;
    const int port = f->shards[SCRIPT_SHARD].port;
    runaway ra;
    runaway_start(f, &ra);
    redisContext *c = ra.c;
    const char *key = ra.key[SCRIPT_SHARD];

    /* backend_connections = 1: the GET is queued behind the script. */
    long long start = fixture_now_ms();
    redisReply *r = fixture_cmd(c, "GET %s", key);
    if (!is_shard_error(r, SCRIPT_SHARD, port) || strstr(r->str, " timeout") == NULL) {
        fail_msg("GET behind the script got \"%s\"", r->type == REDIS_REPLY_ERROR ? r->str : "?");
    }
    freeReplyObject(r);
    assert_true(fixture_now_ms() - start < fixture_bound_ms(ERROR_DEADLINE_MS));
    r = fixture_next_reply(ra.runner);
    assert_true(is_shard_error(r, SCRIPT_SHARD, port));
    freeReplyObject(r);
    runaway_others_served(c, ra.key);

    /* The replacement connection: "unavailable" while it reconnects, then
     * the shard's own -BUSY, at once. */
    long long deadline = fixture_now_ms() + fixture_bound_ms(RECOVERY_DEADLINE_MS);
    for (;;) {
        start = fixture_now_ms();
        r = fixture_cmd(c, "GET %s", key);
        int is_busy = r->type == REDIS_REPLY_ERROR && strncmp(r->str, "BUSY ", 5) == 0;
        if (!is_busy && !is_shard_error(r, SCRIPT_SHARD, port)) {
            fail_msg("GET while the script runs got \"%s\"",
                     r->type == REDIS_REPLY_ERROR ? r->str : "a reply");
        }
        freeReplyObject(r);
        if (is_busy) {
            break;
        }
        assert_true(fixture_now_ms() < deadline);
        fixture_sleep_ms(20);
    }
    assert_true(fixture_now_ms() - start < fixture_bound_ms(LIVE_LATENCY_MS));
    runaway_others_served(c, ra.key);

    runaway_kill(ra.runner);
    runaway_over(f, &ra);
}

static void test_half_an_mset_on_a_dead_shard_names_the_failure(void **state)
{
    fixture *f = *state;
    const int victim = 3; /* s4 */
    int ports[FIXTURE_SHARDS];
    fixture_ports(f, ports);
    redisContext *c = fixture_client(f);
    tags t;
    find_tags(c, &t, FIXTURE_SHARDS);
    load l;
    load_open(f, f->proxy.port, &l, &t);
    write_log w = {0};
    assert_int_equal(load_round(&l, ports, 0, &w), 0);
    assert_true(harness_proc_stop(&f->shards[victim], SIGKILL) != -1);

    /* Two keys per shard, in shard order. */
    char cmd[1024];
    size_t o = (size_t)snprintf(cmd, sizeof(cmd), "MSET");
    for (int k = 0; k < 2 * FIXTURE_SHARDS; k++) {
        o += (size_t)snprintf(cmd + o, sizeof(cmd) - o, " {%s}:mset:%d v%d", t.of[k % 4], k, k);
    }
    redisReply *r = fixture_cmd(c, cmd);
    char want[256];
    snprintf(want, sizeof(want),
             "ERR partial write: 1 of 4 shards failed, keys on the other shards were written; "
             "first failure on shard s%d: ERR shard s%d (127.0.0.1:%d) unavailable: ",
             victim + 1, victim + 1, ports[victim]);
    if (r->type != REDIS_REPLY_ERROR || strncmp(r->str, want, strlen(want)) != 0) {
        char text[512];
        fixture_reply_text(r, text, sizeof(text));
        freeReplyObject(r);
        fail_msg("MSET over a dead shard: expected \"%s...\", got \"%s\"", want, text);
    }
    freeReplyObject(r);
    /* As it says: the other shards' keys were written, the dead one's fail. */
    for (int k = 0; k < 2 * FIXTURE_SHARDS; k++) {
        r = fixture_cmd(c, "GET {%s}:mset:%d", t.of[k % 4], k);
        if (k % 4 == victim) {
            assert_true(is_shard_error(r, victim, ports[victim]));
            freeReplyObject(r);
        } else {
            char v[16];
            snprintf(v, sizeof(v), "v%d", k);
            fixture_expect_str(r, v);
        }
    }
    /* All of it on the dead shard: its error, not a partial write. */
    r = fixture_cmd(c, "MSET {%s}:a 1 {%s}:b 2", t.of[victim], t.of[victim]);
    assert_true(is_shard_error(r, victim, ports[victim]));
    freeReplyObject(r);
    /* None of it: written. */
    fixture_expect_status(fixture_cmd(c, "MSET {%s}:a 1 {%s}:b 2", t.of[0], t.of[1]), "OK");
    /* The other multi-key commands answer the first shard error. */
    r = fixture_cmd(c, "MGET {%s}:mset:0 {%s}:mset:%d", t.of[0], t.of[victim], victim);
    if (r->type == REDIS_REPLY_ARRAY) {
        fixture_expect_array(r, 2);
        assert_int_equal(r->element[1]->type, REDIS_REPLY_ERROR);
        freeReplyObject(r);
    } else {
        assert_true(is_shard_error(r, victim, ports[victim]));
        freeReplyObject(r);
    }
    r = fixture_cmd(c, "EXISTS {%s}:mset:0 {%s}:mset:%d", t.of[0], t.of[victim], victim);
    assert_true(is_shard_error(r, victim, ports[victim]));
    freeReplyObject(r);

    log_forget_shard(&w, victim);
    assert_int_equal(harness_redis_restart(&f->shards[victim]), 0);
    load_until_clean(&l, ports, 1u << victim, &w);
    log_verify(c, &w);
    expect_proxy_healthy(&f->proxy);
    log_free(&w);
    load_close(&l);
    fixture_close(f, c);
}

/* ---- a reload storm under load ---- */

/* Rewrites the proxy's config with request_timeout set to ms, the way an
 * editor saves (a new file renamed over the old one). */
static void write_config(const fixture *f, int ms)
{
    char path[400], tmp[420];
    snprintf(path, sizeof(path), "%s/proxy.ini", f->proxy.dir);
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    char *ini = harness_ini(f->shards, FIXTURE_SHARDS, proxy_lines(ms));
    assert_non_null(ini);
    /* harness_ini leaves %PORT% for the listen port. */
    const char *at = strstr(ini, "%PORT%");
    assert_non_null(at);
    FILE *out = fopen(tmp, "w");
    assert_non_null(out);
    fprintf(out, "%.*s%d%s", (int)(at - ini), ini, f->proxy.port, at + 6);
    free(ini);
    assert_int_equal(fclose(out), 0);
    assert_int_equal(rename(tmp, path), 0);
}

/* Starts redis-benchmark against the proxy, output into a file; returns
 * its pid. */
static pid_t start_benchmark(int port, const char *out_path)
{
    char p[16];
    snprintf(p, sizeof(p), "%d", port);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd == -1) {
            _exit(127);
        }
        dup2(fd, STDOUT_FILENO);
        dup2(fd, STDERR_FILENO);
        char *argv[] = {"redis-benchmark",
                        "-h",
                        "127.0.0.1",
                        "-p",
                        p,
                        "-n",
                        "60000",
                        "-c",
                        "8",
                        "-P",
                        "4",
                        "-t",
                        "set,get,incr,lpush,mset",
                        "-q",
                        NULL};
        execvp(argv[0], argv);
        _exit(127);
    }
    return pid;
}

static void test_reload_storm_under_load(void **state)
{
    fixture *f = *state;
    int ports[FIXTURE_SHARDS];
    fixture_ports(f, ports);
    redisContext *admin = fixture_client(f);
    tags t;
    find_tags(admin, &t, FIXTURE_SHARDS);
    load l;
    load_open(f, f->proxy.port, &l, &t);
    write_log w = {0};
    long long epoch_before = fixture_info_int(admin, "config_epoch");
    char bench_out[400];
    snprintf(bench_out, sizeof(bench_out), "%s/benchmark.out", f->proxy.dir);
    long long clients_before = fixture_info_int(admin, "connected_clients");
    pid_t bench = start_benchmark(f->proxy.port, bench_out);
    /* The storm starts once the benchmark's 8 connections are in. */
    fixture_wait_info_at_least(admin, "connected_clients", clients_before + 8);

    /* 100 reloads in about a second: PROXY RELOAD and SIGHUP in turn, the
     * file rewritten every tenth time (noticed by watch_config), and the
     * test's own load in between. */
    const int reloads = 100;
    long long start = fixture_now_ms();
    for (int i = 0; i < reloads; i++) {
        if (i % 10 == 0) {
            write_config(f, i % 20 == 0 ? REQUEST_TIMEOUT_MS + 100 : REQUEST_TIMEOUT_MS);
        }
        if (i % 2 == 0) {
            fixture_expect_status(fixture_cmd(admin, "PROXY RELOAD"), "OK");
        } else {
            assert_int_equal(kill(f->proxy.pid, SIGHUP), 0);
        }
        if (i % 5 == 0) {
            assert_int_equal(load_round(&l, ports, 0, &w), 0);
        }
        fixture_sleep_ms(5);
    }
    long long storm_ms = fixture_now_ms() - start;
    write_config(f, REQUEST_TIMEOUT_MS);

    /* The benchmark finishes without a single error. */
    int status = -1;
    long long deadline = fixture_now_ms() + fixture_bound_ms(60000);
    while (waitpid(bench, &status, WNOHANG) == 0) {
        if (fixture_now_ms() > deadline) {
            kill(bench, SIGKILL);
            waitpid(bench, &status, 0);
            fail_msg("redis-benchmark did not finish");
        }
        assert_int_equal(load_round(&l, ports, 0, &w), 0);
        fixture_sleep_ms(20);
    }
    FILE *in = fopen(bench_out, "r");
    assert_non_null(in);
    static char out[65536];
    size_t n = fread(out, 1, sizeof(out) - 1, in);
    out[n] = '\0';
    fclose(in);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || strstr(out, "rror") != NULL) {
        fail_msg("redis-benchmark during the reload storm (status %#x):\n%s", (unsigned)status,
                 out);
    }
    if (storm_ms > fixture_bound_ms(5000)) {
        fail_msg("100 reloads took %lld ms", storm_ms);
    }
    /* Every PROXY RELOAD was applied; signals sent close together may be
     * delivered once. */
    long long epoch = fixture_info_int(admin, "config_epoch");
    if (epoch < epoch_before + reloads / 2 + 1) {
        fail_msg("config_epoch went from %lld to %lld over %d reloads", epoch_before, epoch,
                 reloads);
    }
    redisReply *r = fixture_cmd(admin, "INFO server");
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    assert_non_null(strstr(r->str, "last_reload_error:none\r\n"));
    freeReplyObject(r);
    log_verify(admin, &w);
    expect_proxy_healthy(&f->proxy);
    log_free(&w);
    load_close(&l);
    fixture_close(f, admin);
}

/* ---- a fake shard: -LOADING, -BUSY, -OOM, a reply cut short, slow or stalled ---- */

typedef struct fake_setup {
    harness_proc shards[3]; /* s1, s2: redis-server; s3: the fake (port only) */
    fake_shard fake;
    harness_proc proxy;
    tags tags;
    /* What the running test holds, freed by fake_setup_stop also when an
     * assertion fails first. */
    redisContext *conn[2];
    char *buf;
} fake_setup;

/* Frees the connections and buffer the test holds. */
static void fake_release(fake_setup *s)
{
    for (int i = 0; i < 2; i++) {
        if (s->conn[i] != NULL) {
            redisFree(s->conn[i]);
            s->conn[i] = NULL;
        }
    }
    free(s->buf);
    s->buf = NULL;
}

/* Starts the fake setup with the proxy's request_timeout at ms. */
static int fake_start_with(void **state, long long ms)
{
    fake_setup *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        return -1;
    }
    *state = s;
    if (harness_redis_start(&s->shards[0]) == -1 || harness_redis_start(&s->shards[1]) == -1 ||
        fake_shard_start(&s->fake) == -1) {
        return -1;
    }
    s->shards[2].port = s->fake.port;
    char *ini = harness_ini(s->shards, 3, proxy_lines((int)ms));
    if (ini == NULL) {
        return -1;
    }
    int rc = harness_ringproxy_start(&s->proxy, ini);
    free(ini);
    return rc;
}

/* For the tests of request_timeout itself: 500 ms against the fake's
 * pauses of 25 to 100 ms. */
static int fake_setup_start(void **state)
{
    return fake_start_with(state, REQUEST_TIMEOUT_MS);
}

/* For the tests of what a shard answers or how it fails, which wait on
 * the fake without timing it: a request_timeout scaled like every other
 * bound, so that a starved fake (a busy machine, ASan) is not taken for a
 * stalled one. */
static int fake_setup_start_scaled(void **state)
{
    return fake_start_with(state, fixture_bound_ms(REQUEST_TIMEOUT_MS));
}

/* For a test of request_timeout that must also run with the proxy under
 * valgrind (HARNESS_TIMEOUT_SCALE=10 there), where the proxy itself is tens
 * of times slower than the fake's pace: 500 ms times that variable only, so
 * an ordinary run still checks the 500 ms. */
static int fake_setup_start_tool_scaled(void **state)
{
    const char *text = getenv("HARNESS_TIMEOUT_SCALE");
    long long scale = text != NULL && atoll(text) > 1 ? atoll(text) : 1;
    return fake_start_with(state, REQUEST_TIMEOUT_MS * scale);
}

static int fake_setup_stop(void **state)
{
    fake_setup *s = *state;
    int rc = 0;
    if (s == NULL) {
        return -1;
    }
    if (s->proxy.pid != 0) {
        int status = harness_proc_stop(&s->proxy, SIGTERM);
        rc = status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
    }
    fake_release(s);
    fake_shard_stop(&s->fake);
    for (int i = 0; i < 2; i++) {
        if (s->shards[i].pid != 0) {
            harness_proc_stop(&s->shards[i], SIGTERM);
        }
    }
    free(s);
    return rc;
}

static void test_loading_busy_oom_from_a_shard_reach_the_client(void **state)
{
    fake_setup *s = *state;
    redisContext *c = s->conn[0] = harness_connect(s->proxy.port);
    assert_non_null(c);
    find_tags(c, &s->tags, 3);
    const char *fake = s->tags.of[2], *real = s->tags.of[0];
    fixture_expect_status(fixture_cmd(c, "SET {%s}:k v", real), "OK");

    /* Each error as the shard sent it, in order with the other replies. */
    redisAppendCommand(c, "GET loading:{%s}", fake);
    redisAppendCommand(c, "GET {%s}:k", real);
    redisAppendCommand(c, "SET busy:{%s} x", fake);
    redisAppendCommand(c, "SET oom:{%s} x", fake);
    redisAppendCommand(c, "GET ok:{%s}", fake);
    redisAppendCommand(c, "PING");
    fixture_expect_error(fixture_next_reply(c), FAKE_LOADING);
    fixture_expect_str(fixture_next_reply(c), "v");
    fixture_expect_error(fixture_next_reply(c), FAKE_BUSY);
    fixture_expect_error(fixture_next_reply(c), FAKE_OOM);
    char ok[64];
    snprintf(ok, sizeof(ok), "ok:{%s}", fake);
    fixture_expect_str(fixture_next_reply(c), ok);
    fixture_expect_status(fixture_next_reply(c), "PONG");

    /* Split commands: the shard's error for the part it refused. */
    redisReply *r = fixture_cmd(c, "MSET {%s}:m 1 oom:{%s} 2", real, fake);
    char want[512];
    snprintf(want, sizeof(want),
             "ERR partial write: 1 of 2 shards failed, keys on the other shards were written; "
             "first failure on shard s3: %s",
             FAKE_OOM);
    assert_int_equal(r->type, REDIS_REPLY_ERROR);
    assert_string_equal(r->str, want);
    freeReplyObject(r);
    fixture_expect_str(fixture_cmd(c, "GET {%s}:m", real), "1");
    fixture_expect_error(fixture_cmd(c, "MGET {%s}:k loading:{%s}", real, fake), FAKE_LOADING);
    fixture_expect_error(fixture_cmd(c, "DEL {%s}:x busy:{%s}", real, fake), FAKE_BUSY);
    expect_proxy_healthy(&s->proxy);
    fake_release(s);
}

static void test_backend_closing_mid_reply_fails_inflight_then_reconnects(void **state)
{
    fake_setup *s = *state;
    redisContext *c = s->conn[0] = harness_connect(s->proxy.port);
    assert_non_null(c);
    redisContext *other = s->conn[1] = harness_connect(s->proxy.port);
    assert_non_null(other);
    find_tags(c, &s->tags, 3);
    const char *fake = s->tags.of[2], *real = s->tags.of[1];
    fixture_expect_status(fixture_cmd(c, "SET {%s}:k v", real), "OK");
    char ok[64], ok2[64], prefix[64];
    snprintf(ok, sizeof(ok), "ok:{%s}", fake);
    snprintf(ok2, sizeof(ok2), "ok2:{%s}", fake);
    snprintf(prefix, sizeof(prefix), "ERR shard s3 (127.0.0.1:%d) unavailable: ", s->fake.port);

    for (int round = 0; round < 3; round++) {
        /* The fake answers the first, sends half of the second's bulk and
         * closes: the second and the third (sent on the same connection)
         * fail; the other shard's reply keeps its place. */
        redisAppendCommand(c, "GET %s", ok);
        redisAppendCommand(c, "GET half:{%s}", fake);
        redisAppendCommand(c, "GET %s", ok2);
        redisAppendCommand(c, "GET {%s}:k", real);
        fixture_expect_str(fixture_next_reply(c), ok);
        fixture_expect_error(fixture_next_reply(c), prefix);
        redisReply *r = fixture_next_reply(c);
        if (r->type == REDIS_REPLY_STRING) {
            fixture_expect_str(r, ok2); /* the proxy had reconnected already */
        } else {
            fixture_expect_error(r, prefix);
        }
        fixture_expect_str(fixture_next_reply(c), "v");
        /* Another client of the other shards never notices. */
        fixture_expect_str(fixture_cmd(other, "GET {%s}:k", real), "v");

        /* The proxy reconnects: the fake's keys work again. */
        long long deadline = fixture_now_ms() + fixture_bound_ms(RECOVERY_DEADLINE_MS);
        for (;;) {
            r = fixture_cmd(c, "GET %s", ok);
            if (r->type == REDIS_REPLY_STRING) {
                fixture_expect_str(r, ok);
                break;
            }
            fixture_expect_error(r, prefix);
            assert_true(fixture_now_ms() < deadline);
            fixture_sleep_ms(20);
        }
    }
    /* A reply that is no RESP at all: the same, with the reason logged. */
    fixture_expect_error(fixture_cmd(c, "GET garbage:{%s}", fake), prefix);
    fixture_expect_str(fixture_cmd(c, "GET {%s}:k", real), "v");
    fixture_wait_log(&s->proxy, "bad reply from shard");
    expect_proxy_healthy(&s->proxy);
    fake_release(s);
}

/* The timeouts=N of a shard's line in INFO shards; fails the test if absent. */
static long long shard_timeouts(redisContext *c, const char *name)
{
    redisReply *r = fixture_cmd(c, "INFO shards");
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    char line[64];
    snprintf(line, sizeof(line), "shard_%s:", name);
    const char *p = strstr(r->str, line);
    const char *field = p != NULL ? strstr(p, "timeouts=") : NULL;
    if (field == NULL) {
        fail_msg("no timeouts for %s in INFO shards: %s", name, r->str);
    }
    long long n = atoll(field + strlen("timeouts="));
    freeReplyObject(r);
    return n;
}

/* A context whose reads wait long enough for replies that take seconds. */
static redisContext *patient_client(int port)
{
    redisContext *c = harness_connect(port);
    assert_non_null(c);
    struct timeval tv = {(time_t)fixture_bound_ms(10000) / 1000, 0};
    assert_int_equal(redisSetTimeout(c, tv), REDIS_OK);
    return c;
}

/* request_timeout counts the time without progress, not the time since a
 * request was queued: a 2 MiB reply that takes 1.5 s to arrive, in pieces
 * 100 ms apart, is no timeout at 500 ms, nor is the one behind it on the
 * same connection, which waits for the first before it can start. */
static void test_slow_streaming_reply_is_not_a_timeout(void **state)
{
    fake_setup *s = *state;
    redisContext *c = s->conn[0] = patient_client(s->proxy.port);
    find_tags(c, &s->tags, 3);
    const char *fake = s->tags.of[2];
    long long timeouts_before = fixture_info_int(c, "errors_shard_timeout");
    char *want = s->buf = malloc(FAKE_SLOW_BULK);
    assert_non_null(want);
    for (size_t i = 0; i < FAKE_SLOW_BULK; i++) {
        want[i] = (char)('a' + i % 26);
    }
    char ok[64];
    snprintf(ok, sizeof(ok), "ok:{%s}", fake);

    long long start = fixture_now_ms();
    redisAppendCommand(c, "GET slow:{%s}:1", fake);
    redisAppendCommand(c, "GET slow:{%s}:2", fake);
    redisAppendCommand(c, "GET %s", ok);
    fixture_expect_bin(fixture_next_reply(c), want, FAKE_SLOW_BULK);
    fixture_expect_bin(fixture_next_reply(c), want, FAKE_SLOW_BULK);
    fixture_expect_str(fixture_next_reply(c), ok);
    long long took = fixture_now_ms() - start;
    /* The replies really were slow: each far longer than the timeout. */
    long long slowest = 2LL * (FAKE_SLOW_CHUNKS - 1) * FAKE_SLOW_GAP_MS;
    if (took < slowest) {
        fail_msg("two slow replies took %lld ms, expected at least %lld", took, slowest);
    }
    assert_int_equal(shard_timeouts(c, "s3"), 0);
    assert_int_equal(fixture_info_int(c, "errors_shard_timeout"), timeouts_before);
    assert_false(fixture_log_contains(&s->proxy, "timeout"));
    expect_proxy_healthy(&s->proxy);
    fake_release(s);
}

/* The value of the big requests the fake shard reads slowly (32 MiB). */
static char *slow_read_value(size_t size)
{
    char *value = malloc(size);
    assert_non_null(value);
    memset(value, 'v', size);
    return value;
}

/* Writing a request counts as progress too while the shard takes its bytes:
 * a SET of 32 MiB that the shard reads at 40 MiB/s (0.8 s) is no timeout. */
static void test_slowly_read_request_is_not_a_timeout(void **state)
{
    fake_setup *s = *state;
    redisContext *c = s->conn[0] = patient_client(s->proxy.port);
    find_tags(c, &s->tags, 3);
    const char *fake = s->tags.of[2];
    size_t size = 32 * 1024 * 1024;
    char *value = s->buf = slow_read_value(size);
    char key[64], ok[64];
    snprintf(key, sizeof(key), "slowread:{%s}", fake);
    snprintf(ok, sizeof(ok), "ok:{%s}", fake);

    long long start = fixture_now_ms();
    redisAppendCommand(c, "SET %s %b", key, value, size);
    redisAppendCommand(c, "GET %s", ok);
    fixture_expect_status(fixture_next_reply(c), "OK");
    fixture_expect_str(fixture_next_reply(c), ok);
    long long took = fixture_now_ms() - start;
    long long slowest = (long long)(size / FAKE_SLOW_READ_CHUNK - 1) * FAKE_SLOW_READ_GAP_MS;
    if (took < slowest) {
        fail_msg("the slowly read SET took %lld ms, expected at least %lld", took, slowest);
    }
    assert_int_equal(shard_timeouts(c, "s3"), 0);
    assert_false(fixture_log_contains(&s->proxy, "timeout"));
    fake_release(s);
}

/* A shard that sends part of a reply and then nothing: the request (and
 * the one queued behind it on that connection) times out request_timeout
 * after the last bytes, and the connection is replaced. */
static void test_reply_stalling_half_way_times_out_then_recovers(void **state)
{
    fake_setup *s = *state;
    redisContext *c = s->conn[0] = patient_client(s->proxy.port);
    find_tags(c, &s->tags, 3);
    const char *fake = s->tags.of[2];
    char ok[64], want[64];
    snprintf(ok, sizeof(ok), "ok:{%s}", fake);
    snprintf(want, sizeof(want), "ERR shard s3 (127.0.0.1:%d) timeout", s->fake.port);
    fixture_expect_str(fixture_cmd(c, "GET %s", ok), ok);
    long long timeouts_before = shard_timeouts(c, "s3");

    long long start = fixture_now_ms();
    redisAppendCommand(c, "GET stall:{%s}", fake);
    redisAppendCommand(c, "GET %s", ok);
    redisReply *stalled = fixture_next_reply(c);
    long long took = fixture_now_ms() - start;
    redisReply *behind = fixture_next_reply(c);
    assert_int_equal(stalled->type, REDIS_REPLY_ERROR);
    assert_string_equal(stalled->str, want);
    assert_int_equal(behind->type, REDIS_REPLY_ERROR);
    assert_string_equal(behind->str, want);
    freeReplyObject(stalled);
    freeReplyObject(behind);
    if (took < REQUEST_TIMEOUT_MS - 100 || took > fixture_bound_ms(3000)) {
        fail_msg("the stalled reply timed out after %lld ms (timeout %d ms)", took,
                 REQUEST_TIMEOUT_MS);
    }
    assert_int_equal(shard_timeouts(c, "s3"), timeouts_before + 2);

    /* The proxy reconnects: the fake's keys work again. */
    long long deadline = fixture_now_ms() + fixture_bound_ms(RECOVERY_DEADLINE_MS);
    for (;;) {
        redisReply *r = fixture_cmd(c, "GET %s", ok);
        if (r->type == REDIS_REPLY_STRING) {
            fixture_expect_str(r, ok);
            break;
        }
        fixture_expect_error(r, "ERR shard s3 ");
        assert_true(fixture_now_ms() < deadline);
        fixture_sleep_ms(20);
    }
    expect_proxy_healthy(&s->proxy);
    fake_release(s);
}

/* Only the head request's own bytes going out count as progress: while a
 * stalled shard keeps taking the 32 MiB of a request queued behind (1.6 s
 * at its pace), the stalled one still times out after request_timeout. */
static void test_later_requests_going_out_do_not_hold_off_a_timeout(void **state)
{
    fake_setup *s = *state;
    redisContext *c = s->conn[0] = patient_client(s->proxy.port);
    find_tags(c, &s->tags, 3);
    const char *fake = s->tags.of[2];
    size_t size = 32 * 1024 * 1024;
    char *value = s->buf = slow_read_value(size);
    char want[64];
    snprintf(want, sizeof(want), "ERR shard s3 (127.0.0.1:%d) timeout", s->fake.port);

    long long start = fixture_now_ms();
    redisAppendCommand(c, "GET stall:{%s}", fake);
    redisAppendCommand(c, "SET big:{%s} %b", fake, value, size);
    redisReply *stalled = fixture_next_reply(c);
    long long took = fixture_now_ms() - start;
    redisReply *behind = fixture_next_reply(c);
    assert_int_equal(stalled->type, REDIS_REPLY_ERROR);
    assert_string_equal(stalled->str, want);
    assert_int_equal(behind->type, REDIS_REPLY_ERROR);
    assert_string_equal(behind->str, want);
    freeReplyObject(stalled);
    freeReplyObject(behind);
    long long taking = (long long)(size / FAKE_SLOW_READ_CHUNK) * FAKE_SILENT_READ_GAP_MS;
    if (took < REQUEST_TIMEOUT_MS - 100 || took > fixture_bound_ms(REQUEST_TIMEOUT_MS + 700)) {
        fail_msg("the stalled request timed out after %lld ms (timeout %d ms; the request "
                 "behind it takes %lld ms to go out)",
                 took, REQUEST_TIMEOUT_MS, taking);
    }
    fake_release(s);
}

int main(void)
{
    const struct CMUnitTest shard_tests[] = {
        cmocka_unit_test_teardown(test_shard_killed_under_load_then_restarted_empty,
                                  shards_back_to_normal),
        cmocka_unit_test_teardown(test_shard_stopped_times_out_and_others_unaffected,
                                  shards_back_to_normal),
        cmocka_unit_test_teardown(test_shard_restarted_empty_gives_misses_not_errors,
                                  shards_back_to_normal),
        cmocka_unit_test_teardown(test_shard_oom_error_reaches_the_client_unchanged,
                                  shards_back_to_normal),
        cmocka_unit_test_teardown(test_shard_busy_script_error_reaches_the_client_unchanged,
                                  shards_back_to_normal),
        cmocka_unit_test_teardown(test_runaway_script_is_killed_through_the_proxy,
                                  shards_back_to_normal),
        cmocka_unit_test_teardown(
            test_runaway_script_times_out_its_connection_then_busy_until_killed,
            shards_back_to_normal),
        cmocka_unit_test_teardown(test_half_an_mset_on_a_dead_shard_names_the_failure,
                                  shards_back_to_normal),
        cmocka_unit_test_teardown(test_reload_storm_under_load, shards_back_to_normal),
    };
    const struct CMUnitTest fake_tests[] = {
        cmocka_unit_test_setup_teardown(test_loading_busy_oom_from_a_shard_reach_the_client,
                                        fake_setup_start_scaled, fake_setup_stop),
        cmocka_unit_test_setup_teardown(
            test_backend_closing_mid_reply_fails_inflight_then_reconnects, fake_setup_start_scaled,
            fake_setup_stop),
        cmocka_unit_test_setup_teardown(test_slow_streaming_reply_is_not_a_timeout,
                                        fake_setup_start, fake_setup_stop),
        cmocka_unit_test_setup_teardown(test_slowly_read_request_is_not_a_timeout,
                                        fake_setup_start_tool_scaled, fake_setup_stop),
        cmocka_unit_test_setup_teardown(test_reply_stalling_half_way_times_out_then_recovers,
                                        fake_setup_start, fake_setup_stop),
        cmocka_unit_test_setup_teardown(test_later_requests_going_out_do_not_hold_off_a_timeout,
                                        fake_setup_start, fake_setup_stop),
    };
    int failed = cmocka_run_group_tests(shard_tests, group_setup, group_teardown);
    failed += cmocka_run_group_tests(fake_tests, NULL, NULL);
    return failed;
}
