/* What an operator watches, through a proxy over four shards: INFO
 * commandstats times each call (usec > 0) and counts failed and rejected
 * calls; INFO errorstats counts error replies by their first word;
 * INFO latencystats gives p50/p99/p99.9 per command as Redis 7 prints them;
 * SLOWLOG keeps requests slower than slowlog_slower_than, shaped as
 * Redis's entries (arguments cut as Redis cuts them) plus the shard that
 * answered and its time; GET /metrics (metrics_listen) serves the counters
 * in Prometheus's text format, checked line by line by a strict parser, and
 * by promtool when it is installed. */
#include <arpa/inet.h>
#include <ctype.h>
#include <math.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "fixture.h"

/* Requests at least this slow are logged: far above a loopback round trip,
 * far below the shard pause the tests make. */
#define SLOW_US 20000

static int metrics_port;

static int group_setup(void **state)
{
    metrics_port = harness_free_port();
    char extra[200];
    snprintf(extra, sizeof(extra),
             "slowlog_slower_than = %d\nslowlog_max_len = 4\nmetrics_listen = 127.0.0.1:%d\n",
             SLOW_US, metrics_port);
    fixture *f = fixture_start(extra);
    *state = f;
    return f != NULL ? 0 : -1;
}

static int group_teardown(void **state)
{
    return fixture_stop(*state);
}

/* INFO <section> as text, owned by f. */
static const char *info(fixture *f, redisContext *c, const char *section)
{
    redisReply *r = fixture_cmd(c, "INFO %s", section);
    if (r->type != REDIS_REPLY_STRING)
        fail_msg("INFO %s: not a bulk string", section);
    char *text = fixture_alloc(f, r->len + 1);
    memcpy(text, r->str, r->len);
    freeReplyObject(r);
    return text;
}

/* The number after "<field>=" (or "<field>:") in the line starting with
 * prefix; -1 when there is no such line. */
static double field(const char *text, const char *prefix, const char *name)
{
    char key[128];
    snprintf(key, sizeof(key), "\n%s", prefix);
    const char *line = strstr(text, key);
    if (!line)
        return -1;
    const char *eol = strstr(line + 1, "\r\n");
    snprintf(key, sizeof(key), "%s=", name);
    const char *at = strstr(line, key);
    if (!at || (eol && at > eol))
        fail_msg("no %s in line %s", name, prefix);
    return strtod(at + strlen(key), NULL);
}

static void test_commandstats_time_and_count_failures(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);
    fixture_expect_status(fixture_cmd(c, "SET cs:str hello"), "OK");
    for (int i = 0; i < 10; i++)
        fixture_expect_str(fixture_cmd(c, "GET cs:str"), "hello");
    fixture_expect_error(fixture_cmd(c, "INCR cs:str"), "ERR value is not an integer");
    fixture_expect_error(fixture_cmd(c, "LPUSH cs:str x"), "WRONGTYPE");
    fixture_expect_error(fixture_cmd(c, "GET"), "ERR wrong number of arguments");
    fixture_expect_error(fixture_cmd(c, "NOSUCHCOMMAND x"), "ERR unknown command");
    const char *text = info(f, c, "commandstats");
    /* Forwarded calls take a loopback round trip: more than 0 µs. */
    assert_true(field(text, "cmdstat_get:", "calls") >= 10);
    assert_true(field(text, "cmdstat_get:", "usec") > 0);
    assert_true(field(text, "cmdstat_get:", "usec_per_call") > 0);
    assert_true(field(text, "cmdstat_get:", "rejected_calls") >= 1); /* the arity error */
    assert_int_equal(field(text, "cmdstat_get:", "failed_calls"), 0);
    assert_true(field(text, "cmdstat_incr:", "failed_calls") >= 1);
    assert_true(field(text, "cmdstat_lpush:", "failed_calls") >= 1);

    /* Errors by their first word, in the default INFO as Redis has them. */
    const char *errors = info(f, c, "errorstats");
    assert_true(strncmp(errors, "# Errorstats\r\n", 14) == 0);
    double err = field(errors, "errorstat_ERR:", "count");
    double wrongtype = field(errors, "errorstat_WRONGTYPE:", "count");
    assert_true(err >= 3); /* INCR, arity, unknown */
    assert_true(wrongtype >= 1);
    assert_non_null(strstr(info(f, c, "default"), "# Errorstats\r\n"));
    fixture_expect_error(fixture_cmd(c, "LPUSH cs:str y"), "WRONGTYPE");
    assert_int_equal(field(info(f, c, "errorstats"), "errorstat_WRONGTYPE:", "count"),
                     wrongtype + 1);
    const char *stats = info(f, c, "stats");
    assert_non_null(strstr(stats, "\r\ntotal_error_replies:"));
    assert_non_null(strstr(stats, "\r\ninstantaneous_ops_per_sec:"));
    fixture_close(f, c);
}

