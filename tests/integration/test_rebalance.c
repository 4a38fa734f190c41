/* Online rebalancing, end to end: real redis-server shards behind ringproxy,
 * the shard list edited in proxy.ini and reloaded (PROXY RELOAD, SIGHUP, or
 * the file changing on disk), then every key checked through the proxy and on
 * the shards directly. What each test holds the proxy to is listed in
 * docs/semantics.md ("Rebalancing"): no acknowledged write lost, a key on
 * exactly one shard, no false miss, TTLs kept, a removed shard drained, a
 * killed proxy resuming. */
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

#include "config/config.h"
#include "fixture.h"
#include "ring/hash.h"
#include "ring/ring.h"

/* Keys of the data set most tests move: a quarter of them is hundreds of
 * MIGRATE batches, and the whole file still runs in well under a minute. */
#define DATASET_KEYS 20000
/* A smaller data set for the tests that slow the mover down on purpose. */
#define SLOW_DATASET_KEYS 12000
/* Commands per pipelined round trip when writing or checking keys. */
#define PIPELINE 900
/* A migration taking longer than this in a test counts as stuck (times
 * $HARNESS_TIMEOUT_SCALE, for runs under a slow tool). */
#define REBALANCE_TIMEOUT_MS 30000
/* How far a TTL may drift across a move (the issue's ±2 s). */
#define TTL_SLACK_S 2
/* How often INFO is polled while waiting for a migration. */
#define POLL_MS 20

static long long timeout_ms(void)
{
    return (long long)REBALANCE_TIMEOUT_MS * harness_timeout_scale();
}

/* Shard indexes of the fixture (s1..s4). */
enum { S1, S2, S3, S4 };

/* ---- a test's fixture, stopped even when the test fails ---- */

/* Set by a test that reached its end; the teardown shows the proxy's log
 * when it is not. */
static int test_passed;

static fixture *start(void **state, const char *extra_proxy_lines, size_t nshards_in_ini)
{
    test_passed = 0;
    fixture *f = fixture_start_some(extra_proxy_lines, nshards_in_ini);
    assert_non_null(f);
    *state = f;
    return f;
}

/* Ends and frees the writers of a test, if it started any. */
static void writers_free(void);

static int stop(void **state)
{
    fixture *f = *state;
    *state = NULL;
    if (f == NULL) {
        return 0;
    }
    if (!test_passed && f->proxy.pid != 0) {
        harness_dump_log(&f->proxy, 6000);
    }
    writers_free();
    return fixture_stop(f);
}

/* ---- keys ---- */

/* n key names "<prefix>:<i>", malloc'd. */
static char **make_keys(const char *prefix, size_t n)
{
    char **keys = calloc(n, sizeof(*keys));
    assert_non_null(keys);
    for (size_t i = 0; i < n; i++) {
        char name[128];
        snprintf(name, sizeof(name), "%s:%zu", prefix, i);
        keys[i] = strdup(name);
        assert_non_null(keys[i]);
    }
    return keys;
}

static void free_keys(char **keys, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(keys[i]);
    }
    free(keys);
}

/* Shard index named by a PROXY RING reply [name, "host:port"]; the address
 * is copied to addr when addr is not NULL. */
static int ring_reply_owner(const redisReply *r, char *addr, size_t cap)
{
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_STRING) {
        char text[300];
        fixture_reply_text(r, text, sizeof(text));
        fail_msg("PROXY RING: expected [name, address], got type %d: %s", r->type, text);
    }
    int n = 0;
    if (sscanf(r->element[0]->str, "s%d", &n) != 1 || n < 1 || n > FIXTURE_SHARDS) {
        fail_msg("PROXY RING named an unknown shard '%s'", r->element[0]->str);
    }
    if (addr != NULL) {
        snprintf(addr, cap, "%s", r->element[1]->str);
    }
    return n - 1;
}

/* The owner (shard index) of every key as PROXY RING tells, pipelined. */
static void owners_of(redisContext *c, char **keys, size_t n, int *owner)
{
    for (size_t done = 0; done < n;) {
        size_t batch = n - done < PIPELINE ? n - done : PIPELINE;
        for (size_t i = 0; i < batch; i++) {
            redisAppendCommand(c, "PROXY RING %s", keys[done + i]);
        }
        for (size_t i = 0; i < batch; i++) {
            redisReply *r = fixture_next_reply(c);
            owner[done + i] = ring_reply_owner(r, NULL, 0);
            freeReplyObject(r);
        }
        done += batch;
    }
}

/* Bit s of holders[i] set when shard s has keys[i] (EXISTS asked on the
 * shard directly, pipelined). Shards whose bit is clear in skip are not
 * asked (a stopped one). */
static void holders_of(fixture *f, char **keys, size_t n, unsigned *holders, unsigned skip)
{
    memset(holders, 0, n * sizeof(*holders));
    for (int s = 0; s < FIXTURE_SHARDS; s++) {
        if (skip & (1u << s)) {
            continue;
        }
        redisContext *d = fixture_shard(f, s);
        for (size_t done = 0; done < n;) {
            size_t batch = n - done < PIPELINE ? n - done : PIPELINE;
            for (size_t i = 0; i < batch; i++) {
                redisAppendCommand(d, "EXISTS %s", keys[done + i]);
            }
            for (size_t i = 0; i < batch; i++) {
                redisReply *r = fixture_next_reply(d);
                assert_int_equal(r->type, REDIS_REPLY_INTEGER);
                if (r->integer == 1) {
                    holders[done + i] |= 1u << s;
                }
                freeReplyObject(r);
            }
            done += batch;
        }
    }
}

/* Every key is on exactly the shard that PROXY RING names, and on no other
 * (asked on each shard directly). Fills owner[] when it is not NULL. */
static void expect_each_key_on_its_owner_only(fixture *f, redisContext *c, char **keys, size_t n,
                                              int *owner)
{
    int *own = owner != NULL ? owner : calloc(n, sizeof(*own));
    unsigned *holders = calloc(n, sizeof(*holders));
    assert_true(own != NULL && holders != NULL);
    owners_of(c, keys, n, own);
    holders_of(f, keys, n, holders, 0);
    for (size_t i = 0; i < n; i++) {
        if (holders[i] != 1u << own[i]) {
            fail_msg("key %s: owner is s%d but the shards holding it are mask %#x "
                     "(bit 0 = s1)",
                     keys[i], own[i] + 1, holders[i]);
        }
    }
    free(holders);
    if (own != owner) {
        free(own);
    }
}

static long long shard_dbsize(fixture *f, int s)
{
    redisReply *r = fixture_cmd(fixture_shard(f, s), "DBSIZE");
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    long long n = r->integer;
    freeReplyObject(r);
    return n;
}

/* ---- the data set: every type, every third group of keys with a TTL ---- */

typedef enum value_type {
    VT_STRING,
    VT_HASH,
    VT_LIST,
    VT_SET,
    VT_ZSET,
    VT_STREAM,
    VT_COUNT,
} value_type;

static const char *const type_names[VT_COUNT] = {"string", "hash", "list", "set", "zset", "stream"};

typedef struct dataset {
    char **keys;
    size_t n;
    long long written_from_ms; /* when the first write was sent */
    long long written_to_ms;   /* when the last one was acknowledged */
} dataset;

static value_type type_of(size_t i)
{
    return (value_type)(i % VT_COUNT);
}

/* TTL given to key i in seconds, -1 for none: one group of VT_COUNT keys in
 * three expires (so every type has keys with and without one), long after
 * the test is over. */
static long long ttl_of(size_t i)
{
    return (i / VT_COUNT) % 3 == 0 ? 600 + (long long)(i % 600) : -1;
}

/* Appends the command writing key i (and its EXPIRE); returns how many. */
static int append_write(redisContext *c, const char *key, size_t i)
{
    unsigned long long n = i; /* hiredis's format has no %zu */
    switch (type_of(i)) {
    case VT_STRING:
        redisAppendCommand(c, "SET %s v%llu-payload", key, n);
        break;
    case VT_HASH:
        redisAppendCommand(c, "HSET %s f1 h%llu-1 f2 h%llu-2", key, n, n);
        break;
    case VT_LIST:
        redisAppendCommand(c, "RPUSH %s l%llu-0 l%llu-1 l%llu-2", key, n, n, n);
        break;
    case VT_SET:
        redisAppendCommand(c, "SADD %s m%llu-a m%llu-b", key, n, n);
        break;
    case VT_ZSET:
        redisAppendCommand(c, "ZADD %s 1 z%llu-a 2.5 z%llu-b", key, n, n);
        break;
    case VT_STREAM:
        redisAppendCommand(c, "XADD %s 1-1 f x%llu", key, n);
        break;
    case VT_COUNT:
        fail_msg("bad type");
    }
    if (ttl_of(i) > 0) {
        redisAppendCommand(c, "EXPIRE %s %lld", key, ttl_of(i));
        return 2;
    }
    return 1;
}

/* Writes n keys "<prefix>:<i>" through the proxy, pipelined. */
static dataset dataset_write(redisContext *c, const char *prefix, size_t n)
{
    dataset d = {.keys = make_keys(prefix, n), .n = n};
    d.written_from_ms = fixture_now_ms();
    for (size_t done = 0; done < n;) {
        size_t batch = n - done < PIPELINE ? n - done : PIPELINE;
        int replies = 0;
        for (size_t i = done; i < done + batch; i++) {
            replies += append_write(c, d.keys[i], i);
        }
        for (int i = 0; i < replies; i++) {
            redisReply *r = fixture_next_reply(c);
            if (r->type == REDIS_REPLY_ERROR) {
                fail_msg("writing the data set: %s", r->str);
            }
            freeReplyObject(r);
        }
        done += batch;
    }
    d.written_to_ms = fixture_now_ms();
    return d;
}

static void dataset_free(dataset *d)
{
    free_keys(d->keys, d->n);
    d->keys = NULL;
}

/* The reply text (fixture_reply_text) key i's value reads as; a set has two
 * orders. */
static void expected_text(size_t i, char *out, size_t cap, char *alt, size_t altcap)
{
    alt[0] = '\0';
    switch (type_of(i)) {
    case VT_STRING:
        snprintf(out, cap, "v%zu-payload ", i);
        break;
    case VT_HASH:
        snprintf(out, cap, "f1 h%zu-1 f2 h%zu-2 ", i, i);
        break;
    case VT_LIST:
        snprintf(out, cap, "l%zu-0 l%zu-1 l%zu-2 ", i, i, i);
        break;
    case VT_SET:
        snprintf(out, cap, "m%zu-a m%zu-b ", i, i);
        snprintf(alt, altcap, "m%zu-b m%zu-a ", i, i);
        break;
    case VT_ZSET:
        snprintf(out, cap, "z%zu-a 1 z%zu-b 2.5 ", i, i);
        break;
    case VT_STREAM:
        snprintf(out, cap, "1-1 f x%zu ", i);
        break;
    case VT_COUNT:
        fail_msg("bad type");
    }
}

static void append_read(redisContext *c, const char *key, size_t i)
{
    static const char *const read_cmd[VT_COUNT] = {
        "GET %s",       "HGETALL %s", "LRANGE %s 0 -1", "SMEMBERS %s", "ZRANGE %s 0 -1 WITHSCORES",
        "XRANGE %s - +"};
    redisAppendCommand(c, "TYPE %s", key);
    redisAppendCommand(c, "TTL %s", key);
    redisAppendCommand(c, read_cmd[type_of(i)], key);
}

/* Every key of the data set reads through the proxy with its type, value
 * and TTL (within TTL_SLACK_S of what is left of the one it was given). */
static void dataset_verify(redisContext *c, const dataset *d)
{
    for (size_t done = 0; done < d->n;) {
        size_t batch = d->n - done < PIPELINE / 3 ? d->n - done : PIPELINE / 3;
        for (size_t i = done; i < done + batch; i++) {
            append_read(c, d->keys[i], i);
        }
        long long now = fixture_now_ms();
        for (size_t i = done; i < done + batch; i++) {
            redisReply *type = fixture_next_reply(c);
            redisReply *ttl = fixture_next_reply(c);
            redisReply *value = fixture_next_reply(c);
            if (type->type != REDIS_REPLY_STATUS ||
                strcmp(type->str, type_names[type_of(i)]) != 0) {
                fail_msg("key %s: TYPE is '%s', expected '%s'", d->keys[i],
                         type->str != NULL ? type->str : "?", type_names[type_of(i)]);
            }
            assert_int_equal(ttl->type, REDIS_REPLY_INTEGER);
            long long given = ttl_of(i);
            if (given < 0) {
                if (ttl->integer != -1) {
                    fail_msg("key %s: TTL %lld, expected none", d->keys[i], ttl->integer);
                }
            } else {
                /* Whole seconds left, somewhere between what remains of a
                 * TTL set at the first write and one set at the last. */
                long long lo = given - (now - d->written_from_ms) / 1000 - TTL_SLACK_S;
                long long hi = given - (now - d->written_to_ms) / 1000 + TTL_SLACK_S;
                if (ttl->integer < lo || ttl->integer > hi) {
                    fail_msg("key %s: TTL %lld, expected %lld..%lld", d->keys[i], ttl->integer, lo,
                             hi);
                }
            }
            char want[200], alt[200], got[400];
            expected_text(i, want, sizeof(want), alt, sizeof(alt));
            fixture_reply_text(value, got, sizeof(got));
            if (strcmp(got, want) != 0 && (alt[0] == '\0' || strcmp(got, alt) != 0)) {
                fail_msg("key %s (%s): read \"%s\", expected \"%s\"", d->keys[i],
                         type_names[type_of(i)], got, want);
            }
            freeReplyObject(type);
            freeReplyObject(ttl);
            freeReplyObject(value);
        }
        done += batch;
    }
}

/* ---- INFO ---- */

