/* What monitoring tools, admin UIs and benchmarks ask of a Redis server,
 * answered for the proxy's own clients across four shards: CONFIG GET shows
 * the proxy's settings under their proxy.ini names (passwords hidden) and
 * the shards' parameters (a difference between shards named), CONFIG SET is
 * refused unless allow_config_set = yes (then every shard takes it), and a
 * proxy key is never set that way; INFO carries what monitoring reads (the
 * shards' keyspace summed, hit counts, blocked clients); CLIENT SETINFO,
 * NO-EVICT, REPLY, KILL, PAUSE and UNPAUSE act on the proxy's own clients
 * (never pausing the shards), CLIENT UNBLOCK unblocks a client's command
 * on its shard; SAVE and SHUTDOWN inside MULTI get Redis's own refusal. */
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

static int group_setup(void **state)
{
    fixture *f = fixture_start("requirepass = secret\n");
    *state = f;
    return f != NULL ? 0 : -1;
}

static int allowed_group_setup(void **state)
{
    fixture *f = fixture_start("allow_config_set = yes\n");
    *state = f;
    return f != NULL ? 0 : -1;
}

static int group_teardown(void **state)
{
    return fixture_stop(*state);
}

static redisContext *authed_client(fixture *f)
{
    redisContext *c = fixture_client(f);
    fixture_expect_status(fixture_cmd(c, "AUTH secret"), "OK");
    return c;
}

/* The value CONFIG GET gave for name, or NULL when it gave none. */
static const char *pair_value(const redisReply *r, const char *name)
{
    for (size_t i = 0; i + 1 < r->elements; i += 2)
        if (strcmp(r->element[i]->str, name) == 0)
            return r->element[i + 1]->str;
    return NULL;
}

static void expect_pair(const redisReply *r, const char *name, const char *value)
{
    const char *got = pair_value(r, name);
    if (!got)
        fail_msg("CONFIG GET gave no '%s'", name);
    assert_string_equal(got, value);
}

static void test_config_get_shows_proxy_settings(void **state)
{
    fixture *f = *state;
    redisContext *c = authed_client(f);
    redisReply *r = fixture_cmd(c, "CONFIG GET max_clients");
    fixture_expect_array(r, 2);
    expect_pair(r, "max_clients", "10000");
    freeReplyObject(r);

    /* Redis's glob, without regard to case; each key once however many
     * patterns match it. */
    r = fixture_cmd(c, "CONFIG GET MIGRATE_* migrate_batch");
    fixture_expect_array(r, 6);
    expect_pair(r, "migrate_batch", "1000");
    expect_pair(r, "migrate_rate", "0");
    expect_pair(r, "migrate_timeout", "5000");
    freeReplyObject(r);

    r = fixture_cmd(c, "CONFIG GET max_bulk_len hash allow_config_set watch_config");
    expect_pair(r, "max_bulk_len", "512mb");
    expect_pair(r, "hash", "murmur3");
    expect_pair(r, "allow_config_set", "no");
    expect_pair(r, "watch_config", "yes");
    freeReplyObject(r);

    fixture_expect_array(r = fixture_cmd(c, "CONFIG GET no-such-thing"), 0);
    freeReplyObject(r);
    fixture_close(f, c);
}

static void test_config_get_never_shows_passwords(void **state)
{
    fixture *f = *state;
    redisContext *c = authed_client(f);
    redisReply *r = fixture_cmd(c, "CONFIG GET *pass*");
    char text[4096];
    fixture_reply_text(r, text, sizeof(text));
    assert_null(strstr(text, "secret"));
    expect_pair(r, "requirepass", "(hidden)");
    expect_pair(r, "backend_password", "");
    /* requirepass is the proxy's: listed once. */
    size_t seen = 0;
    for (size_t i = 0; i < r->elements; i += 2)
        seen += strcmp(r->element[i]->str, "requirepass") == 0;
    assert_int_equal(seen, 1);
    freeReplyObject(r);
    fixture_close(f, c);
}