static void test_latencystats_after_traffic(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);
    for (int i = 0; i < 50; i++)
        fixture_expect_status(fixture_cmd(c, "SET lat:%d v", i), "OK");
    const char *text = info(f, c, "latencystats");
    assert_true(strncmp(text, "# Latencystats\r\n", 16) == 0);
    /* latency_percentiles_usec_set:p50=123.000,p99=...,p99.9=... */
    const char *line = strstr(text, "\nlatency_percentiles_usec_set:p50=");
    assert_non_null(line);
    double p50, p99, p999;
    assert_int_equal(sscanf(line, "\nlatency_percentiles_usec_set:p50=%lf,p99=%lf,p99.9=%lf\r\n",
                            &p50, &p99, &p999),
                     3);
    assert_true(p50 > 0);
    assert_true(p50 <= p99);
    assert_true(p99 <= p999);
    /* Not in plain INFO, as in Redis; in INFO all. */
    assert_null(strstr(info(f, c, "default"), "# Latencystats"));
    assert_non_null(strstr(info(f, c, "all"), "# Latencystats"));
    fixture_close(f, c);
}

/* A script that keeps its shard busy for PAUSE_US: requests sent to the
 * shard meanwhile wait (DEBUG SLEEP is disabled in Redis 7 by default). */
#define BUSY_SCRIPT                                                                                \
    "local t = redis.call('TIME') local start = t[1] * 1000000 + t[2] "                            \
    "repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - start >= tonumber(ARGV[1]) "      \
    "return 1"
#define PAUSE_US "100000"

/* Makes every shard busy for PAUSE_US (a script sent on its own
 * connection); await_shards reads their replies. */
static void pause_shards(fixture *f)
{
    for (int i = 0; i < FIXTURE_SHARDS; i++)
        assert_int_equal(
            redisAppendCommand(fixture_shard(f, i), "EVAL %s 0 %s", BUSY_SCRIPT, PAUSE_US),
            REDIS_OK);
    for (int i = 0; i < FIXTURE_SHARDS; i++) {
        int done = 0;
        while (!done)
            assert_int_equal(redisBufferWrite(f->direct[i], &done), REDIS_OK);
    }
    fixture_sleep_ms(10); /* let them start */
}

static void await_shards(fixture *f)
{
    for (int i = 0; i < FIXTURE_SHARDS; i++)
        fixture_expect_int(fixture_next_reply(f->direct[i]), 1);
}

/* Checks a slow log entry's fields but its arguments: an id, a timestamp
 * not before since (seconds), a time of at least SLOW_US (and bounded),
 * the address of client as the proxy sees it (its local end) and
 * client_name, the shard that answered and its time there, at least
 * SLOW_US and within the request's. */
static void expect_slow_entry(const redisReply *e, long long since, const redisContext *client,
                              const char *client_name, const char *shard)
{
    assert_int_equal(e->elements, 8);
    assert_true(e->element[0]->integer >= 0);
    assert_true(e->element[1]->integer >= since && e->element[1]->integer <= time(NULL) + 1);
    long long took = e->element[2]->integer;
    assert_true(took >= SLOW_US);
    assert_true(took < fixture_bound_ms(5000) * 1000);
    struct sockaddr_in local;
    socklen_t local_len = sizeof(local);
    assert_int_equal(getsockname(client->fd, (struct sockaddr *)&local, &local_len), 0);
    char addr[32];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", ntohs(local.sin_port));
    assert_string_equal(e->element[4]->str, addr);
    assert_string_equal(e->element[5]->str, client_name);
    assert_string_equal(e->element[6]->str, shard);
    long long shard_us = e->element[7]->integer;
    assert_true(shard_us >= SLOW_US);
    assert_true(shard_us <= took);
}

static void test_slowlog_keeps_a_request_a_shard_delayed(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);
    fixture_expect_status(fixture_cmd(c, "CLIENT SETNAME slow-client"), "OK");
    fixture_expect_status(fixture_cmd(c, "SLOWLOG RESET"), "OK");
    char key[64];
    fixture_key_on_shard(c, "slow", 2, key, sizeof(key));
    long long before = (long long)time(NULL);
    pause_shards(f);
    fixture_expect_nil(fixture_cmd(c, "GET %s", key));
    await_shards(f);

    redisReply *r = fixture_cmd(c, "SLOWLOG GET");
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    const redisReply *e = NULL;
    for (size_t i = 0; i < r->elements && !e; i++) {
        const redisReply *args = r->element[i]->element[3];
        if (args->elements == 2 && strcmp(args->element[0]->str, "GET") == 0 &&
            strcmp(args->element[1]->str, key) == 0)
            e = r->element[i];
    }
    if (!e)
        fail_msg("the delayed GET is not in the slow log (%zu entries)", r->elements);
    expect_slow_entry(e, before, c, "slow-client", "s3"); /* shard index 2 */
    freeReplyObject(r);

    /* LEN counts the entries, RESET empties the log. */
    r = fixture_cmd(c, "SLOWLOG LEN");
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    assert_true(r->integer >= 1);
    freeReplyObject(r);
    fixture_expect_status(fixture_cmd(c, "SLOWLOG RESET"), "OK");
    fixture_expect_int(fixture_cmd(c, "SLOWLOG LEN"), 0);
    r = fixture_cmd(c, "SLOWLOG GET");
    fixture_expect_array(r, 0);
    freeReplyObject(r);
    fixture_close(f, c);
}