/* The value of one field of INFO <section> ("" when absent). */
static void info_text(redisContext *c, const char *section, const char *field, char *out,
                      size_t cap)
{
    redisReply *r = fixture_cmd(c, "INFO %s", section);
    if (r->type != REDIS_REPLY_STRING) {
        fail_msg("INFO %s: not a bulk string (type %d)", section, r->type);
    }
    out[0] = '\0';
    char pattern[128];
    int n = snprintf(pattern, sizeof(pattern), "\n%s:", field);
    const char *p = memmem(r->str, r->len, pattern, (size_t)n);
    if (p == NULL && strncmp(r->str, pattern + 1, (size_t)n - 1) == 0) {
        p = r->str - 1;
    }
    if (p != NULL) {
        p += n;
        size_t len = strcspn(p, "\r\n");
        snprintf(out, cap, "%.*s", (int)(len < cap ? len : cap - 1), p);
    }
    freeReplyObject(r);
}

static long long info_int(redisContext *c, const char *section, const char *field)
{
    char text[64];
    info_text(c, section, field, text, sizeof(text));
    if (text[0] == '\0') {
        fail_msg("INFO %s has no field %s", section, field);
    }
    return atoll(text);
}

static int rebalance_is_running(redisContext *c)
{
    char state[32];
    info_text(c, "rebalance", "rebalance_state", state, sizeof(state));
    if (strcmp(state, "running") != 0 && strcmp(state, "idle") != 0) {
        fail_msg("rebalance_state is '%s', not running or idle", state);
    }
    return strcmp(state, "running") == 0;
}

/* The shards' ring record agrees with this proxy and no fleet move runs:
 * a ring change whose keys keep their owners moves nothing here, but the
 * record still goes through its fence (an edit made meanwhile is queued). */
static int fleet_settled(redisContext *c)
{
    char status[64], state[64], mine[64], fleet[64];
    info_text(c, "server", "ring_status", status, sizeof(status));
    info_text(c, "server", "ring_fingerprint", mine, sizeof(mine));
    info_text(c, "rebalance", "rebalance_fleet_state", state, sizeof(state));
    info_text(c, "rebalance", "rebalance_fleet_ring", fleet, sizeof(fleet));
    return strcmp(status, "current") == 0 && strcmp(mine, fleet) == 0 &&
           (strcmp(state, "idle") == 0 || strcmp(state, "none") == 0);
}

static void wait_fleet_settled(fixture *f, redisContext *c)
{
    long long deadline = fixture_now_ms() + timeout_ms();
    while (!fleet_settled(c)) {
        if (fixture_now_ms() > deadline) {
            harness_dump_log(&f->proxy, 6000);
            fail_msg("the shards' ring record is not this proxy's, idle, after %lld ms",
                     timeout_ms());
        }
        fixture_sleep_ms(POLL_MS);
    }
}

static void shard_info(redisContext *c, int s, char *out, size_t cap)
{
    char field[32];
    snprintf(field, sizeof(field), "shard_s%d", s + 1);
    info_text(c, "shards", field, out, cap);
}

/* Waits until rebalance_state is idle with at least min_completed
 * migrations finished (what an operator watches before the next edit);
 * fails the test after timeout_ms(). */
static void wait_idle(fixture *f, redisContext *c, long long min_completed)
{
    long long deadline = fixture_now_ms() + timeout_ms();
    for (;;) {
        if (!rebalance_is_running(c) &&
            info_int(c, "rebalance", "rebalance_completed") >= min_completed) {
            return;
        }
        if (fixture_now_ms() > deadline) {
            redisReply *r = fixture_cmd(c, "INFO rebalance");
            fprintf(stderr, "%s\n", r->type == REDIS_REPLY_STRING ? r->str : "?");
            freeReplyObject(r);
            harness_dump_log(&f->proxy, 6000);
            fail_msg("no idle rebalance with %lld completed after %lld ms", min_completed,
                     timeout_ms());
        }
        fixture_sleep_ms(POLL_MS);
    }
}

/* The INFO rebalance fields a finished migration must show. */
static void expect_clean_finish(redisContext *c)
{
    char text[256];
    info_text(c, "rebalance", "rebalance_last_error", text, sizeof(text));
    assert_string_equal(text, "none");
    assert_int_equal(info_int(c, "rebalance", "rebalance_keys_remaining"), 0);
    assert_int_equal(info_int(c, "rebalance", "rebalance_percent"), 100);
    assert_int_equal(info_int(c, "rebalance", "rebalance_eta_seconds"), 0);
    assert_int_equal(info_int(c, "rebalance", "rebalance_failed_batches"), 0);
    assert_int_equal(info_int(c, "rebalance", "rebalance_queued_reload"), 0);
    info_text(c, "rebalance", "rebalance_source_states", text, sizeof(text));
    assert_string_equal(text, "none");
}

/* While a migration runs, rebalance_source_states names each source with
 * its mover's state, as many as rebalance_sources. */
static void expect_source_states_while_running(redisContext *c)
{
    static const char *const known[] = {"disconnected", "connecting", "ready",
                                        "scanning",     "migrating",  "done"};
    char text[512];
    info_text(c, "rebalance", "rebalance_source_states", text, sizeof(text));
    long long sources = info_int(c, "rebalance", "rebalance_sources"), seen = 0;
    assert_true(sources > 0);
    char *save = NULL;
    for (char *item = strtok_r(text, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(item, '=');
        if (!eq || eq == item) {
            fail_msg("rebalance_source_states item '%s' is not name=state", item);
        }
        int ok = 0;
        for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
            ok |= strcmp(eq + 1, known[i]) == 0;
        }
        if (!ok) {
            fail_msg("rebalance_source_states: unknown state in '%s'", item);
        }
        seen++;
    }
    assert_int_equal(seen, sources);
}

/* ---- editing proxy.ini ---- */

static void ini_path(const fixture *f, char *out, size_t cap)
{
    snprintf(out, cap, "%s/proxy.ini", f->proxy.dir);
}

static void state_path(const fixture *f, char *out, size_t cap)
{
    snprintf(out, cap, "%s/proxy.ini.rebalance", f->proxy.dir);
}

static int file_exists(const char *path)
{
    return access(path, F_OK) == 0;
}

/* The whole of a file, NUL-terminated, malloc'd. */
static char *read_file(const char *path)
{
    FILE *in = fopen(path, "r");
    if (in == NULL) {
        fail_msg("cannot read %s: %s", path, strerror(errno));
    }
    size_t cap = 4096, len = 0;
    char *text = malloc(cap);
    assert_non_null(text);
    size_t n;
    while ((n = fread(text + len, 1, cap - len - 1, in)) > 0) {
        len += n;
        if (cap - len < 2) {
            cap *= 2;
            text = realloc(text, cap);
            assert_non_null(text);
        }
    }
    fclose(in);
    text[len] = '\0';
    return text;
}

/* Replaces proxy.ini the way an editor saves: a new file renamed over it. */
static void ini_write(const fixture *f, const char *text)
{
    char path[300], tmp[310];
    ini_path(f, path, sizeof(path));
    snprintf(tmp, sizeof(tmp), "%s.new", path);
    FILE *out = fopen(tmp, "w");
    assert_non_null(out);
    assert_int_equal(fputs(text, out) >= 0, 1);
    assert_int_equal(fclose(out), 0);
    assert_int_equal(rename(tmp, path), 0);
}

static char *ini_read(const fixture *f)
{
    char path[300];
    ini_path(f, path, sizeof(path));
    return read_file(path);
}