static void test_config_get_asks_the_shards(void **state)
{
    fixture *f = *state;
    redisContext *c = authed_client(f);
    /* What redis-benchmark and admin UIs read. */
    redisReply *r = fixture_cmd(c, "CONFIG GET save appendonly databases maxmemory-policy");
    fixture_expect_array(r, 8);
    expect_pair(r, "appendonly", "no");
    expect_pair(r, "maxmemory-policy", "noeviction");
    assert_non_null(pair_value(r, "save"));
    assert_non_null(pair_value(r, "databases"));
    freeReplyObject(r);

    /* A parameter set differently on one shard: the first shard's value,
     * and the difference named with every shard's value. */
    fixture_expect_status(fixture_cmd(fixture_shard(f, 2), "CONFIG SET maxmemory 123mb"), "OK");
    r = fixture_cmd(c, "CONFIG GET maxmemory");
    fixture_expect_array(r, 4);
    expect_pair(r, "maxmemory", "0");
    const char *differ = pair_value(r, "ringproxy-shards-differ");
    assert_non_null(differ);
    assert_non_null(strstr(differ, "maxmemory:"));
    assert_non_null(strstr(differ, "s1=0"));
    assert_non_null(strstr(differ, "s3=128974848"));
    freeReplyObject(r);
    fixture_expect_status(fixture_cmd(fixture_shard(f, 2), "CONFIG SET maxmemory 0"), "OK");
    fixture_close(f, c);
}

static void test_config_set_is_refused(void **state)
{
    fixture *f = *state;
    redisContext *c = authed_client(f);
    fixture_expect_error(fixture_cmd(c, "CONFIG SET maxmemory 1mb"),
                         "ERR CONFIG SET of a Redis parameter is disabled in ringproxy "
                         "(allow_config_set = no)");
    fixture_expect_error(fixture_cmd(c, "CONFIG SET max_clients 5"),
                         "ERR 'max_clients' is a ringproxy setting: change it in proxy.ini, "
                         "then run PROXY RELOAD");
    redisReply *r = fixture_cmd(fixture_shard(f, 0), "CONFIG GET maxmemory");
    expect_pair(r, "maxmemory", "0");
    freeReplyObject(r);
    fixture_close(f, c);
}

static void test_config_set_reaches_every_shard_when_allowed(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);
    fixture_expect_status(fixture_cmd(c, "CONFIG SET maxmemory-policy allkeys-lru"), "OK");
    for (int i = 0; i < FIXTURE_SHARDS; i++) {
        redisReply *r = fixture_cmd(fixture_shard(f, i), "CONFIG GET maxmemory-policy");
        expect_pair(r, "maxmemory-policy", "allkeys-lru");
        freeReplyObject(r);
    }
    redisReply *r = fixture_cmd(c, "CONFIG GET maxmemory-policy");
    fixture_expect_array(r, 2); /* the same everywhere: nothing differs */
    freeReplyObject(r);
    fixture_expect_error(fixture_cmd(c, "CONFIG SET maxmemory-policy no-such-policy"), "ERR");
    fixture_expect_error(fixture_cmd(c, "CONFIG SET maxmemory"), "ERR wrong number");
    fixture_expect_error(fixture_cmd(c, "CONFIG SET maxmemory 1mb timeout"), "ERR wrong number");
    fixture_expect_error(fixture_cmd(c, "CONFIG SET request_timeout 1"),
                         "ERR 'request_timeout' is a ringproxy setting");
    fixture_expect_status(fixture_cmd(c, "CONFIG SET maxmemory-policy noeviction"), "OK");
    fixture_close(f, c);
}

/* The INFO text of the proxy (a bulk string), owned by f; sections NULL:
 * plain INFO. */
static const char *info(fixture *f, redisContext *c, const char *sections)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "INFO %s", sections ? sections : "");
    redisReply *r = fixture_cmd(c, cmd); /* hiredis splits the sections at spaces */
    if (r->type != REDIS_REPLY_STRING)
        fail_msg("INFO %s: not a bulk string", sections ? sections : "");
    char *text = fixture_alloc(f, r->len + 1);
    memcpy(text, r->str, r->len);
    freeReplyObject(r);
    return text;
}

/* The number after "<name>:" in an INFO text; fails the test without it. */
static long long info_number(const char *text, const char *name)
{
    char key[64];
    snprintf(key, sizeof(key), "\n%s:", name);
    const char *at = strstr(text, key);
    if (!at)
        fail_msg("INFO has no %s:\n%s", name, text);
    return strtoll(at + strlen(key), NULL, 10);
}