static void test_slowlog_cuts_arguments_as_redis(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);
    fixture_expect_status(fixture_cmd(c, "SLOWLOG RESET"), "OK");
    /* MGET of 40 keys (41 arguments), split over the shards, and a SET of
     * a 300-byte value, each while the shards are busy. */
    const char *argv[41];
    size_t lens[41];
    char names[40][16];
    argv[0] = "MGET";
    lens[0] = 4;
    for (int i = 0; i < 40; i++) {
        snprintf(names[i], sizeof(names[i]), "cut:%d", i);
        argv[i + 1] = names[i];
        lens[i + 1] = strlen(names[i]);
    }
    char value[301];
    memset(value, 'v', 300);
    value[300] = '\0';
    pause_shards(f);
    redisReply *r = fixture_cmd_argv(c, 41, argv, lens);
    fixture_expect_array(r, 40);
    freeReplyObject(r);
    await_shards(f);
    pause_shards(f);
    fixture_expect_status(fixture_cmd(c, "SET cut:big %s", value), "OK");
    await_shards(f);

    r = fixture_cmd(c, "SLOWLOG GET 10");
    const redisReply *mget = NULL, *set = NULL;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *args = r->element[i]->element[3];
        if (args->elements && strcmp(args->element[0]->str, "MGET") == 0)
            mget = args;
        if (args->elements && strcmp(args->element[0]->str, "SET") == 0)
            set = args;
    }
    if (!mget || !set)
        fail_msg("MGET or SET missing from the slow log (%zu entries)", r->elements);
    /* At most 32 arguments, the last saying how many more there were. */
    assert_int_equal(mget->elements, 32);
    assert_string_equal(mget->element[1]->str, "cut:0");
    assert_string_equal(mget->element[30]->str, "cut:29");
    assert_string_equal(mget->element[31]->str, "... (10 more arguments)");
    /* At most 128 bytes of an argument, then how many more. */
    assert_int_equal(set->elements, 3);
    char want[200];
    snprintf(want, sizeof(want), "%.128s... (172 more bytes)", value);
    assert_string_equal(set->element[2]->str, want);
    freeReplyObject(r);

    /* slowlog_max_len = 4: the oldest entries go. */
    r = fixture_cmd(c, "SLOWLOG LEN");
    assert_true(r->integer <= 4);
    freeReplyObject(r);
    fixture_close(f, c);
}

/* The entry of a request whose arguments are in args (n of them), found
 * in a SLOWLOG GET reply, or NULL. */
static const redisReply *entry_with(const redisReply *log, const char *const *args, size_t n)
{
    for (size_t i = 0; i < log->elements; i++) {
        const redisReply *got = log->element[i]->element[3];
        size_t j = 0;
        while (j < n && j < got->elements && strcmp(got->element[j]->str, args[j]) == 0)
            j++;
        if (j == n && got->elements == n)
            return log->element[i];
    }
    return NULL;
}

/* Appends a command to c's output, as redisAppendCommand does; returns
 * its length on the wire, so a test can wait for the proxy to have read
 * it (total_net_input_bytes). */
static long long append_counted(redisContext *c, const char *fmt, ...)
{
    char *cmd;
    va_list ap;
    va_start(ap, fmt);
    int len = redisvFormatCommand(&cmd, fmt, ap);
    va_end(ap);
    assert_true(len > 0);
    int rc = redisAppendFormattedCommand(c, cmd, (size_t)len);
    redisFreeCommand(cmd);
    assert_int_equal(rc, REDIS_OK);
    return len;
}

/* A request the slow log copies nothing of (one key, one shard) is read
 * back from its shard connection's output buffer when it turns out slow:
 * with requests of two clients pipelined in front of it and behind it on
 * that one connection (backend_connections = 1), each entry shows its own
 * request. The shard pauses writes (CLIENT PAUSE WRITE): the GET in front
 * is answered, the SET waits, and what is behind it on the connection
 * waits with it. */
