/* Shards named by hostname follow their name. The name resolves from a
 * hosts file the test rewrites (dns_hosts_file): two redis-servers listen
 * on the same port of 127.0.0.1 and 127.0.0.2, and the name moves from one
 * to the other. The proxy follows within dns_refresh + 1 s, or as soon as
 * a connection fails; no key moves. Names that go to a nameserver go to a
 * UDP socket the test holds and never answers (dns_resolv_conf): such a
 * lookup stalls no client, and its shard fails fast until it resolves.
 * Sentinels named by hostname (`sentinels = name:port`) resolve the same
 * way: from the hosts file, and a lookup waiting on that nameserver stalls
 * no client either. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "fixture.h"

/* dns_refresh of the tests that refresh: the bound on following a change
 * is this plus 1 s (stretched by the timeout scale on a slow machine). */
#define DNS_REFRESH_MS 1000
#define NAME           "app-redis-1"
#define SILENT_NAME    "silent-name.test"
/* A Sentinel's name in the hosts file, and one only the silent nameserver
 * could resolve. */
#define SENTINEL_NAME        "sentinel-1.test"
#define SILENT_SENTINEL_NAME "silent-sentinel.test"
/* The silent nameserver's timeout in the Sentinel tests: long enough that
 * the clients' rounds surely run while a lookup waits. */
#define SENTINEL_LOOKUP_S 3
#define KEYS              40

/* The servers and files of one test. */
typedef struct dns_env {
    harness_proc a;     /* 127.0.0.1:port, where the name points first */
    harness_proc b;     /* 127.0.0.2:port, where it points next */
    harness_proc other; /* s2, a plain 127.0.0.1 shard */
    harness_proc sentinel;
    harness_proc proxy;
    char dir[64];
    char hosts[128];
    char resolv[128];
    int udp;      /* the nameserver that never answers */
    int udp_port; /* its port on 127.0.0.1 */
} dns_env;

/* Replaces path's content at once (write, then rename), as an editor or
 * a config agent does. */
static void write_text(const char *path, const char *text)
{
    char tmp[256];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    assert_non_null(f);
    assert_true(fputs(text, f) >= 0);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(rename(tmp, path), 0);
}

static void point_name_at(dns_env *e, const char *ip)
{
    char text[256];
    snprintf(text, sizeof(text), "127.0.0.1 localhost\n%s %s\n127.0.0.1 %s\n", ip, NAME,
             SENTINEL_NAME);
    write_text(e->hosts, text);
}

/* A port free on both 127.0.0.1 and 127.0.0.2, then a server on each. */
static void start_servers(dns_env *e)
{
    for (int attempt = 0; attempt < 5; attempt++) {
        int port = harness_free_port();
        if (harness_redis_start_at(&e->a, "127.0.0.1", port) != 0)
            continue;
        if (harness_redis_start_at(&e->b, "127.0.0.2", port) == 0)
            return;
        harness_proc_stop(&e->a, SIGTERM);
    }
    fail_msg("cannot start redis-server on 127.0.0.1 and 127.0.0.2 with one port");
}

/* The test's directory, the silent nameserver (a bound UDP socket nobody
 * reads) named by the resolv.conf with a timeout of timeout_s for each
 * lookup, and the hosts file (NAME at 127.0.0.1). */