/* Appends a line at the end of proxy.ini (the [shards] section). */
static void ini_append(const fixture *f, const char *fmt, ...)
{
    char line[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    char *text = ini_read(f);
    size_t len = strlen(text);
    char *grown = realloc(text, len + strlen(line) + 2);
    assert_non_null(grown);
    snprintf(grown + len, strlen(line) + 2, "%s\n", line);
    ini_write(f, grown);
    free(grown);
}

/* Replaces the line starting with prefix by line (deletes it when line is
 * NULL); fails the test if there is no such line. */
static void ini_replace_line(const fixture *f, const char *prefix, const char *line)
{
    char *text = ini_read(f);
    char *at = strstr(text, prefix);
    while (at != NULL && at != text && at[-1] != '\n') {
        at = strstr(at + 1, prefix);
    }
    if (at == NULL) {
        fail_msg("proxy.ini has no line starting with '%s'", prefix);
    }
    char *end = strchr(at, '\n');
    end = end != NULL ? end + 1 : at + strlen(at);
    size_t cap = strlen(text) + (line != NULL ? strlen(line) : 0) + 2;
    char *out = malloc(cap);
    assert_non_null(out);
    snprintf(out, cap, "%.*s%s%s%s", (int)(at - text), text, line != NULL ? line : "",
             line != NULL ? "\n" : "", end);
    ini_write(f, out);
    free(out);
    free(text);
}

static void shard_line(const fixture *f, int s, const char *suffix, char *out, size_t cap)
{
    snprintf(out, cap, "s%d = 127.0.0.1:%d%s", s + 1, f->shards[s].port, suffix);
}

static void add_shard_to_ini(const fixture *f, int s)
{
    char line[128];
    shard_line(f, s, "", line, sizeof(line));
    ini_append(f, "%s", line);
}

static void reload_ok(redisContext *c)
{
    fixture_expect_status(fixture_cmd(c, "PROXY RELOAD"), "OK");
}

/* PROXY RELOAD as an operator runs it right after the last move showed
 * idle: applied at once, or queued behind the fleet's move (which may
 * still fence the shards for an edit that moved no key here) and applied
 * when that ends. Returns once the file is in force. */
static void reload_applied(fixture *f, redisContext *c)
{
    redisReply *r = fixture_cmd(c, "PROXY RELOAD");
    if (r->type == REDIS_REPLY_STATUS && strcmp(r->str, "OK") == 0) {
        freeReplyObject(r);
        return;
    }
    int queued = r->type == REDIS_REPLY_ERROR && strstr(r->str, "this reload is queued") != NULL;
    char got[256];
    fixture_reply_text(r, got, sizeof(got));
    freeReplyObject(r);
    if (!queued) {
        fail_msg("PROXY RELOAD: %s", got);
    }
    long long deadline = fixture_now_ms() + timeout_ms();
    while (info_int(c, "rebalance", "rebalance_queued_reload") != 0) {
        if (fixture_now_ms() > deadline) {
            harness_dump_log(&f->proxy, 6000);
            fail_msg("a queued reload was not applied after %lld ms (%s)", timeout_ms(), got);
        }
        fixture_sleep_ms(POLL_MS);
    }
}

/* An error reply containing every one of the NULL-terminated needles. */
static void expect_error_with(redisReply *r, ...)
{
    if (r->type != REDIS_REPLY_ERROR) {
        char text[300];
        fixture_reply_text(r, text, sizeof(text));
        fail_msg("expected an error, got type %d: %s", r->type, text);
    }
    va_list ap;
    va_start(ap, r);
    for (const char *needle = va_arg(ap, const char *); needle != NULL;
         needle = va_arg(ap, const char *)) {
        if (strstr(r->str, needle) == NULL) {
            fail_msg("error \"%s\" does not mention \"%s\"", r->str, needle);
        }
    }
    va_end(ap);
    freeReplyObject(r);
}

/* ---- 1. adding a shard ---- */

static void test_added_shard_gets_a_quarter_of_the_keys_and_nothing_is_lost(void **state)
{
    fixture *f = start(state, "watch_config = no", 3);
    redisContext *c = fixture_client(f);
    dataset d = dataset_write(c, "k", DATASET_KEYS);
    int *before = calloc(d.n, sizeof(int)), *after = calloc(d.n, sizeof(int));
    assert_true(before != NULL && after != NULL);
    expect_each_key_on_its_owner_only(f, c, d.keys, d.n, before);
    assert_int_equal(shard_dbsize(f, S4), 0);
    long long epoch = info_int(c, "server", "config_epoch");
    assert_int_equal(info_int(c, "rebalance", "rebalance_completed"), 0);

    add_shard_to_ini(f, S4);
    reload_ok(c);
    wait_idle(f, c, 1);

    assert_int_equal(info_int(c, "server", "config_epoch"), epoch + 1);
    expect_each_key_on_its_owner_only(f, c, d.keys, d.n, after);
    size_t moved = 0;
    for (size_t i = 0; i < d.n; i++) {
        if (after[i] != before[i]) {
            /* A new shard takes keys; nothing moves between old ones. */
            if (after[i] != S4) {
                fail_msg("key %s moved from s%d to s%d", d.keys[i], before[i] + 1, after[i] + 1);
            }
            moved++;
        }
    }
    /* About a quarter: 4 equal shards, each within a few % of its share. */
    assert_in_range(moved, d.n * 18 / 100, d.n * 32 / 100);
    assert_int_equal(shard_dbsize(f, S4), (long long)moved);
    assert_int_equal(fixture_shards_dbsize(f), (long long)d.n);
    dataset_verify(c, &d);

    /* Nothing touched the keys during the move: the mover moved them all,
     * after one SCAN pass over each old shard. */
    assert_int_equal(info_int(c, "rebalance", "rebalance_keys_moved"), (long long)moved);
    assert_int_equal(info_int(c, "rebalance", "rebalance_keys_moved_on_demand"), 0);
    assert_true(info_int(c, "rebalance", "rebalance_keys_scanned") >= (long long)d.n);
    assert_int_equal(info_int(c, "rebalance", "rebalance_completed"), 1);
    expect_clean_finish(c);
    char path[300];
    state_path(f, path, sizeof(path));
    assert_false(file_exists(path));

    redisReply *summary = fixture_cmd(c, "PROXY REBALANCE");
    assert_int_equal(summary->type, REDIS_REPLY_STRING);
    assert_non_null(strstr(summary->str, "rebalance_state:idle"));
    freeReplyObject(summary);

    free(before);
    free(after);
    dataset_free(&d);
    fixture_close(f, c);
    test_passed = 1;
}

/* ---- BUSYKEY: the new owner already holds a copy ---- */

#define STALE_KEYS 200

/* STALE_KEYS keys "stale:i" with an old copy written through the proxy (on
 * s1..s3) and a newer one written straight to s4, as a client of a proxy
 * already on the new ring would have. */
static char **stale_copies(fixture *f, redisContext *c)
{
    char **stale = make_keys("stale", STALE_KEYS);
    for (size_t i = 0; i < STALE_KEYS; i++) {
        fixture_expect_status(fixture_cmd(c, "SET %s old-%llu", stale[i], (unsigned long long)i),
                              "OK");
        fixture_expect_status(
            fixture_cmd(fixture_shard(f, S4), "SET %s new-%llu", stale[i], (unsigned long long)i),
            "OK");
    }
    return stale;
}

static void test_copy_already_on_the_new_shard_wins_over_the_stale_source(void **state)
{
    /* Slow enough that the GETs below run while the mover is still busy, so
     * they move (or find moved) the keys themselves. */
    fixture *f = start(state, "watch_config = no\nmigrate_batch = 100\nmigrate_rate = 2000", 3);
    redisContext *c = fixture_client(f);
    dataset d = dataset_write(c, "k", 3000);
    char **stale = stale_copies(f, c);

    add_shard_to_ini(f, S4);
    reload_ok(c);
    assert_true(rebalance_is_running(c));
    int *owner = calloc(STALE_KEYS, sizeof(int));
    assert_non_null(owner);
    owners_of(c, stale, STALE_KEYS, owner);
    size_t on_s4 = 0;
    for (size_t i = 0; i < STALE_KEYS; i++) {
        char want[32];
        snprintf(want, sizeof(want), "%s-%zu", owner[i] == S4 ? "new" : "old", i);
        fixture_expect_str(fixture_cmd(c, "GET %s", stale[i]), want);
        on_s4 += owner[i] == S4;
    }
    assert_true(on_s4 > 0);
    wait_idle(f, c, 1);

    unsigned *holders = calloc(STALE_KEYS, sizeof(unsigned));
    assert_non_null(holders);
    holders_of(f, stale, STALE_KEYS, holders, 0);
    for (size_t i = 0; i < STALE_KEYS; i++) {
        char want[32];
        snprintf(want, sizeof(want), "%s-%zu", owner[i] == S4 ? "new" : "old", i);
        fixture_expect_str(fixture_cmd(c, "GET %s", stale[i]), want);
        if (owner[i] == S4 && holders[i] != 1u << S4) {
            fail_msg("%s: the stale source copy is still there (holders %#x)", stale[i],
                     holders[i]);
        }
        if (owner[i] != S4) {
            /* s4's copy of a key it does not own is the test's own litter. */
            fixture_expect_int(fixture_cmd(fixture_shard(f, S4), "DEL %s", stale[i]), 1);
        }
    }
    assert_int_equal(info_int(c, "rebalance", "rebalance_stale_copies_deleted"), (long long)on_s4);
    expect_clean_finish(c);
    expect_each_key_on_its_owner_only(f, c, d.keys, d.n, NULL);
    dataset_verify(c, &d);

    free(holders);
    free(owner);
    free_keys(stale, STALE_KEYS);
    dataset_free(&d);
    fixture_close(f, c);
    test_passed = 1;
}

/* With no client touching the keys, every move is the mover's. A batch in
 * which one key is BUSYKEY still moves the others (MIGRATE moves each key
 * the target takes before it reports the error); the retry of each key
 * finds them gone and counts them, so keys_moved is exact. */
static void test_busykey_batch_still_counts_every_moved_key(void **state)
{
    fixture *f = start(state, "watch_config = no", 3);
    redisContext *c = fixture_client(f);
    dataset d = dataset_write(c, "k", 3000);
    char **stale = stale_copies(f, c);

    add_shard_to_ini(f, S4);
    reload_ok(c);
    wait_idle(f, c, 1);

    int *owner = calloc(d.n, sizeof(int)), *stale_owner = calloc(STALE_KEYS, sizeof(int));
    assert_true(owner != NULL && stale_owner != NULL);
    expect_each_key_on_its_owner_only(f, c, d.keys, d.n, owner);
    size_t moved = 0, on_s4 = 0;
    for (size_t i = 0; i < d.n; i++)
        moved += owner[i] == S4;
    owners_of(c, stale, STALE_KEYS, stale_owner);
    for (size_t i = 0; i < STALE_KEYS; i++) {
        char want[32];
        snprintf(want, sizeof(want), "%s-%zu", stale_owner[i] == S4 ? "new" : "old", i);
        fixture_expect_str(fixture_cmd(c, "GET %s", stale[i]), want);
        on_s4 += stale_owner[i] == S4;
        if (stale_owner[i] != S4)
            fixture_expect_int(fixture_cmd(fixture_shard(f, S4), "DEL %s", stale[i]), 1);
    }
    assert_true(moved > 0 && on_s4 > 0);
    /* The dataset keys s4 now owns were moved; the stale keys it owns were
     * not (their source copies were deleted). */
    assert_int_equal(info_int(c, "rebalance", "rebalance_keys_moved"), (long long)moved);
    assert_int_equal(info_int(c, "rebalance", "rebalance_keys_moved_on_demand"), 0);
    assert_int_equal(info_int(c, "rebalance", "rebalance_stale_copies_deleted"), (long long)on_s4);
    expect_clean_finish(c);
    dataset_verify(c, &d);

    free(stale_owner);
    free(owner);
    free_keys(stale, STALE_KEYS);
    dataset_free(&d);
    fixture_close(f, c);
    test_passed = 1;
}

/* ---- 2. writers during the move ---- */

#define WRITERS         4
#define WRITER_COUNTERS 32
#define WRITER_LISTS    16
#define WRITER_QUEUES   8
/* Writers 0 and 1 send one command at a time; the others keep this many in
 * flight on their connection. */
#define WRITER_DEPTH 16
/* Pause of a pipelining writer between batches, so that all of them add
 * keys more slowly than the mover scans. */
#define WRITER_PAUSE_US 2000
/* Writes each writer has acknowledged before the switch: one round of
 * every kind over every slot (WRITER_COUNTERS is the most slots of a kind),
 * so that each of its counters, lists and queues exists on its old shard;
 * and again after it, on the new ring alone. */
#define WRITER_WARMUP_ACKS ((long long)OP_COUNT * WRITER_COUNTERS)
#define WRITER_AFTER_ACKS  10
#define WRITER_PROBLEM_LEN 256

/* What a writer does, in turn. */
typedef enum writer_op {
    OP_INCR,       /* INCR ctr:<w>:<i> */
    OP_SET,        /* SET uniq:<w>:<seq> val-<w>-<seq> */
    OP_RPUSH,      /* RPUSH lst:<w>:<i> <seq> */
    OP_MSET,       /* MSET ms:<w>:<seq>:0..2 <seq>: keys on several shards */
    OP_QUEUE_PUSH, /* RPUSH {q<w>:<i>}:in <seq> */
    OP_QUEUE_MOVE, /* LMOVE {q<w>:<i>}:in {q<w>:<i>}:out: two keys moving together */
    OP_READ,       /* GET or MGET of an acknowledged SET or MSET */
    OP_COUNT,
} writer_op;

/* A growing list of sequence numbers. */
typedef struct seq_list {
    long long *seq;
    size_t n;
    size_t cap;
} seq_list;

/* One client writing through the proxy on its own connection, in its own
 * thread. It records what was acknowledged; the test checks it afterwards
 * (cmocka's asserts are for the main thread). */
typedef struct writer {
    pthread_t thread;
    int port;
    int id;
    int depth; /* commands in flight */
    atomic_int *stop;
    atomic_llong acked; /* acknowledged writes so far */
    long long incr_acked[WRITER_COUNTERS];
    long long push_acked[WRITER_LISTS];
    long long queue_pushed[WRITER_QUEUES];
    long long queue_moved[WRITER_QUEUES];
    seq_list sets;  /* acknowledged SETs */
    seq_list msets; /* acknowledged MSETs */
    long long reads;
    long long wrong;  /* replies that contradict what was acknowledged */
    long long errors; /* error replies, or no reply */
    char first_problem[WRITER_PROBLEM_LEN];
} writer;

/* A command sent and not yet answered. */
typedef struct writer_sent {
    writer_op op;
    int slot;      /* counter, list or queue index */
    long long seq; /* the value written, or the SET/MSET read */
} writer_sent;

static void writer_problem(writer *w, const char *fmt, ...)
{
    if (w->first_problem[0] != '\0') {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->first_problem, sizeof(w->first_problem), fmt, ap);
    va_end(ap);
}

static int seq_push(seq_list *l, long long seq)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 1024;
        long long *grown = realloc(l->seq, cap * sizeof(*grown));
        if (grown == NULL) {
            return -1;
        }
        l->seq = grown;
        l->cap = cap;
    }
    l->seq[l->n++] = seq;
    return 0;
}

/* Appends command number op to the connection's output. */
static void writer_append(writer *w, redisContext *c, long long op, unsigned *rng,
                          writer_sent *sent)
{
    int id = w->id;
    sent->op = (writer_op)(op % OP_COUNT);
    sent->seq = op;
    switch (sent->op) {
    case OP_INCR:
        sent->slot = (int)((op / OP_COUNT) % WRITER_COUNTERS);
        redisAppendCommand(c, "INCR ctr:%d:%d", id, sent->slot);
        return;
    case OP_SET:
        redisAppendCommand(c, "SET uniq:%d:%lld val-%d-%lld", id, op, id, op);
        return;
    case OP_RPUSH:
        sent->slot = (int)((op / OP_COUNT) % WRITER_LISTS);
        redisAppendCommand(c, "RPUSH lst:%d:%d %lld", id, sent->slot, op);
        return;
    case OP_MSET:
        redisAppendCommand(c, "MSET ms:%d:%lld:0 %lld ms:%d:%lld:1 %lld ms:%d:%lld:2 %lld", id, op,
                           op, id, op, op, id, op, op);
        return;
    case OP_QUEUE_PUSH:
    case OP_QUEUE_MOVE:
        sent->slot = (int)((op / OP_COUNT) % WRITER_QUEUES);
        if (sent->op == OP_QUEUE_PUSH) {
            redisAppendCommand(c, "RPUSH {q%d:%d}:in %lld", id, sent->slot, op);
        } else {
            redisAppendCommand(c, "LMOVE {q%d:%d}:in {q%d:%d}:out LEFT RIGHT", id, sent->slot, id,
                               sent->slot);
        }
        return;
    case OP_READ:
        /* Only what was acknowledged before this batch went out. */
        if (op % 2 == 0 && w->sets.n > 0) {
            sent->slot = 0;
            sent->seq = w->sets.seq[rand_r(rng) % w->sets.n];
            redisAppendCommand(c, "GET uniq:%d:%lld", id, sent->seq);
        } else if (w->msets.n > 0) {
            sent->slot = 1;
            sent->seq = w->msets.seq[rand_r(rng) % w->msets.n];
            redisAppendCommand(c, "MGET ms:%d:%lld:0 ms:%d:%lld:1 ms:%d:%lld:2", id, sent->seq, id,
                               sent->seq, id, sent->seq);
        } else {
            sent->slot = 2;
            redisAppendCommand(c, "PING");
        }
        return;
    case OP_COUNT:
        break;
    }
}

/* Checks one reply against what the writer knows was acknowledged before. */
static void writer_check(writer *w, const writer_sent *s, const redisReply *r)
{
    int id = w->id;
    if (r->type == REDIS_REPLY_ERROR) {
        w->errors++;
        writer_problem(w, "writer %d op %lld: %s", id, s->seq, r->str);
        return;
    }
    int wrote = 1;
    switch (s->op) {
    case OP_INCR:
        /* Each counter has one writer: its value is the acknowledged count. */
        w->incr_acked[s->slot]++;
        if (r->type != REDIS_REPLY_INTEGER || r->integer != w->incr_acked[s->slot]) {
            w->wrong++;
            writer_problem(w, "INCR ctr:%d:%d gave %lld after %lld acknowledged", id, s->slot,
                           r->integer, w->incr_acked[s->slot] - 1);
        }
        break;
    case OP_SET:
    case OP_MSET:
        if (r->type != REDIS_REPLY_STATUS || strcmp(r->str, "OK") != 0 ||
            seq_push(s->op == OP_SET ? &w->sets : &w->msets, s->seq) < 0) {
            w->wrong++;
            writer_problem(w, "writer %d op %lld: SET/MSET not OK", id, s->seq);
        }
        break;
    case OP_RPUSH:
        w->push_acked[s->slot]++;
        if (r->type != REDIS_REPLY_INTEGER || r->integer != w->push_acked[s->slot]) {
            w->wrong++;
            writer_problem(w, "RPUSH lst:%d:%d gave length %lld after %lld acknowledged", id,
                           s->slot, r->integer, w->push_acked[s->slot] - 1);
        }
        break;
    case OP_QUEUE_PUSH: {
        w->queue_pushed[s->slot]++;
        long long in = w->queue_pushed[s->slot] - w->queue_moved[s->slot];
        if (r->type != REDIS_REPLY_INTEGER || r->integer != in) {
            w->wrong++;
            writer_problem(w, "RPUSH {q%d:%d}:in gave length %lld, expected %lld", id, s->slot,
                           r->integer, in);
        }
        break;
    }
    case OP_QUEUE_MOVE:
        if (r->type == REDIS_REPLY_STRING) {
            w->queue_moved[s->slot]++;
        } else if (r->type != REDIS_REPLY_NIL ||
                   w->queue_pushed[s->slot] != w->queue_moved[s->slot]) {
            w->wrong++;
            writer_problem(w, "LMOVE {q%d:%d}: nothing moved with %lld in the list", id, s->slot,
                           w->queue_pushed[s->slot] - w->queue_moved[s->slot]);
        }
        break;
    case OP_READ: {
        wrote = 0;
        w->reads++;
        char want[64];
        int ok;
        if (s->slot == 0) {
            snprintf(want, sizeof(want), "val-%d-%lld", id, s->seq);
            ok = r->type == REDIS_REPLY_STRING && strcmp(r->str, want) == 0;
        } else if (s->slot == 1) {
            snprintf(want, sizeof(want), "%lld", s->seq);
            ok = r->type == REDIS_REPLY_ARRAY && r->elements == 3;
            for (size_t i = 0; ok && i < 3; i++) {
                ok = r->element[i]->type == REDIS_REPLY_STRING &&
                     strcmp(r->element[i]->str, want) == 0;
            }
        } else {
            ok = r->type == REDIS_REPLY_STATUS;
        }
        if (!ok) {
            w->wrong++;
            writer_problem(w, "writer %d: read of op %lld: a miss or a wrong value (type %d)", id,
                           s->seq, r->type);
        }
        break;
    }
    case OP_COUNT:
        break;
    }
    if (wrote) {
        atomic_fetch_add(&w->acked, 1);
    }
}