static void test_slowlog_reads_a_pipelined_request_back(void **state)
{
    fixture *f = *state;
    redisContext *a = fixture_client(f);
    redisContext *b = fixture_client(f);
    fixture_expect_status(fixture_cmd(a, "CLIENT SETNAME pipe-a"), "OK");
    fixture_expect_status(fixture_cmd(b, "CLIENT SETNAME pipe-b"), "OK");
    char front[64], slow[64], behind[64], other_client[64], elsewhere[64], big_key[64];
    fixture_key_on_shard(a, "front", 2, front, sizeof(front));
    fixture_key_on_shard(a, "slow", 2, slow, sizeof(slow));
    fixture_key_on_shard(a, "behind", 2, behind, sizeof(behind));
    fixture_key_on_shard(a, "other", 2, other_client, sizeof(other_client));
    fixture_key_on_shard(a, "elsewhere", 0, elsewhere, sizeof(elsewhere));
    fixture_key_on_shard(a, "big", 2, big_key, sizeof(big_key));
    /* Longer than an argument is shown: cut as Redis cuts it. */
    char value[301];
    for (int i = 0; i < 300; i++)
        value[i] = (char)('a' + i % 26);
    value[300] = '\0';
    fixture_expect_status(fixture_cmd(a, "SLOWLOG RESET"), "OK");
    /* Each request is read (and so dispatched) by the proxy before the
     * next step: watch counts the bytes it has read. */
    redisContext *watch = fixture_client(f);
    long long read_want = fixture_info_int(watch, "total_net_input_bytes");

    /* Under request_timeout (2 s): ended by CLIENT UNPAUSE once every
     * request is queued behind the SET. */
    long long before = (long long)time(NULL);
    fixture_expect_status(fixture_cmd(fixture_shard(f, 2), "CLIENT PAUSE 1500 WRITE"), "OK");
    long long paused_at = fixture_now_ms();
    read_want += append_counted(a, "GET %s", front);
    read_want += append_counted(a, "SET %s %s", slow, value);
    read_want += append_counted(a, "GET %s", elsewhere);
    read_want += append_counted(a, "GET %s", behind);
    /* The GET in front is answered while the SET waits. */
    fixture_expect_nil(fixture_next_reply(a));
    /* Another client's request goes behind them on the same connection. */
    read_want += append_counted(b, "GET %s", other_client);
    for (int done = 0; !done;)
        assert_int_equal(redisBufferWrite(b, &done), REDIS_OK);
    fixture_wait_info_at_least(watch, "total_net_input_bytes", read_want);
    /* Then a big value, which the connection takes over from the client's
     * buffer without a copy (BUF_HANDOFF_MIN): the bytes it kept for the
     * requests in front are copied out first. */
    size_t big_len = 1024 * 1024 + 1;
    char *big = fixture_alloc(f, big_len);
    memset(big, 'x', big_len);
    read_want += append_counted(b, "SET %s %b", big_key, big, big_len);
    for (int done = 0; !done;)
        assert_int_equal(redisBufferWrite(b, &done), REDIS_OK);
    fixture_wait_info_at_least(watch, "total_net_input_bytes", read_want);
    fixture_close(f, watch);
    /* Every request has arrived: twice the threshold from now makes each
     * of them slow, the last one in too. */
    fixture_sleep_ms(2 * SLOW_US / 1000);
    fixture_expect_status(fixture_cmd(fixture_shard(f, 2), "CLIENT UNPAUSE"), "OK");
    fixture_expect_status(fixture_next_reply(a), "OK");
    fixture_expect_nil(fixture_next_reply(a));
    fixture_expect_nil(fixture_next_reply(a));
    fixture_expect_nil(fixture_next_reply(b));
    fixture_expect_status(fixture_next_reply(b), "OK");
    if (fixture_now_ms() - paused_at < SLOW_US / 1000)
        fail_msg("the shard's pause did not hold the SET back");

    redisReply *r = fixture_cmd(a, "SLOWLOG GET");
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    char cut[200];
    snprintf(cut, sizeof(cut), "%.128s... (172 more bytes)", value);
    const char *set_args[] = {"SET", slow, cut};
    const char *behind_args[] = {"GET", behind};
    const char *other_args[] = {"GET", other_client};
    const redisReply *set = entry_with(r, set_args, 3);
    const redisReply *after = entry_with(r, behind_args, 2);
    const redisReply *other = entry_with(r, other_args, 2);
    char big_cut[200];
    snprintf(big_cut, sizeof(big_cut), "%.128s... (%zu more bytes)", big, big_len - 128);
    const char *big_args[] = {"SET", big_key, big_cut};
    const redisReply *big_set = entry_with(r, big_args, 3);
    if (!set || !after || !other || !big_set) {
        char text[4096];
        fixture_reply_text(r, text, sizeof(text));
        fail_msg("an entry is missing or shows another request's bytes: %s", text);
    }
    /* All on shard index 2. */
    expect_slow_entry(set, before, a, "pipe-a", "s3");
    expect_slow_entry(after, before, a, "pipe-a", "s3");
    expect_slow_entry(other, before, b, "pipe-b", "s3");
    expect_slow_entry(big_set, before, b, "pipe-b", "s3");
    /* Whatever else is there (the GETs in front and elsewhere, should the
     * machine have made them slow too) shows its own request. */
    const char *front_args[] = {"GET", front};
    const char *elsewhere_args[] = {"GET", elsewhere};
    size_t known =
        4 + (entry_with(r, front_args, 2) != NULL) + (entry_with(r, elsewhere_args, 2) != NULL);
    assert_true(r->elements <= known);
    freeReplyObject(r);
    fixture_close(f, b);
    fixture_close(f, a);
}

/* ---- a write that waits for replicas (min_replicas_to_ack) ---- */

/* A replica of shard s3 and a second proxy over the fixture's shards whose
 * writes wait for one replica's acknowledgement, with a client of it:
 * stopped by stop_acked, after a failed assertion too. */
static struct {
    harness_proc replica;
    harness_proc proxy;
    redisContext *client;     /* to the proxy */
    redisContext *to_replica; /* to the replica */
} acked;

static int stop_acked(void **state)
{
    (void)state;
    if (acked.client)
        redisFree(acked.client);
    if (acked.to_replica)
        redisFree(acked.to_replica);
    acked.client = acked.to_replica = NULL;
    if (acked.proxy.pid)
        (void)harness_proc_stop(&acked.proxy, SIGTERM);
    if (acked.replica.pid) {
        (void)kill(acked.replica.pid, SIGCONT); /* a test may have stopped it */
        (void)harness_proc_stop(&acked.replica, SIGTERM);
    }
    return 0;
}