static void test_info_keyspace_sums_the_shards(void **state)
{
    fixture *f = *state;
    redisContext *c = authed_client(f);
    fixture_expect_status(fixture_cmd(c, "FLUSHDB"), "OK");
    const char *text = info(f, c, "keyspace");
    assert_string_equal(text, "# Keyspace\r\n"); /* no db0 line while empty, as Redis */
    for (int i = 0; i < 100; i++)
        fixture_expect_status(fixture_cmd(c, "SET ks:%d v", i), "OK");
    for (int i = 0; i < 10; i++)
        fixture_expect_int(fixture_cmd(c, "EXPIRE ks:%d 1000", i), 1);
    text = info(f, c, "keyspace");
    const char *line = strstr(text, "db0:keys=100,expires=10,avg_ttl=");
    if (!line)
        fail_msg("INFO keyspace: %s", text);
    long long avg_ttl = strtoll(line + strlen("db0:keys=100,expires=10,avg_ttl="), NULL, 10);
    /* Redis estimates avg_ttl as its expiry cycle samples keys: 0 until it
     * has, never above the ttl given. */
    assert_true(avg_ttl >= 0 && avg_ttl <= 1000000);
    /* INFO all carries it too, last, as in Redis; plain INFO stays local
     * (it must answer while a shard is stalled). */
    text = info(f, c, "all");
    assert_non_null(strstr(text, "\r\n\r\n# Keyspace\r\ndb0:keys=100,"));
    assert_null(strstr(info(f, c, NULL), "# Keyspace"));
    fixture_expect_status(fixture_cmd(c, "FLUSHDB"), "OK");
    fixture_close(f, c);
}

static void test_info_fields_monitoring_reads(void **state)
{
    fixture *f = *state;
    redisContext *c = authed_client(f);
    /* The shards count every read, also the proxy's own rare reads of its
     * store (a ring record poll after a store connection came back): one
     * may fall between the two INFOs, so up to three tries for a window
     * with the client's reads alone. */
    const char *after = NULL;
    long long hits = 0, misses = 0;
    for (int attempt = 0; attempt < 3 && (hits != 2 || misses != 1); attempt++) {
        const char *before = info(f, c, "stats keyspace");
        fixture_expect_status(fixture_cmd(c, "SET hit:1 v"), "OK");
        fixture_expect_str(fixture_cmd(c, "GET hit:1"), "v");
        fixture_expect_str(fixture_cmd(c, "GET hit:1"), "v");
        fixture_expect_nil(fixture_cmd(c, "GET miss:1"));
        after = info(f, c, "stats keyspace");
        hits = info_number(after, "keyspace_hits") - info_number(before, "keyspace_hits");
        misses = info_number(after, "keyspace_misses") - info_number(before, "keyspace_misses");
    }
    assert_int_equal(hits, 2);
    assert_int_equal(misses, 1);
    /* Existing fields keep their place and names. */
    assert_true(info_number(after, "total_commands_processed") > 0);
    assert_true(info_number(after, "total_net_input_bytes") > 0);
    assert_true(info_number(after, "total_net_output_bytes") > 0);
    (void)info_number(after, "instantaneous_ops_per_sec");
    (void)info_number(after, "rejected_connections");
    const char *stats_only = info(f, c, "stats"); /* local: no shard asked */
    assert_null(strstr(stats_only, "# Keyspace"));
    assert_null(strstr(stats_only, "keyspace_hits"));

    const char *clients = info(f, c, "clients");
    assert_int_equal(info_number(clients, "blocked_clients"), 0);
    assert_int_equal(info_number(clients, "tracking_clients"), 0);
    assert_true(info_number(clients, "connected_clients") >= 1);

    for (size_t i = 0; i < 2; i++) {
        const char *every = info(f, c, i ? "everything" : "all");
        assert_non_null(strstr(every, "# Server\r\n"));
        assert_non_null(strstr(every, "# Stats\r\n"));
        assert_non_null(strstr(every, "# Shards\r\n"));
        assert_non_null(strstr(every, "# Keyspace\r\n"));
        (void)info_number(every, "keyspace_hits");
    }
    fixture_close(f, c);
}