static void *writer_run(void *arg)
{
    writer *w = arg;
    redisContext *c = harness_connect(w->port);
    if (c == NULL) {
        w->errors++;
        writer_problem(w, "writer %d: cannot connect", w->id);
        return NULL;
    }
    unsigned rng = (unsigned)w->id * 7919u + 1;
    writer_sent sent[WRITER_DEPTH];
    for (long long op = 0; !atomic_load(w->stop);) {
        for (int i = 0; i < w->depth; i++) {
            writer_append(w, c, op++, &rng, &sent[i]);
        }
        for (int i = 0; i < w->depth; i++) {
            void *reply = NULL;
            if (redisGetReply(c, &reply) != REDIS_OK || reply == NULL) {
                /* Unknown whether it was applied: the test fails on it. */
                w->errors++;
                writer_problem(w, "writer %d op %lld: no reply: %s", w->id, sent[i].seq, c->errstr);
                redisFree(c);
                return NULL;
            }
            writer_check(w, &sent[i], reply);
            freeReplyObject(reply);
        }
        if (w->depth > 1) {
            usleep(WRITER_PAUSE_US);
        }
    }
    redisFree(c);
    return NULL;
}

static long long writers_acked(writer *w)
{
    long long sum = 0;
    for (int i = 0; i < WRITERS; i++) {
        sum += atomic_load(&w[i].acked);
    }
    return sum;
}

/* The writers of the test running now, so that the teardown can end them
 * when an assertion fails while they run. */
static struct {
    writer *w;       /* WRITERS of them, NULL when none */
    int started;     /* threads created and not yet joined */
    atomic_int halt; /* tells them to finish */
} writers;

/* Starts WRITERS writers on port; fails the test if one cannot start. */
static writer *writers_start(int port, int first_id)
{
    writers.w = calloc(WRITERS, sizeof(writer));
    assert_non_null(writers.w);
    atomic_store(&writers.halt, 0);
    for (int i = 0; i < WRITERS; i++) {
        writer *w = &writers.w[i];
        w->port = port;
        w->id = first_id + i;
        w->depth = i < 2 ? 1 : WRITER_DEPTH;
        w->stop = &writers.halt;
        assert_int_equal(pthread_create(&w->thread, NULL, writer_run, w), 0);
        writers.started++;
    }
    return writers.w;
}

/* Ends the writers' threads; what they recorded stays for the test. */
static void writers_stop(void)
{
    atomic_store(&writers.halt, 1);
    for (; writers.started > 0; writers.started--) {
        pthread_join(writers.w[writers.started - 1].thread, NULL);
    }
}

static void writers_free(void)
{
    writers_stop();
    if (writers.w != NULL) {
        for (int i = 0; i < WRITERS; i++) {
            free(writers.w[i].sets.seq);
            free(writers.w[i].msets.seq);
        }
        free(writers.w);
        writers.w = NULL;
    }
}

/* Waits until every writer has had `more` writes acknowledged from now on
 * (bounded by the rebalance timeout). 0, or -1 with a message. */
static int wait_writers_progress(writer *w, long long more)
{
    long long want[WRITERS];
    for (int i = 0; i < WRITERS; i++) {
        want[i] = atomic_load(&w[i].acked) + more;
    }
    long long deadline = fixture_now_ms() + timeout_ms();
    for (int i = 0; i < WRITERS; i++) {
        while (atomic_load(&w[i].acked) < want[i] && fixture_now_ms() < deadline) {
            fixture_sleep_ms(POLL_MS);
        }
        if (atomic_load(&w[i].acked) < want[i]) {
            print_error("writer %d: %lld writes acknowledged, waited for %lld (%s)\n", i,
                        (long long)atomic_load(&w[i].acked), want[i],
                        w[i].first_problem[0] != '\0' ? w[i].first_problem : "no error");
            return -1;
        }
    }
    return 0;
}

/* A growing list of key names. */
typedef struct key_list {
    char **keys;
    size_t n;
    size_t cap;
} key_list;

static void key_add(key_list *l, const char *fmt, ...)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 1024;
        l->keys = realloc(l->keys, l->cap * sizeof(char *));
        assert_non_null(l->keys);
    }
    char name[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof(name), fmt, ap);
    va_end(ap);
    l->keys[l->n] = strdup(name);
    assert_non_null(l->keys[l->n]);
    l->n++;
}

/* A list holds numbers in increasing order (push order, each once). */
static void expect_increasing(redisContext *c, const char *key, long long len)
{
    redisReply *r = fixture_cmd(c, "LRANGE %s 0 -1", key);
    fixture_expect_array(r, (size_t)len);
    for (size_t e = 1; e < r->elements; e++) {
        if (atoll(r->element[e - 1]->str) >= atoll(r->element[e]->str)) {
            fail_msg("%s: %s before %s", key, r->element[e - 1]->str, r->element[e]->str);
        }
    }
    freeReplyObject(r);
}

/* A reply to GET key that must be want; on a mismatch the test fails
 * naming the key, its owner and the shards that hold it. */
static void expect_key_value(fixture *f, redisContext *c, const char *key, redisReply *r,
                             const char *want)
{
    if (r->type == REDIS_REPLY_STRING && strcmp(r->str, want) == 0) {
        freeReplyObject(r);
        return;
    }
    char got[128];
    fixture_reply_text(r, got, sizeof(got));
    freeReplyObject(r);
    char *keys[1] = {(char *)key};
    int owner = -1;
    unsigned holders = 0;
    owners_of(c, keys, 1, &owner);
    holders_of(f, keys, 1, &holders, 0);
    fail_msg("key %s: read \"%s\", expected \"%s\"; owner s%d, held by mask %#x (bit 0 = s1)", key,
             got, want, owner + 1, holders);
}

/* Every write a writer saw acknowledged is there, read through the proxy,
 * and each of its keys is on its owner only. */
static void expect_writer_keys(fixture *f, redisContext *c, const writer *w)
{
    if (w->errors != 0 || w->wrong != 0) {
        fail_msg("writer %d: %lld errors, %lld wrong replies; first: %s", w->id, w->errors,
                 w->wrong, w->first_problem);
    }
    key_list keys = {0};
    int id = w->id;
    for (int k = 0; k < WRITER_COUNTERS; k++) {
        /* A short run may never reach a counter: then it is no key. */
        if (w->incr_acked[k] == 0) {
            fixture_expect_nil(fixture_cmd(c, "GET ctr:%d:%d", id, k));
            continue;
        }
        key_add(&keys, "ctr:%d:%d", id, k);
        char want[32];
        snprintf(want, sizeof(want), "%lld", w->incr_acked[k]);
        expect_key_value(f, c, keys.keys[keys.n - 1],
                         fixture_cmd(c, "GET %s", keys.keys[keys.n - 1]), want);
    }
    for (int l = 0; l < WRITER_LISTS; l++) {
        char key[64];
        snprintf(key, sizeof(key), "lst:%d:%d", id, l);
        expect_increasing(c, key, w->push_acked[l]);
        if (w->push_acked[l] > 0) {
            key_add(&keys, "%s", key);
        }
    }
    for (int q = 0; q < WRITER_QUEUES; q++) {
        /* An emptied list is no key at all: only the others have a place. */
        char key[64];
        snprintf(key, sizeof(key), "{q%d:%d}:in", id, q);
        expect_increasing(c, key, w->queue_pushed[q] - w->queue_moved[q]);
        if (w->queue_pushed[q] > w->queue_moved[q]) {
            key_add(&keys, "%s", key);
        }
        snprintf(key, sizeof(key), "{q%d:%d}:out", id, q);
        expect_increasing(c, key, w->queue_moved[q]);
        if (w->queue_moved[q] > 0) {
            key_add(&keys, "%s", key);
        }
    }
    /* SETs and MSETs: pipelined GETs, checked once all are read. */
    size_t first = keys.n, nget = w->sets.n + w->msets.n * 3;
    for (size_t i = 0; i < w->sets.n; i++) {
        key_add(&keys, "uniq:%d:%lld", id, w->sets.seq[i]);
        redisAppendCommand(c, "GET %s", keys.keys[keys.n - 1]);
    }
    for (size_t i = 0; i < w->msets.n; i++) {
        for (int k = 0; k < 3; k++) {
            key_add(&keys, "ms:%d:%lld:%d", id, w->msets.seq[i], k);
            redisAppendCommand(c, "GET %s", keys.keys[keys.n - 1]);
        }
    }
    redisReply **replies = calloc(nget ? nget : 1, sizeof(*replies));
    assert_non_null(replies);
    for (size_t i = 0; i < nget; i++) {
        replies[i] = fixture_next_reply(c);
    }
    for (size_t i = 0; i < nget; i++) {
        char want[64];
        if (i < w->sets.n) {
            snprintf(want, sizeof(want), "val-%d-%lld", id, w->sets.seq[i]);
        } else {
            snprintf(want, sizeof(want), "%lld", w->msets.seq[(i - w->sets.n) / 3]);
        }
        expect_key_value(f, c, keys.keys[first + i], replies[i], want);
    }
    free(replies);
    expect_each_key_on_its_owner_only(f, c, keys.keys, keys.n, NULL);
    free_keys(keys.keys, keys.n);
}

static void test_writes_during_the_move_are_all_kept(void **state)
{
    /* migrate_rate is per source shard, and counts keys moved: the writers
     * add keys to the sources as they go, and a SCAN pass ends only when it
     * outruns them, so the mover is faster than they are (see
     * WRITER_PAUSE_US) yet slow enough to overlap them for a while. */
    fixture *f = start(state, "watch_config = no\nmigrate_rate = 15000", 3);
    redisContext *c = fixture_client(f);
    dataset d = dataset_write(c, "k", DATASET_KEYS);

    writer *w = writers_start(f->proxy.port, 0);
    /* Counters, lists and queues exist on their old shards before the
     * switch. */
    int warmed_up = wait_writers_progress(w, WRITER_WARMUP_ACKS);

    add_shard_to_ini(f, S4);
    long long acked_at_reload = writers_acked(w);
    redisReply *r = fixture_cmd(c, "PROXY RELOAD");
    int reloaded = r->type == REDIS_REPLY_STATUS && strcmp(r->str, "OK") == 0;
    freeReplyObject(r);
    int was_running = reloaded && rebalance_is_running(c);
    long long deadline = fixture_now_ms() + timeout_ms();
    while (reloaded && fixture_now_ms() < deadline &&
           (rebalance_is_running(c) || info_int(c, "rebalance", "rebalance_completed") < 1)) {
        fixture_sleep_ms(POLL_MS);
    }
    long long acked_at_idle = writers_acked(w);
    /* Some writes after the switch, on the new ring alone. */
    int wrote_after = wait_writers_progress(w, WRITER_AFTER_ACKS);
    writers_stop();

    assert_int_equal(warmed_up, 0);
    assert_int_equal(wrote_after, 0);
    assert_true(reloaded);
    assert_true(was_running);
    wait_idle(f, c, 1);
    expect_clean_finish(c);
    /* The writers really ran during the move, and touched keys before the
     * mover reached them. */
    assert_true(acked_at_idle - acked_at_reload > 100);
    assert_true(info_int(c, "rebalance", "rebalance_keys_moved_on_demand") > 0);
    for (int i = 0; i < WRITERS; i++) {
        expect_writer_keys(f, c, &w[i]);
    }
    expect_each_key_on_its_owner_only(f, c, d.keys, d.n, NULL);
    dataset_verify(c, &d);

    writers_free();
    dataset_free(&d);
    fixture_close(f, c);
    test_passed = 1;
}

/* ---- 3. removing a shard ---- */