/* A write that waits for a replica (ack.c sends it, and WAIT behind it,
 * with fragments of its own and keeps a copy of its bytes for the slow
 * log) is logged with its own arguments, not WAIT's, and with the shard
 * that served it and the time it waited there. The replica is stopped
 * (SIGSTOP) while the write is in flight: the shard does the write at
 * once, and its WAIT holds the reply until the replica is continued. A
 * write the client saw answered sooner than slowlog_slower_than (which
 * bounds the proxy's time for it) makes no entry. */
static void test_slowlog_keeps_a_write_that_waited_for_its_replica(void **state)
{
    fixture *f = *state;
    assert_int_equal(harness_replica_start(&acked.replica, f->shards[2].port), 0);
    /* In sync once the shard counts its acknowledgement. */
    redisContext *shard = fixture_shard(f, 2);
    long long deadline = fixture_now_ms() + fixture_bound_ms(10000);
    for (long long replicas = 0; replicas < 1;) {
        assert_true(fixture_now_ms() < deadline);
        redisReply *r = fixture_cmd(shard, "WAIT 1 100");
        assert_int_equal(r->type, REDIS_REPLY_INTEGER);
        replicas = r->integer;
        freeReplyObject(r);
    }
    /* WAIT's timeout far above the replica's stop, under the client's
     * timeout (harness_connect) and min_replicas_timeout's maximum: the
     * reply comes from the replica's acknowledgement, never from the
     * timeout. */
    long long wait_timeout_ms = fixture_bound_ms(1000);
    if (wait_timeout_ms > 60000)
        wait_timeout_ms = 60000;
    char extra[200];
    snprintf(extra, sizeof(extra),
             "slowlog_slower_than = %d\nmin_replicas_to_ack = 1\nmin_replicas_timeout = %lld\n",
             SLOW_US, wait_timeout_ms);
    char *ini = harness_ini(f->shards, FIXTURE_SHARDS, extra);
    assert_non_null(ini);
    int started = harness_ringproxy_start(&acked.proxy, ini);
    free(ini);
    assert_int_equal(started, 0);
    redisContext *c = acked.client = harness_connect(acked.proxy.port);
    assert_non_null(c);
    redisContext *replica = acked.to_replica = harness_connect(acked.replica.port);
    assert_non_null(replica);
    fixture_expect_status(fixture_cmd(c, "CLIENT SETNAME acked-client"), "OK");
    char key[64];
    fixture_key_on_shard(c, "acked", 2, key, sizeof(key));
    fixture_expect_status(fixture_cmd(c, "SLOWLOG RESET"), "OK");

    /* Fast: the replica has each write when its OK comes (so it went the
     * replicas' way); the first one the client saw answered within the
     * threshold is the one looked for. */
    int fast = -1, slow_attempts = 0;
    for (int i = 0; i < 20 && fast < 0; i++) {
        long long sent = fixture_now_ms();
        fixture_expect_status(fixture_cmd(c, "SET %s fast%d", key, i), "OK");
        /* ms clock: the time taken is under the difference plus 1 */
        if (fixture_now_ms() - sent + 1 < SLOW_US / 1000)
            fast = i;
        else
            slow_attempts++;
        char want[16];
        snprintf(want, sizeof(want), "fast%d", i);
        fixture_expect_str(fixture_cmd(replica, "GET %s", key), want);
    }
    if (fast < 0)
        fail_msg("no write with its acknowledgement took under %d us", SLOW_US);
    char fast_value[16];
    snprintf(fast_value, sizeof(fast_value), "fast%d", fast);

    /* Slow: cut as Redis cuts an argument. */
    char value[301];
    for (int i = 0; i < 300; i++)
        value[i] = (char)('a' + i % 26);
    value[300] = '\0';
    assert_int_equal(kill(acked.replica.pid, SIGSTOP), 0);
    long long before = (long long)time(NULL);
    long long sent = fixture_now_ms();
    assert_int_equal(redisAppendCommand(c, "SET %s %s", key, value), REDIS_OK);
    for (int done = 0; !done;)
        assert_int_equal(redisBufferWrite(c, &done), REDIS_OK);
    /* The shard does the write at once; then WAIT waits. */
    deadline = fixture_now_ms() + fixture_bound_ms(2000);
    for (int written = 0; !written;) {
        assert_true(fixture_now_ms() < deadline);
        redisReply *r = fixture_cmd(shard, "GET %s", key);
        written = r->type == REDIS_REPLY_STRING && strcmp(r->str, value) == 0;
        freeReplyObject(r);
    }
    /* Held past the threshold by the stopped replica alone. */
    while (fixture_now_ms() - sent <= 2 * SLOW_US / 1000)
        fixture_sleep_ms(5);
    assert_int_equal(kill(acked.replica.pid, SIGCONT), 0);
    fixture_expect_status(fixture_next_reply(c), "OK"); /* acknowledged, not -NOREPLICAS */

    redisReply *r = fixture_cmd(c, "SLOWLOG GET -1");
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    char cut[200];
    snprintf(cut, sizeof(cut), "%.128s... (172 more bytes)", value);
    const char *slow_args[] = {"SET", key, cut};
    const char *fast_args[] = {"SET", key, fast_value};
    const redisReply *e = entry_with(r, slow_args, 3);
    if (!e || entry_with(r, fast_args, 3)) {
        char text[4096];
        fixture_reply_text(r, text, sizeof(text));
        fail_msg("the slow write is missing, or the fast one is there: %s", text);
    }
    expect_slow_entry(e, before, c, "acked-client", "s3"); /* shard index 2 */
    /* Nothing else but the writes the machine made slow (none shows WAIT). */
    assert_true(r->elements <= 1 + (size_t)slow_attempts);
    freeReplyObject(r);

    int status = harness_proc_stop(&acked.proxy, SIGTERM);
    assert_true(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static void test_slowlog_get_count_and_help(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);
    fixture_expect_status(fixture_cmd(c, "SLOWLOG RESET"), "OK");
    for (int i = 0; i < 2; i++) {
        pause_shards(f);
        fixture_expect_nil(fixture_cmd(c, "GET count:%d", i));
        await_shards(f);
    }
    redisReply *r = fixture_cmd(c, "SLOWLOG GET 1");
    fixture_expect_array(r, 1);
    /* Newest first. */
    long long newest = r->element[0]->element[0]->integer;
    freeReplyObject(r);
    r = fixture_cmd(c, "SLOWLOG GET -1");
    assert_true(r->elements >= 2);
    assert_int_equal(r->element[0]->element[0]->integer, newest);
    assert_true(r->element[1]->element[0]->integer < newest);
    freeReplyObject(r);
    fixture_expect_error(fixture_cmd(c, "SLOWLOG GET -2"),
                         "ERR count should be greater than or equal to -1");
    fixture_expect_error(fixture_cmd(c, "SLOWLOG GET x"), "ERR value is not an integer");
    r = fixture_cmd(c, "SLOWLOG HELP");
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    assert_true(r->elements > 4);
    freeReplyObject(r);
    fixture_expect_error(fixture_cmd(c, "SLOWLOG NOPE"), "ERR unknown subcommand");
    fixture_close(f, c);
}

/* ---- Prometheus ---- */

/* GET path from the metrics port with a raw socket (HTTP/1.0, the server
 * closes after the reply): the status code, and the body in *body
 * (malloc'd by f). */
static int http_get(fixture *f, const char *path, char **body)
{
    int fd = fixture_raw_connect(metrics_port);
    assert_true(fd >= 0);
    char req[256];
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path);
    assert_int_equal(fixture_raw_send(fd, req, (size_t)n), 0);
    size_t cap = 4 * 1024 * 1024;
    char *resp = fixture_alloc(f, cap);
    int closed = 0;
    size_t got = fixture_raw_read(fd, resp, cap, cap - 1, (int)fixture_bound_ms(5000), &closed);
    close(fd);
    assert_true(closed);
    int status = 0;
    assert_int_equal(sscanf(resp, "HTTP/1.%*d %d", &status), 1);
    char *start = strstr(resp, "\r\n\r\n");
    assert_non_null(start);
    *body = start + 4;
    assert_true((size_t)(*body - resp) <= got);
    return status;
}