/* The calls= and rejected_calls= of cmdstat_<name> in text (0 when absent). */
static void cmdstat(const char *text, const char *name, long long *calls, long long *rejected)
{
    char key[64];
    snprintf(key, sizeof(key), "\ncmdstat_%s:calls=", name);
    const char *at = strstr(text, key);
    *calls = *rejected = 0;
    if (!at)
        return;
    *calls = strtoll(at + strlen(key), NULL, 10);
    const char *rej = strstr(at, "rejected_calls=");
    assert_non_null(rej);
    *rejected = strtoll(rej + strlen("rejected_calls="), NULL, 10);
}

static void test_info_commandstats(void **state)
{
    fixture *f = *state;
    redisContext *c = authed_client(f);
    long long calls0, rejected0, calls1, rejected1;
    cmdstat(info(f, c, "commandstats"), "get", &calls0, &rejected0);
    for (int i = 0; i < 5; i++)
        fixture_expect_nil(fixture_cmd(c, "GET cs:%d", i));
    fixture_expect_error(fixture_cmd(c, "GET"), "ERR wrong number of arguments");
    const char *text = info(f, c, "commandstats");
    assert_true(strncmp(text, "# Commandstats\r\n", 16) == 0);
    cmdstat(text, "get", &calls1, &rejected1);
    assert_int_equal(calls1 - calls0, 5);
    assert_int_equal(rejected1 - rejected0, 1);
    assert_non_null(strstr(text, "cmdstat_get:calls="));
    /* usec is the calls' time in the proxy: a forwarded GET takes some. */
    const char *usec = strstr(strstr(text, "cmdstat_get:calls="), ",usec=");
    assert_non_null(usec);
    assert_true(strtoll(usec + strlen(",usec="), NULL, 10) > 0);
    assert_non_null(strstr(text, ",usec_per_call="));
    /* Subcommands by Redis's name; unsupported ones are rejections. */
    fixture_expect_error(fixture_cmd(c, "CLIENT TRACKING on"), "ERR unsupported command");
    text = info(f, c, "commandstats");
    assert_non_null(strstr(text, "\ncmdstat_client|tracking:calls=0,"));
    assert_non_null(strstr(text, "\ncmdstat_info:calls="));
    /* Not in plain INFO, as in Redis; in INFO all and everything. */
    assert_null(strstr(info(f, c, NULL), "# Commandstats"));
    assert_non_null(strstr(info(f, c, "all"), "# Commandstats"));
    assert_non_null(strstr(info(f, c, "everything"), "# Commandstats"));
    fixture_close(f, c);
}

/* A blocked client is counted while its command waits. */
static void test_info_counts_blocked_clients(void **state)
{
    fixture *f = *state;
    redisContext *c = authed_client(f), *blocker = authed_client(f);
    if (redisAppendCommand(blocker, "BLPOP blocked:list 10") != REDIS_OK)
        fail_msg("BLPOP not sent");
    int done = 0;
    while (!done)
        if (redisBufferWrite(blocker, &done) != REDIS_OK)
            fail_msg("BLPOP not sent");
    long long blocked = 0;
    for (long long t0 = fixture_now_ms(); blocked == 0 && fixture_now_ms() - t0 < 5000;) {
        blocked = info_number(info(f, c, "clients"), "blocked_clients");
        if (!blocked)
            fixture_sleep_ms(20);
    }
    assert_int_equal(blocked, 1);
    fixture_expect_int(fixture_cmd(c, "RPUSH blocked:list x"), 1);
    redisReply *r = fixture_next_reply(blocker);
    fixture_expect_array(r, 2);
    freeReplyObject(r);
    assert_int_equal(info_number(info(f, c, "clients"), "blocked_clients"), 0);
    fixture_close(f, blocker);
    fixture_close(f, c);
}

/* With a shard down INFO still answers, the keyspace summed over the
 * shards that do. Last of its group: the shard comes back empty. */
static void test_info_with_a_shard_down(void **state)
{
    fixture *f = *state;
    redisContext *c = authed_client(f);
    for (int i = 0; i < 100; i++)
        fixture_expect_status(fixture_cmd(c, "SET down:%d v", i), "OK");
    long long others = 0;
    for (int i = 0; i < FIXTURE_SHARDS - 1; i++) {
        redisReply *r = fixture_cmd(fixture_shard(f, i), "DBSIZE");
        others += r->integer;
        freeReplyObject(r);
    }
    assert_true(harness_proc_stop(&f->shards[FIXTURE_SHARDS - 1], SIGKILL) != -1);
    const char *text = info(f, c, "all");
    char line[64];
    snprintf(line, sizeof(line), "\r\ndb0:keys=%lld,", others);
    if (!strstr(text, line))
        fail_msg("INFO with s4 down lacks %s:\n%s", line + 2, text);
    assert_int_equal(harness_redis_restart(&f->shards[FIXTURE_SHARDS - 1]), 0);
    fixture_close(f, c);
}