static void test_removed_shard_is_drained_to_zero_keys(void **state)
{
    /* Four shards, and the reload comes from the file changing on disk. */
    fixture *f = start(state, NULL, 4);
    redisContext *c = fixture_client(f);
    dataset d = dataset_write(c, "k", DATASET_KEYS);
    int *before = calloc(d.n, sizeof(int)), *after = calloc(d.n, sizeof(int));
    assert_true(before != NULL && after != NULL);
    expect_each_key_on_its_owner_only(f, c, d.keys, d.n, before);
    long long on_s2 = shard_dbsize(f, S2);
    assert_true(on_s2 > 0);
    long long epoch = info_int(c, "server", "config_epoch");

    ini_replace_line(f, "s2 = ", NULL);
    wait_idle(f, c, 1);

    assert_int_equal(info_int(c, "server", "config_epoch"), epoch + 1);
    assert_int_equal(shard_dbsize(f, S2), 0);
    char drained[128];
    info_text(c, "rebalance", "rebalance_drained_shards", drained, sizeof(drained));
    assert_non_null(strstr(drained, "s2"));
    expect_clean_finish(c);
    expect_each_key_on_its_owner_only(f, c, d.keys, d.n, after);
    for (size_t i = 0; i < d.n; i++) {
        assert_int_not_equal(after[i], S2);
        /* Only s2's keys moved. */
        if (before[i] != S2) {
            assert_int_equal(after[i], before[i]);
        }
    }
    assert_true(info_int(c, "rebalance", "rebalance_keys_moved") >= on_s2);
    assert_int_equal(fixture_shards_dbsize(f), (long long)d.n);
    dataset_verify(c, &d);

    /* The drained shard can go: every key still reads. */
    assert_true(harness_proc_stop(&f->shards[S2], SIGTERM) != -1);
    redisFree(f->direct[S2]);
    f->direct[S2] = NULL;
    dataset_verify(c, &d);
    fixture_expect_status(fixture_cmd(c, "PING"), "PONG");

    free(before);
    free(after);
    dataset_free(&d);
    fixture_close(f, c);
    test_passed = 1;
}

/* ---- 4. re-weighting and re-addressing ---- */

static void test_reweighted_shard_gains_keys_and_only_those_move(void **state)
{
    fixture *f = start(state, "watch_config = no", 4);
    redisContext *c = fixture_client(f);
    dataset d = dataset_write(c, "k", DATASET_KEYS);
    int *before = calloc(d.n, sizeof(int)), *after = calloc(d.n, sizeof(int));
    assert_true(before != NULL && after != NULL);
    expect_each_key_on_its_owner_only(f, c, d.keys, d.n, before);

    char line[128];
    shard_line(f, S2, " weight=2", line, sizeof(line));
    ini_replace_line(f, "s2 = ", line);
    assert_int_equal(kill(f->proxy.pid, SIGHUP), 0);
    wait_idle(f, c, 1);

    expect_each_key_on_its_owner_only(f, c, d.keys, d.n, after);
    size_t changed = 0;
    for (size_t i = 0; i < d.n; i++) {
        if (after[i] != before[i]) {
            /* A heavier s2 only gains keys. */
            assert_int_equal(after[i], S2);
            changed++;
        }
    }
    /* s2's share goes from 1/4 to 2/5: about 15% of the keys move. */
    assert_in_range(changed, d.n * 8 / 100, d.n * 24 / 100);
    /* Exactly the keys whose owner changed were moved. */
    assert_int_equal(info_int(c, "rebalance", "rebalance_keys_moved"), (long long)changed);
    assert_int_equal(info_int(c, "rebalance", "rebalance_keys_moved_on_demand"), 0);
    expect_clean_finish(c);
    dataset_verify(c, &d);

    free(before);
    free(after);
    dataset_free(&d);
    fixture_close(f, c);
    test_passed = 1;
}

/* Copies every key of one redis-server to another with DUMP/RESTORE, TTLs
 * kept: what an operator does (or a replica does) before re-addressing. */
static long long copy_all_keys(redisContext *from, redisContext *to)
{
    long long copied = 0;
    char cursor[32] = "0";
    do {
        redisReply *scan = fixture_cmd(from, "SCAN %s COUNT 500", cursor);
        fixture_expect_array(scan, 2);
        snprintf(cursor, sizeof(cursor), "%s", scan->element[0]->str);
        redisReply *keys = scan->element[1];
        for (size_t i = 0; i < keys->elements; i++) {
            redisAppendCommand(from, "PTTL %s", keys->element[i]->str);
            redisAppendCommand(from, "DUMP %s", keys->element[i]->str);
        }
        for (size_t i = 0; i < keys->elements; i++) {
            redisReply *pttl = fixture_next_reply(from);
            redisReply *dump = fixture_next_reply(from);
            assert_int_equal(dump->type, REDIS_REPLY_STRING);
            fixture_expect_status(fixture_cmd(to, "RESTORE %s %lld %b", keys->element[i]->str,
                                              pttl->integer > 0 ? pttl->integer : 0, dump->str,
                                              (size_t)dump->len),
                                  "OK");
            freeReplyObject(pttl);
            freeReplyObject(dump);
            copied++;
        }
        freeReplyObject(scan);
    } while (strcmp(cursor, "0") != 0);
    return copied;
}

static void test_readdressed_shard_moves_no_key(void **state)
{
    /* s1..s3 on the ring; the fourth server becomes s3's new address. */
    fixture *f = start(state, "watch_config = no", 3);
    redisContext *c = fixture_client(f);
    dataset d = dataset_write(c, "k", DATASET_KEYS);
    int *before = calloc(d.n, sizeof(int));
    assert_non_null(before);
    expect_each_key_on_its_owner_only(f, c, d.keys, d.n, before);
    long long on_s3 = copy_all_keys(fixture_shard(f, S3), fixture_shard(f, S4));
    assert_true(on_s3 > 0);
    assert_int_equal(shard_dbsize(f, S4), on_s3);
    long long epoch = info_int(c, "server", "config_epoch");

    char line[128];
    snprintf(line, sizeof(line), "s3 = 127.0.0.1:%d", f->shards[S4].port);
    ini_replace_line(f, "s3 = ", line);
    reload_ok(c);

    /* A new address is not a new place on the ring: no migration at all. */
    assert_int_equal(info_int(c, "server", "config_epoch"), epoch + 1);
    assert_false(rebalance_is_running(c));
    assert_int_equal(info_int(c, "rebalance", "rebalance_completed"), 0);
    assert_int_equal(info_int(c, "rebalance", "rebalance_keys_scanned"), 0);
    char want[64];
    snprintf(want, sizeof(want), "127.0.0.1:%d", f->shards[S4].port);
    for (size_t i = 0; i < d.n; i++) {
        redisReply *r = fixture_cmd(c, "PROXY RING %s", d.keys[i]);
        char addr[64];
        int owner = ring_reply_owner(r, addr, sizeof(addr));
        freeReplyObject(r);
        assert_int_equal(owner, before[i]);
        if (owner == S3) {
            assert_string_equal(addr, want);
        }
    }
    /* The old server is out of the path: emptied, every key still reads,
     * s3's from its new address. */
    fixture_expect_status(fixture_cmd(fixture_shard(f, S3), "FLUSHALL"), "OK");
    dataset_verify(c, &d);
    unsigned *holders = calloc(d.n, sizeof(unsigned));
    assert_non_null(holders);
    holders_of(f, d.keys, d.n, holders, 0);
    for (size_t i = 0; i < d.n; i++) {
        unsigned where = before[i] == S3 ? 1u << S4 : 1u << before[i];
        if (holders[i] != where) {
            fail_msg("key %s: holders %#x, expected %#x", d.keys[i], holders[i], where);
        }
    }
    assert_int_equal(shard_dbsize(f, S4), on_s3);

    free(holders);
    free(before);
    dataset_free(&d);
    fixture_close(f, c);
    test_passed = 1;
}

/* ---- 5. a proxy killed mid-migration ---- */

/* Waits until shard s holds at least n keys (the mover at work). */
static void wait_keys_on(fixture *f, int s, long long n)
{
    long long deadline = fixture_now_ms() + timeout_ms();
    while (shard_dbsize(f, s) < n) {
        if (fixture_now_ms() > deadline) {
            fail_msg("s%d has fewer than %lld keys after %lld ms", s + 1, n, timeout_ms());
        }
        fixture_sleep_ms(POLL_MS);
    }
}

/* SIGKILLs the proxy and waits until it is gone; its pid. */
static pid_t kill_proxy(fixture *f)
{
    pid_t pid = f->proxy.pid;
    assert_int_equal(kill(pid, SIGKILL), 0);
    long long deadline = fixture_now_ms() + timeout_ms();
    while (fixture_alive(pid)) {
        assert_true(fixture_now_ms() < deadline);
        fixture_sleep_ms(POLL_MS);
    }
    return pid;
}

/* Writes the slow dataset, adds s4 and waits until the move (slow by
 * the fixture's migrate_rate) has taken 300 keys there and runs on. */
static dataset slow_move_under_way(fixture *f, redisContext *c)
{
    dataset d = dataset_write(c, "k", SLOW_DATASET_KEYS);
    add_shard_to_ini(f, S4);
    reload_ok(c);
    wait_keys_on(f, S4, 300);
    assert_true(rebalance_is_running(c));
    return d;
}

static void test_stopped_or_killed_proxy_resumes_the_migration_on_restart(void **state)
{
    fixture *f = start(state, "watch_config = no\nmigrate_batch = 200\nmigrate_rate = 1500", 3);
    redisContext *c = fixture_client(f);
    dataset d = dataset_write(c, "k", SLOW_DATASET_KEYS);
    add_shard_to_ini(f, S4);
    reload_ok(c);
    char path[300];
    state_path(f, path, sizeof(path));
    assert_true(file_exists(path));
    /* The state file is an ini with the shard list keys move away from. */
    char *saved = read_file(path);
    char old_line[128];
    shard_line(f, S1, "", old_line, sizeof(old_line));
    assert_non_null(strstr(saved, "[shards]"));
    assert_non_null(strstr(saved, old_line));
    char s4_addr[64];
    snprintf(s4_addr, sizeof(s4_addr), ":%d", f->shards[S4].port);
    assert_null(strstr(saved, s4_addr));
    free(saved);

    /* Stopped cleanly once some keys have moved: it exits, keeping the
     * state, and the next start resumes. */
    wait_keys_on(f, S4, 300);
    assert_true(rebalance_is_running(c));
    fixture_close(f, c);
    assert_int_equal(harness_ringproxy_restart(&f->proxy, SIGTERM), 0);
    char *log = read_file(f->proxy.log);
    assert_non_null(strstr(log, "ringproxy stopped"));
    assert_null(strstr(log, "Sanitizer"));
    free(log);
    assert_true(file_exists(path));
    c = fixture_client(f);
    assert_true(rebalance_is_running(c));

    /* Killed once some more have moved. */
    wait_keys_on(f, S4, shard_dbsize(f, S4) + 300);
    assert_true(rebalance_is_running(c));
    fixture_close(f, c);
    pid_t old_pid = kill_proxy(f);
    long long moved_before_kill = shard_dbsize(f, S4);
    assert_true(moved_before_kill >= 300);
    assert_true(file_exists(path));
    /* Faster after the restart, so that the test does not wait long. */
    ini_replace_line(f, "migrate_rate = ", "migrate_rate = 5000");
    assert_int_equal(harness_ringproxy_restart(&f->proxy, SIGKILL), 0);
    assert_int_not_equal(f->proxy.pid, old_pid);

    c = fixture_client(f);
    assert_true(rebalance_is_running(c));
    wait_idle(f, c, 1);
    expect_clean_finish(c);
    assert_false(file_exists(path));
    int *after = calloc(d.n, sizeof(int));
    assert_non_null(after);
    expect_each_key_on_its_owner_only(f, c, d.keys, d.n, after);
    size_t on_s4 = 0;
    for (size_t i = 0; i < d.n; i++) {
        on_s4 += after[i] == S4;
    }
    assert_int_equal(shard_dbsize(f, S4), (long long)on_s4);
    /* It was killed mid-way: part of the keys had moved, not all. */
    assert_true(moved_before_kill < (long long)on_s4);
    assert_int_equal(fixture_shards_dbsize(f), (long long)d.n);
    dataset_verify(c, &d);
    log = read_file(f->proxy.log);
    const char *resumed = strstr(log, "resuming the rebalance");
    assert_non_null(resumed);
    assert_non_null(strstr(resumed + 1, "resuming the rebalance"));
    free(log);

    free(after);
    dataset_free(&d);
    fixture_close(f, c);
    test_passed = 1;
}

/* Killed mid-move and restarted with a file edited again meanwhile: the
 * shards' record names the ring keys move to, which this file no longer
 * has. The proxy finishes that move first (serving by the record's ring),
 * then applies its file as a new edit; it never refuses for ever. */
static void test_restart_with_a_newer_file_mid_move_finishes_then_applies_it(void **state)
{
    fixture *f = start(state, "watch_config = no\nmigrate_batch = 200\nmigrate_rate = 1500", 3);
    redisContext *c = fixture_client(f);
    dataset d = slow_move_under_way(f, c);
    fixture_close(f, c);
    (void)kill_proxy(f);
    char line[128];
    shard_line(f, S1, " weight=2", line, sizeof(line));
    ini_replace_line(f, "s1 = ", line);
    ini_replace_line(f, "migrate_rate = ", "migrate_rate = 5000");
    assert_int_equal(harness_ringproxy_restart(&f->proxy, SIGKILL), 0);

    /* It serves by the shards' ring, s1 at weight 1, until their move ends,
     * then by its file's: s1 at weight 2. Two moves complete. */
    c = fixture_client(f);
    long long deadline = fixture_now_ms() + timeout_ms();
    for (;;) {
        shard_info(c, S1, line, sizeof(line));
        if (strstr(line, ",weight=2,") != NULL) {
            break;
        }
        if (fixture_now_ms() > deadline) {
            harness_dump_log(&f->proxy, 6000);
            fail_msg("the file's ring is not in force after %lld ms: %s", timeout_ms(), line);
        }
        fixture_sleep_ms(POLL_MS);
    }
    wait_idle(f, c, 2);
    wait_fleet_settled(f, c);
    assert_int_equal(info_int(c, "rebalance", "rebalance_completed"), 2);
    assert_int_equal(info_int(c, "rebalance", "rebalance_queued_reload"), 0);
    expect_clean_finish(c);
    char status[32];
    info_text(c, "server", "ring_status", status, sizeof(status));
    assert_string_equal(status, "current");
    int *after = calloc(d.n, sizeof(int));
    assert_non_null(after);
    expect_each_key_on_its_owner_only(f, c, d.keys, d.n, after);
    size_t on_s4 = 0;
    for (size_t i = 0; i < d.n; i++) {
        on_s4 += after[i] == S4;
    }
    assert_true(on_s4 > 0);
    assert_int_equal(fixture_shards_dbsize(f), (long long)d.n);
    dataset_verify(c, &d);

    free(after);
    dataset_free(&d);
    fixture_close(f, c);
    test_passed = 1;
}