/* One family of the exposition: its name, type and whether HELP came. */
typedef struct family {
    char name[128];
    char type[16];
    int help;
    int samples;
} family;

/* The state of the strict parser. */
typedef struct scrape {
    family fam[256];
    size_t nfam;
    family *cur; /* the family whose samples may follow */
    /* the histogram series being read: its labels but le, last le, count */
    char series[512];
    double last_le;
    double last_count;
    int saw_inf;
    double inf_count;
} scrape;

static int name_ok(const char *s, size_t n)
{
    if (n == 0 || !(isalpha((unsigned char)s[0]) || s[0] == '_' || s[0] == ':'))
        return 0;
    for (size_t i = 1; i < n; i++)
        if (!(isalnum((unsigned char)s[i]) || s[i] == '_' || s[i] == ':'))
            return 0;
    return 1;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

static family *family_named(scrape *sc, const char *name)
{
    for (size_t i = 0; i < sc->nfam; i++)
        if (strcmp(sc->fam[i].name, name) == 0)
            return &sc->fam[i];
    return NULL;
}

/* "# HELP name text" or "# TYPE name type". */
static void parse_comment(scrape *sc, const char *line)
{
    char kind[8], name[128];
    int off = 0;
    if (sscanf(line, "# %7s %127s %n", kind, name, &off) != 2 || !off)
        fail_msg("bad comment line: %s", line);
    if (!name_ok(name, strlen(name)))
        fail_msg("bad metric name in: %s", line);
    family *fam = family_named(sc, name);
    if (!fam) {
        assert_true(sc->nfam < 256);
        fam = &sc->fam[sc->nfam++];
        memset(fam, 0, sizeof(*fam));
        snprintf(fam->name, sizeof(fam->name), "%s", name);
    } else if (fam->samples) {
        fail_msg("%s for %s after its samples", kind, name);
    }
    if (strcmp(kind, "HELP") == 0) {
        if (fam->help++)
            fail_msg("second HELP for %s", name);
        if (!line[off])
            fail_msg("empty HELP for %s", name);
    } else if (strcmp(kind, "TYPE") == 0) {
        if (fam->type[0])
            fail_msg("second TYPE for %s", name);
        const char *t = line + off;
        if (strcmp(t, "counter") && strcmp(t, "gauge") && strcmp(t, "histogram") &&
            strcmp(t, "summary") && strcmp(t, "untyped"))
            fail_msg("unknown type in: %s", line);
        snprintf(fam->type, sizeof(fam->type), "%s", t);
        if (strcmp(t, "counter") == 0 && !ends_with(name, "_total"))
            fail_msg("counter %s does not end in _total", name);
    } else {
        fail_msg("comment is neither HELP nor TYPE: %s", line);
    }
    sc->cur = fam;
}

/* Reads the labels at *p ("{a="x",b="y"}"), writes them but le to out and
 * le's value to *le (NAN when absent). Returns the end. */
static const char *parse_labels(const char *p, char *out, size_t cap, double *le)
{
    size_t o = 0;
    *le = NAN;
    out[0] = '\0';
    if (*p != '{')
        return p;
    p++;
    while (*p != '}') {
        const char *name = p;
        while (*p && *p != '=')
            p++;
        if (*p != '=' || !name_ok(name, (size_t)(p - name)))
            fail_msg("bad label name at %s", name);
        size_t name_len = (size_t)(p - name);
        p++;
        if (*p++ != '"')
            fail_msg("label value not quoted at %s", name);
        char value[256];
        size_t v = 0;
        for (; *p != '"'; p++) {
            if (!*p)
                fail_msg("unterminated label value at %s", name);
            if (*p == '\\') {
                p++;
                if (*p != '\\' && *p != '"' && *p != 'n')
                    fail_msg("bad escape in label at %s", name);
            }
            if (v < sizeof(value) - 1)
                value[v++] = *p;
        }
        value[v] = '\0';
        p++;
        if (name_len == 2 && strncmp(name, "le", 2) == 0) {
            char *end;
            *le = strcmp(value, "+Inf") == 0 ? INFINITY : strtod(value, &end);
            if (strcmp(value, "+Inf") && *end)
                fail_msg("bad le value %s", value);
        } else {
            o += (size_t)snprintf(out + o, cap > o ? cap - o : 0, "%.*s=%s,", (int)name_len, name,
                                  value);
        }
        if (*p == ',')
            p++;
        else if (*p != '}')
            fail_msg("expected , or } at %s", p);
    }
    return p + 1;
}

/* A sample line; its family must be the one whose TYPE came last. */
static void parse_sample(scrape *sc, const char *line)
{
    const char *p = line;
    while (*p && *p != '{' && *p != ' ')
        p++;
    char name[128];
    snprintf(name, sizeof(name), "%.*s", (int)(p - line), line);
    if (!name_ok(name, strlen(name)))
        fail_msg("bad metric name in: %s", line);
    family *fam = sc->cur;
    if (!fam || !fam->type[0])
        fail_msg("sample before any TYPE: %s", line);
    const char *suffix = name + strlen(fam->name);
    int histogram = strcmp(fam->type, "histogram") == 0;
    if (strncmp(name, fam->name, strlen(fam->name)) != 0 ||
        (histogram ? strcmp(suffix, "_bucket") && strcmp(suffix, "_sum") && strcmp(suffix, "_count")
                   : *suffix != '\0'))
        fail_msg("sample %s outside its family %s", name, fam->name);
    char labels[512];
    double le;
    p = parse_labels(p, labels, sizeof(labels), &le);
    if (*p++ != ' ')
        fail_msg("no space before the value: %s", line);
    char *end;
    double value = strtod(p, &end);
    if (end == p || (*end && *end != ' '))
        fail_msg("bad value in: %s", line);
    if (!isnan(le) && strcmp(suffix, "_bucket") != 0)
        fail_msg("le outside a _bucket: %s", line);
    fam->samples++;
    if (!histogram)
        return;
    if (strcmp(suffix, "_bucket") == 0) {
        if (isnan(le))
            fail_msg("bucket without le: %s", line);
        if (strcmp(labels, sc->series) != 0 || sc->saw_inf) { /* a new series */
            if (sc->series[0] && !sc->saw_inf)
                fail_msg("series %s ends without le=\"+Inf\"", sc->series);
            snprintf(sc->series, sizeof(sc->series), "%s", labels);
            sc->last_le = -INFINITY;
            sc->last_count = 0;
            sc->saw_inf = 0;
        }
        if (le <= sc->last_le)
            fail_msg("le not increasing: %s", line);
        if (value < sc->last_count)
            fail_msg("buckets not cumulative: %s", line);
        sc->last_le = le;
        sc->last_count = value;
        if (isinf(le)) {
            sc->saw_inf = 1;
            sc->inf_count = value;
        }
    } else if (strcmp(suffix, "_count") == 0) {
        if (!sc->saw_inf || strcmp(labels, sc->series) != 0)
            fail_msg("_count without its buckets: %s", line);
        if (value != sc->inf_count)
            fail_msg("_count %g differs from the +Inf bucket %g: %s", value, sc->inf_count, line);
    }
}

/* Checks the whole exposition; fails the test at the first bad line. */
static void check_exposition(const char *body)
{
    scrape *sc = calloc(1, sizeof(*sc));
    assert_non_null(sc);
    assert_true(strlen(body) > 0);
    assert_true(body[strlen(body) - 1] == '\n');
    const char *p = body;
    while (*p) {
        const char *nl = strchr(p, '\n');
        assert_non_null(nl);
        char line[1024];
        snprintf(line, sizeof(line), "%.*s", (int)(nl - p), p);
        if (!line[0])
            fail_msg("empty line in the exposition");
        if (line[0] == '#')
            parse_comment(sc, line);
        else
            parse_sample(sc, line);
        p = nl + 1;
    }
    for (size_t i = 0; i < sc->nfam; i++)
        if (!sc->fam[i].help || !sc->fam[i].type[0])
            fail_msg("%s lacks HELP or TYPE", sc->fam[i].name);
    free(sc);
}

/* The value of the sample line starting with "name " or "name{labels} "
 * (sample given whole, e.g. ringproxy_commands_total{cmd="get"}); -1 when
 * absent. */
static double metric(const char *body, const char *sample)
{
    char key[256];
    snprintf(key, sizeof(key), "\n%s ", sample);
    const char *at = strstr(body, key);
    return at ? strtod(at + strlen(key), NULL) : -1;
}

/* promtool check metrics, when promtool is installed: 1 passed, 0 absent. */
static int promtool_check(fixture *f, const char *body)
{
    if (system("command -v promtool >/dev/null 2>&1") != 0)
        return 0;
    char path[] = "/tmp/ringproxy-metrics-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, body, strlen(body)), (ssize_t)strlen(body));
    close(fd);
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "promtool check metrics < %s", path);
    int rc = system(cmd);
    unlink(path);
    (void)f;
    if (rc != 0)
        fail_msg("promtool check metrics failed (%d)", rc);
    return 1;
}