/* The CLIENT LIST line of the client whose id is id ("" when none). */
static void client_line(fixture *f, redisContext *c, long long id, char *out, size_t cap)
{
    redisReply *r = fixture_cmd(c, "CLIENT LIST ID %lld", id);
    if (r->type != REDIS_REPLY_STRING)
        fail_msg("CLIENT LIST: not a bulk string");
    snprintf(out, cap, "%s", r->str);
    freeReplyObject(r);
    (void)f;
}

static long long client_id(redisContext *c)
{
    redisReply *r = fixture_cmd(c, "CLIENT ID");
    long long id = r->integer;
    freeReplyObject(r);
    return id;
}

static void test_client_setinfo_and_no_evict(void **state)
{
    fixture *f = *state;
    redisContext *c = authed_client(f);
    fixture_expect_status(fixture_cmd(c, "CLIENT SETINFO lib-name redis-py"), "OK");
    fixture_expect_status(fixture_cmd(c, "CLIENT SETINFO LIB-VER 5.0.1"), "OK");
    fixture_expect_error(fixture_cmd(c, "CLIENT SETINFO lib-name %s", "a b"),
                         "ERR lib-name cannot contain spaces");
    fixture_expect_error(fixture_cmd(c, "CLIENT SETINFO lib-color red"),
                         "ERR Unrecognized option 'lib-color'");
    char line[1024];
    client_line(f, c, client_id(c), line, sizeof(line));
    /* Redis 7.2's fields, after Redis's others; the proxy's state= stays
     * last. */
    const char *cmd_at = strstr(line, " cmd=");
    const char *lib_at = strstr(line, " lib-name=redis-py lib-ver=5.0.1 state=");
    if (!cmd_at || !lib_at || lib_at < cmd_at)
        fail_msg("CLIENT LIST line: %s", line);
    redisReply *r = fixture_cmd(c, "CLIENT INFO");
    assert_non_null(strstr(r->str, "lib-name=redis-py lib-ver=5.0.1"));
    freeReplyObject(r);

    fixture_expect_status(fixture_cmd(c, "CLIENT NO-EVICT on"), "OK");
    fixture_expect_status(fixture_cmd(c, "CLIENT NO-EVICT OFF"), "OK");
    fixture_expect_error(fixture_cmd(c, "CLIENT NO-EVICT maybe"), "ERR syntax error");
    fixture_close(f, c);
}

/* Sends a command without waiting for its reply. */
static void send_only(redisContext *c, const char *cmd)
{
    if (redisAppendCommand(c, cmd) != REDIS_OK)
        fail_msg("%s not queued", cmd);
}

static void test_client_reply_off_skip_on(void **state)
{
    fixture *f = *state;
    redisContext *c = authed_client(f);
    /* OFF: neither it nor what follows is answered, until ON. */
    send_only(c, "CLIENT REPLY OFF");
    send_only(c, "SET reply:1 a");
    send_only(c, "GET no-such-key");
    send_only(c, "CLIENT REPLY ON");
    send_only(c, "GET reply:1");
    fixture_expect_status(fixture_next_reply(c), "OK"); /* ON's */
    fixture_expect_str(fixture_next_reply(c), "a");
    /* SKIP: it and the next command are not answered. */
    send_only(c, "CLIENT REPLY SKIP");
    send_only(c, "SET reply:2 b");
    send_only(c, "GET reply:2");
    fixture_expect_str(fixture_next_reply(c), "b");
    fixture_expect_error(fixture_cmd(c, "CLIENT REPLY maybe"), "ERR syntax error");
    fixture_expect_status(fixture_cmd(c, "PING"), "PONG");
    fixture_close(f, c);
}

/* Whether the server closed c: a command gets no reply. */
static int closed(redisContext *c)
{
    redisReply *r = redisCommand(c, "PING");
    if (r)
        freeReplyObject(r);
    return r == NULL;
}