/* ---- 6. a broken edit ---- */

/* 1-based number of the line of text that starts with prefix. */
static int line_number(const char *text, const char *prefix)
{
    int line = 1;
    for (const char *p = text; *p != '\0'; p++) {
        if ((p == text || p[-1] == '\n') && strncmp(p, prefix, strlen(prefix)) == 0) {
            return line;
        }
        line += *p == '\n';
    }
    fail_msg("no line starting with '%s'", prefix);
    return -1;
}

static void test_broken_edit_is_rejected_and_traffic_is_unaffected(void **state)
{
    fixture *f = start(state, "watch_config = no", 4);
    redisContext *c = fixture_client(f);
    redisContext *busy = fixture_client(f);
    dataset d = dataset_write(c, "k", 2000);
    char *good = ini_read(f);
    long long epoch = info_int(c, "server", "config_epoch");

    /* A typo in [proxy], inserted right after the listen line. */
    char listen_line[64];
    snprintf(listen_line, sizeof(listen_line), "listen = 127.0.0.1:%d\n", f->proxy.port);
    char *at = strstr(good, listen_line);
    assert_non_null(at);
    size_t head = (size_t)(at - good) + strlen(listen_line);
    char broken[8192];
    snprintf(broken, sizeof(broken), "%.*slisen = x\n%s", (int)head, good, good + head);
    ini_write(f, broken);
    char where[400];
    ini_path(f, where, sizeof(where));
    snprintf(where + strlen(where), sizeof(where) - strlen(where),
             ":%d:", line_number(broken, "lisen"));

    /* Requests in flight on another connection across the reload. */
    for (size_t i = 0; i < d.n; i++) {
        redisAppendCommand(busy, "SET %s again-%llu", d.keys[i], (unsigned long long)i);
    }
    for (int written = 0; !written;) {
        assert_int_equal(redisBufferWrite(busy, &written), REDIS_OK);
    }
    expect_error_with(fixture_cmd(c, "PROXY RELOAD"), where, "lisen", NULL);
    for (size_t i = 0; i < d.n; i++) {
        fixture_expect_status(fixture_next_reply(busy), "OK");
    }
    for (size_t i = 0; i < d.n; i += 97) {
        char want[32];
        snprintf(want, sizeof(want), "again-%zu", i);
        fixture_expect_str(fixture_cmd(c, "GET %s", d.keys[i]), want);
    }
    char text[512];
    info_text(c, "server", "last_reload_error", text, sizeof(text));
    assert_non_null(strstr(text, where));
    assert_non_null(strstr(text, "lisen"));
    assert_int_equal(info_int(c, "server", "config_epoch"), epoch);
    assert_false(rebalance_is_running(c));
    /* SIGHUP reads the same broken file: rejected the same way. */
    assert_int_equal(kill(f->proxy.pid, SIGHUP), 0);
    fixture_wait_log(&f->proxy, "(SIGHUP)");
    fixture_expect_status(fixture_cmd(c, "PING"), "PONG");
    assert_int_equal(info_int(c, "server", "config_epoch"), epoch);
    char *log = read_file(f->proxy.log);
    assert_non_null(strstr(log, where));
    free(log);

    /* A key that cannot change at run time is reported, not ignored. */
    char moved_listen[64];
    snprintf(moved_listen, sizeof(moved_listen), "listen = 127.0.0.1:%d", harness_free_port());
    ini_write(f, good);
    ini_replace_line(f, "listen = ", moved_listen);
    expect_error_with(fixture_cmd(c, "PROXY RELOAD"), "listen", NULL);
    assert_int_equal(info_int(c, "server", "config_epoch"), epoch);
    fixture_expect_status(fixture_cmd(c, "PING"), "PONG");

    /* Fixed: accepted, and the error is cleared. */
    ini_write(f, good);
    reload_ok(c);
    assert_int_equal(info_int(c, "server", "config_epoch"), epoch + 1);
    info_text(c, "server", "last_reload_error", text, sizeof(text));
    assert_string_equal(text, "none");
    assert_int_equal(info_int(c, "rebalance", "rebalance_completed"), 0);

    free(good);
    dataset_free(&d);
    fixture_close(f, busy);
    fixture_close(f, c);
    test_passed = 1;
}

/* ---- 7. a lock held across the move ---- */

#define LOCKS 64

static void test_lock_taken_before_a_move_stays_held_through_it(void **state)
{
    fixture *f = start(state, "watch_config = no\nmigrate_batch = 100\nmigrate_rate = 3000", 3);
    redisContext *c = fixture_client(f);
    dataset d = dataset_write(c, "k", SLOW_DATASET_KEYS);
    char **locks = make_keys("lock:x", LOCKS);
    for (size_t i = 0; i < LOCKS; i++) {
        fixture_expect_status(
            fixture_cmd(c, "SET %s token-%llu NX PX 30000", locks[i], (unsigned long long)i), "OK");
    }
    int *before = calloc(LOCKS, sizeof(int)), *after = calloc(LOCKS, sizeof(int));
    assert_true(before != NULL && after != NULL);
    owners_of(c, locks, LOCKS, before);

    add_shard_to_ini(f, S4);
    reload_ok(c);
    /* Another client tries to take every lock, all through the move. */
    redisContext *other = fixture_client(f);
    int rounds = 0, rounds_while_running = 0;
    long long deadline = fixture_now_ms() + timeout_ms();
    for (;;) {
        int running = rebalance_is_running(c);
        for (size_t i = 0; i < LOCKS; i++) {
            fixture_expect_nil(fixture_cmd(other, "SET %s other NX PX 30000", locks[i]));
        }
        rounds++;
        rounds_while_running += running;
        if (!running) {
            break;
        }
        assert_true(fixture_now_ms() < deadline);
    }
    assert_true(rounds_while_running > 0);
    wait_idle(f, c, 1);

    owners_of(c, locks, LOCKS, after);
    size_t moved = 0;
    for (size_t i = 0; i < LOCKS; i++) {
        moved += after[i] != before[i];
        char want[32];
        snprintf(want, sizeof(want), "token-%zu", i);
        fixture_expect_str(fixture_cmd(c, "GET %s", locks[i]), want);
        fixture_expect_nil(fixture_cmd(other, "SET %s other NX", locks[i]));
        redisReply *pttl = fixture_cmd(c, "PTTL %s", locks[i]);
        assert_int_equal(pttl->type, REDIS_REPLY_INTEGER);
        assert_in_range(pttl->integer, 1, 30000);
        freeReplyObject(pttl);
    }
    /* Some locks changed shard (64 keys, each with a 1/4 chance). */
    assert_true(moved > 0);
    expect_each_key_on_its_owner_only(f, c, locks, LOCKS, NULL);
    expect_each_key_on_its_owner_only(f, c, d.keys, d.n, NULL);

    free(before);
    free(after);
    free_keys(locks, LOCKS);
    dataset_free(&d);
    fixture_close(f, other);
    fixture_close(f, c);
    test_passed = 1;
}

/* ---- a reload during a migration ---- */

static void test_reload_during_a_migration_is_queued_then_applied(void **state)
{
    fixture *f = start(state, "watch_config = no\nmigrate_batch = 100\nmigrate_rate = 3000", 3);
    redisContext *c = fixture_client(f);
    dataset d = dataset_write(c, "k", SLOW_DATASET_KEYS);
    int *before = calloc(d.n, sizeof(int)), *after = calloc(d.n, sizeof(int));
    assert_true(before != NULL && after != NULL);
    owners_of(c, d.keys, d.n, before);
    long long epoch = info_int(c, "server", "config_epoch");

    add_shard_to_ini(f, S4);
    reload_ok(c);
    assert_true(rebalance_is_running(c));
    expect_source_states_while_running(c);
    /* The next edit: s1 twice as heavy, and no rate limit. */
    char line[128];
    shard_line(f, S1, " weight=2", line, sizeof(line));
    ini_replace_line(f, "s1 = ", line);
    ini_replace_line(f, "migrate_rate = ", "migrate_rate = 0");
    expect_error_with(fixture_cmd(c, "PROXY RELOAD"), "queued", NULL);
    assert_int_equal(info_int(c, "rebalance", "rebalance_queued_reload"), 1);
    assert_true(rebalance_is_running(c));
    assert_int_equal(info_int(c, "server", "config_epoch"), epoch + 1);
    /* Until it applies, s1 keeps its weight. */
    int s1_now = 0;
    for (size_t i = 0; i < d.n; i++) {
        redisReply *r = fixture_cmd(c, "PROXY RING %s", d.keys[i]);
        int owner = ring_reply_owner(r, NULL, 0);
        freeReplyObject(r);
        s1_now += owner == S1 && before[i] != S1;
        if (i == 200) {
            break;
        }
    }
    assert_int_equal(s1_now, 0);

    /* The first migration ends, the queued reload starts the second. */
    wait_idle(f, c, 2);
    assert_int_equal(info_int(c, "server", "config_epoch"), epoch + 2);
    expect_clean_finish(c);
    expect_each_key_on_its_owner_only(f, c, d.keys, d.n, after);
    size_t gained_by_s1 = 0, gained_by_s4 = 0;
    for (size_t i = 0; i < d.n; i++) {
        if (after[i] != before[i]) {
            assert_true(after[i] == S1 || after[i] == S4);
            gained_by_s1 += after[i] == S1;
            gained_by_s4 += after[i] == S4;
        }
    }
    assert_true(gained_by_s1 > 0);
    assert_true(gained_by_s4 > 0);
    assert_int_equal(fixture_shards_dbsize(f), (long long)d.n);
    dataset_verify(c, &d);

    free(before);
    free(after);
    dataset_free(&d);
    fixture_close(f, c);
    test_passed = 1;
}

/* ---- the mover losing its connection ---- */

/* Kills the connections on shard s whose last command was the mover's
 * (SCAN, MIGRATE, DBSIZE); returns how many. */