static void test_prometheus_scrape(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);
    fixture_expect_status(fixture_cmd(c, "SET prom:1 v"), "OK"); /* a get row exists */
    fixture_expect_str(fixture_cmd(c, "GET prom:1"), "v");
    char *before;
    assert_int_equal(http_get(f, "/metrics", &before), 200);
    check_exposition(before);

    for (int i = 0; i < 20; i++)
        fixture_expect_str(fixture_cmd(c, "GET prom:1"), "v");
    fixture_expect_error(fixture_cmd(c, "INCR prom:1"), "ERR value is not an integer");
    char *after;
    assert_int_equal(http_get(f, "/metrics", &after), 200);
    check_exposition(after);
    (void)promtool_check(f, after);

    const char *get = "ringproxy_commands_total{cmd=\"get\"}";
    assert_true(metric(after, get) - metric(before, get) >= 20);
    const char *count = "ringproxy_command_duration_seconds_count{cmd=\"get\"}";
    assert_true(metric(after, count) - metric(before, count) >= 20);
    assert_true(metric(after, "ringproxy_command_errors_total{cmd=\"incr\"}") >= 1);
    assert_true(metric(after, "ringproxy_errors_total{kind=\"ERR\"}") >= 1);
    assert_true(metric(after, "ringproxy_net_input_bytes_total") >
                metric(before, "ringproxy_net_input_bytes_total"));
    assert_true(metric(after, "ringproxy_connected_clients") >= 1);
    for (int i = 1; i <= FIXTURE_SHARDS; i++) {
        char up[64];
        snprintf(up, sizeof(up), "ringproxy_shard_up{shard=\"s%d\"}", i);
        assert_true(metric(after, up) == 1);
    }
    assert_true(metric(after, "ringproxy_class_commands_total{class=\"forward\"}") >= 21);
    assert_true(metric(after, "ringproxy_rebalance_running") == 0);
    assert_true(metric(after, "ringproxy_reloads_total") >= 0);

    /* Other paths are not served. */
    char *other;
    assert_int_equal(http_get(f, "/", &other), 404);
    assert_int_equal(http_get(f, "/metricsx", &other), 404);
    fixture_close(f, c);
}