static void test_client_kill_filters(void **state)
{
    fixture *f = *state;
    redisContext *c = authed_client(f);
    redisContext *victim = authed_client(f);
    long long victim_id = client_id(victim);

    fixture_expect_int(fixture_cmd(c, "CLIENT KILL ID 999999"), 0);
    fixture_expect_int(fixture_cmd(c, "CLIENT KILL USER nobody"), 0);
    fixture_expect_error(fixture_cmd(c, "CLIENT KILL ID x"), "ERR client-id should be");
    fixture_expect_error(fixture_cmd(c, "CLIENT KILL ID 1 SKIPME"), "ERR syntax error");
    fixture_expect_error(fixture_cmd(c, "CLIENT KILL ID"), "ERR No such client"); /* ip:port */
    fixture_expect_error(fixture_cmd(c, "CLIENT KILL 1.2.3.4:5"), "ERR No such client");
    /* SKIPME yes by default: the caller survives a filter it matches. */
    fixture_expect_int(fixture_cmd(c, "CLIENT KILL ID %lld", client_id(c)), 0);
    fixture_expect_int(fixture_cmd(c, "CLIENT KILL ID %lld USER default", victim_id), 1);
    assert_true(closed(victim));
    fixture_close(f, victim);

    /* ADDR, LADDR and the old ip:port form. */
    victim = authed_client(f);
    char line[1024], addr[128];
    client_line(f, c, client_id(victim), line, sizeof(line));
    const char *at = strstr(line, "addr=");
    assert_non_null(at);
    snprintf(addr, sizeof(addr), "%.*s", (int)strcspn(at + 5, " "), at + 5);
    fixture_expect_int(fixture_cmd(c, "CLIENT KILL ADDR %s LADDR 127.0.0.1:1", addr), 0);
    fixture_expect_int(
        fixture_cmd(c, "CLIENT KILL ADDR %s LADDR 127.0.0.1:%d", addr, f->proxy.port), 1);
    assert_true(closed(victim));
    fixture_close(f, victim);
    victim = authed_client(f);
    client_line(f, c, client_id(victim), line, sizeof(line));
    at = strstr(line, "addr=");
    snprintf(addr, sizeof(addr), "%.*s", (int)strcspn(at + 5, " "), at + 5);
    fixture_expect_status(fixture_cmd(c, "CLIENT KILL %s", addr), "OK");
    assert_true(closed(victim));
    fixture_close(f, victim);

    /* SKIPME no: the caller itself, once its reply is out. */
    redisReply *r = fixture_cmd(c, "CLIENT KILL ID %lld SKIPME no", client_id(c));
    fixture_expect_int(r, 1);
    assert_true(closed(c));
    fixture_close(f, c);
}

/* SAVE, SHUTDOWN, SYNC and PSYNC between MULTI and EXEC: Redis's own
 * refusal, which also aborts the transaction, rather than "unsupported". */
/* Sends a command on c without reading its reply (the socket write done). */
static void send_now(redisContext *c, const char *cmd)
{
    if (redisAppendCommand(c, cmd) != REDIS_OK)
        fail_msg("%s not queued", cmd);
    int done = 0;
    while (!done)
        if (redisBufferWrite(c, &done) != REDIS_OK)
            fail_msg("%s not sent", cmd);
}

/* Waits until shard i counts a blocked client (its own INFO). */
static void wait_blocked_on_shard(fixture *f, int i)
{
    long long blocked = 0;
    for (long long t0 = fixture_now_ms(); fixture_now_ms() - t0 < fixture_bound_ms(3000);) {
        redisReply *r = fixture_cmd(fixture_shard(f, i), "INFO clients");
        blocked = info_number(r->str, "blocked_clients");
        freeReplyObject(r);
        if (blocked)
            return;
        fixture_sleep_ms(20);
    }
    fail_msg("shard %d never counted a blocked client", i);
}