static void env_files(dns_env *e, int timeout_s)
{
    memset(e, 0, sizeof(*e));
    snprintf(e->dir, sizeof(e->dir), "/tmp/ringproxy-dns-XXXXXX");
    assert_non_null(mkdtemp(e->dir));
    snprintf(e->hosts, sizeof(e->hosts), "%s/hosts", e->dir);
    snprintf(e->resolv, sizeof(e->resolv), "%s/resolv.conf", e->dir);
    e->udp = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    assert_true(e->udp >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(sa);
    assert_int_equal(bind(e->udp, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(e->udp, (struct sockaddr *)&sa, &len), 0);
    e->udp_port = ntohs(sa.sin_port);
    char text[256];
    snprintf(text, sizeof(text), "nameserver 127.0.0.1:%d\noptions timeout:%d attempts:1\n",
             e->udp_port, timeout_s);
    write_text(e->resolv, text);
    point_name_at(e, "127.0.0.1");
}

/* Starts everything: s1 = NAME:port, s2 = the plain shard, s3 (when
 * with_silent) = SILENT_NAME, which only the silent nameserver would know. */
static void env_start(dns_env *e, int refresh_ms, int with_silent)
{
    env_files(e, 1);
    start_servers(e);
    assert_int_equal(harness_redis_start(&e->other), 0);
    char ini[1024], silent[64] = "";
    if (with_silent)
        snprintf(silent, sizeof(silent), "s3 = %s:%d\n", SILENT_NAME, harness_free_port());
    snprintf(ini, sizeof(ini),
             "[proxy]\nlisten = 127.0.0.1:%%PORT%%\ndns_refresh = %d\ndns_hosts_file = %s\n"
             "dns_resolv_conf = %s\nconnect_timeout = 300\nreconnect_min = 50\n"
             "reconnect_max = 500\nlog_level = info\n"
             "[shards]\ns1 = %s:%d\ns2 = 127.0.0.1:%d\n%s",
             refresh_ms, e->hosts, e->resolv, NAME, e->a.port, e->other.port, silent);
    assert_int_equal(harness_ringproxy_start(&e->proxy, ini), 0);
}

static void env_stop(dns_env *e)
{
    if (e->proxy.pid)
        assert_int_equal(harness_proc_stop(&e->proxy, SIGTERM), 0);
    harness_proc_stop(&e->a, SIGTERM);
    harness_proc_stop(&e->b, SIGTERM);
    harness_proc_stop(&e->other, SIGTERM);
    harness_proc_stop(&e->sentinel, SIGTERM);
    close(e->udp);
    unlink(e->hosts);
    unlink(e->resolv);
    rmdir(e->dir);
}

static redisContext *connect_at(const char *ip, int port)
{
    redisContext *c = redisConnectWithTimeout(ip, port, fixture_bound_tv(2000));
    assert_non_null(c);
    assert_int_equal(c->err, 0);
    assert_int_equal(redisSetTimeout(c, fixture_bound_tv(2000)), REDIS_OK);
    return c;
}

static long long dbsize(redisContext *c)
{
    redisReply *r = fixture_cmd(c, "DBSIZE");
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    long long n = r->integer;
    freeReplyObject(r);
    return n;
}

/* The value of GET key through the proxy: its text, "(nil)", or the error. */
static void get_text(redisContext *c, const char *key, char *out, size_t cap)
{
    redisReply *r = fixture_cmd(c, "GET %s", key);
    snprintf(out, cap, "%s", r->type == REDIS_REPLY_NIL ? "(nil)" : r->str ? r->str : "?");
    freeReplyObject(r);
}

/* Polls GET key through the proxy until it reads want; the milliseconds
 * that took, or fails the test after bound_ms. */
static long long wait_value(redisContext *c, const char *key, const char *want, long long bound_ms)
{
    long long start = fixture_now_ms();
    char got[256] = "";
    while (fixture_now_ms() - start <= bound_ms) {
        get_text(c, key, got, sizeof(got));
        if (strcmp(got, want) == 0)
            return fixture_now_ms() - start;
        fixture_sleep_ms(20);
    }
    fail_msg("GET %s read '%s', not '%s', for %lld ms", key, got, want, bound_ms);
    return -1;
}

static int info_shards_has(redisContext *c, const char *needle)
{
    redisReply *r = fixture_cmd(c, "INFO shards");
    int found = r->type == REDIS_REPLY_STRING && strstr(r->str, needle) != NULL;
    freeReplyObject(r);
    return found;
}

/* The "shard_<name>:..." line of INFO shards, in out. */
static void shard_line(redisContext *c, const char *name, char *out, size_t cap)
{
    redisReply *r = fixture_cmd(c, "INFO shards");
    char key[32];
    snprintf(key, sizeof(key), "shard_%s:", name);
    const char *at = r->type == REDIS_REPLY_STRING ? strstr(r->str, key) : NULL;
    snprintf(out, cap, "%.*s", at ? (int)strcspn(at, "\r\n") : 0, at ? at : "");
    freeReplyObject(r);
}

static void wait_info_shards(redisContext *c, const char *needle)
{
    long long deadline = fixture_now_ms() + fixture_bound_ms(3000);
    while (!info_shards_has(c, needle)) {
        if (fixture_now_ms() > deadline) {
            redisReply *r = fixture_cmd(c, "INFO shards");
            fail_msg("INFO shards never showed '%s':\n%s", needle, r->str);
        }
        fixture_sleep_ms(20);
    }
}

/* Waits until INFO locks says the lock store of shard name is ready (its
 * store connection went to the address the name resolved to). */
static void wait_store_ready(redisContext *c, const char *name)
{
    char want[64];
    snprintf(want, sizeof(want), "%s=ready", name);
    long long deadline = fixture_now_ms() + fixture_bound_ms(3000);
    for (;;) {
        redisReply *r = fixture_cmd(c, "INFO locks");
        int ready = r->type == REDIS_REPLY_STRING && strstr(r->str, want) != NULL;
        if (!ready && fixture_now_ms() > deadline)
            fail_msg("INFO locks never showed %s:\n%s", want, r->str);
        freeReplyObject(r);
        if (ready)
            return;
        fixture_sleep_ms(20);
    }
}

/* Sets KEYS keys through the proxy; returns how many s1 owns. */
static long long write_keys(redisContext *c, const char *prefix)
{
    long long on_s1 = 0;
    for (int i = 0; i < KEYS; i++) {
        char key[64];
        snprintf(key, sizeof(key), "%s:%d", prefix, i);
        fixture_expect_status(fixture_cmd(c, "SET %s %s", key, key), "OK");
        on_s1 += fixture_owner(c, key, strlen(key)) == 0;
    }
    return on_s1;
}

/* s1 = sentinel:m1, found through Sentinels named by hostname: starts
 * m1's master (a), the plain shard s2 (other), a Sentinel on 127.0.0.1
 * that monitors a as m1 and answers as SENTINEL_NAME (in the hosts file),
 * and the proxy. With silent_port, the Sentinel listed first is
 * SILENT_SENTINEL_NAME:silent_port, a name only the silent nameserver
 * could resolve, whose lookups fail after timeout_s. */
static void sentinel_env_start(dns_env *e, int timeout_s, int silent_port, int connect_timeout_ms)
{
    env_files(e, timeout_s);
    assert_int_equal(harness_redis_start(&e->a), 0);
    assert_int_equal(harness_redis_start(&e->other), 0);
    char conf[128];
    snprintf(conf, sizeof(conf), "sentinel monitor m1 127.0.0.1 %d 1\n", e->a.port);
    assert_int_equal(harness_sentinel_start(&e->sentinel, conf), 0);
    char silent[64] = "", ini[1024];
    if (silent_port)
        snprintf(silent, sizeof(silent), "%s:%d, ", SILENT_SENTINEL_NAME, silent_port);
    snprintf(ini, sizeof(ini),
             "[proxy]\nlisten = 127.0.0.1:%%PORT%%\ndns_hosts_file = %s\ndns_resolv_conf = %s\n"
             "connect_timeout = %d\nsentinel_poll = 500\nlog_level = info\n"
             "sentinels = %s%s:%d\n[shards]\ns1 = sentinel:m1\ns2 = 127.0.0.1:%d\n",
             e->hosts, e->resolv, connect_timeout_ms, silent, SENTINEL_NAME, e->sentinel.port,
             e->other.port);
    assert_int_equal(harness_ringproxy_start(&e->proxy, ini), 0);
}

/* Waits until s1's master is a, found through the Sentinels, and checks
 * that a write to s1 through the proxy lands there. */
static void expect_master_found(dns_env *e, redisContext *c)
{
    char want[64];
    snprintf(want, sizeof(want), ",master=127.0.0.1:%d,", e->a.port);
    wait_info_shards(c, want);
    wait_info_shards(c, ",sentinel=ok,");
    char key[64];
    fixture_key_on_shard(c, "via-sentinel", 0, key, sizeof(key));
    fixture_expect_status(fixture_cmd(c, "SET %s found", key), "OK");
    redisContext *a = connect_at("127.0.0.1", e->a.port);
    fixture_expect_str(fixture_cmd(a, "GET %s", key), "found");
    redisFree(a);
}

/* The name moves from 127.0.0.1 to 127.0.0.2 in the hosts file: within
 * dns_refresh + 1 s the proxy reads from the server at 127.0.0.2, logs the
 * change and shows it in INFO shards; no key moved (each server and the
 * other shard hold what they held, and the ring still names s1). */
static void test_name_followed_within_dns_refresh(void **state)
{
    (void)state;
    dns_env e;
    env_start(&e, DNS_REFRESH_MS, 0);
    redisContext *c = harness_connect(e.proxy.port);
    assert_non_null(c);
    wait_info_shards(c, "resolved=127.0.0.1,");
    wait_store_ready(c, "s1");
    long long on_s1 = write_keys(c, "k");
    assert_true(on_s1 > 0 && on_s1 < KEYS);
    char probe[64];
    fixture_key_on_shard(c, "probe", 0, probe, sizeof(probe));
    redisContext *a = connect_at("127.0.0.1", e.a.port);
    redisContext *b = connect_at("127.0.0.2", e.b.port);
    redisContext *other = connect_at("127.0.0.1", e.other.port);
    fixture_expect_status(fixture_cmd(a, "SET %s on-a", probe), "OK");
    fixture_expect_status(fixture_cmd(b, "SET %s on-b", probe), "OK");
    wait_value(c, probe, "on-a", 0);
    long long a_keys = dbsize(a), b_keys = dbsize(b), other_keys = dbsize(other);
    assert_int_equal(a_keys, on_s1 + 1);
    assert_int_equal(b_keys, 1);

    point_name_at(&e, "127.0.0.2");
    long long took = wait_value(c, probe, "on-b", DNS_REFRESH_MS + fixture_bound_ms(1000));
    print_message("proxy followed the name %lld ms after the hosts file changed "
                  "(dns_refresh %d ms)\n",
                  took, DNS_REFRESH_MS);
    fixture_wait_log(&e.proxy, "shard s1: " NAME " now resolves to 127.0.0.2 (was 127.0.0.1)");
    /* INFO shards: the name as source and master, the address it resolved
     * to and when, the switch counted with its time. */
    char line[1024], want[128];
    shard_line(c, "s1", line, sizeof(line));
    snprintf(want, sizeof(want), ",source=%s:%d,master=%s:%d,failovers=1,last_switch=", NAME,
             e.a.port, NAME, e.a.port);
    if (!strstr(line, want) || strstr(line, "last_switch=0,") ||
        !strstr(line, ",resolved=127.0.0.2,resolved_at=") || strstr(line, "resolved_at=0,") ||
        !strstr(line, ",dns=ok"))
        fail_msg("INFO shards, s1: %s", line);
    assert_int_equal(fixture_owner(c, probe, strlen(probe)), 0);
    /* Keys do not move: nothing was migrated to or from any server. */
    assert_int_equal(dbsize(a), a_keys);
    assert_int_equal(dbsize(b), b_keys);
    assert_int_equal(dbsize(other), other_keys);
    /* Writes now land on 127.0.0.2. */
    fixture_expect_status(fixture_cmd(c, "SET %s written-after", probe), "OK");
    redisReply *r = fixture_cmd(b, "GET %s", probe);
    fixture_expect_str(r, "written-after");
    redisFree(a);
    redisFree(b);
    redisFree(other);
    redisFree(c);
    env_stop(&e);
}

/* dns_refresh = 0: no periodic lookup (the change is not seen while the
 * old server answers), but a connection that fails resolves the name
 * again before it reconnects: when the old server dies, the proxy moves to
 * the new address at once. */
static void test_failed_connection_resolves_again(void **state)
{
    (void)state;
    dns_env e;
    env_start(&e, 0, 0);
    redisContext *c = harness_connect(e.proxy.port);
    assert_non_null(c);
    wait_info_shards(c, "resolved=127.0.0.1,");
    char probe[64];
    fixture_key_on_shard(c, "probe", 0, probe, sizeof(probe));
    redisContext *b = connect_at("127.0.0.2", e.b.port);
    fixture_expect_status(fixture_cmd(c, "SET %s on-a", probe), "OK");
    fixture_expect_status(fixture_cmd(b, "SET %s on-b", probe), "OK");

    point_name_at(&e, "127.0.0.2");
    fixture_sleep_ms(1500);
    char got[64];
    get_text(c, probe, got, sizeof(got));
    assert_string_equal(got, "on-a");

    assert_true(harness_proc_stop(&e.a, SIGKILL) != -1);
    long long took = wait_value(c, probe, "on-b", fixture_bound_ms(1500));
    print_message("proxy on the new address %lld ms after the old server died\n", took);
    fixture_wait_log(&e.proxy, "shard s1: " NAME " now resolves to 127.0.0.2 (was 127.0.0.1)");
    redisFree(b);
    redisFree(c);
    env_stop(&e);
}

/* How many datagrams the silent nameserver has received (and drops). */
static int drain_queries(int udp)
{
    char dgram[1500];
    int n = 0;
    while (recv(udp, dgram, sizeof(dgram), MSG_DONTWAIT) > 0)
        n++;
    return n;
}

/* A name only a nameserver that never answers could resolve: the proxy
 * starts and serves at once, that shard's requests fail fast, the other
 * shards' requests are not slowed by the lookups waiting, and a name that
 * leaves the hosts file (its lookups now going to that nameserver) keeps
 * its last address. `ringproxy -t` checks such a config without any
 * lookup. */
static void test_silent_nameserver_stalls_no_client(void **state)
{
    (void)state;
    dns_env e;
    env_start(&e, DNS_REFRESH_MS, 1);
    char cmd[512];
    const char *bin = getenv("RINGPROXY_BIN") ? getenv("RINGPROXY_BIN") : "./ringproxy";
    snprintf(cmd, sizeof(cmd), "%s -t -c %s/proxy.ini >/dev/null 2>&1", bin, e.proxy.dir);
    long long t0 = fixture_now_ms();
    assert_int_equal(WEXITSTATUS(system(cmd)), 0);
    assert_true(fixture_now_ms() - t0 < fixture_bound_ms(1000));

    redisContext *c = harness_connect(e.proxy.port);
    assert_non_null(c);
    wait_info_shards(c, "resolved=127.0.0.1,");
    /* s3: its first lookup waits (dns=resolving), or has timed out (failed) */
    assert_true(info_shards_has(c, "resolved=none,resolved_at=0,dns="));
    long long waited = fixture_now_ms();
    while (drain_queries(e.udp) == 0) {
        assert_true(fixture_now_ms() - waited < fixture_bound_ms(2000));
        fixture_sleep_ms(20);
    }

    char on_s3[64], on_s1[64], on_s2[64];
    fixture_key_on_shard(c, "k3", 2, on_s3, sizeof(on_s3));
    fixture_key_on_shard(c, "k1", 0, on_s1, sizeof(on_s1));
    fixture_key_on_shard(c, "k2", 1, on_s2, sizeof(on_s2));
    long long t = fixture_now_ms();
    redisReply *r = fixture_cmd(c, "GET %s", on_s3);
    fixture_expect_error(r, "ERR shard s3 (" SILENT_NAME ":");
    assert_true(fixture_now_ms() - t < fixture_bound_ms(200));
    r = fixture_cmd(c, "GET %s", on_s3);
    assert_non_null(strstr(r->str, "unavailable: name not resolved yet (DNS)"));
    freeReplyObject(r);

    /* s1's name leaves the hosts file: its refreshes wait on the silent
     * nameserver too. Clients of s1 and s2 see no stall meanwhile. */
    write_text(e.hosts, "127.0.0.1 localhost\n");
    long long worst = 0, end = fixture_now_ms() + DNS_REFRESH_MS + 1000;
    int n = 0;
    while (fixture_now_ms() < end) {
        long long t1 = fixture_now_ms();
        fixture_expect_status(fixture_cmd(c, "SET %s v%d", on_s1, n), "OK");
        fixture_expect_status(fixture_cmd(c, "SET %s v%d", on_s2, n), "OK");
        long long took = fixture_now_ms() - t1;
        worst = took > worst ? took : worst;
        n++;
    }
    print_message("%d rounds of two writes while lookups waited on a silent nameserver; "
                  "slowest %lld ms\n",
                  n, worst);
    assert_true(worst < fixture_bound_ms(250));
    assert_true(drain_queries(e.udp) > 0);
    /* s1 keeps its last address while its name does not resolve, and once
     * a lookup has timed out (timeout:1 attempts:1) says so. */
    wait_info_shards(c, "resolved=127.0.0.1,resolved_at=");
    char line[1024];
    long long stale_deadline = fixture_now_ms() + fixture_bound_ms(5000);
    for (;;) {
        shard_line(c, "s1", line, sizeof(line));
        if (strstr(line, ",dns=stale"))
            break;
        if (fixture_now_ms() > stale_deadline)
            fail_msg("s1 never said dns=stale: %s", line);
        fixture_sleep_ms(50);
    }
    assert_non_null(strstr(line, ",resolved=127.0.0.1,"));
    fixture_expect_status(fixture_cmd(c, "SET %s after-timeout", on_s1), "OK");
    fixture_wait_log(&e.proxy, "shard s1: cannot resolve " NAME ": ");
    redisFree(c);
    env_stop(&e);
}

/* A Sentinel named by a hostname of the hosts file (the nameserver never
 * answers, so only the file can name it): the proxy asks it for m1's
 * master, writes go there, and it subscribes to its +switch-master. */
static void test_sentinel_named_in_hosts_file_is_used(void **state)
{
    (void)state;
    dns_env e;
    sentinel_env_start(&e, 1, 0, 2000);
    redisContext *c = harness_connect(e.proxy.port);
    assert_non_null(c);
    expect_master_found(&e, c);
    char subscribed[128];
    snprintf(subscribed, sizeof(subscribed), "Sentinel %s:%d: subscribed to +switch-master",
             SENTINEL_NAME, e.sentinel.port);
    fixture_wait_log(&e.proxy, subscribed);
    assert_false(fixture_log_contains(&e.proxy, "cannot resolve"));
    redisFree(c);
    env_stop(&e);
}

/* The first Sentinel listed has a name only the silent nameserver could
 * resolve (each lookup gives up after SENTINEL_LOOKUP_S). While the proxy
 * waits on that lookup, it answers PING and serves the plain shard as
 * promptly as ever; when the lookup fails it logs why, as a failed
 * connection to that Sentinel, and finds m1 through the next one. */
static void test_sentinel_lookup_on_a_silent_nameserver_stalls_no_client(void **state)
{
    (void)state;
    dns_env e;
    int silent_port = harness_free_port();
    /* connect_timeout (a Sentinel's time to answer) above the lookup's own
     * timeout: the lookup's failure is what ends the wait. */
    sentinel_env_start(&e, SENTINEL_LOOKUP_S, silent_port, 2 * SENTINEL_LOOKUP_S * 1000);
    redisContext *c = harness_connect(e.proxy.port);
    assert_non_null(c);
    long long waited = fixture_now_ms();
    while (drain_queries(e.udp) == 0) {
        assert_true(fixture_now_ms() - waited < fixture_bound_ms(2000));
        fixture_sleep_ms(20);
    }
    long long asked = fixture_now_ms();

    char on_s2[64];
    fixture_key_on_shard(c, "k2", 1, on_s2, sizeof(on_s2));
    long long worst = 0, end = asked + SENTINEL_LOOKUP_S * 1000 / 2;
    int n = 0;
    while (fixture_now_ms() < end) {
        long long t = fixture_now_ms();
        fixture_expect_status(fixture_cmd(c, "PING"), "PONG");
        fixture_expect_status(fixture_cmd(c, "SET %s v%d", on_s2, n), "OK");
        char want[32], got[32];
        snprintf(want, sizeof(want), "v%d", n);
        get_text(c, on_s2, got, sizeof(got));
        assert_string_equal(got, want);
        long long took = fixture_now_ms() - t;
        worst = took > worst ? took : worst;
        n++;
    }
    /* Still waiting on the nameserver: the rounds above ran meanwhile. */
    char failed[128];
    snprintf(failed, sizeof(failed), "Sentinel %s:%d: cannot resolve host: ", SILENT_SENTINEL_NAME,
             silent_port);
    assert_false(fixture_log_contains(&e.proxy, failed));
    print_message("%d rounds of PING, SET, GET while a Sentinel's lookup waited on a silent "
                  "nameserver; slowest %lld ms\n",
                  n, worst);
    assert_true(n > 0);
    /* Not stretched by the timeout scale, which could stretch it past the
     * lookup's own timeout: a quarter of that, when a stalled loop would
     * have taken all of it. */
    assert_true(worst < SENTINEL_LOOKUP_S * 1000 / 4);

    fixture_wait_log(&e.proxy, failed);
    print_message("the lookup failed %lld ms after the nameserver was asked\n",
                  fixture_now_ms() - asked);
    expect_master_found(&e, c);
    redisFree(c);
    env_stop(&e);
}

/* A Sentinel step ends at connect_timeout even while its lookup still
 * waits on the silent nameserver: the connection is freed, its lookup
 * cancelled, the Sentinel passed over (logged) and the master found
 * through the next one, poll after poll. The proxy then exits 0, which
 * under ASan also says that no cancelled lookup was used after its
 * connection was freed, and none leaked. */
static void test_sentinel_lookup_cut_short_by_connect_timeout(void **state)
{
    (void)state;
    dns_env e;
    int silent_port = harness_free_port();
    long long start = fixture_now_ms();
    sentinel_env_start(&e, SENTINEL_LOOKUP_S, silent_port, 500);
    redisContext *c = harness_connect(e.proxy.port);
    assert_non_null(c);
    char gave_up[128];
    snprintf(gave_up, sizeof(gave_up), "Sentinel %s:%d: no answer in 500 ms", SILENT_SENTINEL_NAME,
             silent_port);
    fixture_wait_log(&e.proxy, gave_up);
    expect_master_found(&e, c);
    assert_true(drain_queries(e.udp) > 0);
    /* Past the first lookup's own timeout: had it outlived its connection,
     * its answer would come now. None comes: every lookup was cancelled. */
    long long past = start + SENTINEL_LOOKUP_S * 1000 + 1000 - fixture_now_ms();
    if (past > 0)
        fixture_sleep_ms((int)past);
    fixture_expect_status(fixture_cmd(c, "PING"), "PONG");
    assert_false(fixture_log_contains(&e.proxy, "cannot resolve host"));
    redisFree(c);
    env_stop(&e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_name_followed_within_dns_refresh),
        cmocka_unit_test(test_failed_connection_resolves_again),
        cmocka_unit_test(test_silent_nameserver_stalls_no_client),
        cmocka_unit_test(test_sentinel_named_in_hosts_file_is_used),
        cmocka_unit_test(test_sentinel_lookup_on_a_silent_nameserver_stalls_no_client),
        cmocka_unit_test(test_sentinel_lookup_cut_short_by_connect_timeout),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