/* A reload is counted; one that fails too. */
static void test_prometheus_counts_reloads(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);
    char *before, *after;
    assert_int_equal(http_get(f, "/metrics", &before), 200);
    fixture_expect_status(fixture_cmd(c, "PROXY RELOAD"), "OK");
    assert_int_equal(http_get(f, "/metrics", &after), 200);
    check_exposition(after);
    assert_int_equal(metric(after, "ringproxy_reloads_total"),
                     metric(before, "ringproxy_reloads_total") + 1);
    assert_int_equal(metric(after, "ringproxy_config_epoch"),
                     metric(before, "ringproxy_config_epoch") + 1);
    fixture_close(f, c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_commandstats_time_and_count_failures),
        cmocka_unit_test(test_latencystats_after_traffic),
        cmocka_unit_test(test_slowlog_keeps_a_request_a_shard_delayed),
        cmocka_unit_test(test_slowlog_cuts_arguments_as_redis),
        cmocka_unit_test(test_slowlog_reads_a_pipelined_request_back),
        cmocka_unit_test_teardown(test_slowlog_keeps_a_write_that_waited_for_its_replica,
                                  stop_acked),
        cmocka_unit_test(test_slowlog_get_count_and_help),
        cmocka_unit_test(test_prometheus_scrape),
        cmocka_unit_test(test_prometheus_counts_reloads),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