static void test_client_unblock(void **state)
{
    fixture *f = *state;
    redisContext *c = authed_client(f), *blocker = authed_client(f);
    long long id = client_id(blocker);
    int owner = fixture_owner(c, "unblock:list", 12);
    fixture_expect_int(fixture_cmd(c, "CLIENT UNBLOCK %lld", id), 0); /* not blocked */
    fixture_expect_error(fixture_cmd(c, "CLIENT UNBLOCK x"), "ERR value is not an integer");
    fixture_expect_error(fixture_cmd(c, "CLIENT UNBLOCK %lld LATER", id),
                         "ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR");

    /* ERROR: the blocked command fails as on Redis. */
    send_now(blocker, "BLPOP unblock:list 0");
    wait_blocked_on_shard(f, owner);
    fixture_expect_int(fixture_cmd(c, "CLIENT UNBLOCK %lld ERROR", id), 1);
    fixture_expect_error(fixture_next_reply(blocker),
                         "UNBLOCKED client unblocked via CLIENT UNBLOCK");
    /* TIMEOUT (the default): as if its timeout had passed, a nil. */
    long long t0 = fixture_now_ms();
    send_now(blocker, "BLPOP unblock:list 30");
    wait_blocked_on_shard(f, owner);
    fixture_expect_int(fixture_cmd(c, "CLIENT UNBLOCK %lld", id), 1);
    redisReply *r = fixture_next_reply(blocker);
    assert_int_equal(r->type, REDIS_REPLY_NIL);
    freeReplyObject(r);
    assert_true(fixture_now_ms() - t0 < fixture_bound_ms(5000));
    /* The client goes on as before. */
    fixture_expect_status(fixture_cmd(blocker, "PING"), "PONG");
    fixture_expect_int(fixture_cmd(c, "CLIENT UNBLOCK %lld", id), 0);
    fixture_close(f, blocker);
    fixture_close(f, c);
}

/* A raw connection to the proxy, authenticated. */
static int raw_authed(fixture *f)
{
    int fd = fixture_raw_connect(f->proxy.port);
    assert_true(fd >= 0);
    static const char auth[] = "*2\r\n$4\r\nAUTH\r\n$6\r\nsecret\r\n";
    assert_int_equal(fixture_raw_send(fd, auth, sizeof(auth) - 1), 0);
    char got[16];
    int closed = 0;
    fixture_raw_read(fd, got, sizeof(got), 5, (int)fixture_bound_ms(2000), &closed);
    assert_string_equal(got, "+OK\r\n");
    return fd;
}

/* Reads exactly want from fd within the bound. */
static void raw_expect(int fd, const char *want)
{
    char got[256];
    int closed = 0;
    fixture_raw_read(fd, got, sizeof(got), strlen(want), (int)fixture_bound_ms(3000), &closed);
    assert_string_equal(got, want);
}

/* Nothing arrives on fd for ms. */
static void raw_expect_nothing(int fd, int ms)
{
    char got[256];
    int closed = 0;
    size_t n = fixture_raw_read(fd, got, sizeof(got), 1, ms, &closed);
    if (n)
        fail_msg("expected nothing yet, got %s", got);
}

static const char SET_PAUSED[] = "*3\r\n$3\r\nSET\r\n$11\r\npause:write\r\n$1\r\n1\r\n";
static const char GET_PAUSED[] = "*2\r\n$3\r\nGET\r\n$11\r\npause:write\r\n";

static void test_client_pause_write_holds_writes_only(void **state)
{
    fixture *f = *state;
    redisContext *c = authed_client(f);
    int owner = fixture_owner(c, "pause:write", 11);
    fixture_expect_error(fixture_cmd(c, "CLIENT PAUSE x"), "ERR timeout is not an integer");
    fixture_expect_error(fixture_cmd(c, "CLIENT PAUSE -1"), "ERR timeout is negative");
    fixture_expect_error(fixture_cmd(c, "CLIENT PAUSE 10 SOME"), "ERR syntax error");
    fixture_expect_status(fixture_cmd(c, "CLIENT PAUSE 60000 WRITE"), "OK");
    int writer = raw_authed(f);
    /* The write and the read behind it wait, in order; reads of other
     * clients go on; the shards are not paused. */
    assert_int_equal(fixture_raw_send(writer, SET_PAUSED, sizeof(SET_PAUSED) - 1), 0);
    assert_int_equal(fixture_raw_send(writer, GET_PAUSED, sizeof(GET_PAUSED) - 1), 0);
    fixture_expect_nil(fixture_cmd(c, "GET pause:write"));
    fixture_expect_status(fixture_cmd(fixture_shard(f, owner), "SET pause:direct 1"), "OK");
    raw_expect_nothing(writer, 300);
    assert_int_equal(fixture_holders(f, "pause:write", 11), 0);
    fixture_expect_status(fixture_cmd(c, "CLIENT UNPAUSE"), "OK");
    raw_expect(writer, "+OK\r\n$1\r\n1\r\n");
    fixture_expect_str(fixture_cmd(c, "GET pause:write"), "1");
    close(writer);
    fixture_close(f, c);
}