static int kill_mover_connections(fixture *f, int s)
{
    redisContext *d = fixture_shard(f, s);
    redisReply *r = fixture_cmd(d, "CLIENT LIST");
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    int killed = 0;
    char *save = NULL;
    for (char *line = strtok_r(r->str, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (!strstr(line, " cmd=scan ") && !strstr(line, " cmd=migrate ") &&
            !strstr(line, " cmd=dbsize ")) {
            continue;
        }
        long long id = atoll(line + 3); /* "id=" */
        redisReply *k = fixture_cmd(d, "CLIENT KILL ID %lld", id);
        killed += k->type == REDIS_REPLY_INTEGER ? (int)k->integer : 0;
        freeReplyObject(k);
    }
    freeReplyObject(r);
    return killed;
}

/* The mover's control connections are killed mid-migration (a blip on
 * the network, a shard's client limit): each reconnects and goes on from
 * its cursor, the migration completes and no key is lost. */
static void test_mover_reconnects_when_its_connection_is_killed(void **state)
{
    fixture *f = start(state, "watch_config = no\nmigrate_batch = 100\nmigrate_rate = 3000", 3);
    redisContext *c = fixture_client(f);
    dataset d = slow_move_under_way(f, c);
    int killed = 0;
    for (int s = S1; s <= S3; s++) {
        killed += kill_mover_connections(f, s);
    }
    assert_true(killed > 0);

    wait_idle(f, c, 1);
    expect_each_key_on_its_owner_only(f, c, d.keys, d.n, NULL);
    assert_int_equal(fixture_shards_dbsize(f), (long long)d.n);
    dataset_verify(c, &d);
    dataset_free(&d);
    fixture_close(f, c);
    test_passed = 1;
}

/* ---- a key too big for migrate_timeout ---- */

/* Incompressible (DUMP compresses), and big enough that MIGRATE cannot
 * write it to the target within 1 ms. */
#define BIG_VALUE_LEN (24 * 1024 * 1024)

static void test_key_too_big_for_the_timeout_is_retried_and_reported_never_dropped(void **state)
{
    fixture *f = start(state, "watch_config = no\nmigrate_timeout = 1", 4);
    redisContext *c = fixture_client(f);
    dataset d = dataset_write(c, "k", 2000);
    unsigned char *big = malloc(BIG_VALUE_LEN);
    assert_non_null(big);
    uint64_t x = 88172645463325252ull;
    for (size_t i = 0; i < BIG_VALUE_LEN; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        big[i] = (unsigned char)x;
    }
    fixture_expect_status(fixture_cmd(c, "SET big %b", big, (size_t)BIG_VALUE_LEN), "OK");
    redisReply *r = fixture_cmd(c, "PROXY RING big");
    int from = ring_reply_owner(r, NULL, 0);
    freeReplyObject(r);

    /* Its shard is removed, so it must move. */
    char prefix[16];
    snprintf(prefix, sizeof(prefix), "s%d = ", from + 1);
    ini_replace_line(f, prefix, NULL);
    reload_ok(c);
    long long deadline = fixture_now_ms() + timeout_ms();
    while (info_int(c, "rebalance", "rebalance_failed_batches") < 1) {
        assert_true(fixture_now_ms() < deadline);
        fixture_sleep_ms(POLL_MS);
    }
    char text[256];
    info_text(c, "rebalance", "rebalance_last_error", text, sizeof(text));
    assert_non_null(strstr(text, "IOERR"));
    assert_true(rebalance_is_running(c));
    /* Still where it was, whole; a client asking for it gets it or an
     * error, never a miss. */
    unsigned holders = fixture_holders(f, "big", 3);
    assert_int_equal(holders, 1u << from);
    r = fixture_cmd(c, "GET big");
    if (r->type == REDIS_REPLY_ERROR) {
        assert_non_null(strstr(r->str, "IOERR"));
        freeReplyObject(r);
    } else {
        fixture_expect_bin(r, big, BIG_VALUE_LEN);
    }
    deadline = fixture_now_ms() + timeout_ms();
    while (info_int(c, "rebalance", "rebalance_failed_batches") < 2 &&
           fixture_now_ms() < deadline) {
        fixture_sleep_ms(POLL_MS);
    }
    assert_true(rebalance_is_running(c));
    assert_true(info_int(c, "rebalance", "rebalance_failed_batches") >= 2);
    /* A reload that leaves the ring alone applies during a migration: raising
     * the timeout unblocks it. */
    ini_replace_line(f, "migrate_timeout = ", "migrate_timeout = 20000");
    reload_ok(c);
    wait_idle(f, c, 1);
    /* Finished, with the failures it overcame still reported. */
    assert_int_equal(info_int(c, "rebalance", "rebalance_keys_remaining"), 0);
    assert_int_equal(info_int(c, "rebalance", "rebalance_percent"), 100);
    assert_true(info_int(c, "rebalance", "rebalance_failed_batches") >= 2);

    fixture_expect_bin(fixture_cmd(c, "GET big"), big, BIG_VALUE_LEN);
    assert_int_equal(shard_dbsize(f, from), 0);
    char *keys[] = {"big"};
    expect_each_key_on_its_owner_only(f, c, keys, 1, NULL);
    expect_each_key_on_its_owner_only(f, c, d.keys, d.n, NULL);
    dataset_verify(c, &d);

    free(big);
    dataset_free(&d);
    fixture_close(f, c);
    test_passed = 1;
}

/* ---- 5. edits undone, and random sequences of edits ---- */

/* Keys written before the edits of the tests below and checked after each. */
#define EDIT_DATASET_KEYS 3000

/* The field of INFO shards for shard s (0-based), e.g. "addr=...,weight=2,...". */

/* One edit of proxy.ini applied with writers running: they write on the
 * old ring (some writes each, acknowledged before the reload), through the
 * reload and the move, and on the new ring after it;
 * then every write they saw acknowledged is checked. Waits for
 * rebalance_completed to reach *completed (raised by the caller when the
 * edit moves keys). */
static void edit_with_writers(fixture *f, redisContext *c, const char *ini_text, int *next_writer,
                              long long completed)
{
    writer *w = writers_start(f->proxy.port, *next_writer);
    *next_writer += WRITERS;
    assert_int_equal(wait_writers_progress(w, WRITER_AFTER_ACKS), 0);
    ini_write(f, ini_text);
    reload_applied(f, c);
    wait_idle(f, c, completed);
    assert_int_equal(wait_writers_progress(w, WRITER_AFTER_ACKS), 0);
    writers_stop();
    assert_int_equal(info_int(c, "rebalance", "rebalance_completed"), completed);
    expect_clean_finish(c);
    for (int i = 0; i < WRITERS; i++) {
        expect_writer_keys(f, c, &w[i]);
    }
    writers_free();
}

static void test_undone_reweight_moves_the_keys_back(void **state)
{
    fixture *f = start(state, "watch_config = no", 3);
    redisContext *c = fixture_client(f);
    dataset d = dataset_write(c, "k", EDIT_DATASET_KEYS);
    int *before = calloc(d.n, sizeof(int)), *after = calloc(d.n, sizeof(int));
    assert_true(before != NULL && after != NULL);
    expect_each_key_on_its_owner_only(f, c, d.keys, d.n, before);
    char *original = ini_read(f);
    int next_writer = 0;

    char line[128], info[512];
    shard_line(f, S1, " weight=2", line, sizeof(line));
    ini_replace_line(f, "s1 = ", line);
    char *heavier = ini_read(f);
    ini_write(f, original);
    edit_with_writers(f, c, heavier, &next_writer, 1);
    shard_info(c, S1, info, sizeof(info));
    assert_non_null(strstr(info, ",weight=2,"));
    expect_each_key_on_its_owner_only(f, c, d.keys, d.n, after);
    size_t gained = 0;
    for (size_t i = 0; i < d.n; i++) {
        gained += after[i] != before[i];
    }
    assert_true(gained > 0);
    dataset_verify(c, &d);

    /* Back to weight 1: s1 gives back exactly what it gained. */
    edit_with_writers(f, c, original, &next_writer, 2);
    shard_info(c, S1, info, sizeof(info));
    assert_non_null(strstr(info, ",weight=1,"));
    expect_each_key_on_its_owner_only(f, c, d.keys, d.n, after);
    for (size_t i = 0; i < d.n; i++) {
        assert_int_equal(after[i], before[i]);
    }
    assert_true(info_int(c, "rebalance", "rebalance_keys_moved") >= (long long)gained);
    dataset_verify(c, &d);

    /* The same file again changes nothing on the ring: no migration, and
     * what a ring change ends (a WATCH here) survives the reload. */
    redisContext *t = fixture_client(f);
    fixture_expect_status(fixture_cmd(t, "WATCH k:1"), "OK");
    reload_ok(c);
    assert_int_equal(info_int(c, "rebalance", "rebalance_completed"), 2);
    fixture_expect_status(fixture_cmd(t, "MULTI"), "OK");
    fixture_expect_status(fixture_cmd(t, "PING"), "QUEUED");
    redisReply *exec = fixture_cmd(t, "EXEC");
    fixture_expect_array(exec, 1);
    freeReplyObject(exec);
    fixture_close(f, t);

    free(original);
    free(heavier);
    free(before);
    free(after);
    dataset_free(&d);
    fixture_close(f, c);
    test_passed = 1;
}

/* A shard taken off the ring keeps the ring record of the epoch that
 * removed it; after later edits that record is older than the ring the
 * proxy runs. Added back, the shard serves at once: its old record is no
 * sign of a proxy behind, and the writers see no error while it returns. */
static void test_shard_added_back_after_later_edits_serves_at_once(void **state)
{
    fixture *f = start(state, "watch_config = no", 3);
    redisContext *c = fixture_client(f);
    dataset d = dataset_write(c, "k", EDIT_DATASET_KEYS);
    char *original = ini_read(f);
    int next_writer = 0;
    char line[128];

    ini_replace_line(f, "s3 = ", NULL);
    char *without = ini_read(f);
    shard_line(f, S1, " weight=2", line, sizeof(line));
    ini_replace_line(f, "s1 = ", line);
    char *heavier = ini_read(f);
    add_shard_to_ini(f, S3);
    char *back = ini_read(f);
    ini_write(f, original);

    edit_with_writers(f, c, without, &next_writer, 1);
    edit_with_writers(f, c, heavier, &next_writer, 2);
    edit_with_writers(f, c, back, &next_writer, 3);
    expect_each_key_on_its_owner_only(f, c, d.keys, d.n, NULL);
    dataset_verify(c, &d);
    assert_int_equal(info_int(c, "server", "ring_epoch"), info_int(c, "server", "shards_epoch"));
    /* One proxy is never behind: no connection of it was refused. */
    assert_int_equal(info_int(c, "server", "ring_check_refusals"), 0);

    free(original);
    free(without);
    free(heavier);
    free(back);
    dataset_free(&d);
    fixture_close(f, c);
    test_passed = 1;
}

/* An edit that moves no key (the weight of the only shard) still takes
 * the shards' ring record through a fence. An edit made right after it,
 * as soon as rebalance_state shows idle, is queued behind that fence and
 * applied when it ends: the proxy never refuses its own clients for it. */
static void test_edit_right_after_an_edit_that_moves_no_key_is_applied(void **state)
{
    fixture *f = start(state, "watch_config = no", 3);
    redisContext *c = fixture_client(f);
    dataset d = dataset_write(c, "k", EDIT_DATASET_KEYS);
    char *original = ini_read(f);
    int next_writer = 0;
    char line[128];

    ini_replace_line(f, "s1 = ", NULL);
    ini_replace_line(f, "s2 = ", NULL);
    char *alone = ini_read(f);
    shard_line(f, S3, " weight=2", line, sizeof(line));
    ini_replace_line(f, "s3 = ", line);
    char *heavier = ini_read(f);
    add_shard_to_ini(f, S1);
    char *two = ini_read(f);
    ini_write(f, original);
    edit_with_writers(f, c, alone, &next_writer, 1);

    writer *w = writers_start(f->proxy.port, next_writer);
    assert_int_equal(wait_writers_progress(w, WRITER_AFTER_ACKS), 0);
    ini_write(f, heavier);
    reload_ok(c);
    ini_write(f, two);
    reload_applied(f, c);
    wait_idle(f, c, 2);
    wait_fleet_settled(f, c);
    assert_int_equal(wait_writers_progress(w, WRITER_AFTER_ACKS), 0);
    writers_stop();
    for (int i = 0; i < WRITERS; i++) {
        expect_writer_keys(f, c, &w[i]);
    }
    writers_free();
    expect_clean_finish(c);
    assert_int_equal(info_int(c, "server", "ring_check_refusals"), 0);
    expect_each_key_on_its_owner_only(f, c, d.keys, d.n, NULL);
    dataset_verify(c, &d);

    free(original);
    free(alone);
    free(heavier);
    free(two);
    dataset_free(&d);
    fixture_close(f, c);
    test_passed = 1;
}

/* A shard list as the random edits see it: on the ring with a weight, or
 * off it (weight 0), and named by one of two addresses of the same server. */
typedef struct ring_model {
    unsigned weight[FIXTURE_SHARDS];
    int alias[FIXTURE_SHARDS]; /* "localhost" instead of "127.0.0.1" */
} ring_model;

typedef enum edit_kind {
    EDIT_ADD,
    EDIT_REMOVE,
    EDIT_REWEIGHT,
    EDIT_READDRESS,
    EDIT_REVERT,
    EDIT_KINDS,
} edit_kind;

static const char *const edit_names[EDIT_KINDS] = {"add", "remove", "reweight", "readdress",
                                                   "revert"};

/* Random edits per sequence, and sequences per run of `make test`; the
 * environment raises both (RINGPROXY_RANDOM_STEPS, RINGPROXY_RANDOM_SEEDS)
 * or replays one (RINGPROXY_RANDOM_SEED). */
#define RANDOM_STEPS   20
#define RANDOM_SEEDS   2
#define RANDOM_HISTORY (RANDOM_STEPS * 8 + 1)

static int env_int(const char *name, int def)
{
    const char *text = getenv(name);
    return text != NULL && atoi(text) > 0 ? atoi(text) : def;
}

static size_t model_on_ring(const ring_model *m)
{
    size_t n = 0;
    for (int s = 0; s < FIXTURE_SHARDS; s++) {
        n += m->weight[s] > 0;
    }
    return n;
}

/* proxy.ini for a model: the fixture's [proxy] part, then the shards. */
static char *model_ini(const fixture *f, const char *proxy_part, const ring_model *m)
{
    size_t cap = strlen(proxy_part) + 128 * FIXTURE_SHARDS + 16;
    char *text = malloc(cap);
    assert_non_null(text);
    size_t o = (size_t)snprintf(text, cap, "%s[shards]\n", proxy_part);
    for (int s = 0; s < FIXTURE_SHARDS; s++) {
        if (m->weight[s] > 0) {
            o += (size_t)snprintf(text + o, cap - o, "s%d = %s:%d weight=%u\n", s + 1,
                                  m->alias[s] ? "localhost" : "127.0.0.1", f->shards[s].port,
                                  m->weight[s]);
        }
    }
    return text;
}

/* A shard index drawn from those whose on-ring state is want. */
static int pick_shard(unsigned *rng, const ring_model *m, int want_on_ring)
{
    int candidates[FIXTURE_SHARDS], n = 0;
    for (int s = 0; s < FIXTURE_SHARDS; s++) {
        if ((m->weight[s] > 0) == want_on_ring) {
            candidates[n++] = s;
        }
    }
    return n > 0 ? candidates[rand_r(rng) % (unsigned)n] : -1;
}

/* Applies one random, possible edit to *m (history: the models so far);
 * describes it in what. */
static void random_edit(unsigned *rng, ring_model *m, const ring_model *history, size_t nhistory,
                        char *what, size_t cap)
{
    for (;;) {
        edit_kind kind = (edit_kind)(rand_r(rng) % EDIT_KINDS);
        int s = pick_shard(rng, m, kind != EDIT_ADD);
        if (kind == EDIT_REVERT && nhistory > 1) {
            size_t k = (size_t)rand_r(rng) % (nhistory - 1);
            if (memcmp(&history[k], m, sizeof(*m)) == 0) {
                continue;
            }
            *m = history[k];
            snprintf(what, cap, "revert to the file of step %zu", k);
            return;
        }
        if (s < 0 || kind == EDIT_REVERT || (kind == EDIT_REMOVE && model_on_ring(m) < 2)) {
            continue;
        }
        unsigned was = m->weight[s];
        switch (kind) {
        case EDIT_ADD:
            m->weight[s] = 1 + (unsigned)rand_r(rng) % 2;
            break;
        case EDIT_REMOVE:
            m->weight[s] = 0;
            break;
        case EDIT_REWEIGHT:
            m->weight[s] = 1 + (was + (unsigned)rand_r(rng) % 2) % 3;
            break;
        case EDIT_READDRESS:
            m->alias[s] = !m->alias[s];
            break;
        default:
            fail_msg("edit kind %d", kind);
        }
        snprintf(what, cap, "%s s%d (weight %u -> %u, address %s)", edit_names[kind], s + 1, was,
                 m->weight[s], m->alias[s] ? "localhost" : "127.0.0.1");
        return;
    }
}

/* The ring a model's file describes, built by the ring module itself from
 * the file's text (config_load_string + config_ring). */
static ring *model_ring(const char *ini_text, config **cfg_out)
{
    char err[300];
    assert_int_equal(config_load_string(ini_text, "model.ini", cfg_out, err, sizeof(err)), 0);
    ring *r = config_ring(*cfg_out, err, sizeof(err));
    if (r == NULL) {
        fail_msg("model ring: %s", err);
    }
    return r;
}

/* Every key of d is where the model's ring puts it, as PROXY RING also says. */
static void expect_owners_as_modelled(redisContext *c, const dataset *d, const char *ini_text)
{
    config *cfg = NULL;
    ring *r = model_ring(ini_text, &cfg);
    int *owner = calloc(d->n, sizeof(int));
    assert_non_null(owner);
    owners_of(c, d->keys, d->n, owner);
    for (size_t i = 0; i < d->n; i++) {
        uint32_t h = hash_key(cfg->hash, d->keys[i], strlen(d->keys[i]), cfg->hash_tag_open,
                              cfg->hash_tag_close);
        const char *name = ring_shard_name(r, ring_lookup(r, h));
        char want[16];
        snprintf(want, sizeof(want), "s%d", owner[i] + 1);
        if (strcmp(name, want) != 0) {
            fail_msg("key %s: the model's ring puts it on %s, the proxy on %s", d->keys[i], name,
                     want);
        }
    }
    free(owner);
    ring_free(r);
    config_free(cfg);
}

/* Whether going from one file to the other changes any key's owner. */
static int files_move_keys(const char *from, const char *to)
{
    config *a = NULL, *b = NULL;
    ring *ra = model_ring(from, &a), *rb = model_ring(to, &b);
    ring_range *ranges = NULL;
    size_t n = 0;
    assert_int_equal(ring_diff(ra, rb, &ranges, &n), 0);
    free(ranges);
    ring_free(ra);
    ring_free(rb);
    config_free(a);
    config_free(b);
    return n > 0;
}

static void random_edit_sequence(void **state, unsigned seed, int steps)
{
    fixture *f = start(state, "watch_config = no", 3);
    redisContext *c = fixture_client(f);
    char *initial = ini_read(f);
    char *shards_at = strstr(initial, "[shards]");
    assert_non_null(shards_at);
    *shards_at = '\0';
    ring_model *history = calloc(RANDOM_HISTORY, sizeof(*history));
    assert_non_null(history);
    ring_model m = {{1, 1, 1, 0}, {0}};
    history[0] = m;
    char *current = model_ini(f, initial, &m);
    ini_write(f, current);
    reload_ok(c);
    dataset d = dataset_write(c, "k", EDIT_DATASET_KEYS);
    unsigned rng = seed;
    int next_writer = 0;
    long long completed = 0;
    for (int step = 1; step <= steps; step++) {
        char what[160];
        random_edit(&rng, &m, history, (size_t)step, what, sizeof(what));
        history[step] = m;
        char *next = model_ini(f, initial, &m);
        int moves = files_move_keys(current, next);
        completed += moves;
        fprintf(stderr, "random edits, seed %u, step %d: %s%s\n", seed, step, what,
                moves ? "" : " (no key changes owner)");
        edit_with_writers(f, c, next, &next_writer, completed);
        free(current);
        current = next;
        expect_owners_as_modelled(c, &d, current);
        expect_each_key_on_its_owner_only(f, c, d.keys, d.n, NULL);
        dataset_verify(c, &d);
    }
    /* The shards' record ends on this proxy's ring, and this proxy was
     * never refused by them (one proxy is never behind). */
    wait_fleet_settled(f, c);
    assert_int_equal(info_int(c, "server", "ring_check_refusals"), 0);
    free(current);
    free(history);
    free(initial);
    dataset_free(&d);
    fixture_close(f, c);
    test_passed = 1;
}

static void test_random_edits_with_writers_lose_nothing(void **state)
{
    int steps = env_int("RINGPROXY_RANDOM_STEPS", RANDOM_STEPS);
    if (steps > RANDOM_STEPS * 8) {
        steps = RANDOM_STEPS * 8;
    }
    int replay = env_int("RINGPROXY_RANDOM_SEED", 0);
    int seeds = replay ? 1 : env_int("RINGPROXY_RANDOM_SEEDS", RANDOM_SEEDS);
    unsigned base = replay ? (unsigned)replay : (unsigned)time(NULL) ^ (unsigned)getpid();
    for (int i = 0; i < seeds; i++) {
        unsigned seed = base + (unsigned)i;
        if (seed == 0) {
            seed = 1;
        }
        fprintf(stderr, "random edits: seed %u, %d steps (replay: RINGPROXY_RANDOM_SEED=%u)\n",
                seed, steps, seed);
        random_edit_sequence(state, seed, steps);
        assert_int_equal(stop(state), 0);
    }
    test_passed = 1;
}

/* ---- 6. requests stuck in a paused source ---- */

/* Keys of the paused-source test, and the value each stale write carries:
 * enough bytes that the shard, once resumed, reads them over many turns of
 * its event loop, between which other connections' commands run. */
#define STUCK_KEYS       200
#define STUCK_VALUE_LEN  (16 * 1024)
#define STUCK_TIMEOUT_MS 400

/* timeouts= of INFO shards for shard s. */
static long long shard_timeouts(redisContext *c, int s)
{
    char info[512];
    shard_info(c, s, info, sizeof(info));
    const char *at = strstr(info, "timeouts=");
    return at != NULL ? atoll(at + 9) : -1;
}

/* n keys "<prefix>:<i>" that PROXY RING places on shard s. */
static char **keys_on_shard(redisContext *c, const char *prefix, int s, size_t n)
{
    char **keys = calloc(n, sizeof(*keys));
    assert_non_null(keys);
    size_t found = 0;
    for (size_t i = 0; found < n && i < FIXTURE_KEY_SEARCH; i++) {
        char name[64];
        snprintf(name, sizeof(name), "%s:%zu", prefix, i);
        char *one[1] = {name};
        int owner = -1;
        owners_of(c, one, 1, &owner);
        if (owner == s) {
            keys[found] = strdup(name);
            assert_non_null(keys[found]);
            found++;
        }
    }
    assert_int_equal(found, n);
    return keys;
}

static void set_all(redisContext *c, char **keys, size_t n, const char *value)
{
    for (size_t i = 0; i < n; i++) {
        redisAppendCommand(c, "SET %s %s", keys[i], value);
    }
    for (size_t i = 0; i < n; i++) {
        fixture_expect_status(fixture_next_reply(c), "OK");
    }
}

static void test_writes_stuck_in_a_paused_source_never_land_after_the_move(void **state)
{
    char extra[128];
    snprintf(extra, sizeof(extra), "watch_config = no\nrequest_timeout = %lld",
             fixture_bound_ms(STUCK_TIMEOUT_MS));
    fixture *f = start(state, extra, 3);
    redisContext *c = fixture_client(f);
    char **keys = keys_on_shard(c, "stuck", S1, STUCK_KEYS);
    set_all(c, keys, STUCK_KEYS, "v1");

    /* s1 stops; writes pile up in its socket and time out in the proxy,
     * which resets the connection: s1 still holds them. */
    assert_int_equal(kill(f->shards[S1].pid, SIGSTOP), 0);
    long long timeouts = shard_timeouts(c, S1);
    char *stale = malloc(STUCK_VALUE_LEN + 1);
    assert_non_null(stale);
    memset(stale, 's', STUCK_VALUE_LEN);
    stale[STUCK_VALUE_LEN] = '\0';
    redisContext *w = fixture_client(f);
    for (size_t i = 0; i < STUCK_KEYS; i++) {
        redisAppendCommand(w, "SET %s %s", keys[i], stale);
    }
    for (size_t i = 0; i < STUCK_KEYS; i++) {
        fixture_expect_error(fixture_next_reply(w), "ERR");
    }
    free(stale);
    fixture_close(f, w);
    assert_true(shard_timeouts(c, S1) > timeouts);

    /* s4 joins: about a quarter of the keys move from s1. The barrier's PING
     * to s1 times out as well; then s1 resumes. */
    timeouts = shard_timeouts(c, S1);
    add_shard_to_ini(f, S4);
    reload_ok(c);
    long long deadline = fixture_now_ms() + timeout_ms();
    while (shard_timeouts(c, S1) == timeouts && fixture_now_ms() < deadline) {
        fixture_sleep_ms(POLL_MS);
    }
    assert_true(shard_timeouts(c, S1) > timeouts);
    assert_int_equal(kill(f->shards[S1].pid, SIGCONT), 0);
    wait_idle(f, c, 1);

    /* No stuck write landed on s1 after its key moved: every key is on its
     * owner only. Then newer values, and the keys move back to s1. */
    expect_each_key_on_its_owner_only(f, c, keys, STUCK_KEYS, NULL);
    set_all(c, keys, STUCK_KEYS, "v2");
    ini_replace_line(f, "s4 = ", NULL);
    reload_ok(c);
    wait_idle(f, c, 2);
    expect_each_key_on_its_owner_only(f, c, keys, STUCK_KEYS, NULL);
    for (size_t i = 0; i < STUCK_KEYS; i++) {
        expect_key_value(f, c, keys[i], fixture_cmd(c, "GET %s", keys[i]), "v2");
    }
    free_keys(keys, STUCK_KEYS);
    fixture_close(f, c);
    test_passed = 1;
}

static void test_removed_shard_that_stops_answering_gives_errors_not_a_hang(void **state)
{
    char extra[128];
    snprintf(extra, sizeof(extra), "watch_config = no\nrequest_timeout = %lld",
             fixture_bound_ms(STUCK_TIMEOUT_MS));
    fixture *f = start(state, extra, 3);
    redisContext *c = fixture_client(f);
    char **keys = keys_on_shard(c, "gone", S3, 20);
    set_all(c, keys, 20, "v1");

    /* s3 stops answering, then leaves the ring: its keys cannot move while
     * it is stopped, and a request for one gets an error in bounded time. */
    assert_int_equal(kill(f->shards[S3].pid, SIGSTOP), 0);
    ini_replace_line(f, "s3 = ", NULL);
    reload_ok(c);
    long long asked = fixture_now_ms();
    redisReply *r = fixture_cmd(c, "GET %s", keys[0]);
    /* TRYAGAIN while the barrier waits for s3, or the failed move itself. */
    assert_int_equal(r->type, REDIS_REPLY_ERROR);
    assert_true(strncmp(r->str, "TRYAGAIN", 8) == 0 || strncmp(r->str, "ERR cannot move", 15) == 0);
    freeReplyObject(r);
    assert_true(fixture_now_ms() - asked < fixture_bound_ms(10 * STUCK_TIMEOUT_MS));
    fixture_expect_status(fixture_cmd(c, "PING"), "PONG");

    /* Once it answers again, its keys move off and read as written. */
    assert_int_equal(kill(f->shards[S3].pid, SIGCONT), 0);
    wait_idle(f, c, 1);
    for (size_t i = 0; i < 20; i++) {
        expect_key_value(f, c, keys[i], fixture_cmd(c, "GET %s", keys[i]), "v1");
    }
    assert_int_equal(shard_dbsize(f, S3), 0);
    free_keys(keys, 20);
    fixture_close(f, c);
    test_passed = 1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_added_shard_gets_a_quarter_of_the_keys_and_nothing_is_lost,
                                  stop),
        cmocka_unit_test_teardown(test_copy_already_on_the_new_shard_wins_over_the_stale_source,
                                  stop),
        cmocka_unit_test_teardown(test_busykey_batch_still_counts_every_moved_key, stop),
        cmocka_unit_test_teardown(test_writes_during_the_move_are_all_kept, stop),
        cmocka_unit_test_teardown(test_removed_shard_is_drained_to_zero_keys, stop),
        cmocka_unit_test_teardown(test_reweighted_shard_gains_keys_and_only_those_move, stop),
        cmocka_unit_test_teardown(test_readdressed_shard_moves_no_key, stop),
        cmocka_unit_test_teardown(test_stopped_or_killed_proxy_resumes_the_migration_on_restart,
                                  stop),
        cmocka_unit_test_teardown(test_restart_with_a_newer_file_mid_move_finishes_then_applies_it,
                                  stop),
        cmocka_unit_test_teardown(test_broken_edit_is_rejected_and_traffic_is_unaffected, stop),
        cmocka_unit_test_teardown(test_lock_taken_before_a_move_stays_held_through_it, stop),
        cmocka_unit_test_teardown(test_reload_during_a_migration_is_queued_then_applied, stop),
        cmocka_unit_test_teardown(test_mover_reconnects_when_its_connection_is_killed, stop),
        cmocka_unit_test_teardown(
            test_key_too_big_for_the_timeout_is_retried_and_reported_never_dropped, stop),
        cmocka_unit_test_teardown(test_undone_reweight_moves_the_keys_back, stop),
        cmocka_unit_test_teardown(test_shard_added_back_after_later_edits_serves_at_once, stop),
        cmocka_unit_test_teardown(test_edit_right_after_an_edit_that_moves_no_key_is_applied, stop),
        cmocka_unit_test_teardown(test_random_edits_with_writers_lose_nothing, stop),
        cmocka_unit_test_teardown(test_writes_stuck_in_a_paused_source_never_land_after_the_move,
                                  stop),
        cmocka_unit_test_teardown(test_removed_shard_that_stops_answering_gives_errors_not_a_hang,
                                  stop),
    };
    /* REBALANCE_TEST=<glob> runs only the matching tests. */
    const char *only = getenv("REBALANCE_TEST");
    if (only != NULL && only[0] != '\0') {
        cmocka_set_test_filter(only);
    }
    return cmocka_run_group_tests(tests, NULL, NULL);
}