static void test_client_pause_all_ends_by_itself(void **state)
{
    fixture *f = *state;
    redisContext *c = authed_client(f);
    fixture_expect_status(fixture_cmd(c, "SET pause:write 2"), "OK");
    int reader = raw_authed(f);
    long long t0 = fixture_now_ms();
    fixture_expect_status(fixture_cmd(c, "CLIENT PAUSE 400 ALL"), "OK");
    /* Reads wait too. */
    assert_int_equal(fixture_raw_send(reader, GET_PAUSED, sizeof(GET_PAUSED) - 1), 0);
    raw_expect(reader, "$1\r\n2\r\n");
    long long took = fixture_now_ms() - t0;
    if (took < 350 || took > fixture_bound_ms(3000))
        fail_msg("a read during a 400 ms pause took %lld ms", took);
    /* CLIENT UNPAUSE is never paused: a pause can always be ended. */
    int other = raw_authed(f);
    fixture_expect_status(fixture_cmd(c, "CLIENT PAUSE 60000 ALL"), "OK");
    assert_int_equal(fixture_raw_send(reader, GET_PAUSED, sizeof(GET_PAUSED) - 1), 0);
    raw_expect_nothing(reader, 200);
    static const char unpause[] = "*2\r\n$6\r\nCLIENT\r\n$7\r\nUNPAUSE\r\n";
    assert_int_equal(fixture_raw_send(other, unpause, sizeof(unpause) - 1), 0);
    raw_expect(other, "+OK\r\n");
    raw_expect(reader, "$1\r\n2\r\n");
    close(other);
    close(reader);
    fixture_close(f, c);
}

static void test_server_commands_are_not_allowed_in_multi(void **state)
{
    fixture *f = *state;
    redisContext *c = authed_client(f);
    const char *refused[] = {"SAVE", "SHUTDOWN NOSAVE", "SYNC"};
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        fixture_expect_status(fixture_cmd(c, "MULTI"), "OK");
        fixture_expect_status(fixture_cmd(c, "SET multi:k v"), "QUEUED");
        fixture_expect_error(fixture_cmd(c, refused[i]),
                             "ERR Command not allowed inside a transaction");
        fixture_expect_error(fixture_cmd(c, "EXEC"), "EXECABORT");
    }
    fixture_expect_nil(fixture_cmd(c, "GET multi:k"));
    /* Outside a transaction they stay unsupported. */
    fixture_expect_error(fixture_cmd(c, "SAVE"), "ERR unsupported command 'save'");
    fixture_close(f, c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_get_shows_proxy_settings),
        cmocka_unit_test(test_config_get_never_shows_passwords),
        cmocka_unit_test(test_config_get_asks_the_shards),
        cmocka_unit_test(test_config_set_is_refused),
        cmocka_unit_test(test_server_commands_are_not_allowed_in_multi),
        cmocka_unit_test(test_info_keyspace_sums_the_shards),
        cmocka_unit_test(test_info_fields_monitoring_reads),
        cmocka_unit_test(test_info_counts_blocked_clients),
        cmocka_unit_test(test_info_commandstats),
        cmocka_unit_test(test_client_setinfo_and_no_evict),
        cmocka_unit_test(test_client_reply_off_skip_on),
        cmocka_unit_test(test_client_kill_filters),
        cmocka_unit_test(test_client_unblock),
        cmocka_unit_test(test_client_pause_write_holds_writes_only),
        cmocka_unit_test(test_client_pause_all_ends_by_itself),
        cmocka_unit_test(test_info_with_a_shard_down),
    };
    const struct CMUnitTest allowed[] = {
        cmocka_unit_test(test_config_set_reaches_every_shard_when_allowed),
    };
    int failed = cmocka_run_group_tests_name("admin", tests, group_setup, group_teardown);
    failed += cmocka_run_group_tests_name("config set allowed", allowed, allowed_group_setup,
                                          group_teardown);
    return failed;
}
